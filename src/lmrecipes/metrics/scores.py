"""Shared base of the shipped regression metrics (mse, mae, pearsonr, spearmanr): real-valued predictions and
references, one per row."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

SCORE_FEATURES = datasets.Features({"predictions": datasets.Value("float64"),
                                    "references": datasets.Value("float64")})
_KWARGS = """
Args:
    predictions (list of float): predicted scores.
    references (list of float): true scores.
Returns:
    the value (float) under the metric's name.
"""


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span (what Spearman's coefficient correlates)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def pearson(x, y) -> float:
    """Pearson's r; 0 when either side is constant (undefined there)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


class Score(evaluate.Metric):
    """Base of the regression modules: `name` is what a subclass returns, `value(predictions, references)`."""

    name = ""
    formula = ""

    def _info(self):
        return evaluate.MetricInfo(description=f"{self.name} = {self.formula}", citation="",
                                   inputs_description=_KWARGS, features=SCORE_FEATURES)

    def _compute(self, predictions, references):
        return {self.name: float(self.value(np.asarray(predictions, dtype=float),
                                            np.asarray(references, dtype=float)))}
