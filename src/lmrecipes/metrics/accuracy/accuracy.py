"""Accuracy: the fraction of predictions equal to the references. Shipped with lmrecipes so it loads offline.
In the "multilabel" configuration a row counts as correct only when its whole 0/1 indicator row matches (subset
accuracy, exact match)."""

import evaluate
import numpy as np

from lmrecipes.metrics import counts  # the module, not a class: evaluate loads the first Metric class it finds

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions)."
_KWARGS = """
Args:
    predictions (list of int): predicted labels ("multilabel": list of 0/1 rows).
    references (list of int): true labels ("multilabel": list of 0/1 rows).
Returns:
    accuracy (float): in [0, 1].
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=counts.features_for(self.config_name),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        correct = predictions == references
        if correct.ndim == 2:
            correct = correct.all(axis=1)
        return {"accuracy": float(correct.mean()) if len(references) else 0.0}
