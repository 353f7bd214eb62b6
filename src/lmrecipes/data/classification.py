"""Classification data: train / validation / test splits of texts (or text pairs) and labels, checked, held out
deterministically where not given, read by the task (tasks/), then tokenized (truncated, or long texts cut into
windows) with the task's targets as `labels`."""

from __future__ import annotations

import logging

from ..arguments import ClassificationDataArguments, FinetuneArguments
from ..errors import RecipeError
from ..tasks import Task, task_class
from ..tasks.base import Documents
from .rows import RowRules
from .sources import load_raw_splits, sample_indices, split_held_out

logger = logging.getLogger("lmrecipes")


def _unlabelled(dataset, column: str) -> int:
    """Rows a ClassLabel column marks as unlabelled (-1); other columns' missing labels are rows.check_rows'."""
    if column not in dataset.column_names or not hasattr(dataset.features[column], "names"):
        return 0
    return sum(1 for v in dataset[column] if v is None or v < 0)


def load_classification_data(args: ClassificationDataArguments, problem_type: str = "single_label_classification",
                             finetune_args: FinetuneArguments | None = None, label_smoothing: float = 0.0):
    """(train / validation / test splits, held out deterministically when missing (no test split when test_fraction
    is 0 and no test_file is given); the task, which read its labels from them)."""
    if args.streaming:
        raise RecipeError("key 'streaming': fine-tuning loads its data into memory; set streaming: false")
    task_type = task_class(problem_type)
    if args.label_columns and task_type.scalar_labels:
        raise RecipeError("key 'label_columns': one 0/1 column per label is for problem_type: "
                          "multi_label_classification; use label_column")
    label_columns = args.label_columns or [args.label_column]
    rules = RowRules(texts={"text_column": args.text_column, "text_pair_column": args.text_pair_column},
                     label={"label_column": args.label_column} if task_type.scalar_labels else {},
                     text_required=True)
    raw, _ = load_raw_splits(args, streaming=False, rules=rules)
    raw = {name: raw[name] for name in ("train", "validation", "test") if name in raw}  # e.g. not "unsupervised"
    for name, dataset in raw.items():
        missing = [c for c in label_columns if c not in dataset.column_names]
        if missing:
            key = "label_columns" if args.label_columns else "label_column"
            raise RecipeError(f"key '{key}': the {name} split has no column {missing[0]!r} (columns: "
                              f"{', '.join(dataset.column_names)})")
    for split in ("validation", "test"):  # a Hub split without labels (GLUE's test splits: all -1): held out instead
        if split in raw and _unlabelled(raw[split], args.label_column) == len(raw[split]):
            logger.warning("The %s split has no labels (-1): holding out %s of the training rows instead", split,
                           f"{split}_fraction")
            del raw[split]
    fractions = {name: fraction for name, fraction in
                 (("validation", args.validation_fraction), ("test", args.test_fraction)) if name not in raw
                 and fraction > 0}  # test_fraction 0: no test split
    if fractions:
        raw.update(split_held_out(raw["train"], fractions, args.text_column))
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise RecipeError(f"the {split} split is empty; add rows or change validation_fraction/test_fraction")
        unlabelled = _unlabelled(dataset, args.label_column)
        if unlabelled:
            raise RecipeError(f"key 'label_column': {unlabelled} of {len(dataset)} rows of the {split} split have "
                              "no label (-1); label them or leave them out")
    splits = {k: raw[k] for k in ("train", "validation", "test") if k in raw}
    return splits, task_type.from_data(splits, args, finetune_args or FinetuneArguments(problem_type=problem_type),
                                       label_smoothing=label_smoothing)


def tokenize_for_classification(splits: dict, tokenizer, task: Task, args: ClassificationDataArguments,
                                seed: int = 42):
    """Tokenize (padding happens per batch) and add the task's targets as `labels`; max_train_samples /
    max_eval_samples take a seeded sample stratified by label.

    Returns (tokenized splits, Documents or None). long_text: truncate keeps the first max_length tokens of a text;
    chunk cuts every text into windows of max_length tokens overlapping by `stride` (the tokenizer's
    return_overflowing_tokens), and a window's `labels` is its text's number in the returned Documents table."""
    chunk = args.long_text == "chunk"
    columns = [args.text_column, *([args.text_pair_column] if args.text_pair_column else []),
               *task.label_columns(args)]
    sampled = {}
    for name, dataset in splits.items():
        limit = {"train": args.max_train_samples, "validation": args.max_eval_samples}.get(name)
        if limit:  # a seeded sample stratified by label, not the first rows (data files are often sorted by label)
            strata = task.strata(dataset.select_columns(task.label_columns(args))[:])
            dataset = dataset.select(sample_indices(len(dataset), limit, seed, strata))
        sampled[name] = dataset.select_columns(columns)
    documents = Documents({name: task.targets(dataset[:]) for name, dataset in sampled.items()}) if chunk else None

    def encode(batch, indices, split):
        pair = batch[args.text_pair_column] if args.text_pair_column else None
        if not chunk:
            encoded = tokenizer(batch[args.text_column], pair, truncation=True, max_length=args.max_length)
            encoded["labels"] = task.targets(batch)
            return encoded
        encoded = tokenizer(batch[args.text_column], truncation=True, max_length=args.max_length,
                            stride=args.window_overlap(), return_overflowing_tokens=True)
        text_of_window = encoded.pop("overflow_to_sample_mapping")
        encoded["labels"] = [documents.first[split] + indices[i] for i in text_of_window]
        return encoded

    out = {}
    for name, dataset in sampled.items():
        out[name] = dataset.map(encode, batched=True, with_indices=True, fn_kwargs={"split": name},
                                remove_columns=dataset.column_names, num_proc=args.preprocessing_num_workers,
                                desc=f"Tokenizing {name}")
        if chunk:
            logger.info("long_text: chunk: %d %s texts -> %d windows of up to %d tokens (overlap %d)", len(dataset),
                        name, len(out[name]), args.max_length, args.window_overlap())
    return out, documents
