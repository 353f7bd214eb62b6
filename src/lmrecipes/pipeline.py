"""The whole path in one run: pretrain, then fine-tune (a) the pretrained model and (b) the same architecture from
scratch at several label counts and seeds (the label-efficiency curve, label_curve.py), export the full-label
model of (a), summarise. Each stage writes into its own folder under `output_dir`. A rerun runs every stage again
through its own output protection: a finished stage of the same recipe on the same inputs is reused ("nothing to
do"); a stage whose recipe or inputs changed is refused, naming what changed, unless `overwrite_output_dir`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import find_file, parse_mapping
from .errors import RecipeError
from .label_curve import (ALL, check_arm_overrides, curve_markdown, parse_label_counts, plan_runs, plot_label_curve,
                          summarize_curve)
from .objectives import get_objective
from .recipe import read_run_recipe, write_recipe

logger = logging.getLogger("lmrecipes")

RESULTS = "all_results.json"


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
        for key in ("pretrain_recipe", "finetune_recipe"):
            path = find_file(getattr(self, key))
            if not path.is_file():
                raise RecipeError(f"key '{key}': recipe file not found: {getattr(self, key)}")
            setattr(self, key, str(path))


def _read_results(folder: Path) -> dict | None:
    path = folder / RESULTS
    return json.loads(path.read_text()) if path.is_file() else None


def _stage(number: int, total: int, name: str, folder: Path, run, overwrite: bool, needs: str | None = None) -> dict:
    """Run one stage; the stage itself reuses a finished run of the same recipe and inputs, or refuses a changed
    one (training.claim_output_dir), which `overwrite` deletes and runs again. A reused run written before the
    file `needs` existed is run again. Returns its results."""
    print(f"== [{number}/{total}] {name} -> {folder}", flush=True)
    try:
        run(overwrite_output_dir=False)
    except RecipeError as err:
        if not (overwrite and "run of another recipe" in str(err)):
            raise
        print(f"   {folder} holds a run of another recipe or other inputs: deleting it and running the stage again "
              "(overwrite_output_dir)", flush=True)
        run(overwrite_output_dir=True)
    if needs and not (folder / needs).is_file():
        if not overwrite:
            raise RecipeError(f"{folder} holds a run of this recipe from before lmrecipes wrote {needs}, which the "
                              "summary needs: pass --overwrite_output_dir true to run it again")
        print(f"   {folder} holds a run of this recipe from before lmrecipes wrote {needs}: running it again "
              "(overwrite_output_dir)", flush=True)
        run(overwrite_output_dir=True)
    return _read_results(folder)


def _task(args: PipelineArguments):
    """The fine-tuning recipe as the pipeline runs it: (its data arguments, its seed, the train split's rows)."""
    from .api import load_recipe
    from .finetuning import FINETUNE_ARGUMENTS, load_classification_data

    _, _, task_data, finetune, training_args, _ = load_recipe(args.finetune_recipe, FINETUNE_ARGUMENTS,
                                                              **args.finetune_overrides)
    if finetune.problem_type != "single_label_classification":  # the curve compares accuracies per test row
        raise RecipeError(f"key 'finetune_recipe': the pipeline's label curve measures single-label accuracy; "
                          f"{args.finetune_recipe} sets problem_type: {finetune.problem_type}")
    if task_data.max_train_samples is not None:
        raise RecipeError("key 'max_train_samples': the pipeline's label_counts choose the training rows of each run;"
                          " remove it from the fine-tuning recipe / finetune_overrides")
    splits, _ = load_classification_data(task_data)
    return task_data, training_args.seed, splits["train"]


def _corpus_with_task_text(args: PipelineArguments, task_data, train_split, path: Path) -> list[str]:
    """The pretraining recipe's files plus a jsonl of the fine-tuning train split's texts (repeated)."""
    from .api import load_recipe
    from .pretraining import PRETRAIN_ARGUMENTS

    _, _, pretrain_data, _, _ = load_recipe(args.pretrain_recipe, PRETRAIN_ARGUMENTS, **args.pretrain_overrides)
    if pretrain_data.dataset_name:
        raise RecipeError("key 'pretrain_on_task_text': needs a pretraining corpus of local files")
    # written every time: the same bytes for the same recipes, so the pretraining stage's data fingerprint holds
    columns = [c for c in (task_data.text_column, task_data.text_pair_column) if c]
    texts = [" ".join(str(row[c]) for c in columns) for row in train_split]
    text_column = pretrain_data.text_column
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for _ in range(args.task_text_repeats):
            for text in texts:
                handle.write(json.dumps({text_column: text}) + "\n")
    tmp.replace(path)
    print(f"   pretraining corpus + {len(texts)} fine-tuning train texts x{args.task_text_repeats} ({path})",
          flush=True)
    return [*pretrain_data.train_file, str(path)]


def _mean_over_seeds(results: list[dict]) -> dict:
    return {"test_accuracy": sum(r["test_accuracy"] for r in results) / len(results),
            "test_f1": sum(r["test_f1"] for r in results) / len(results), "seeds": len(results),
            "train_seconds": results[0].get("train_runtime")}


def run_pipeline(args: PipelineArguments) -> dict:
    """Run the stages and write summary.json, summary.md, loss_curves.png and label_curve.png into `output_dir`."""
    from .api import finetune, pretrain
    from .finetuning import TEST_PREDICTIONS
    from .lora import export_classifier

    out = Path(args.output_dir)
    pre_dir, ft_dir, scratch_dir, model_dir = out / "pretrain", out / "finetune", out / "finetune-scratch", out / "model"
    task_data, first_seed, train_split = _task(args)
    too_many = [n for n in args.label_counts if n != ALL and n >= len(train_split)]
    if too_many:
        raise RecipeError(f"key 'label_counts': {too_many[0]} is not below the train split's {len(train_split)} "
                          "rows; use 'all' for the whole split")
    arms = ["pretrained", "scratch"] if args.scratch_baseline else ["pretrained"]
    runs = plan_runs(out, args.label_counts, arms, [first_seed + i for i in range(args.seeds)],
                     [first_seed + i for i in range(args.full_label_seeds)], args.curve_examples_per_run,
                     args.curve_evaluations)
    total = 2 + len(runs)
    if args.finetune_overrides.get("max_steps", -1) > 0:
        logger.warning("finetune_overrides sets max_steps: it caps every run of the curve, whatever its epochs")
    out.mkdir(parents=True, exist_ok=True)

    pretrain_settings = {**args.pretrain_overrides, "output_dir": str(pre_dir)}
    if args.pretrain_on_task_text:
        pretrain_settings["train_file"] = _corpus_with_task_text(args, task_data, train_split,
                                                                 out / "task_text.jsonl")
    overwrite = args.overwrite_output_dir
    pre = _stage(1, total, "pretrain", pre_dir,
                 lambda **flags: pretrain(args.pretrain_recipe, **{**pretrain_settings, **flags}), overwrite)
    arm_settings = {
        "pretrained": {**args.finetune_overrides, **args.pretrained_arm_overrides, "model_name_or_path": str(pre_dir)},
        "scratch": {**args.finetune_overrides, **args.scratch_arm_overrides, "model_name_or_path": str(pre_dir),
                    "init_from": "scratch", "use_lora": False}}
    results = {}
    for number, run in enumerate(runs, start=2):
        what = "the pretrained model" if run.arm == "pretrained" else "the same architecture from scratch"
        labels = "all labels" if run.labels == ALL else f"{run.labels} labels"
        settings = {**arm_settings[run.arm], **run.settings, "output_dir": str(run.folder)}
        results[run.folder] = _stage(
            number, total, f"fine-tune {what}, {labels}, seed {run.seed}", run.folder,
            lambda settings=settings, **flags: finetune(args.finetune_recipe, **{**settings, **flags}), overwrite,
            needs=TEST_PREDICTIONS)
    print(f"== [{total}/{total}] export and summary -> {model_dir}", flush=True)
    export_classifier(ft_dir, model_dir)

    ft = results[ft_dir]
    objective = get_objective(read_run_recipe(pre_dir)["objective"])
    curve = summarize_curve(runs, len(train_split), ft["test_majority_accuracy"])
    full = {arm: [results[run.folder] for run in runs if run.labels == ALL and run.arm == arm] for arm in arms}
    summary = {
        "pretraining": {"objective": objective.name, "tokens": pre.get("train_tokens"),
                        "tokens_per_second": pre.get("train_tokens_per_second"), "mfu": pre.get("mfu"),
                        "eval_loss": pre.get("eval_loss"), "train_seconds": pre.get("train_runtime"),
                        **{key: pre.get(key) for key, _, _ in objective.reported_metrics}},
        "finetuned_pretrained": _mean_over_seeds(full["pretrained"]),
        "majority_class": {"test_accuracy": ft["test_majority_accuracy"]},
        "label_curve": curve,
        "arm_overrides": {"pretrained": args.pretrained_arm_overrides, "scratch": args.scratch_arm_overrides},
        "model_dir": str(model_dir),
    }
    if args.scratch_baseline:
        summary["finetuned_scratch"] = _mean_over_seeds(full["scratch"])
        summary["pretraining_gain_accuracy_points"] = round(100 * (
            summary["finetuned_pretrained"]["test_accuracy"] - summary["finetuned_scratch"]["test_accuracy"]), 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_recipe(out / "pipeline.yaml", {  # written only now: it describes the stages that ran
        "pretrain_recipe": args.pretrain_recipe, "finetune_recipe": args.finetune_recipe,
        "output_dir": args.output_dir, "pretrain_overrides": args.pretrain_overrides,
        "finetune_overrides": args.finetune_overrides, "scratch_baseline": args.scratch_baseline,
        "pretrain_on_task_text": args.pretrain_on_task_text, "task_text_repeats": args.task_text_repeats,
        "label_counts": args.label_counts, "seeds": args.seeds, "full_label_seeds": args.full_label_seeds,
        "curve_examples_per_run": args.curve_examples_per_run, "curve_evaluations": args.curve_evaluations,
        "pretrained_arm_overrides": args.pretrained_arm_overrides,
        "scratch_arm_overrides": args.scratch_arm_overrides,
    }, "# Resolved pipeline recipe of this run (lmrecipes pipeline)")
    table = summary_markdown(summary)
    (out / "summary.md").write_text(table)
    plot_loss_curves(pre_dir, {"pretrained": ft_dir, **({"scratch": scratch_dir} if args.scratch_baseline else {})},
                     out / "loss_curves.png", objective.loss_label)
    plot_label_curve(curve, out / "label_curve.png")
    print("\n" + table, flush=True)
    return summary


def _fmt(value, spec=".4f"):
    return "-" if value is None else format(value, spec)


def summary_markdown(summary: dict) -> str:
    pre = summary["pretraining"]
    lines = [
        "# lmrecipes pipeline summary", "",
        "| pretraining | value |", "| --- | --- |",
        f"| tokens seen | {_fmt(pre['tokens'], ',')} |",
        f"| tokens/s | {_fmt(pre['tokens_per_second'], '.0f')} |",
        *(f"| {label} | {_fmt(pre.get(key), spec)} |" for key, label, spec in
          get_objective(pre["objective"]).reported_metrics), "",
        "| sentiment test split | accuracy | macro F1 |", "| --- | --- | --- |",
        f"| (a) pretrained, fine-tuned | {_fmt(summary['finetuned_pretrained']['test_accuracy'])} | "
        f"{_fmt(summary['finetuned_pretrained']['test_f1'])} |",
    ]
    if "finetuned_scratch" in summary:
        lines.append(f"| (b) same architecture from scratch | {_fmt(summary['finetuned_scratch']['test_accuracy'])} |"
                     f" {_fmt(summary['finetuned_scratch']['test_f1'])} |")
    lines.append(f"| (c) majority class | {_fmt(summary['majority_class']['test_accuracy'])} | - |")
    seeds = summary["finetuned_pretrained"]["seeds"]
    lines += ["", f"All training labels, mean over {seeds} seed{'s' if seeds > 1 else ''}."]
    if "pretraining_gain_accuracy_points" in summary:
        lines[-1] += f" What pretraining bought, (a) - (b): {summary['pretraining_gain_accuracy_points']:+.2f} " \
                     "accuracy points."
    overrides = {arm: o for arm, o in summary["arm_overrides"].items() if o}
    lines += ["", *curve_markdown(summary["label_curve"])]
    if overrides:
        lines += ["", "Fine-tuning keys of one arm only: " + "; ".join(
            f"{arm}: {json.dumps(o)}" for arm, o in overrides.items()) + "."]
    return "\n".join(lines) + "\n"


def _loss_history(folder: Path):
    state = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    train = [(e["step"], e["loss"]) for e in state if "loss" in e]
    evaluation = [(e["step"], e["eval_loss"]) for e in state if "eval_loss" in e]
    return train, evaluation


def plot_loss_curves(pretrain_dir: Path, finetune_dirs: dict, path: Path, loss_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    train, evaluation = _loss_history(pretrain_dir)
    left.plot(*zip(*train), label="train") if train else None
    left.plot(*zip(*evaluation), "o-", label="held-out") if evaluation else None
    left.set(title="pretraining", xlabel="step", ylabel=loss_label)
    left.legend()
    for name, folder in finetune_dirs.items():
        train, evaluation = _loss_history(folder)
        if train:
            right.plot(*zip(*train), label=f"{name}: train")
        if evaluation:
            right.plot(*zip(*evaluation), "o--", label=f"{name}: validation")
    right.set(title="sentiment fine-tuning", xlabel="step", ylabel="loss")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
