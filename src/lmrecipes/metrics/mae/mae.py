"""Mean absolute error of scores. Shipped with lmrecipes so it loads offline."""

from lmrecipes.metrics import scores  # the module, not the base class: evaluate loads the first Metric class it finds


class MeanAbsoluteError(scores.Score):
    name = "mae"
    formula = "mean(|prediction - reference|)"

    def value(self, predictions, references):
        return abs(predictions - references).mean() if len(references) else 0.0
