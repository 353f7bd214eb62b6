"""What a run reports besides the Trainer's own output: numbers only to the Trainer's loggers (report_to:
TensorBoard...), and, when it finishes, `results.md` in its folder (what was trained on what, the final metrics on
validation and test, time and speed) with `loss_curve.png` and the task's own figures. Hand-written: the Trainer
saves its results as JSON only, and its TensorBoard callback warns about every list-valued metric (per-class
scores, the confusion matrix) at every evaluation instead of leaving it out."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from .figures import new_figure, plot_losses, save_figure
from .ownership import write_text_atomically

logger = logging.getLogger("lmrecipes")

RESULTS_FILE = "results.md"
LOSS_CURVE = "loss_curve.png"


def _loggable(value) -> bool:
    return isinstance(value, (int, float, str))


class _HideLists(TrainerCallback):
    """Just before the loggers: takes the values they cannot log (lists) out of each log."""

    def __init__(self):
        self.hidden = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.hidden = {key: logs.pop(key) for key in [key for key, value in logs.items() if not _loggable(value)]}


class _ShowLists(TrainerCallback):
    """Just after the loggers: puts the values back (the same dict is an evaluation's result, which
    eval_results.json and all_results.json keep whole)."""

    def __init__(self, hide: _HideLists):
        self.hide = hide

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs.update(self.hide.hidden)
        self.hide.hidden = {}


def log_scalars_only(trainer) -> None:
    """The Trainer's loggers (report_to) get numbers and strings only: the lists of an evaluation are taken out of
    its log before them and put back after them (the console and the results still show them)."""
    from transformers.integrations import get_reporting_integration_callbacks

    loggers = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
    callbacks = trainer.callback_handler.callbacks
    where = [i for i, callback in enumerate(callbacks) if loggers and isinstance(callback, loggers)]
    if where:
        hide = _HideLists()
        callbacks.insert(where[-1] + 1, _ShowLists(hide))
        callbacks.insert(where[0], hide)


@dataclass
class RunReport:
    """What results.md says about a run besides its metrics, time and speed: a title, facts in order ({"model":
    ..., "data": ...}), the label of its loss, its own figures ({file name: figures.new_figure figure}), and the
    result keys without an eval_ prefix that are validation metrics (an objective's perplexity...)."""

    title: str
    facts: dict[str, str]
    loss_label: str = "loss"
    figures: dict = field(default_factory=dict)
    validation_keys: tuple[str, ...] = ()


def split_sources(data_args, rows: dict[str, str]) -> str:
    """'train: FILE (N rows); validation: held out from train (M rows)': each split's source as the recipe names it
    (its files, or dataset_name), with `rows` (split -> how much of it the run used, in words)."""
    files = {"train": data_args.train_file, "validation": data_args.validation_file,
             "test": getattr(data_args, "test_file", None)}
    parts = []
    for split, count in rows.items():
        named = files.get(split) or []
        if named:
            source = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        elif data_args.dataset_name:
            source = data_args.dataset_name + (f" ({data_args.dataset_config_name})"
                                               if data_args.dataset_config_name else "")
        else:
            source = "held out from train"
        parts.append(f"{split}: {source} ({count})")
    return "; ".join(parts)


def _value(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


# What a split's results hold besides its metrics (how long evaluating took, bookkeeping)
_NOT_METRICS = {"runtime", "samples_per_second", "steps_per_second", "epoch", "num_input_tokens_seen", "samples"}


def metrics_table(results: dict) -> list[str]:
    """A markdown table of the numbers of the validation (eval_*) and test (test_*) results, a row per metric (the
    loss first), a column per split that has results; lists (per-class scores) are in all_results.json."""
    columns = [(prefix, name) for prefix, name in (("eval_", "validation"), ("test_", "test"))
               if any(key.startswith(prefix) for key in results)]
    names = []
    for key, value in results.items():
        for prefix, _ in columns:
            metric = key.removeprefix(prefix)
            if key.startswith(prefix) and metric not in _NOT_METRICS and metric not in names and \
                    isinstance(value, (int, float)) and not isinstance(value, bool):
                names.append(metric)
    names.sort(key=lambda name: name != "loss")
    if not names:
        return []
    lines = ["| metric | " + " | ".join(name for _, name in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for metric in names:
        cells = [_value(results[prefix + metric]) if prefix + metric in results else "-" for prefix, _ in columns]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def training_line(results: dict, log_history: list[dict]) -> str:
    """Steps, epochs, time, tokens and speed of the training, as the train results state them."""
    steps = max((entry.get("step", 0) for entry in log_history), default=0)
    parts = [f"{steps:,} steps"]
    if results.get("epoch") is not None:
        parts[0] += f" ({results['epoch']:.3g} epoch{'' if results['epoch'] == 1 else 's'})"
    if results.get("train_runtime") is not None:
        parts.append(f"in {_duration(results['train_runtime'])}")
    if results.get("train_tokens") is not None:
        parts.append(f"{results['train_tokens']:,} tokens")
    if results.get("train_tokens_per_second") is not None:
        speed = f"{results['train_tokens_per_second']:,.0f} tokens/s"
        if results.get("mfu") is not None:
            speed += f" (MFU {100 * results['mfu']:.1f}%)"
        parts.append(speed)
    if results.get("hardware"):
        parts.append(f"on {results['hardware']}")
    return ", ".join(parts)


def results_markdown(report: RunReport, results: dict, log_history: list[dict], out: Path) -> str:
    lines = [f"# {report.title}: {out.resolve().name}", ""]
    lines += [f"- **{name}**: {text}" for name, text in report.facts.items()]
    lines += [f"- **training**: {training_line(results, log_history)}", ""]
    table = metrics_table({**results, **{f"eval_{key}": results[key] for key in report.validation_keys
                                         if key in results and not key.startswith("eval_")}})
    lines += [*table, "", "All results (per-class scores too, where there are classes): all_results.json.", ""] \
        if table else []
    lines += [f"![loss curve]({LOSS_CURVE})"]
    lines += [f"![{Path(name).stem.replace('_', ' ')}]({name})" for name in report.figures]
    return "\n".join(lines) + "\n"


def loss_curve_figure(log_history: list[dict], title: str, loss_label: str):
    figure, ax = new_figure()
    if plot_losses(ax, log_history):
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no loss logged (logging_steps past the run's end, no evaluation)", ha="center",
                transform=ax.transAxes)
    ax.set(title=title, xlabel="step", ylabel=loss_label)
    return figure


def write_run_report(out: Path, report: RunReport, results: dict, log_history: list[dict]) -> None:
    """results.md, loss_curve.png and the report's figures in `out`, each written atomically (results.md last: it
    shows the figures). A figure that cannot be drawn is a warning, never the end of a run that has finished."""
    try:
        save_figure(loss_curve_figure(log_history, report.title, report.loss_label), out / LOSS_CURVE)
        for name, figure in report.figures.items():
            save_figure(figure, out / name)
    except Exception as err:  # noqa: BLE001 - matplotlib's errors have no common type; the run's results stand
        logger.warning("Could not draw the run's figures (%s: %s); its results are in all_results.json",
                       type(err).__name__, err)
    write_text_atomically(out / RESULTS_FILE, results_markdown(report, results, log_history, out))
