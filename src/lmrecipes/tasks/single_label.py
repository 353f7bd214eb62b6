"""Single-label classification: one class per text (cross-entropy, optionally weighted per class)."""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from ..errors import RecipeError
from ..figures import new_figure, plot_counts
from ..metrics import load_metric
from .base import Task, check_split_labels, file_label_id, file_label_ids, label_key

logger = logging.getLogger("lmrecipes")

AVERAGED = ("f1", "precision", "recall")


class SingleLabelClassification(Task):
    problem_type: ClassVar[str] = "single_label_classification"
    metric_names: ClassVar[tuple[str, ...]] = (
        "loss", "accuracy", *AVERAGED, *(f"{name}_weighted" for name in AVERAGED))
    card_metrics = (("test_accuracy", "accuracy", "Accuracy"), ("test_f1", "f1", "Macro F1"))
    weighs_classes = True
    card_description = "a sequence classifier (labels: {labels})"

    def __init__(self, labels: list[str], column: str, class_label: bool = False, weights: list[float] | None = None,
                 imbalance: str | None = None, label_smoothing: float = 0.0):
        self.labels, self.column, self.class_label = labels, column, class_label
        self.weights, self.imbalance, self.label_smoothing = weights, imbalance, label_smoothing
        self.best_metric = ("f1", True) if imbalance else ("accuracy", True)
        self._ids = {name: i for i, name in enumerate(labels)}
        self._metrics = None

    @classmethod
    def from_data(cls, splits, data_args, finetune_args, label_smoothing: float = 0.0):
        column = data_args.label_column
        feature = splits["train"].features[column]
        class_label = hasattr(feature, "names")  # datasets.ClassLabel: already ids, names given
        if class_label:
            labels = list(feature.names)
        else:
            values = splits["train"][column]
            if values and isinstance(values[0], (list, dict)):
                raise RecipeError(f"key 'label_column': {column!r} holds lists: set problem_type: "
                                  "multi_label_classification for several labels per text")
            fraction = next((i for i, v in enumerate(values) if isinstance(v, float) and not v.is_integer()), None)
            if fraction is not None:
                raise RecipeError(f"key 'label_column': {column!r} holds numbers with a fraction ({values[fraction]} "
                                  f"in training row {fraction + 1}), which single-label classification would make "
                                  "classes of; for a score set problem_type: regression")
            labels = [label_key(v) for v in sorted(set(values))]
        if len(labels) < 2:
            raise RecipeError(f"key 'label_column': the training data has a single class "
                              f"({labels[0] if labels else '-'}); classification needs at least two")
        if not class_label:
            check_split_labels(splits, lambda split: {label_key(v) for v in set(split[column])} - set(labels),
                               "label_column")
        task = cls(labels, column, class_label, label_smoothing=label_smoothing)
        ids = np.asarray(task.targets({column: splits["train"][column]}))
        counts = np.bincount(ids, minlength=len(labels))
        share = counts.max() / counts.sum()
        if share > 0.6:
            task.imbalance = f"majority class {labels[int(counts.argmax())]} holds {share:.0%} of the training rows"
            task.best_metric = ("f1", True)
        task.weights = class_weight_values(finetune_args.class_weights, counts, labels)
        return task

    @classmethod
    def from_saved(cls, info):
        return cls(info["labels"], info.get("label_column", "label"))

    def targets(self, rows):
        return [v if self.class_label else self._ids[label_key(v)] for v in rows[self.column]]

    def strata(self, rows):
        return [label_key(v) for v in rows[self.column]]

    def element_losses(self, logits, targets):
        """Cross-entropy of each row, times its class weight (class_weights); label_smoothing_factor kept (a
        compute_loss_func replaces the Trainer's label smoother)."""
        import torch

        losses = torch.nn.functional.cross_entropy(logits, targets.long(), reduction="none",
                                                   label_smoothing=self.label_smoothing)
        if self.weights is None:
            return losses
        return losses * torch.tensor(self.weights, dtype=losses.dtype, device=losses.device)[targets.long()]

    def metrics(self, logits, targets, per_class: bool | None = None):
        """accuracy; F1, precision and recall macro-averaged (`f1`...), weighted by class frequency (`f1_weighted`)
        and per class (`f1_per_class`...: lists in the order of the labels); the confusion matrix. With more than
        PER_CLASS_LIMIT classes the per-class lists and the matrix are left out (1,200 classes made a 43 MB
        all_results.json): the test split's go to their own file (detailed_metrics)."""
        if self._metrics is None:
            self._metrics = {name: load_metric(name) for name in ("accuracy", *AVERAGED, "confusion_matrix")}
        predictions, references = np.argmax(logits, axis=-1), np.asarray(targets).astype(np.int64)
        result = self._metrics["accuracy"].compute(predictions=predictions, references=references)
        every_class = list(range(len(self.labels)))
        per_class = len(self.labels) <= PER_CLASS_LIMIT if per_class is None else per_class
        averages = (("macro", ""), ("weighted", "_weighted")) + (((None, "_per_class"),) if per_class else ())
        for name in AVERAGED:
            for average, suffix in averages:
                value = self._metrics[name].compute(  # averages over the classes present, as scikit-learn
                    predictions=predictions, references=references, average=average,
                    labels=every_class if average is None else None)[name]
                result[f"{name}{suffix}"] = np.asarray(value).tolist() if average is None else float(value)
        if per_class:
            result.update(self._metrics["confusion_matrix"].compute(predictions=predictions, references=references,
                                                                    num_labels=len(self.labels)))
        return result

    def detailed_metrics(self, logits, targets):
        """Above PER_CLASS_LIMIT classes: the per-class lists and the confusion matrix the results leave out."""
        if len(self.labels) <= PER_CLASS_LIMIT:
            return {}
        every = self.metrics(logits, targets, per_class=True)
        return {"labels": self.labels, **{key: value for key, value in every.items() if isinstance(value, list)}}

    def baseline(self, train_targets, test_targets):
        """Accuracy of always predicting the most frequent training label: what chance is on this test split."""
        majority = np.bincount(np.asarray(train_targets).astype(np.int64)).argmax()
        return {"test_majority_accuracy": float((np.asarray(test_targets) == majority).mean())}

    def saved(self):
        return {**super().saved(), "label_column": self.column}

    def predictions(self, logits):
        return np.argmax(logits, axis=-1).tolist()

    def test_figures(self, predictions, references):
        """confusion_matrix.png: the test rows of each (true, predicted) label."""
        count = len(self.labels)
        matrix = np.zeros((count, count), dtype=np.int64)
        np.add.at(matrix, (np.asarray(references, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
        size = min(3.5 + 0.3 * count, 16)
        figure, ax = new_figure(size + 0.5, size)
        plot_counts(ax, matrix, self.labels, self.labels)
        ax.set(xlabel="predicted label", ylabel="true label", title=f"{len(references):,} test rows")
        return {CONFUSION_MATRIX: figure}

    def outputs(self, logits):
        probabilities = _softmax(logits)
        best = probabilities.argmax(axis=-1)
        return [{"label": self.labels[i], "score": float(p[i])} for i, p in zip(best, probabilities)]

    def named(self, values):
        return [self.labels[int(i)] for i in values]

    def file_targets(self, values, places, column):
        ids = file_label_ids(self.labels)
        return [file_label_id(value, ids, self.labels, place, column) for value, place in zip(values, places)]

    def summary(self, test_metrics):
        return (f"test accuracy {test_metrics['test_accuracy']:.4f}, macro F1 {test_metrics['test_f1']:.4f} "
                f"(majority class {test_metrics['test_majority_accuracy']:.4f})")

    def notes(self):
        lines = []
        if self.weights is not None:
            lines.append(f"Class weights in the loss: {dict(zip(self.labels, [round(w, 4) for w in self.weights]))}")
        return lines


CONFUSION_MATRIX = "confusion_matrix.png"

# Classes up to which the results list per-class metrics and the confusion matrix (its size grows as the square).
PER_CLASS_LIMIT = 50


def _softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def class_weight_values(spec: list[str] | None, counts, labels: list[str]) -> list[float] | None:
    """The loss weight of each class from `class_weights` (None: unweighted); `counts`: training rows per class."""
    if spec is None or [w.lower() for w in spec] == ["none"]:
        return None
    if [w.lower() for w in spec] == ["balanced"]:
        total = int(np.sum(counts))
        return [float(total / (len(labels) * count)) if count else 0.0 for count in counts]
    if len(spec) != len(labels):
        raise RecipeError(f"key 'class_weights': {len(spec)} weights for {len(labels)} classes {labels}")
    return [float(w) for w in spec]
