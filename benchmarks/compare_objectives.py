"""Compare pretraining objectives through the main job's label-efficiency curve.

Reads finished pipeline folders (one per objective, each `scripts/pipeline.py` with the same label counts and
seeds) and writes, per label count, each objective's fine-tuned test accuracy (pretrained arm and its own
from-scratch arm) and the paired differences between objectives' pretrained arms. The runs of one label count and
seed trained on the same stratified sample (same data split, seed and max_train_samples) and were scored on the
same 1,066 test rows, so the differences are paired; intervals as in lmrecipes.label_curve.

    python benchmarks/compare_objectives.py electra=runs/compare/electra masked=runs/compare/masked \
        causal=runs/tiny-llama/pipeline-fresh2 --output benchmarks/results-objectives.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lmrecipes.finetuning import TEST_PREDICTIONS
from lmrecipes.label_curve import arm_summary, difference_summary


def correctness(folders: list[str], references: list | None) -> tuple[np.ndarray, list]:
    """(seeds, test rows) correctness of the runs, checking every run scored the same labels in the same order
    (tokenizers differ between objectives, so token ids are not compared; the rows come from the same split)."""
    rows = []
    for folder in folders:
        saved = json.loads((Path(folder) / TEST_PREDICTIONS).read_text())
        if references is not None and saved["references"] != references:
            raise SystemExit(f"{folder}: other test rows than the first run's: not a paired comparison")
        references = saved["references"]
        rows.append(np.asarray(saved["predictions"]) == np.asarray(saved["references"]))
    return np.stack(rows), references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipelines", nargs="+", help="NAME=PIPELINE_OUTPUT_DIR; every pair's paired difference")
    parser.add_argument("--output", type=Path, default=None, help="where to write the results (JSON)")
    args = parser.parse_args()
    names = dict(item.split("=", 1) for item in args.pipelines)
    summaries = {name: json.loads((Path(folder) / "summary.json").read_text()) for name, folder in names.items()}
    references, table = None, []
    counts = [point["labels"] for point in next(iter(summaries.values()))["label_curve"]["points"]]
    for count in counts:
        point = {"labels": count, "objectives": {}, "differences": {}}
        pretrained = {}
        for name, summary in summaries.items():
            match = next(p for p in summary["label_curve"]["points"] if p["labels"] == count)
            seeds = match["seeds"]
            arms = {}
            for arm, folders in match["runs"].items():
                # runs are listed in seed order in every summary; the same seeds are required across objectives
                arms[arm], references = correctness(folders, references)
            point["objectives"][name] = {"seeds": seeds, **{arm: arm_summary(c) for arm, c in arms.items()},
                                         "pretraining": summary["pretraining"]}
            pretrained[name] = (seeds, arms["pretrained"])
        ordered = list(pretrained)
        for i, first in enumerate(ordered):
            for other in ordered[i + 1:]:
                if pretrained[first][0] != pretrained[other][0]:
                    raise SystemExit(f"{first} and {other} ran other seeds at {count} labels: not paired")
                point["differences"][f"{first} - {other}"] = difference_summary(pretrained[first][1],
                                                                                pretrained[other][1])
        table.append(point)

    lines = ["| labels | " + " | ".join(f"{n} pretrained" for n in names) + " | "
             + " | ".join(f"{n} scratch" for n in names) + " | " + " | ".join(table[0]["differences"]) + " |",
             "| --- " * (1 + 2 * len(names) + len(table[0]["differences"])) + "|"]
    for point in table:
        cells = [f"{100 * point['objectives'][n]['pretrained']['mean']:.1f}" for n in names]
        cells += [f"{100 * point['objectives'][n]['scratch']['mean']:.1f}" if "scratch" in point["objectives"][n]
                  else "-" for n in names]
        cells += [f"{100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
                  for d in point["differences"].values()]
        lines.append(f"| {point['labels']:,} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.output:
        args.output.write_text(json.dumps({"pipelines": names, "points": table, "table": lines}, indent=2))


if __name__ == "__main__":
    main()
