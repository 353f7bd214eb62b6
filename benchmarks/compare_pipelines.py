"""Paired comparison of two main-job runs' pretrained arms (e.g. document masking on vs off): per label count, the
(a) - (b) test accuracy over the same seeds and label samples, with the label curve's 95% interval, and each run's
held-out bits/byte.

    python scripts/pipeline.py recipes/tiny-llama/pipeline.yaml --output_dir runs/dm-on
    python scripts/pipeline.py recipes/tiny-llama/pipeline.yaml --output_dir runs/dm-off \
        --pretrain_overrides '{"document_masking": false}'
    python benchmarks/compare_pipelines.py runs/dm-on runs/dm-off
"""

import json
import sys
from pathlib import Path

import numpy as np

from lmrecipes.label_curve import difference_summary, read_correct


def pretrained_runs(out: Path) -> dict:
    """{labels: {seed: folder}} of a pipeline's pretrained arm (its curve runs; all labels: the finetune stage)."""
    runs = {}
    for folder in sorted((out / "curve").glob("pretrained-*-labels-seed*")):
        labels, seed = folder.name.split("-")[1], int(folder.name.rsplit("seed", 1)[1])
        runs.setdefault(labels, {})[seed] = folder
    runs.setdefault("all", {})[42] = out / "finetune"
    return runs


def main(a: Path, b: Path) -> None:
    for out in (a, b):
        pre = json.loads((out / "summary.json").read_text())["pretraining"]
        print(f"{out}: held-out bits/byte {pre['bits_per_byte']:.3f}, perplexity {pre['perplexity']:.1f}, "
              f"{pre['tokens_per_second']:,.0f} tokens/s")
    runs_a, runs_b = pretrained_runs(a), pretrained_runs(b)
    for labels in runs_a:
        seeds = sorted(set(runs_a[labels]) & set(runs_b.get(labels, {})))
        first, correct_a, correct_b = None, [], []
        for seed in seeds:
            row_a, first = read_correct(runs_a[labels][seed], first)
            row_b, first = read_correct(runs_b[labels][seed], first)
            correct_a.append(row_a)
            correct_b.append(row_b)
        diff = difference_summary(np.array(correct_a), np.array(correct_b))
        print(f"{labels} labels ({len(seeds)} seeds): {100 * np.mean(correct_a):.1f} vs {100 * np.mean(correct_b):.1f},"
              f" {100 * diff['mean']:+.1f} [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
