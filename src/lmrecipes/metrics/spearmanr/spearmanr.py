"""Spearman's rank correlation coefficient of scores. Shipped with lmrecipes so it loads offline."""

from lmrecipes.metrics import scores  # the module, not the base class: evaluate loads the first Metric class it finds


class SpearmanR(scores.Score):
    name = "spearmanr"
    formula = "Pearson's r of the ranks (ties: mean rank)"

    def value(self, predictions, references):
        return scores.pearson(scores.average_ranks(predictions), scores.average_ranks(references))
