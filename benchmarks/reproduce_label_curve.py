"""Does an independent fine-tuning of the exported pretrained model reproduce the pipeline's label curve?

    .venv/bin/python benchmarks/reproduce_label_curve.py runs/tiny-llama/pipeline [--out runs/reproduce]

1. Exports the pipeline's pretrained model as a Hub-ready folder (`lmrecipes.publish(..., dry_run=True)`:
   safetensors, config, tokenizer, model card; what a user would download).
2. For every run of arm (a) in summary.json's `label_curve`, fine-tunes that exported folder in a fresh process
   (`scripts/finetune.py`, the run's own recipe.yaml with model_name_or_path pointing at the export): same label
   subset (max_train_samples + seed), same settings.
3. Compares each run's test accuracy and each point's mean with the summary (within the point's 95% interval,
   and how far apart), and writes `results-reproduce-label-curve.json` next to this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline_dir")
    parser.add_argument("--out", default="runs/reproduce-label-curve")
    args = parser.parse_args()

    import lmrecipes

    run, out = Path(args.pipeline_dir), Path(args.out)
    summary = json.loads((run / "summary.json").read_text())
    exported = lmrecipes.publish(run / "pretrain", dry_run=True, publish_dir=str(out / "exported-pretrained"))
    print(f"exported the pretrained model: {exported['folder']} ({len(exported['files'])} files)", flush=True)

    points = []
    for point in summary["label_curve"]["points"]:
        accuracies = []
        for folder in point["runs"]["pretrained"]:
            target = out / Path(folder).name
            start = time.time()
            done = subprocess.run([sys.executable, str(REPO / "scripts" / "finetune.py"),
                                   str(Path(folder).resolve() / "recipe.yaml"), "--model_name_or_path",
                                   str(Path(exported["folder"]).resolve()), "--output_dir", str(target.resolve()),
                                   "--report_to", "none"], cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{folder}: the independent fine-tuning failed:\n{done.stderr[-3000:]}")
            accuracy = json.loads((target / "all_results.json").read_text())["test_accuracy"]
            accuracies.append(accuracy)
            print(f"{folder}: pipeline {point['pretrained']['per_seed'][len(accuracies) - 1]:.4f}, "
                  f"independent {accuracy:.4f} ({time.time() - start:.0f} s)", flush=True)
        mean = sum(accuracies) / len(accuracies)
        low, high = point["pretrained"]["ci95"]
        points.append({"labels": point["labels"], "pipeline_per_seed": point["pretrained"]["per_seed"],
                       "independent_per_seed": accuracies, "pipeline_mean": point["pretrained"]["mean"],
                       "independent_mean": mean, "pipeline_ci95": [low, high], "within_interval": low <= mean <= high,
                       "identical": accuracies == point["pretrained"]["per_seed"]})
    result = {"pipeline_dir": str(run), "exported": exported["folder"], "points": points}
    (REPO / "benchmarks" / "results-reproduce-label-curve.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(points, indent=2))


if __name__ == "__main__":
    main()
