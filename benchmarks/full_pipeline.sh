#!/usr/bin/env bash
# Full-size pipelines on the embedded data (the README's main command, and the masked model), timed.
#   bash benchmarks/full_pipeline.sh [runs/bench]
# Each prints its summary table; summary.json / summary.md / loss_curves.png land in OUT/<model>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
out=${1:-runs/bench}
for model in tiny-llama tiny-bert; do
    start=$(date +%s)
    .venv/bin/python scripts/pipeline.py "recipes/$model/pipeline.yaml" --output_dir "$out/$model"
    echo "$model pipeline: $(( $(date +%s) - start )) s wall"
done
