"""Confusion matrix: rows are true labels, columns predicted labels. Shipped with lmrecipes so it loads offline."""

import evaluate
import numpy as np

from lmrecipes.metrics import counts  # the module, not a class: evaluate loads the first Metric class it finds

_DESCRIPTION = "Counts of (true label, predicted label) pairs as a num_labels x num_labels matrix."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    num_labels (int, optional): matrix size; default 1 + the largest label seen.
Returns:
    confusion_matrix (list of list of int): entry [i][j] counts references i predicted as j.
"""


class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=counts.LABEL_FEATURES,
        )

    def _compute(self, predictions, references, num_labels=None):
        predictions, references = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
        size = num_labels or int(max(predictions.max(initial=-1), references.max(initial=-1)) + 1)
        matrix = np.zeros((size, size), dtype=np.int64)
        np.add.at(matrix, (references, predictions), 1)
        return {"confusion_matrix": matrix.tolist()}
