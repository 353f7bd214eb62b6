#!/usr/bin/env bash
# Label-efficiency curves of the main job's variants (benchmarks/README.md, "What pretraining buys"), one after the
# other on the same cores, each a full pipeline run: 3 seeds at 250 and 1,000 labels, 1 at all labels.
#   bash benchmarks/label_curve_variants.sh [runs/variants]
# Prints one table row per variant from its summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
out=${1:-runs/variants}
mkdir -p "$out"
# the sentiment train split's texts, 20 times (no labels; what pretrain_on_task_text adds to the corpus)
.venv/bin/python - "$out/task_text_x20.jsonl" <<'PY'
import json, sys
from lmrecipes import load_recipe
from lmrecipes.arguments import FINETUNE_ARGUMENTS
from lmrecipes.data.classification import load_classification_data
_, _, data, *_ = load_recipe("recipes/tiny-llama/finetune-sentiment.yaml", FINETUNE_ARGUMENTS)
splits = load_classification_data(data)[0]
with open(sys.argv[1], "w", encoding="utf-8") as handle:
    handle.writelines(json.dumps({"text": t}) + "\n" for _ in range(20) for t in splits["train"]["text"])
# Held-out text for reviews-only pretraining: the sentiment VALIDATION split's texts (no labels; never trained on).
# The content hash that holds out 5% of the pretraining corpus puts no train review there: it is the same hash
# that made the sentiment splits, and the train reviews are the ones it put in neither held-out split.
with open(sys.argv[1].replace("task_text_x20", "validation_reviews"), "w", encoding="utf-8") as handle:
    handle.writelines(json.dumps({"text": t}) + "\n" for t in splits["validation"]["text"])
PY
reviews="\"train_file\": [\"$out/task_text_x20.jsonl\"], \"validation_file\": [\"$out/validation_reviews.jsonl\"]"
run() {
    local name=$1; shift
    local start; start=$(date +%s)
    .venv/bin/python scripts/pipeline.py "$@" --output_dir "$out/$name" > "$out/$name.log" 2>&1
    echo "$name: $(( $(date +%s) - start )) s wall (log: $out/$name.log)"
}
run literature+reviews recipes/tiny-llama/pipeline.yaml
run reviews-only recipes/tiny-llama/pipeline.yaml --pretrain_on_task_text false --pretrain_overrides "{$reviews}"
run reviews-only-block64 recipes/tiny-llama/pipeline.yaml --pretrain_on_task_text false \
    --pretrain_overrides "{$reviews, \"block_size\": 64, \"per_device_train_batch_size\": 64}"
run bert-reviews-only recipes/tiny-bert/pipeline.yaml --pretrain_overrides "{$reviews}"
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
for summary in sorted(Path(sys.argv[1]).glob("*/summary.json")):
    points = json.loads(summary.read_text())["label_curve"]["points"]
    cells = [f"{p['labels']}: {100 * p['pretrained']['mean']:.1f} vs {100 * p['scratch']['mean']:.1f}, "
             f"{100 * p['difference']['mean']:+.1f} [{100 * p['difference']['ci95'][0]:+.1f}, "
             f"{100 * p['difference']['ci95'][1]:+.1f}]" for p in points]
    print(f"| {summary.parent.name} | " + " | ".join(cells) + " |")
PY
