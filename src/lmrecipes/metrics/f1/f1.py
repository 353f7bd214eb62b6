"""F1 per class and averaged (macro, micro, weighted, binary). Shipped with lmrecipes so it loads offline."""

from lmrecipes.metrics import counts  # the module, not the base class: evaluate loads the first Metric class it finds


class F1(counts.AveragedScore):
    score = "f1"
    formula = "2 * precision * recall / (precision + recall)"
