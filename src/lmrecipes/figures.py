"""Figures, drawn headless: matplotlib is imported only when a figure is drawn, each figure is a
`matplotlib.figure.Figure` of its own on the Agg canvas (no pyplot: no backend switched, nothing shown or left open
in a notebook), saved as a PNG whole or not at all. Also what several figures draw: the training and evaluation
losses of a Trainer log history (a run's loss_curve.png, the pipeline's loss_curves.png) and a labelled matrix of
counts (confusion matrices)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from .ownership import write_bytes_atomically


def new_figure(width: float = 6.0, height: float = 4.0, rows: int = 1, columns: int = 1):
    """(figure, axes) as pyplot.subplots returns them, without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns)


def save_figure(figure, path: Path, dpi: int = 100) -> None:
    """The figure as a PNG at `path`, laid out tight, written atomically (ownership.write_bytes_atomically)."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes_atomically(Path(path), buffer.getvalue())


def read_log_history(folder: Path) -> list[dict]:
    """The Trainer's log history a run folder's trainer_state.json holds."""
    return json.loads((Path(folder) / "trainer_state.json").read_text())["log_history"]


def loss_points(log_history: list[dict]) -> tuple[list, list]:
    """([(step, training loss)], [(step, evaluation loss)]) of a Trainer log history."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    return train, evaluation


def plot_losses(ax, log_history: list[dict], eval_name: str = "validation", prefix: str = "",
                eval_style: str = "o-") -> bool:
    """The training loss (a line) and the evaluation loss (points, `eval_style`) against steps on `ax`, labelled
    `prefix` + "train" / `eval_name`; False when the history holds neither."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps
    train, evaluation = loss_points(log_history)
    if train:
        ax.plot(*zip(*train), label=f"{prefix}train")
    if evaluation:
        ax.plot(*zip(*evaluation), eval_style, label=f"{prefix}{eval_name}")
    return bool(train or evaluation)


def plot_counts(ax, counts, row_labels: list[str], column_labels: list[str], annotate_up_to: int = 400) -> None:
    """A matrix of counts as shades (darker: more), each cell's count written in it while the matrix has at most
    `annotate_up_to` cells, and the rows' and columns' labels while there are at most 50 of them."""
    import numpy as np

    counts = np.asarray(counts)
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    if counts.size <= annotate_up_to:
        middle = counts.max() / 2
        for (row, column), value in np.ndenumerate(counts):
            ax.text(column, row, f"{value:,}", ha="center", va="center", fontsize=8,
                    color="white" if value > middle else "black")
    if len(row_labels) <= 50:
        ax.set_yticks(range(len(row_labels)), row_labels)
    if len(column_labels) <= 50:
        ax.set_xticks(range(len(column_labels)), column_labels, rotation=45 if len(column_labels) > 6 else 0,
                      ha="right" if len(column_labels) > 6 else "center")
