"""Pearson's correlation coefficient r of scores. Shipped with lmrecipes so it loads offline."""

from lmrecipes.metrics import scores  # the module, not the base class: evaluate loads the first Metric class it finds


class PearsonR(scores.Score):
    name = "pearsonr"
    formula = "cov(predictions, references) / (std(predictions) std(references)); 0 if either is constant"

    def value(self, predictions, references):
        return scores.pearson(predictions, references)
