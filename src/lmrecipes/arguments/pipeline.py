"""Pipeline keys (`scripts/pipeline.py`): which pretraining and fine-tuning recipes to chain, and the
label-efficiency curve's label counts, seeds and per-arm settings."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import RecipeError
from ..values import find_file, parse_mapping
from .data import ClassificationDataArguments
from .hf_names import ALIASES

ALL = "all"
# what the pretrained model is shown continuing (causal) or filling (masked: a mask after the prompt), in summary.md:
# one prompt from each of the embedded corpus's sources and one in the task's domain
DEMONSTRATION_PROMPTS = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                         "must be in want of a", "To be, or not to be, that is the", "Call me", "The state of our "
                         "Union is", "This movie is")
# Fine-tuning keys the curve sets for each run on fewer labels than all (label_curve.small_n_settings), and
# max_steps: the same for both arms, not an arm's to override.
CURVE_RUN_KEYS = ("max_train_samples", "num_train_epochs", "seed", "eval_strategy", "eval_steps", "save_strategy",
                  "save_steps", "save_total_limit", "load_best_model_at_end", "metric_for_best_model",
                  "greater_is_better", "max_steps")


def parse_label_counts(values) -> list[int | str]:
    """`[250, 1000, all]` -> sorted counts, 'all' last; a one-line error naming the key otherwise."""
    counts, seen_all = [], False
    for value in values or []:
        text = str(value).strip().lower()
        if text == ALL:
            seen_all = True
        elif text.isdigit() and int(text) >= 2:
            counts.append(int(text))
        else:
            raise RecipeError(f"key 'label_counts': expected label counts (integers >= 2) or 'all', got {value!r}")
    if not seen_all:
        raise RecipeError("key 'label_counts': must include 'all' (the full-label runs: the exported model and "
                          "the summary's finetuned_* keys)")
    return sorted(set(counts)) + [ALL]


def _reference_point(label_count, point) -> tuple[str, dict]:
    """One point of a reference curve, checked: ("all" or a whole count, {mean, ci95}) with 0 <= mean <= 1 (an
    accuracy as a fraction) and low <= mean <= high (a t-interval may pass 0 or 1)."""
    import math

    key = str(label_count).strip().lower()
    if key != ALL and not (key.isdigit() and int(key) >= 1):
        raise ValueError(f"label count {label_count!r} is neither a whole number nor 'all'")
    mean, ci95 = point["mean"], point["ci95"]
    numbers = [mean, *ci95] if isinstance(ci95, list) and len(ci95) == 2 else None
    if numbers is None or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  for v in numbers) or not (0 <= mean <= 1 and ci95[0] <= mean <= ci95[1]):
        raise ValueError(f"point {label_count!r}: mean must be a fraction and ci95 = [low, high] around it, got "
                         f"mean {mean!r}, ci95 {ci95!r}")
    return (key if key == ALL else str(int(key))), {"mean": float(mean), "ci95": [float(v) for v in ci95]}


def read_reference_curve(path: str):
    """(the file's path, its curve): name, source, points {label count or 'all': {mean, ci95}}, accuracies as
    fractions; a one-line error naming the key otherwise."""
    import json

    found = find_file(path)
    try:
        curve = json.loads(found.read_text(encoding="utf-8"))
        name, source, points = curve["name"], curve["source"], curve["points"]
        if not (isinstance(name, str) and isinstance(source, str) and isinstance(points, dict) and points):
            raise ValueError("name and source must be text and points a mapping with at least one point")
        points = dict(_reference_point(n, p) for n, p in points.items())
    except FileNotFoundError:
        raise RecipeError(f"key 'reference_curve': file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise RecipeError(f"key 'reference_curve': {path} is not a label curve (name, source, points: label count "
                          f"-> mean, ci95): {type(err).__name__}: {err}") from None
    return found, {"name": name, "source": source, "points": points}


def check_arm_overrides(overrides: dict, key: str) -> None:
    """An arm's own fine-tuning keys may not touch what makes the comparison paired (the data, its sample, the
    seed) nor what the curve sets per run: a one-line error naming the key."""
    fixed = {f.name for f in fields(ClassificationDataArguments)} | set(CURVE_RUN_KEYS)
    # Hugging Face's names of those keys too (hf_names: max_seq_length, evaluation_strategy, ...)
    fixed |= {name for name, alias in ALIASES.items() if set(alias.targets) & fixed}
    clash = sorted(set(overrides) & fixed)
    if clash:
        raise RecipeError(f"key '{key}': {', '.join(clash)} must be the same for both arms (the data and its "
                          "sample, the seed) or is set by the curve; put it in finetune_overrides or the curve keys")


@dataclass
class PipelineArguments:
    """A pipeline recipe: which pretraining and fine-tuning recipes to chain, and where."""

    pretrain_recipe: str = field(metadata={"help": "The pretraining recipe (path)."})
    finetune_recipe: str = field(metadata={"help": "The fine-tuning recipe (path); its model is the pretrained one."})
    output_dir: str = field(metadata={"help": "Run folder: pretrain/, finetune/, finetune-scratch/, model/, summary."})
    pretrain_overrides: dict | str | None = field(
        default=None, metadata={"help": "Keys overriding the pretraining recipe, e.g. {max_steps: 300}."})
    finetune_overrides: dict | str | None = field(
        default=None, metadata={"help": "Keys overriding the fine-tuning recipe (both fine-tuning runs)."})
    scratch_baseline: bool = field(
        default=True, metadata={"help": "Also fine-tune the same architecture from random weights, same budget."})
    pretrain_on_task_text: bool = field(
        default=False,
        metadata={"help": "Add the fine-tuning TRAIN split's texts (no labels; never validation or test rows) to the "
                  "pretraining corpus: domain-adaptive pretraining."})
    task_text_repeats: int = field(
        default=1, metadata={"help": "How many times those texts are repeated in the pretraining corpus."})
    label_counts: list[str] = field(
        default_factory=lambda: ["250", "1000", "all"],
        metadata={"help": "Label-efficiency curve: training-label counts to fine-tune both arms on (a seeded, "
                  "label-stratified sample of the train split; the same rows for both arms), plus 'all' (needed: "
                  "the full-label runs are the exported model and the summary's finetuned_* keys)."})
    seeds: int = field(
        default=3, metadata={"help": "Seeds per label count below 'all': the fine-tuning recipe's seed, +1, +2, ... "
                             "(a seed picks the label sample, the new head's and the scratch body's weights, the "
                             "data order)."})
    full_label_seeds: int = field(
        default=1, metadata={"help": "Seeds at 'all' (the dearest runs; the summary says how many each point used)."})
    curve_examples_per_run: int = field(
        default=2500, metadata={"help": "A run on N < all labels trains ceil(this / N) epochs: fewer labels, more "
                                "epochs, about the same examples seen."})
    curve_evaluations: int = field(
        default=3, metadata={"help": "Validations spread over each run on N < all labels (at least 2); the best one "
                             "(accuracy on the whole validation split) is the run's model."})
    pretrained_arm_overrides: dict | str | None = field(
        default=None, metadata={"help": "Fine-tuning keys for arm (a), the pretrained model, only (e.g. its "
                                "learning rate from a search run for both arms); not the data keys, seed, epochs "
                                "or evaluation keys: those are the same for both arms."})
    scratch_arm_overrides: dict | str | None = field(
        default=None, metadata={"help": "Fine-tuning keys for arm (b), from scratch, only."})
    demonstration_prompts: list[str] = field(
        default_factory=lambda: list(DEMONSTRATION_PROMPTS),
        metadata={"help": "Prompts that show what pretraining taught the model, in summary.md: the causal model's "
                  "greedy continuation, the masked model's top fill-mask predictions for a mask after the prompt "
                  "(ELECTRA: its generator's), with random weights and with the pretrained ones. [] shows none."})
    reference_curve: str | None = field(
        default=None, metadata={"help": "A JSON file of another model's label curve on the same samples and test "
                                "split (benchmarks/compute_curve.py writes one for MiniLM): drawn in label_curve.png "
                                "and listed in summary.md as a reference line (none: no line). Keys: name, source, "
                                "points (label count or all -> mean accuracy and ci95 as fractions)."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Stages whose recipe or inputs changed since an earlier run in output_dir "
                                 "are deleted and run again (without it they are refused, naming what changed)."})

    def __post_init__(self):
        self.pretrain_overrides = parse_mapping(self.pretrain_overrides, "pretrain_overrides")
        self.finetune_overrides = parse_mapping(self.finetune_overrides, "finetune_overrides")
        self.pretrained_arm_overrides = parse_mapping(self.pretrained_arm_overrides, "pretrained_arm_overrides")
        self.scratch_arm_overrides = parse_mapping(self.scratch_arm_overrides, "scratch_arm_overrides")
        self.label_counts = parse_label_counts(self.label_counts)  # sorted counts (int), then "all"
        for key, least in (("seeds", 1), ("full_label_seeds", 1), ("curve_examples_per_run", 1),
                           ("curve_evaluations", 2)):
            if getattr(self, key) < least:
                raise RecipeError(f"key '{key}': must be at least {least}, got {getattr(self, key)}")
        check_arm_overrides(self.pretrained_arm_overrides, "pretrained_arm_overrides")
        check_arm_overrides(self.scratch_arm_overrides, "scratch_arm_overrides")
        if str(self.reference_curve).strip().lower() in ("none", "null", ""):
            self.reference_curve = None  # `--reference_curve none` turns off a recipe's reference line
        if self.reference_curve is not None:
            self.reference_curve = str(read_reference_curve(self.reference_curve)[0])
        for key in ("pretrain_recipe", "finetune_recipe"):
            path = find_file(getattr(self, key))
            if not path.is_file():
                raise RecipeError(f"key '{key}': recipe file not found: {getattr(self, key)}")
            setattr(self, key, str(path))
