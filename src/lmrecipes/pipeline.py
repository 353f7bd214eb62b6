"""The whole path in one run: pretrain, then fine-tune (a) the pretrained model and (b) the same architecture from
scratch at several label counts and seeds (the label-efficiency curve, label_curve.py), export the full-label
model of (a), summarise. Each stage writes into its own folder under `output_dir`. A rerun runs every stage again
through its own output protection: a finished stage of the same recipe on the same inputs is reused ("nothing to
do"); a stage whose recipe or inputs changed is refused, naming what changed, unless `overwrite_output_dir`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .api import finetune, pretrain
from .arguments import FINETUNE_ARGUMENTS, PRETRAIN_ARGUMENTS, PipelineArguments
from .arguments.pipeline import read_reference_curve
from .data.classification import load_classification_data
from .demonstrations import demonstrate, demonstrations_markdown
from .errors import RecipeError
from .figures import new_figure, plot_losses, read_log_history, save_figure
from .finetuning import TEST_PREDICTIONS
from .label_curve import ALL, CurveRun, curve_markdown, plan_runs, plot_label_curve, reference_points, summarize_curve
from .lora import export_classifier
from .objectives import get_objective
from .recipe import load_recipe, read_run_recipe, write_recipe

logger = logging.getLogger("lmrecipes")

RESULTS = "all_results.json"


def _read_results(folder: Path) -> dict | None:
    path = folder / RESULTS
    return json.loads(path.read_text()) if path.is_file() else None


def _stage(number: int, total: int, name: str, folder: Path, run, overwrite: bool, needs: str | None = None) -> dict:
    """Run one stage; the stage itself reuses a finished run of the same recipe and inputs, or refuses a changed
    one (run_folder.claim_output_dir), which `overwrite` deletes and runs again. A reused run written before the
    file `needs` existed is run again. Returns its results."""
    print(f"== [{number}/{total}] {name} -> {folder}", flush=True)
    try:
        run(overwrite_output_dir=False)
    except RecipeError as err:
        if not (overwrite and ("run of another recipe" in str(err) or "was changed after the run wrote it" in
                               str(err))):
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
    _, _, task_data, finetune, training_args, _ = load_recipe(args.finetune_recipe, FINETUNE_ARGUMENTS,
                                                              **args.finetune_overrides)
    if finetune.problem_type != "single_label_classification":  # the curve compares accuracies per test row
        raise RecipeError(f"key 'finetune_recipe': the pipeline's label curve measures single-label accuracy; "
                          f"{args.finetune_recipe} sets problem_type: {finetune.problem_type}")
    if task_data.test_fraction == 0 and not task_data.test_file:
        raise RecipeError("key 'test_fraction': the pipeline's label curve compares the runs on a test split; "
                          "give test_file or a test_fraction above 0")
    if task_data.max_train_samples is not None:
        raise RecipeError("key 'max_train_samples': the pipeline's label_counts choose the training rows of each run;"
                          " remove it from the fine-tuning recipe / finetune_overrides")
    splits, _ = load_classification_data(task_data)
    return task_data, training_args.seed, splits["train"]


def _corpus_with_task_text(args: PipelineArguments, task_data, train_split, path: Path) -> list[str]:
    """The pretraining recipe's files plus a jsonl of the fine-tuning train split's texts (repeated)."""
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


def _plan(args: PipelineArguments):
    """(the fine-tuning data arguments, the train split, the curve's runs, the arms), checked before any stage."""
    task_data, first_seed, train_split = _task(args)
    too_many = [n for n in args.label_counts if n != ALL and n >= len(train_split)]
    if too_many:
        raise RecipeError(f"key 'label_counts': {too_many[0]} is not below the train split's {len(train_split)} "
                          "rows; use 'all' for the whole split")
    arms = ["pretrained", "scratch"] if args.scratch_baseline else ["pretrained"]
    runs = plan_runs(Path(args.output_dir), args.label_counts, arms, [first_seed + i for i in range(args.seeds)],
                     [first_seed + i for i in range(args.full_label_seeds)], args.curve_examples_per_run,
                     args.curve_evaluations)
    if args.finetune_overrides.get("max_steps", -1) > 0:
        logger.warning("finetune_overrides sets max_steps: it caps every run of the curve, whatever its epochs")
    return task_data, train_split, runs, arms


def _run_stages(args: PipelineArguments, task_data, train_split, runs: list[CurveRun]) -> tuple[dict, dict, dict]:
    """Pretraining, then every fine-tuning run of the curve: (pretraining results, what the pretrained model shows
    (demonstrations; None without prompts), results per run folder)."""
    out = Path(args.output_dir)
    pre_dir, total = out / "pretrain", 2 + len(runs)
    out.mkdir(parents=True, exist_ok=True)
    pretrain_settings = {**args.pretrain_overrides, "output_dir": str(pre_dir)}
    if args.pretrain_on_task_text:
        pretrain_settings["train_file"] = _corpus_with_task_text(args, task_data, train_split,
                                                                 out / "task_text.jsonl")
    overwrite = args.overwrite_output_dir
    pre = _stage(1, total, "pretrain", pre_dir,
                 lambda **flags: pretrain(args.pretrain_recipe, **{**pretrain_settings, **flags}), overwrite)
    shown = None
    if args.demonstration_prompts:  # shown now: a prompt the model cannot take stops the pipeline before fine-tuning
        shown = demonstrate(pre_dir, get_objective(read_run_recipe(pre_dir)["objective"]), args.demonstration_prompts)
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
    return pre, shown, results


def _summary(args: PipelineArguments, pre: dict, results: dict, runs: list[CurveRun], arms: list[str],
             train_rows: int) -> dict:
    """summary.json: pretraining figures, the full-label fine-tuning means, the majority class, the label curve."""
    out = Path(args.output_dir)
    ft = results[out / "finetune"]
    objective = get_objective(read_run_recipe(out / "pretrain")["objective"])
    full = {arm: [results[run.folder] for run in runs if run.labels == ALL and run.arm == arm] for arm in arms}
    summary = {
        "pretraining": {"objective": objective.name, "tokens": pre.get("train_tokens"),
                        "tokens_per_second": pre.get("train_tokens_per_second"), "mfu": pre.get("mfu"),
                        "eval_loss": pre.get("eval_loss"), "train_seconds": pre.get("train_runtime"),
                        **{key: pre.get(key) for key, _, _ in objective.reported_metrics}},
        "finetuned_pretrained": _mean_over_seeds(full["pretrained"]),
        "majority_class": {"test_accuracy": ft["test_majority_accuracy"]},
        "label_curve": summarize_curve(runs, train_rows, ft["test_majority_accuracy"]),
        "arm_overrides": {"pretrained": args.pretrained_arm_overrides, "scratch": args.scratch_arm_overrides},
        "model_dir": str(out / "model"),
    }
    if args.scratch_baseline:
        summary["finetuned_scratch"] = _mean_over_seeds(full["scratch"])
        summary["pretraining_gain_accuracy_points"] = round(100 * (
            summary["finetuned_pretrained"]["test_accuracy"] - summary["finetuned_scratch"]["test_accuracy"]), 2)
    return summary


def _resolved_pipeline(args: PipelineArguments) -> dict:
    return {
        "pretrain_recipe": args.pretrain_recipe, "finetune_recipe": args.finetune_recipe,
        "output_dir": args.output_dir, "pretrain_overrides": args.pretrain_overrides,
        "finetune_overrides": args.finetune_overrides, "scratch_baseline": args.scratch_baseline,
        "pretrain_on_task_text": args.pretrain_on_task_text, "task_text_repeats": args.task_text_repeats,
        "label_counts": args.label_counts, "seeds": args.seeds, "full_label_seeds": args.full_label_seeds,
        "curve_examples_per_run": args.curve_examples_per_run, "curve_evaluations": args.curve_evaluations,
        "pretrained_arm_overrides": args.pretrained_arm_overrides,
        "scratch_arm_overrides": args.scratch_arm_overrides,
        "demonstration_prompts": args.demonstration_prompts, "reference_curve": args.reference_curve,
    }


def run_pipeline(args: PipelineArguments) -> dict:
    """Run the stages and write summary.json, summary.md, loss_curves.png and label_curve.png into `output_dir`."""
    out = Path(args.output_dir)
    task_data, train_split, runs, arms = _plan(args)
    reference = read_reference_curve(args.reference_curve)[1] if args.reference_curve else None
    pre, shown, results = _run_stages(args, task_data, train_split, runs)
    total = 2 + len(runs)
    print(f"== [{total}/{total}] export and summary -> {out / 'model'}", flush=True)
    export_classifier(out / "finetune", out / "model", replace=True)  # the pipeline's own export, rebuilt on a rerun
    summary = _summary(args, pre, results, runs, arms, len(train_split))
    if reference:
        summary["reference_curve"] = {"file": args.reference_curve, **reference}
    if shown:
        summary["demonstrations"] = shown
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_recipe(out / "pipeline.yaml", _resolved_pipeline(args),  # written only now: it describes the stages that ran
                 "# Resolved pipeline recipe of this run (lmrecipes pipeline)")
    table = summary_markdown(summary)
    (out / "summary.md").write_text(table)
    finetune_dirs = {"pretrained": out / "finetune", **({"scratch": out / "finetune-scratch"}
                                                         if args.scratch_baseline else {})}
    plot_loss_curves(out / "pretrain", finetune_dirs, out / "loss_curves.png",
                     get_objective(summary["pretraining"]["objective"]).loss_label)
    plot_label_curve(summary["label_curve"], out / "label_curve.png", summary.get("reference_curve"))
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
    shown = reference_points(summary["label_curve"], summary.get("reference_curve"))
    if shown:
        ref = summary["reference_curve"]
        lines += ["", f"Reference line (dashed in the plot): {ref['name']}, " + ", ".join(
            f"{'all' if key == ALL else format(count, ',')} labels {100 * p['mean']:.1f} [{100 * p['ci95'][0]:.1f}, "
            f"{100 * p['ci95'][1]:.1f}]" for count, key, p in shown) + f" ({ref['source']})."]
    lines += ["", "![label-efficiency curve](label_curve.png)"]
    if "demonstrations" in summary:
        lines += ["", *demonstrations_markdown(summary["demonstrations"])]
    return "\n".join(lines) + "\n"


def plot_loss_curves(pretrain_dir: Path, finetune_dirs: dict, path: Path, loss_label: str) -> None:
    figure, (left, right) = new_figure(11, 4, columns=2)
    plot_losses(left, read_log_history(pretrain_dir), eval_name="held-out")
    left.set(title="pretraining", xlabel="step", ylabel=loss_label)
    left.legend()
    for name, folder in finetune_dirs.items():
        plot_losses(right, read_log_history(folder), prefix=f"{name}: ", eval_style="o--")
    right.set(title="sentiment fine-tuning", xlabel="step", ylabel="loss")
    right.legend()
    save_figure(figure, path)
