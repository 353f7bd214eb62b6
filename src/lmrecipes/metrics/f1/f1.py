"""F1 per class and averaged (macro, micro, weighted, or binary). Shipped with lmrecipes so it loads offline."""

import datasets
import evaluate

from lmrecipes.metrics.counts import averaged_scores

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall), computed per class from the confusion counts, then averaged."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    average (str): "macro" (default: unweighted mean over classes), "micro", "weighted", "binary" or None
        (one score per class).
    pos_label (int): the positive class for average="binary"; default 1.
    labels (list of int, optional): the classes to score; default every label seen.
Returns:
    f1 (float, or list of float when average is None).
"""


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="macro", pos_label=1, labels=None):
        return {"f1": averaged_scores(predictions, references, "f1", average, pos_label, labels)}
