"""Multi-label classification: any number of labels per text (one sigmoid per label, binary cross-entropy), with
a decision threshold tuned on the validation split and saved with the model."""

from __future__ import annotations

import itertools
import json
from typing import ClassVar

import numpy as np

from ..errors import RecipeError
from ..figures import new_figure, plot_counts
from ..metrics import load_metric
from .base import Task, check_split_labels, file_label_id, file_label_ids, label_key
from .single_label import AVERAGED, CONFUSION_MATRIX, PER_CLASS_LIMIT

THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)  # searched on the validation split after training


class MultiLabelClassification(Task):
    problem_type: ClassVar[str] = "multi_label_classification"
    metric_names: ClassVar[tuple[str, ...]] = (
        "loss", "subset_accuracy", *(f"{name}_micro" for name in AVERAGED), *AVERAGED)
    best_metric = ("f1_micro", True)
    card_metrics = (("test_f1_micro", "f1", "Micro F1"), ("test_f1", "f1", "Macro F1"),
                    ("test_subset_accuracy", "accuracy", "Subset accuracy"))
    card_description = "a multi-label sequence classifier (labels: {labels}; threshold in labels.json)"
    card_call = "classify({text}, top_k=None)"
    card_scores = "logits.sigmoid()"  # a label applies at or above the threshold in labels.json

    scalar_labels = False  # a row's labels are a list (or several columns): checked here, not by rows.check_rows
    tunes = True  # the decision threshold

    def __init__(self, labels: list[str], columns: list[str], column_per_label: bool, threshold: float = 0.5,
                 label_ids: bool = False):
        self.labels, self.columns, self.column_per_label, self.threshold = labels, columns, column_per_label, threshold
        self.label_ids = label_ids  # the column holds ids of named classes (a list of datasets.ClassLabel)
        self._metrics = None

    # ---- data: a list-valued column (["action", "comedy"]) or one 0/1 column per label (label_columns)
    @classmethod
    def from_data(cls, splits, data_args, finetune_args, label_smoothing: float = 0.0):
        columns = data_args.label_columns or [data_args.label_column]
        for split, dataset in splits.items():
            for column in columns:
                _check_column(dataset, column, split, listed=not data_args.label_columns)
        named = getattr(splits["train"].features[columns[0]], "feature", None)
        if data_args.label_columns:
            labels = list(data_args.label_columns)
        elif hasattr(named, "names"):  # e.g. a Hub dataset's Sequence(ClassLabel): its names, in its order
            labels = list(named.names)
        else:
            values = {v for row in splits["train"][columns[0]] for v in row}  # integers sorted as numbers
            labels = [label_key(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]
            check_split_labels(splits, lambda split: {label_key(v) for row in split[columns[0]] for v in row}
                               - set(labels), "label_column")
        if len(labels) < 2:
            raise RecipeError(f"key 'label_column': the training data names {len(labels)} label(s); multi-label "
                              "classification needs at least two")
        task = cls(labels, columns, column_per_label=bool(data_args.label_columns), label_ids=hasattr(named, "names")
                   and not data_args.label_columns)
        task.refuse_label_smoothing(label_smoothing)
        return task

    @classmethod
    def from_saved(cls, info):
        return cls(info["labels"], info["label_columns"], info["column_per_label"], info["threshold"])

    def label_columns(self, data_args):
        return self.columns

    def targets(self, rows):
        if self.column_per_label:
            return [[float(v) for v in values] for values in zip(*(rows[c] for c in self.columns))]
        index = {name: i for i, name in enumerate(self.labels)}
        out = []
        for row in rows[self.columns[0]]:
            target = [0.0] * len(self.labels)
            for value in row:
                target[value if self.label_ids else index[label_key(value)]] = 1.0
            out.append(target)
        return out

    def strata(self, rows):
        return ["|".join(str(int(v)) for v in target) for target in self.targets(rows)]

    # ---- model
    def element_losses(self, logits, targets):
        import torch

        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")

    # ---- metrics
    def decide(self, logits, threshold: float | None = None) -> np.ndarray:
        """0/1 per label: probability (sigmoid) at or above the threshold (default: the task's)."""
        return (_sigmoid(logits) >= (self.threshold if threshold is None else threshold)).astype(np.int64)

    def metrics(self, logits, targets, threshold: float | None = None):
        """Subset accuracy (every label of a row right), F1 / precision / recall micro-averaged (over every
        (row, label) decision) and macro-averaged (over labels), F1 per label; at the current threshold."""
        if self._metrics is None:
            self._metrics = {name: load_metric(name, "multilabel") for name in ("accuracy", *AVERAGED)}
        threshold = self.threshold if threshold is None else threshold
        predictions = self.decide(logits, threshold).tolist()
        references = np.asarray(targets).round().astype(np.int64).tolist()
        result = {"subset_accuracy": self._metrics["accuracy"].compute(
            predictions=predictions, references=references)["accuracy"]}
        every_label = list(range(len(self.labels)))
        for name in AVERAGED:
            for average, suffix in (("micro", "_micro"), ("macro", ""), (None, "_per_label")):
                value = self._metrics[name].compute(predictions=predictions, references=references, average=average,
                                                    labels=every_label)[name]
                result[f"{name}{suffix}"] = np.asarray(value).tolist() if average is None else float(value)
        result["threshold"] = float(threshold)
        return result

    def tune(self, logits, targets):
        """The threshold with the best micro F1 on the validation split (ties: the one nearest 0.5)."""
        scores = [(self.metrics(logits, targets, t)["f1_micro"], -abs(t - 0.5), t) for t in THRESHOLDS]
        best, _, threshold = max(scores)
        self.threshold = float(threshold)
        return f"Decision threshold {self.threshold:.2f} (micro F1 {best:.4f} on the validation split; 0.50 gave " \
               f"{dict((t, s) for s, _, t in scores)[0.5]:.4f})"

    def baseline(self, train_targets, test_targets):
        """Subset accuracy of always predicting the most frequent training label set."""
        sets, counts = np.unique(np.asarray(train_targets).round(), axis=0, return_counts=True)
        common = sets[counts.argmax()]
        return {"test_majority_subset_accuracy":
                float((np.asarray(test_targets).round() == common).all(axis=1).mean())}

    def saved(self):
        return {**super().saved(), "label_columns": self.columns, "column_per_label": self.column_per_label,
                "threshold": self.threshold}

    def predictions(self, logits):
        return self.decide(logits).tolist()

    def test_figures(self, predictions, references):
        """confusion_matrix.png: per label, the test rows by whether they have it and whether it was predicted (up
        to PER_CLASS_LIMIT labels)."""
        count = len(self.labels)
        if count > PER_CLASS_LIMIT:
            return {}
        predicted, true = np.asarray(predictions).round(), np.asarray(references).round()
        columns = min(count, 5)
        figure, axes = new_figure(2.6 * columns, 2.6 * -(-count // columns), -(-count // columns), columns)
        for label, ax in itertools.zip_longest(range(count), np.ravel(axes)):
            if label is None:
                ax.axis("off")
                continue
            matrix = [[int(((true[:, label] == t) & (predicted[:, label] == p)).sum()) for p in (0, 1)]
                      for t in (0, 1)]
            plot_counts(ax, matrix, ["no", "yes"], ["no", "yes"])
            ax.set(title=self.labels[label], xlabel="predicted", ylabel="true")
        figure.suptitle(f"{len(references):,} test rows, threshold {self.threshold:.2f}")
        return {CONFUSION_MATRIX: figure}

    def outputs(self, logits):
        probabilities = _sigmoid(logits)
        return [{"labels": [name for name, p in zip(self.labels, row) if p >= self.threshold],
                 "scores": {name: round(float(p), 6) for name, p in zip(self.labels, row)}}
                for row in probabilities]

    def named(self, values):
        return [[name for name, v in zip(self.labels, row) if v >= 0.5] for row in values]

    def file_targets(self, values, places, column):
        """A row's labels: a list (jsonl, json), or in a csv cell a JSON list (as predict.py writes label sets) or
        one label. A model trained on one 0/1 column per label is scored against a list-valued column only (its
        0/1 values would read as label ids)."""
        if self.column_per_label:
            raise RecipeError(f"--label_column: this model learnt from one 0/1 column per label "
                              f"({', '.join(self.columns)}); score it against a column holding each row's list of "
                              'labels, e.g. ["a", "b"]')
        ids, out = file_label_ids(self.labels), []
        for value, place in zip(values, places):
            if isinstance(value, str) and value.lstrip().startswith("["):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise RecipeError(f"{place}: column {column!r} (--label_column) holds {value[:40]!r}, not a "
                                      'JSON list of labels such as ["action", "comedy"]') from None
            target = [0.0] * len(self.labels)
            for label in value if isinstance(value, list) else [value]:
                target[file_label_id(label, ids, self.labels, place, column)] = 1.0
            out.append(target)
        return out

    def summary(self, test_metrics):
        return (f"test micro F1 {test_metrics['test_f1_micro']:.4f}, macro F1 {test_metrics['test_f1']:.4f}, subset "
                f"accuracy {test_metrics['test_subset_accuracy']:.4f} (most frequent label set "
                f"{test_metrics['test_majority_subset_accuracy']:.4f}) at threshold {self.threshold:.2f}")


def _sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def _check_column(dataset, column: str, split: str, listed: bool) -> None:
    """Every row of a list-valued label column holds a list of labels (strings or integers); every row of a 0/1
    column holds 0 or 1 (or a boolean)."""
    for row, value in enumerate(dataset[column]):
        if listed:
            good = isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                   and v != "" for v in value)
            expected = "a list of labels (strings or integers), e.g. [\"action\", \"comedy\"]"
        else:
            good = isinstance(value, (bool, int, float)) and value in (0, 1)
            expected = "0 or 1"
        if not good:
            key = "label_column" if listed else "label_columns"
            raise RecipeError(f"key '{key}': row {row + 1} of the {split} split holds {value!r} in {column!r}, not "
                              f"{expected}")
