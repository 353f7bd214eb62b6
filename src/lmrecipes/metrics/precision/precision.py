"""Precision per class and averaged (macro, micro, weighted, binary). Shipped with lmrecipes so it loads offline."""

from lmrecipes.metrics import counts  # the module, not the base class: evaluate loads the first Metric class it finds


class Precision(counts.AveragedScore):
    score = "precision"
    formula = "true positives / (true positives + false positives)"
