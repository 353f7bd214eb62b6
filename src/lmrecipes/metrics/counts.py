"""Per-class precision / recall / F1 from confusion counts, shared by the shipped f1, precision and recall modules."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

# predictions and references as integer label ids: the input of every shipped metric module
LABEL_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    average (str): "macro" (default: unweighted mean over classes), "micro", "weighted", "binary" or None
        (one score per class).
    pos_label (int): the positive class for average="binary"; default 1.
    labels (list of int, optional): the classes to score; default every label seen.
Returns:
    the score (float, or list of float when average is None) under the metric's name.
"""


def _safe_divide(numerator, denominator):
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def averaged_scores(predictions, references, score: str, average: str | None = "macro", pos_label: int = 1,
                    labels=None):
    """`score` in {precision, recall, f1}; `average` as in scikit-learn (zero where a class has no support)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    classes = np.asarray(labels) if labels is not None else np.union1d(references, predictions)
    if average == "binary":
        classes = np.asarray([pos_label])
    true_pos = np.array([np.sum((predictions == c) & (references == c)) for c in classes])
    predicted = np.array([np.sum(predictions == c) for c in classes])
    actual = np.array([np.sum(references == c) for c in classes])
    if average == "micro":
        true_pos, predicted, actual = true_pos.sum(keepdims=True), predicted.sum(keepdims=True), actual.sum(keepdims=True)
    precision, recall = _safe_divide(true_pos, predicted), _safe_divide(true_pos, actual)
    values = {"precision": precision, "recall": recall,
              "f1": _safe_divide(2 * precision * recall, precision + recall)}[score]
    if average is None:
        return values.tolist()
    if average == "weighted":
        return float(np.average(values, weights=actual)) if actual.sum() else 0.0
    return float(values.mean()) if len(values) else 0.0


class AveragedScore(evaluate.Metric):
    """Base of the f1, precision and recall modules: `score` names the one a subclass computes."""

    score = ""
    formula = ""

    def _info(self):
        return evaluate.MetricInfo(description=f"{self.score} = {self.formula}, per class from confusion counts, "
                                   "then averaged.", citation="", inputs_description=_KWARGS, features=LABEL_FEATURES)

    def _compute(self, predictions, references, average="macro", pos_label=1, labels=None):
        return {self.score: averaged_scores(predictions, references, self.score, average, pos_label, labels)}
