#!/usr/bin/env bash
# ~125M Llama, bf16, one GPU, a few hundred steps: tokens/s and MFU (lmrecipes' throughput callback; peak from
# the accelerator table, e.g. H200/H100 989 TFLOP/s dense bf16). Runs offline on the embedded corpus.
#
#   bash benchmarks/gpu_pretrain.sh [--max_steps 300 ...]      # flags go to scripts/pretrain.py
#
# On a GPU machine without network or without datasets/evaluate/transformers: fetch wheels for its Python here
# first (bash benchmarks/gpu_pretrain.sh --fetch-wheels, into .whl/, ~25 MB), carry .whl to the machine, and run
# this script there: it installs them into /tmp/site when `import datasets` fails. torch must be there already.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    target_python=${GPU_PYTHON_VERSION:-3.12}
    rm -rf .whl && mkdir -p .whl
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$target_python" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl transformers==5.24.0 accelerate==1.15.0 datasets==5.2.0 tokenizers==0.23.3 safetensors \
        huggingface_hub==2.4.0 hf-xet pyyaml regex tqdm packaging psutil numpy dill multiprocess xxhash \
        fsspec filelock pyarrow pandas python-dateutil pytz tzdata six httpx httpcore h11 anyio idna certifi \
        sniffio typing_extensions shellingham typer click rich markdown-it-py mdurl pygments annotated-doc
    du -sh .whl
    exit 0
fi

if ! $PY -c "import datasets, transformers, accelerate" 2>/dev/null; then
    [[ -d .whl ]] || { echo "error: datasets/transformers missing and no .whl folder (see --fetch-wheels)" >&2; exit 2; }
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# one process, one GPU: plain python on a multi-GPU node would drive them all through nn.DataParallel (refused)
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
$PY -c "import torch; print('torch', torch.__version__, 'GPU', torch.cuda.get_device_name(0))"
$PY scripts/pretrain.py recipes/llama-125m/pretrain-gpu-benchmark.yaml --overwrite_output_dir true "$@"
$PY - <<'PYEOF'
import json
r = json.load(open("runs/llama-125m/gpu-benchmark/all_results.json"))
mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "unknown"
print(f"GPU pretrain: {r['train_tokens']:,} tokens, {r['train_tokens_per_second']:,.0f} tokens/s, MFU {mfu}, "
      f"eval loss {r['eval_loss']:.3f}, on {r.get('hardware')}")
PYEOF
