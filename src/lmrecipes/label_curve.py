"""Label-efficiency curve: what pretraining buys at N labels, with seeds and paired 95% intervals.

For each label count N and seed, (a) the pretrained model and (b) the same architecture from random weights are
fine-tuned on the *same* seeded, label-stratified N training rows (`max_train_samples: N` with `seed`: the
sampler of data.sources.sample_indices) and evaluated on the same test split. Every run is an ordinary fine-tuning
run in its own folder, so `scripts/finetune.py` with the run's recipe.yaml repeats it. A run on N < all labels trains
ceil(examples_per_run / N) epochs of its sample (2,500 examples by default: fewer labels, more epochs; the
full-label runs keep the recipe's epochs). Every run keeps its best checkpoint on the whole validation split
(1,109 labelled reviews on the embedded data, more than N): the same for both arms, but the absolute accuracies
"at N labels" are those of a model chosen with more labels than N.

The intervals (`interval`, INTERVAL_METHOD) add the seed-to-seed spread of training and the test split's sampling
noise, conservatively; with one seed, the test rows only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arguments.pipeline import ALL
from .errors import RecipeError
from .figures import new_figure, save_figure
from .finetuning import TEST_PREDICTIONS

INTERVAL_METHOD = (
    "95% interval: mean ± t(0.975, df) x sqrt(s2_seeds / S + s2_rows / n). s2_seeds: sample variance of the S "
    "per-seed accuracies (for (a) - (b): of the per-seed differences): training's seed-to-seed spread plus each "
    "seed's own test-row noise; s2_rows: sample variance over the n test rows of each row's correctness "
    "(difference) averaged over seeds: the test split's sampling noise; df: Welch-Satterthwaite. The seed x row "
    "noise sits in both terms, so with several seeds the interval is conservative (wider than 95% when seeds "
    "differ little); with one seed it covers the test rows only (std and seed term: n/a). Both arms are scored on "
    "the same test rows and, per seed, the same training rows: the difference is paired.")


@dataclass(frozen=True)
class CurveRun:
    """One fine-tuning run of the curve: which arm, how many labels, which seed, where, with which settings."""

    arm: str  # "pretrained" or "scratch"
    labels: int | str  # a count, or "all"
    seed: int
    folder: Path
    settings: dict  # fine-tuning keys on top of the pipeline's fine-tuning recipe and overrides


def small_n_settings(labels: int, seed: int, examples_per_run: int, evaluations: int) -> dict:
    """Fine-tuning keys for a run on `labels` rows: more epochs for fewer labels (about `examples_per_run`
    examples seen), `evaluations` validations spread over the run, the best one kept. Its keys are
    arguments.pipeline.CURVE_RUN_KEYS, which an arm may not override."""
    fraction = 1.0 / evaluations  # TrainingArguments reads eval/save steps below 1 as a fraction of the run
    return {"max_train_samples": labels, "num_train_epochs": max(1, math.ceil(examples_per_run / labels)),
            "seed": seed, "eval_strategy": "steps", "eval_steps": fraction, "save_strategy": "steps",
            "save_steps": fraction, "save_total_limit": 1, "load_best_model_at_end": True,
            "metric_for_best_model": "accuracy", "greater_is_better": True}


def plan_runs(out: Path, label_counts: list, arms: list[str], seeds: list[int], full_label_seeds: list[int],
              examples_per_run: int, evaluations: int) -> list[CurveRun]:
    """Every run of the curve, in order: by label count, then seed, then arm (a seed's two arms side by side).
    The full-label runs of the first seed are the pipeline's `finetune/` and `finetune-scratch/`."""
    runs = []
    for labels in label_counts:
        for seed in (full_label_seeds if labels == ALL else seeds):
            for arm in arms:
                if labels == ALL and seed == full_label_seeds[0]:
                    folder = out / ("finetune" if arm == "pretrained" else "finetune-scratch")
                    settings = {"seed": seed}
                else:
                    folder = out / "curve" / f"{arm}-{labels}-labels-seed{seed}"
                    settings = {"seed": seed} if labels == ALL else \
                        small_n_settings(labels, seed, examples_per_run, evaluations)
                runs.append(CurveRun(arm, labels, seed, folder, settings))
    return runs


# ---------------------------------------------------------------- statistics


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with `df` (> 0, not necessarily whole) degrees of freedom, for 0.5 < p < 1: bisection
    on the CDF, which is 1/2 plus the density integrated from 0 by Simpson's rule. Hand-written: scipy is not a
    dependency of lmrecipes, and numpy / torch have no t quantile."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, steps: int = 2000) -> float:
        grid = np.linspace(0.0, x, steps + 1)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid ** 2 / df))
        return 0.5 + x / (3 * steps) * (density[0] + density[-1] + 4 * density[1:-1:2].sum()
                                         + 2 * density[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


def interval(scores: np.ndarray, level: float = 0.95) -> dict:
    """Mean of a (seeds, test rows) array of per-row scores (0/1 correctness, or the paired difference -1/0/1) with
    its interval: mean ± t(df) x sqrt(var_seeds + var_rows), the two variance terms as in INTERVAL_METHOD."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"expected a (seeds, rows) array with at least 2 rows, got shape {scores.shape}")
    n_seeds, n_rows = scores.shape
    per_seed = scores.mean(axis=1)
    var_rows = scores.mean(axis=0).var(ddof=1) / n_rows
    var_seeds = per_seed.var(ddof=1) / n_seeds if n_seeds > 1 else 0.0
    total = var_rows + var_seeds
    mean = float(per_seed.mean())
    if total == 0:
        return {"mean": mean, "ci95": [mean, mean], "se": 0.0, "df": None}
    df = total ** 2 / (var_rows ** 2 / (n_rows - 1) + (var_seeds ** 2 / (n_seeds - 1) if n_seeds > 1 else 0.0))
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(total)
    return {"mean": mean, "ci95": [mean - half, mean + half], "se": math.sqrt(total), "df": float(df)}


def arm_summary(correct: np.ndarray) -> dict:
    """Test accuracy over seeds: mean, standard deviation (ddof 1; None for one seed), per seed, 95% interval."""
    per_seed = np.asarray(correct, dtype=float).mean(axis=1)
    return {**interval(correct), "std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None,
            "per_seed": per_seed.tolist()}


def difference_summary(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """The paired difference (a) - (b) of test accuracy: mean, per seed, 95% interval."""
    scores = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    return {**interval(scores), "per_seed": scores.mean(axis=1).tolist()}


def read_correct(folder: Path, first: dict | None) -> tuple[np.ndarray, dict]:
    """A run's per-row correctness on the test split, checking that it scored the same rows (token ids and labels,
    in the same order) as the first run read."""
    rows = json.loads((folder / TEST_PREDICTIONS).read_text())
    if first is not None and (rows.get("test_inputs_sha256"), rows["references"]) != (
            first.get("test_inputs_sha256"), first["references"]):
        raise RecipeError(f"{folder}: its test rows differ from the other runs' (not a paired comparison)")
    return np.asarray(rows["predictions"]) == np.asarray(rows["references"]), first or rows


def summarize_curve(runs: list[CurveRun], train_rows: int, majority_accuracy: float) -> dict:
    """summary.json's `label_curve`: per label count, each arm's mean / std / interval and the paired difference."""
    first, points = None, []
    for labels in dict.fromkeys(run.labels for run in runs):
        at_n = [run for run in runs if run.labels == labels]
        arms = list(dict.fromkeys(run.arm for run in at_n))
        seeds = list(dict.fromkeys(run.seed for run in at_n))
        correct = {}
        for arm in arms:
            rows = []
            for seed in seeds:
                folder = next(run.folder for run in at_n if run.arm == arm and run.seed == seed)
                row, first = read_correct(folder, first)
                rows.append(row)
            correct[arm] = np.stack(rows)
        count = train_rows if labels == ALL else labels
        state = json.loads((at_n[0].folder / "trainer_state.json").read_text())
        point = {"labels": count, "label_fraction": round(count / train_rows, 4), "full_split": labels == ALL,
                 "seeds": seeds, "num_train_epochs": state.get("num_train_epochs"), "steps": state.get("global_step"),
                 **{arm: arm_summary(correct[arm]) for arm in arms},
                 "runs": {arm: [str(run.folder) for run in at_n if run.arm == arm] for arm in arms}}
        if len(arms) == 2:
            point["difference"] = difference_summary(correct[arms[0]], correct[arms[1]])
        points.append(point)
    return {"interval": INTERVAL_METHOD, "test_rows": len(first["references"]),
            "train_rows": train_rows, "majority_class_accuracy": majority_accuracy, "points": points}


# ---------------------------------------------------------------- report


def curve_markdown(curve: dict) -> list[str]:
    def pct(summary):
        spread = "n/a" if summary["std"] is None else f"{100 * summary['std']:.1f}"
        return f"{100 * summary['mean']:.1f} ± {spread} [{100 * summary['ci95'][0]:.1f}, " \
               f"{100 * summary['ci95'][1]:.1f}]"

    paired = any("difference" in p for p in curve["points"])
    lines = ["## Label-efficiency curve (test accuracy, %: mean ± std over seeds [95% interval])", "",
             "| labels | seeds | epochs | (a) pretrained | " + ("(b) scratch | (a) - (b) |" if paired else ""),
             "| --- | --- | --- | --- | " + ("--- | --- |" if paired else "")]
    for p in curve["points"]:
        name = f"{p['labels']:,} (all)" if p["full_split"] else f"{p['labels']:,}"
        epochs = "-" if p["num_train_epochs"] is None else f"{p['num_train_epochs']:g}"
        row = f"| {name} | {len(p['seeds'])} | {epochs} | {pct(p['pretrained'])} | "
        if "difference" in p:
            d = p["difference"]
            row += f"{pct(p['scratch'])} | {100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, " \
                   f"{100 * d['ci95'][1]:+.1f}] |"
        lines.append(row)
    lines += ["", f"Majority class: {100 * curve['majority_class_accuracy']:.1f}% of {curve['test_rows']:,} test "
                  f"rows. Intervals: {curve['interval']}"]
    return lines


def reference_points(curve: dict, reference: dict | None) -> list[tuple[int, str, dict]]:
    """The reference curve's points at the curve's label counts: [(label count, its key: the count or 'all' for
    the curve's full split, {mean, ci95})]."""
    if not reference:
        return []
    keys = [(p["labels"], ALL if p["full_split"] else str(p["labels"])) for p in curve["points"]]
    return [(count, key, reference["points"][key]) for count, key in keys if key in reference["points"]]


def plot_label_curve(curve: dict, path: Path, reference: dict | None = None) -> None:
    """Test accuracy against labels, each arm with its interval; `reference` (arguments.pipeline.
    read_reference_curve): another model's curve on the same samples, dashed."""
    fig, ax = new_figure(6, 4)
    counts = [p["labels"] for p in curve["points"]]
    for arm, name in (("pretrained", "(a) pretrained"), ("scratch", "(b) from scratch")):
        points = [p for p in curve["points"] if arm in p]
        if not points:
            continue
        x = [p["labels"] for p in points]
        ax.plot(x, [100 * p[arm]["mean"] for p in points], "o-", label=name)
        ax.fill_between(x, [100 * p[arm]["ci95"][0] for p in points], [100 * p[arm]["ci95"][1] for p in points],
                        alpha=0.2)
    shown = reference_points(curve, reference)
    if shown:
        ax.errorbar([n for n, _, _ in shown], [100 * p["mean"] for _, _, p in shown],
                    yerr=[[100 * (p["mean"] - p["ci95"][0]) for _, _, p in shown],
                          [100 * (p["ci95"][1] - p["mean"]) for _, _, p in shown]],
                    fmt="s--", color="gray", capsize=3, label=reference["name"])
    ax.axhline(100 * curve["majority_class_accuracy"], color="gray", linestyle="--", label="majority class")
    ax.set_xscale("log")
    ax.set_xticks(counts, [f"{c:,}" for c in counts])
    ax.set(xlabel="training labels (log scale)", ylabel="test accuracy (%)",
           title="label efficiency (mean over seeds, 95% interval)")
    ax.legend()
    save_figure(fig, path)
