"""Regression: a real-valued score per text (one output, mean squared error)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..errors import RecipeError
from ..figures import new_figure
from ..metrics import load_metric
from .base import Task

SCORES = ("mse", "mae", "pearsonr", "spearmanr")
PREDICTED_VS_TRUE = "predicted_vs_true.png"


class Regression(Task):
    problem_type: ClassVar[str] = "regression"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", *SCORES)
    best_metric = ("mse", False)
    card_metrics = (("test_pearsonr", "pearsonr", "Pearson r"), ("test_spearmanr", "spearmanr", "Spearman r"),
                    ("test_mse", "mse", "MSE"), ("test_mae", "mae", "MAE"))
    card_description = "a text regression model (predicts {labels})"
    card_call = 'classify({text}, function_to_apply="none")'
    card_scores = "logits"

    def __init__(self, column: str):
        self.column, self.labels = column, [column]
        self._metrics = None

    @classmethod
    def from_data(cls, splits, data_args, finetune_args, label_smoothing: float = 0.0):
        column = data_args.label_column
        for split, dataset in splits.items():
            for row, value in enumerate(dataset[column]):
                # integers are fine (the Trainer casts them to float: transformers issue 27707); strings, booleans,
                # NaN and inf are not
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise RecipeError(f"key 'label_column': row {row + 1} of the {split} split holds {value!r} in "
                                      f"{column!r}, not a number (problem_type: regression)")
                if value == -100:  # the Trainer counts labels equal to -100 as "no label" (num_items_in_batch)
                    raise RecipeError(f"key 'label_column': row {row + 1} of the {split} split holds -100, which "
                                      "transformers reads as 'no label'; shift or rescale the scores")
        task = cls(column)
        task.refuse_label_smoothing(label_smoothing)
        return task

    @classmethod
    def from_saved(cls, info):
        return cls(info["labels"][0])

    def targets(self, rows):
        return [float(v) for v in rows[self.column]]

    def element_losses(self, logits, targets):
        return (logits.squeeze(-1) - targets.float()) ** 2

    def metrics(self, logits, targets):
        """Mean squared and absolute error, Pearson's and Spearman's correlation of predicted and true scores."""
        if self._metrics is None:
            self._metrics = {name: load_metric(name) for name in SCORES}
        predictions, references = np.asarray(logits).reshape(-1), np.asarray(targets).reshape(-1)
        result = {}
        for name in SCORES:
            result.update(self._metrics[name].compute(predictions=predictions, references=references))
        return result

    def baseline(self, train_targets, test_targets):
        """Mean squared error of always predicting the training mean."""
        mean = float(np.mean(train_targets))
        return {"test_mean_predictor_mse": float(np.mean((np.asarray(test_targets) - mean) ** 2))}

    def predictions(self, logits):
        return np.asarray(logits).reshape(-1).tolist()

    def test_figures(self, predictions, references):
        """predicted_vs_true.png: each test row's predicted score against its true one."""
        figure, ax = new_figure(5, 5)
        ax.scatter(references, predictions, s=10, alpha=0.5)
        both = np.concatenate([np.asarray(references, dtype=float), np.asarray(predictions, dtype=float)])
        low, high = float(both.min()), float(both.max())
        ax.plot([low, high], [low, high], "--", color="gray", label="predicted = true")
        ax.set(xlabel=f"true {self.column}", ylabel=f"predicted {self.column}", title=f"{len(references):,} test rows")
        ax.legend()
        return {PREDICTED_VS_TRUE: figure}

    def outputs(self, logits):
        return [{"score": float(v)} for v in np.asarray(logits).reshape(-1)]

    def file_targets(self, values, places, column):
        out = []
        for value, place in zip(values, places):
            try:
                number = None if isinstance(value, bool) else float(value)
            except (TypeError, ValueError):
                number = None
            if number is None or not math.isfinite(number):
                raise RecipeError(f"{place}: column {column!r} (--label_column) holds {value!r}, not a number "
                                  "(the model predicts scores)")
            out.append(number)
        return out

    def summary(self, test_metrics):
        return (f"test Pearson r {test_metrics['test_pearsonr']:.4f}, Spearman r {test_metrics['test_spearmanr']:.4f}, "
                f"MSE {test_metrics['test_mse']:.4f} (predicting the training mean: "
                f"{test_metrics['test_mean_predictor_mse']:.4f})")
