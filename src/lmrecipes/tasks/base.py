"""The interface every task implements, and what they share: a loss through the Trainer's compute_loss_func that
also serves long texts cut into windows (documents)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import RecipeError


def label_key(value) -> str:
    """A label's name: integral floats (csv columns with a gap are read as floats) are named as integers."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


class Task:
    """One problem type. Built from the training split (`from_data`) or from a saved model (`from_saved`)."""

    problem_type: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ()  # what `compute_metrics` reports (metric_for_best_model)
    best_metric: ClassVar[tuple[str, bool]] = ("loss", False)  # default (metric_for_best_model, greater_is_better)
    card_metrics: ClassVar[tuple[tuple[str, str, str], ...]] = ()  # (result key, metric type, name) for the card
    card_description: ClassVar[str] = ""  # what the model is, for the card: "{labels}" is replaced by the labels
    # the card's text-classification call on an example ({text}: a Python literal of a text of the run's data)
    card_call: ClassVar[str] = "classify({text})"
    # the card's scores from the mean logits of a long text's windows (long_text: chunk), per label
    card_scores: ClassVar[str] = "logits.softmax(-1)"
    scalar_labels: ClassVar[bool] = True  # one value per row in label_column, checked by rows.check_rows
    tunes: ClassVar[bool] = False  # has something to choose on the validation split after training (`tune`)
    weighs_classes: ClassVar[bool] = False  # reads class_weights

    labels: list[str]  # the names of the model's outputs (config.id2label)
    imbalance: str | None = None  # what makes the training labels imbalanced, if they are (single label)

    # ---- data
    @classmethod
    def from_data(cls, splits: dict, data_args, finetune_args) -> Task:
        """The task from the train / validation / test splits (label names, checks of every split)."""
        raise NotImplementedError

    @classmethod
    def from_saved(cls, info: dict) -> Task:
        raise NotImplementedError

    def label_columns(self, data_args) -> list[str]:
        """The columns the targets are read from."""
        return [data_args.label_column]

    def targets(self, rows: dict) -> list:
        """The training targets of a batch of rows (column name -> values)."""
        raise NotImplementedError

    def strata(self, rows: dict) -> list[str] | None:
        """A stratum per row for label-stratified sampling (max_train_samples), or None for a plain sample."""
        return None

    # ---- model
    def configure(self, config) -> None:
        config.num_labels = len(self.labels)
        config.id2label, config.label2id = dict(enumerate(self.labels)), {name: i for i, name in enumerate(self.labels)}
        config.problem_type = self.problem_type

    def element_losses(self, logits, targets):
        """The loss of each target element (summed, then divided by the step's element count)."""
        raise NotImplementedError

    # ---- metrics and outputs; logits and targets are numpy arrays, one row per document
    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict:
        raise NotImplementedError

    def tune(self, logits: np.ndarray, targets: np.ndarray) -> str | None:
        """Fit what is chosen on the validation split after training (a decision threshold); a log line or None."""
        return None

    def detailed_metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict:
        """Metrics too large for the results (e.g. per-class lists of many classes), written to their own file
        beside them, never uploaded; {} when the results hold everything."""
        return {}

    def baseline(self, train_targets: np.ndarray, test_targets: np.ndarray) -> dict:
        """What a predictor that ignores the text scores on the test split (test_* keys)."""
        return {}

    def refuse_label_smoothing(self, label_smoothing: float) -> None:
        if label_smoothing:
            raise RecipeError(f"key 'label_smoothing_factor': smooths the classes of single_label_classification; "
                              f"{self.problem_type} has none (set it to 0)")

    def saved(self) -> dict:
        """What labels.json records for prediction (from_saved reads it back)."""
        return {"problem_type": self.problem_type, "labels": self.labels}

    def predictions(self, logits: np.ndarray) -> list:
        """Per row, what test_predictions.json records as the prediction (comparable to the targets)."""
        raise NotImplementedError

    def test_figures(self, predictions: list, references: list) -> dict:
        """The task's figures of the test split, from its predictions and targets per row as test_predictions.json
        holds them: {file name: figure (figures.new_figure)}, shown in results.md; {} when it draws none. Their
        names are among run_folder.SAVED_NAMES (recorded as the run's)."""
        return {}

    def outputs(self, logits: np.ndarray) -> list[dict]:
        """Per row, what predict.py writes (label and score, labels above threshold, a score)."""
        raise NotImplementedError

    def named(self, values) -> list | None:
        """Per row, targets or `predictions` in the labels' names (test_predictions.json); None where the task's
        values are not labels (a score)."""
        return None

    def file_targets(self, values: list, places: list[str], column: str) -> list:
        """The targets of label values read from a file to score predictions against (predict.py --label_column),
        as `targets` gives them: labels by name as in training (or by id); `places` ("FILE line N") name the row
        of a value that is not a label in a one-line error."""
        raise NotImplementedError

    def summary(self, test_metrics: dict) -> str:
        """The end-of-run line's figures."""
        raise NotImplementedError

    def notes(self) -> list[str]:
        """Log lines about what the task read from the training data (e.g. class weights)."""
        return []


def logits_of(predictions) -> np.ndarray:
    """The logits of a Trainer prediction output (a tuple when the model returns more than logits)."""
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


class Documents:
    """Long texts cut into windows (long_text: chunk): every window of a document carries the document's number in
    `labels`, and this table maps numbers to the document's targets. The loss looks the targets up; evaluation
    averages the logits of a document's windows before scoring. Numbering the documents of all splits once makes
    this independent of the order in which the Trainer returns rows (length grouping, several processes).

    Hand-written: the Trainer passes only `labels` to compute_loss_func and compute_metrics, and nothing in
    transformers averages classification logits over windows."""

    def __init__(self, targets_by_split: dict[str, list]):
        """`targets_by_split`: split name -> the targets of its texts, in order; numbered across splits."""
        targets = [t for split in targets_by_split.values() for t in split]
        self.table = np.asarray(targets, dtype=np.float32 if isinstance(targets[0], (float, list)) else np.int64)
        self._on_device = {}  # the table as a tensor, per device (looked up every step)
        self.first, self.texts, start = {}, {}, 0
        for name, split in targets_by_split.items():
            self.first[name], self.texts[name] = start, len(split)
            start += len(split)

    def split_targets(self, name: str) -> np.ndarray:
        return self.table[self.first[name]:self.first[name] + self.texts[name]]

    def targets_for(self, numbers):
        import torch

        if numbers.device not in self._on_device:
            self._on_device[numbers.device] = torch.as_tensor(self.table, device=numbers.device)
        return self._on_device[numbers.device][numbers.long()]

    def average(self, logits: np.ndarray, numbers: np.ndarray):
        """(per-document mean logits, per-document targets), documents in the order of their numbers."""
        documents, means = mean_per_text(logits, numbers)
        return means.astype(np.float32), self.table[documents]


def mean_per_text(logits: np.ndarray, text_of_row) -> tuple[np.ndarray, np.ndarray]:
    """(the texts, in increasing order; the mean logits of each text's rows): a text's windows averaged. Shared by
    evaluation (Documents.average) and prediction (prediction.text_logits)."""
    text_of_row = np.asarray(text_of_row).astype(np.int64).reshape(-1)
    texts, where = np.unique(text_of_row, return_inverse=True)
    sums = np.zeros((len(texts), logits.shape[-1]), dtype=np.float64)
    np.add.at(sums, where, logits.reshape(len(text_of_row), -1))
    return texts, sums / np.bincount(where, minlength=len(texts))[:, None]


def task_loss(task: Task, documents: Documents | None = None):
    """The Trainer's compute_loss_func for `task`: the sum of element losses divided by the step's element count.
    The Trainer counts `labels` (num_items_in_batch: over gradient accumulation and processes); a window's label is
    its document's number, one per row, so the count is scaled to the targets' elements."""

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        targets = documents.targets_for(labels) if documents is not None else labels
        elements = task.element_losses(logits.float(), targets)
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        scale = targets.numel() / max(labels.numel(), 1)
        return elements.sum() / (count.to(elements.device) * scale if hasattr(count, "to") else count * scale)

    return loss


def metrics_function(task: Task, documents: Documents | None = None):
    """The Trainer's compute_metrics for `task` (per document when texts are cut into windows)."""

    def compute(eval_prediction):
        logits, targets = logits_of(eval_prediction.predictions), np.asarray(eval_prediction.label_ids)
        if documents is not None:
            logits, targets = documents.average(logits, targets)
        return task.metrics(logits, targets)

    return compute


def file_label_ids(labels: list[str]) -> dict[str, int]:
    """Label -> id for labels read from a file: the names as in training, and the ids ("3" or 3) where no name is
    a number (where one is, "3" is a name)."""
    ids = {name: i for i, name in enumerate(labels)}
    if not any(name.lstrip("-").isdigit() for name in labels):
        ids.update({str(i): i for i in range(len(labels))})
    return ids


def file_label_id(value, ids: dict[str, int], labels: list[str], place: str, column: str) -> int:
    """The id of a label read from a file (`ids`: file_label_ids); a value that is no label is a one-line error
    naming it and the model's labels."""
    found = ids.get(label_key(value))
    if found is None and isinstance(value, str) and _is_number(value):  # a csv's "2.0": training read the number
        found = ids.get(label_key(float(value)))
    if found is None:
        shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
        raise RecipeError(f"{place}: label {value!r} in column {column!r} (--label_column) is not one of the "
                          f"model's labels: {shown}")
    return found


def check_split_labels(splits: dict, unknown, what: str) -> None:
    """`unknown(split) -> set` of labels of a split never seen in training: an error naming them."""
    for split in ("validation", "test"):
        unseen = sorted(unknown(splits[split])) if split in splits else []  # test_fraction 0: no test split
        if unseen:
            shown = ", ".join(map(str, unseen[:5])) + (f" and {len(unseen) - 5} more" if len(unseen) > 5 else "")
            numbers = all(_is_number(label) for label in unseen)
            raise RecipeError(f"key '{what}': label(s) {shown} in the {split} split never occur in training" +
                              ("; for a number per text set problem_type: regression" if numbers else ""))


def _is_number(label) -> bool:
    try:
        float(label)
    except (TypeError, ValueError):
        return False
    return True
