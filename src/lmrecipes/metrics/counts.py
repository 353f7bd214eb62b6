"""Per-class precision / recall / F1 from confusion counts, shared by the shipped f1, precision and recall modules."""

from __future__ import annotations

import numpy as np


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
