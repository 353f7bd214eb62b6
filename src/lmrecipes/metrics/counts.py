"""Per-class precision / recall / F1 from confusion counts, shared by the shipped f1, precision and recall modules.

Two configurations, as evaluate's own modules: the default takes one integer label per row; "multilabel" takes a
0/1 indicator row per example (one column per label), e.g. `evaluate.load(path, "multilabel")`.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

# predictions and references as integer label ids: the input of every shipped metric module
LABEL_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
# ... and 0/1 indicator rows (one column per label) in the "multilabel" configuration
MULTILABEL_FEATURES = datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                                         "references": datasets.Sequence(datasets.Value("int64"))})


def features_for(config_name: str):
    return MULTILABEL_FEATURES if config_name == "multilabel" else LABEL_FEATURES
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
    """`score` in {precision, recall, f1}; `average` as in scikit-learn (zero where a class has no support).
    Indicator rows (2-D predictions / references): every column is a class, scored as present (1) or not."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.ndim == 2:  # multilabel: column c holds "the example has label c"
        classes = np.asarray(labels) if labels is not None else np.arange(references.shape[1])
        said, true = predictions[:, classes] == 1, references[:, classes] == 1
        true_pos, predicted, actual = (said & true).sum(0), said.sum(0), true.sum(0)
    else:
        classes = np.asarray(labels) if labels is not None else np.union1d(references, predictions)
        if average == "binary":
            classes = np.asarray([pos_label])
        true_pos = np.array([np.sum((predictions == c) & (references == c)) for c in classes])
        predicted = np.array([np.sum(predictions == c) for c in classes])
        actual = np.array([np.sum(references == c) for c in classes])
    if average == "micro":
        true_pos, predicted, actual = (true_pos.sum(keepdims=True), predicted.sum(keepdims=True),
                                       actual.sum(keepdims=True))
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
                                   "then averaged.", citation="", inputs_description=_KWARGS,
                                   features=features_for(self.config_name))

    def _compute(self, predictions, references, average="macro", pos_label=1, labels=None):
        return {self.score: averaged_scores(predictions, references, self.score, average, pos_label, labels)}
