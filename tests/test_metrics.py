"""The evaluate metric modules shipped in the package load offline and agree with hand-computed values."""

import pytest

from lmrecipes.finetuning import load_metric

PREDICTIONS, REFERENCES = [0, 1, 1, 0, 2], [0, 1, 0, 0, 2]
# per class (P, R): 0 -> (2/2, 2/3), 1 -> (1/2, 1/1), 2 -> (1/1, 1/1)


@pytest.mark.parametrize("name, kwargs, expected", [
    ("accuracy", {}, 0.8),
    ("precision", {"average": "macro"}, (1 + 0.5 + 1) / 3),
    ("recall", {"average": "macro"}, (2 / 3 + 1 + 1) / 3),
    ("f1", {"average": "macro"}, (0.8 + 2 / 3 + 1) / 3),
    ("f1", {"average": "micro"}, 0.8),
    ("f1", {"average": None}, [0.8, 2 / 3, 1.0]),
    ("confusion_matrix", {"num_labels": 3}, [[2, 1, 0], [0, 1, 0], [0, 0, 1]]),
])
def test_metric_modules(name, kwargs, expected):
    value = load_metric(name).compute(predictions=PREDICTIONS, references=REFERENCES, **kwargs)[name]
    assert value == expected if name == "confusion_matrix" else value == pytest.approx(expected)
