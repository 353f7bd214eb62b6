"""The whole path in one run: pretrain, fine-tune (and the same fine-tuning from scratch), evaluate, export,
summarise. Each stage writes into its own folder under `output_dir`. A rerun runs every stage again through its
own output protection: a finished stage of the same recipe on the same inputs is reused ("nothing to do"); a
stage whose recipe or inputs changed is refused, naming what changed, unless `overwrite_output_dir`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import find_file, parse_mapping
from .errors import RecipeError
from .recipe import write_recipe

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
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Stages whose recipe or inputs changed since an earlier run in output_dir "
                                 "are deleted and run again (without it they are refused, naming what changed)."})

    def __post_init__(self):
        self.pretrain_overrides = parse_mapping(self.pretrain_overrides, "pretrain_overrides")
        self.finetune_overrides = parse_mapping(self.finetune_overrides, "finetune_overrides")
        for key in ("pretrain_recipe", "finetune_recipe"):
            path = find_file(getattr(self, key))
            if not path.is_file():
                raise RecipeError(f"key '{key}': recipe file not found: {getattr(self, key)}")
            setattr(self, key, str(path))


def _read_results(folder: Path) -> dict | None:
    path = folder / RESULTS
    return json.loads(path.read_text()) if path.is_file() else None


def _stage(number: int, total: int, name: str, folder: Path, run, overwrite: bool) -> dict:
    """Run one stage; the stage itself reuses a finished run of the same recipe and inputs, or refuses a changed
    one (training.claim_output_dir), which `overwrite` deletes and runs again. Returns its results."""
    print(f"== [{number}/{total}] {name} -> {folder}", flush=True)
    try:
        run(overwrite_output_dir=False)
    except RecipeError as err:
        if not (overwrite and "run of another recipe" in str(err)):
            raise
        print(f"   {folder} holds a run of another recipe or other inputs: deleting it and running the stage again "
              "(overwrite_output_dir)", flush=True)
        run(overwrite_output_dir=True)
    return _read_results(folder)


def _corpus_with_task_text(args: PipelineArguments, path: Path) -> list[str]:
    """The pretraining recipe's files plus a jsonl of the fine-tuning train split's texts (repeated)."""
    from .api import load_recipe
    from .finetuning import FINETUNE_ARGUMENTS, load_classification_data
    from .pretraining import PRETRAIN_ARGUMENTS

    _, _, pretrain_data, _, _ = load_recipe(args.pretrain_recipe, PRETRAIN_ARGUMENTS, **args.pretrain_overrides)
    if pretrain_data.dataset_name:
        raise RecipeError("key 'pretrain_on_task_text': needs a pretraining corpus of local files")
    _, _, task_data, _, _, _ = load_recipe(args.finetune_recipe, FINETUNE_ARGUMENTS, **args.finetune_overrides)
    # written every time: the same bytes for the same recipes, so the pretraining stage's data fingerprint holds
    splits, _ = load_classification_data(task_data)
    columns = [c for c in (task_data.text_column, task_data.text_pair_column) if c]
    texts = [" ".join(str(row[c]) for c in columns) for row in splits["train"]]
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


def run_pipeline(args: PipelineArguments) -> dict:
    """Run the stages and write summary.json, summary.md and loss_curves.png into `output_dir`."""
    from .api import finetune, pretrain
    from .lora import export_classifier

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = 4 if args.scratch_baseline else 3
    pre_dir, ft_dir, scratch_dir, model_dir = out / "pretrain", out / "finetune", out / "finetune-scratch", out / "model"

    pretrain_settings = {**args.pretrain_overrides, "output_dir": str(pre_dir)}
    if args.pretrain_on_task_text:
        pretrain_settings["train_file"] = _corpus_with_task_text(args, out / "task_text.jsonl")
    overwrite = args.overwrite_output_dir
    pre = _stage(1, total, "pretrain", pre_dir,
                 lambda **flags: pretrain(args.pretrain_recipe, **{**pretrain_settings, **flags}), overwrite)
    finetune_settings = {**args.finetune_overrides, "model_name_or_path": str(pre_dir)}
    ft = _stage(2, total, "fine-tune the pretrained model", ft_dir, lambda **flags: finetune(
        args.finetune_recipe, **{**finetune_settings, **flags}, output_dir=str(ft_dir)), overwrite)
    scratch = None
    if args.scratch_baseline:
        scratch = _stage(3, total, "fine-tune the same architecture from scratch", scratch_dir,
                         lambda **flags: finetune(args.finetune_recipe, **{**finetune_settings, **flags},
                                                  init_from="scratch", use_lora=False, output_dir=str(scratch_dir)),
                         overwrite)
    print(f"== [{total}/{total}] export and summary -> {model_dir}", flush=True)
    export_classifier(ft_dir, model_dir)

    summary = {
        "pretraining": {"tokens": pre.get("train_tokens"), "tokens_per_second": pre.get("train_tokens_per_second"),
                        "mfu": pre.get("mfu"), "eval_loss": pre.get("eval_loss"),
                        "perplexity": pre.get("perplexity"), "bits_per_byte": pre.get("bits_per_byte"),
                        "train_seconds": pre.get("train_runtime")},
        "finetuned_pretrained": {"test_accuracy": ft["test_accuracy"], "test_f1": ft["test_f1"],
                                 "train_seconds": ft.get("train_runtime")},
        "majority_class": {"test_accuracy": ft["test_majority_accuracy"]},
        "model_dir": str(model_dir),
    }
    if scratch is not None:
        summary["finetuned_scratch"] = {"test_accuracy": scratch["test_accuracy"], "test_f1": scratch["test_f1"],
                                        "train_seconds": scratch.get("train_runtime")}
        summary["pretraining_gain_accuracy_points"] = round(100 * (ft["test_accuracy"] - scratch["test_accuracy"]), 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_recipe(out / "pipeline.yaml", {  # written only now: it describes the stages that ran
        "pretrain_recipe": args.pretrain_recipe, "finetune_recipe": args.finetune_recipe,
        "output_dir": args.output_dir, "pretrain_overrides": args.pretrain_overrides,
        "finetune_overrides": args.finetune_overrides, "scratch_baseline": args.scratch_baseline,
        "pretrain_on_task_text": args.pretrain_on_task_text, "task_text_repeats": args.task_text_repeats,
    }, "# Resolved pipeline recipe of this run (lmrecipes pipeline)")
    table = summary_markdown(summary)
    (out / "summary.md").write_text(table)
    plot_loss_curves(pre_dir, {"pretrained": ft_dir, **({"scratch": scratch_dir} if scratch else {})},
                     out / "loss_curves.png")
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
        f"| held-out perplexity | {_fmt(pre['perplexity'], '.2f')} |",
        f"| held-out bits/byte | {_fmt(pre['bits_per_byte'], '.3f')} |", "",
        "| sentiment test split | accuracy | macro F1 |", "| --- | --- | --- |",
        f"| (a) pretrained, fine-tuned | {_fmt(summary['finetuned_pretrained']['test_accuracy'])} | "
        f"{_fmt(summary['finetuned_pretrained']['test_f1'])} |",
    ]
    if "finetuned_scratch" in summary:
        lines.append(f"| (b) same architecture from scratch | {_fmt(summary['finetuned_scratch']['test_accuracy'])} |"
                     f" {_fmt(summary['finetuned_scratch']['test_f1'])} |")
    lines.append(f"| (c) majority class | {_fmt(summary['majority_class']['test_accuracy'])} | - |")
    if "pretraining_gain_accuracy_points" in summary:
        lines += ["", f"What pretraining bought, (a) - (b): {summary['pretraining_gain_accuracy_points']:+.2f} "
                      "accuracy points."]
    return "\n".join(lines) + "\n"


def _loss_history(folder: Path):
    state = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    train = [(e["step"], e["loss"]) for e in state if "loss" in e]
    evaluation = [(e["step"], e["eval_loss"]) for e in state if "eval_loss" in e]
    return train, evaluation


def plot_loss_curves(pretrain_dir: Path, finetune_dirs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    train, evaluation = _loss_history(pretrain_dir)
    left.plot(*zip(*train), label="train") if train else None
    left.plot(*zip(*evaluation), "o-", label="held-out") if evaluation else None
    left.set(title="pretraining", xlabel="step", ylabel="loss (nats/token)")
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
