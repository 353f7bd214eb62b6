"""The evaluate metric modules shipped in the package load offline and agree with hand-computed values."""

import pytest

from lmrecipes.metrics import load_metric

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


# multilabel: rows x labels (0/1). Per label (TP, predicted, true): 0 -> (2, 2, 2), 1 -> (1, 2, 1), 2 -> (0, 1, 1)
ROWS_PREDICTED, ROWS_TRUE = [[1, 0, 1], [0, 1, 0], [1, 1, 0]], [[1, 0, 0], [0, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("name, kwargs, expected", [
    ("accuracy", {}, 0.0),  # subset accuracy: no row has every label right
    ("f1", {"average": "micro"}, 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)),
    ("f1", {"average": None}, [1.0, 2 / 3, 0.0]),
    ("precision", {"average": "macro"}, (1 + 0.5 + 0) / 3),
    ("recall", {"average": "micro"}, 3 / 4),
])
def test_multilabel_configuration(name, kwargs, expected):
    metric = load_metric(name, "multilabel")
    value = metric.compute(predictions=ROWS_PREDICTED, references=ROWS_TRUE, **kwargs)[name]
    assert value == pytest.approx(expected)
    row_right = load_metric("accuracy", "multilabel").compute(predictions=[[1, 0], [0, 1]],
                                                              references=[[1, 0], [1, 1]])["accuracy"]
    assert row_right == 0.5


SCORES_PREDICTED, SCORES_TRUE = [1.0, 2.0, 2.0, 5.0], [1.5, 1.0, 3.0, 4.0]


@pytest.mark.parametrize("name, expected", [
    ("mse", (0.25 + 1 + 1 + 1) / 4),
    ("mae", (0.5 + 1 + 1 + 1) / 4),
    # Pearson: deviations (-1.5, -0.5, -0.5, 2.5) and (-0.875, -1.375, 0.625, 1.625)
    ("pearsonr", (1.3125 + 0.6875 - 0.3125 + 4.0625) / (9 ** 0.5 * 5.6875 ** 0.5)),
    # Spearman: ranks (1, 2.5, 2.5, 4) and (2, 1, 3, 4), Pearson of the ranks
    ("spearmanr", (1.5 * 0.5 + 0 + 0 + 1.5 * 1.5) / ((4.5 ** 0.5) * (5 ** 0.5))),
])
def test_regression_modules(name, expected):
    value = load_metric(name).compute(predictions=SCORES_PREDICTED, references=SCORES_TRUE)[name]
    assert value == pytest.approx(expected)
    assert load_metric(name).compute(predictions=[1.0, 2.0], references=[3.0, 3.0])[name] == pytest.approx(
        {"mse": 2.5, "mae": 1.5, "pearsonr": 0.0, "spearmanr": 0.0}[name])  # a constant side: r is 0, not NaN
