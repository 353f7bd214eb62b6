"""Fine-tuning for text classification: a sequence-classification head on a pretrained body, full or LoRA.

What depends on the problem type (single-label, multi-label, regression: targets, head, loss, metrics, saved files)
is the task's (tasks/); this module loads and cuts the data, builds the model and runs the Trainer."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, EarlyStoppingCallback,
                          Trainer, set_seed)

from .arguments import EMBEDDED_SENTIMENT, DataSourceArguments, ModelArguments, RunArguments, TokenizerArguments
from .data import load_raw_splits, sample_indices, source_fingerprint, split_held_out
from .errors import RecipeError, first_line
from .modeling import build_config, count_parameters, resolve_model_path, warn_remote_code
from .recipe import resolved_recipe
from .rows import RowRules
from .tasks import TASKS, Task, task_class
from .tasks.base import Documents, logits_of, metrics_function, task_loss
from .tokenizer import load_tokenizer
from .training import (build_trainer, check_resume_request, check_world_size, claim_output_dir, find_checkpoint,
                       hub_target, publish_if_asked, record_run, record_saved_files, run_inputs, setup_logging,
                       throughput_callback, train_and_save, use_the_cpus)

logger = logging.getLogger("lmrecipes")

LABELS_FILE = "labels.json"
TEST_PREDICTIONS = "test_predictions.json"


@dataclass
class ClassificationDataArguments(DataSourceArguments):
    """Classification data: text (or text pairs) and a label per row."""

    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column, for pair tasks."})
    label_column: str = field(
        default="label",
        metadata={"help": "Column holding the label: a class (string or integer); a list of labels for "
                  "problem_type: multi_label_classification; a number for problem_type: regression."})
    label_columns: list[str] | None = field(
        default=None,
        metadata={"help": "multi_label_classification only: one 0/1 column per label, instead of a list-valued "
                  "label_column (the column names are the label names)."})
    test_file: list[str] | None = field(
        default=None, metadata={"help": "Local test files. Default: a deterministic held-out split of train."}
    )
    test_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of training rows held out as the test split when none is given."}
    )
    max_length: int = field(default=128, metadata={"help": "Tokens per input: truncated there (long_text: "
                                                       "truncate) or cut into windows of this size (chunk)."})
    long_text: Literal["truncate", "chunk"] = field(
        default="truncate",
        metadata={"help": "Texts longer than max_length tokens: truncate (keep the start), or chunk: windows of "
                  "max_length tokens over the whole text, each trained on with the text's label; evaluation and "
                  "predict.py average the logits of a text's windows."})
    stride: int | None = field(
        default=None,
        metadata={"help": "long_text: chunk: tokens shared by consecutive windows (default max_length // 4)."})

    def __post_init__(self):
        super().__post_init__()
        if self.train_file is None and self.dataset_name is None:
            self.train_file = [EMBEDDED_SENTIMENT]
        if not 0.0 < self.test_fraction < 1.0 or self.validation_fraction + self.test_fraction >= 1.0:
            raise RecipeError(f"key 'test_fraction': must be in (0, 1) with validation_fraction + test_fraction < 1, "
                              f"got {self.test_fraction}")
        if self.max_length < 2:
            raise RecipeError(f"key 'max_length': must be at least 2, got {self.max_length}")
        if self.long_text == "chunk" and self.text_pair_column:
            raise RecipeError("key 'long_text': chunk cuts single texts into windows; text pairs (text_pair_column) "
                              "are truncated (long_text: truncate)")
        if self.stride is not None and not 0 <= self.stride < self.max_length // 2:
            raise RecipeError(f"key 'stride': must be at least 0 and below max_length / 2 ({self.max_length // 2}), "
                              f"got {self.stride}")
        if self.label_columns is not None and len(self.label_columns) < 2:
            raise RecipeError(f"key 'label_columns': needs at least two columns (one per label), got "
                              f"{self.label_columns}")

    def window_overlap(self) -> int:
        return self.max_length // 4 if self.stride is None else self.stride


@dataclass
class FinetuneArguments:
    """What the model learns (problem_type) and how: from the checkpoint or from scratch, fully or with LoRA."""

    problem_type: Literal[tuple(TASKS)] = field(
        default="single_label_classification",
        metadata={"help": "single_label_classification: one class per text (softmax, cross-entropy). "
                  "multi_label_classification: any number of labels per text (a list in label_column, or 0/1 "
                  "label_columns; sigmoid per label, binary cross-entropy; decision threshold tuned on the "
                  "validation split and saved). regression: a number per text (label_column; one output, mean "
                  "squared error)."},
    )

    init_from: Literal["pretrained", "scratch"] = field(
        default="pretrained",
        metadata={"help": "pretrained: load the body's weights from model_name_or_path. scratch: the same architecture"
                  " with random weights, to measure what pretraining brings."},
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) plus the new head only."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt. Default: peft's choice for the architecture (attention projections"
                  ", e.g. q_proj/v_proj for Llama, query/value for BERT). 'all-linear' adapts every linear layer."},
    )
    lora_use_rslora: bool = field(
        default=False,
        metadata={"help": "rank-stabilised LoRA: scale the adapters by lora_alpha / sqrt(lora_r) instead of "
                  "lora_alpha / lora_r (peft use_rslora), so a higher rank still learns at the same learning rate."},
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the classification head (the model's modules outside its body: score, "
                  "classifier), full or LoRA fine-tuning; the rest trains at learning_rate with the same schedule. "
                  "Default: learning_rate for everything."},
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "After LoRA training, also write the merged plain checkpoint to output_dir/merged."},
    )
    class_weights: list[str] | None = field(
        default=None,
        metadata={"help": "Loss weight of each class, for imbalanced labels: none (default), balanced (rows / (classes "
                  "x rows of the class), as scikit-learn; the weights average 1 over the training rows), or one "
                  "positive number per class in the order of the labels (sorted), e.g. [1, 3]. The loss is the mean "
                  "over rows of weight(label) x cross-entropy, through the Trainer's compute_loss_func (training and "
                  "evaluation loss)."},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop when metric_for_best_model has not improved for this many evaluations "
                  "(transformers.EarlyStoppingCallback); the best checkpoint is loaded at the end. Needs eval_strategy "
                  "steps or epoch and load_best_model_at_end: true (checked before anything runs). Unless the recipe "
                  "sets metric_for_best_model, fine-tuning judges by the problem type's default: accuracy, or macro "
                  "F1 (f1) when one class holds more than 60 percent of the training rows; f1_micro for "
                  "multi_label_classification; mse for regression."},
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={"help": "How much metric_for_best_model must improve to count as better (early_stopping_patience)."},
    )

    def __post_init__(self):
        if self.use_lora and self.init_from == "scratch":
            raise RecipeError("key 'use_lora': LoRA on a randomly initialised body makes no sense; use init_from: "
                              "pretrained or full fine-tuning")
        if self.lora_r < 1:
            raise RecipeError(f"key 'lora_r': must be at least 1, got {self.lora_r}")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise RecipeError(f"key 'head_learning_rate': must be a positive number, got {self.head_learning_rate}")
        if self.class_weights is not None and [w.lower() for w in self.class_weights] not in (["none"], ["balanced"]):
            try:
                numbers = [float(w) for w in self.class_weights]
            except ValueError:
                raise RecipeError(f"key 'class_weights': none, balanced or one number per class, got "
                                  f"{' '.join(self.class_weights)}") from None
            if not all(np.isfinite(w) and w > 0 for w in numbers):
                raise RecipeError(f"key 'class_weights': weights must be positive numbers, got {numbers}")
        if self.class_weights is not None and [w.lower() for w in self.class_weights] != ["none"] and \
                not task_class(self.problem_type).weighs_classes:
            raise RecipeError(f"key 'class_weights': weighs classes of single_label_classification, not "
                              f"{self.problem_type}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise RecipeError(f"key 'early_stopping_patience': must be at least 1, got {self.early_stopping_patience}")
        if self.early_stopping_threshold < 0:
            raise RecipeError(f"key 'early_stopping_threshold': must be 0 or more, got {self.early_stopping_threshold}")


FINETUNE_ARGUMENTS = (ModelArguments, TokenizerArguments, ClassificationDataArguments, FinetuneArguments,
                      RunArguments)


# ---------------------------------------------------------------- data


def _unlabelled(dataset, column: str) -> int:
    """Rows a ClassLabel column marks as unlabelled (-1); other columns' missing labels are rows.check_rows'."""
    if column not in dataset.column_names or not hasattr(dataset.features[column], "names"):
        return 0
    return sum(1 for v in dataset[column] if v is None or v < 0)


def load_classification_data(args: ClassificationDataArguments, problem_type: str = "single_label_classification",
                             finetune_args: FinetuneArguments | None = None, label_smoothing: float = 0.0):
    """(train / validation / test splits, held out deterministically when missing; the task, which read its labels
    from them)."""
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
                 (("validation", args.validation_fraction), ("test", args.test_fraction)) if name not in raw}
    if fractions:
        raw.update(split_held_out(raw["train"], fractions, args.text_column))
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise RecipeError(f"the {split} split is empty; add rows or change validation_fraction/test_fraction")
        unlabelled = _unlabelled(dataset, args.label_column)
        if unlabelled:
            raise RecipeError(f"key 'label_column': {unlabelled} of {len(dataset)} rows of the {split} split have "
                              "no label (-1); label them or leave them out")
    splits = {k: raw[k] for k in ("train", "validation", "test")}
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


# ---------------------------------------------------------------- model


def prepare_pad_token(tokenizer) -> None:
    """Batched classification needs a pad token: use EOS when the tokenizer has no pad token (decoder LMs)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise RecipeError("the tokenizer has no pad_token and no eos_token to pad with; give it a pad token "
                              "(special_tokens.pad_token) or use another tokenizer")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("The tokenizer has no pad token: padding with its EOS token %r", tokenizer.eos_token)


def build_classifier(model_args: ModelArguments, finetune_args: FinetuneArguments, tokenizer, task: Task):
    """AutoModelForSequenceClassification with the task's head (labels from the data); body loaded (or random:
    scratch)."""
    path = resolve_model_path(model_args.model_name_or_path)
    config = build_config(model_args)
    task.configure(config)
    config.pad_token_id = tokenizer.pad_token_id
    vocab = getattr(config.get_text_config(), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise RecipeError(f"the tokenizer ({len(tokenizer)} tokens) does not match the checkpoint (vocab_size {vocab})"
                          ": use the checkpoint's own tokenizer")
    kwargs = {"attn_implementation": model_args.attn_implementation, "trust_remote_code": model_args.trust_remote_code}
    if finetune_args.init_from == "scratch":
        logger.info("init_from: scratch: %s with random weights", config.model_type)
        return AutoModelForSequenceClassification.from_config(config, **kwargs)
    try:  # safetensors only: a checkpoint holding nothing but pickled weights is refused
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, use_safetensors=True, output_loading_info=True, revision=model_args.model_revision,
            **kwargs)
    except (OSError, ValueError) as err:
        raise RecipeError(f"key 'model_name_or_path': cannot load {model_args.model_name_or_path!r} (safetensors "
                          f"weights only): {first_line(err)}") from None
    logger.info("Loaded the body of %s; newly initialised: %s; not used: %s", model_args.model_name_or_path,
                ", ".join(sorted(info["missing_keys"])) or "none", ", ".join(sorted(info["unexpected_keys"])) or "none")
    # Modules holding new weights (the head; BERT's pooler when the checkpoint had none) are trained in full by LoRA.
    model.newly_initialised_modules = outermost_new_modules(model, info["missing_keys"])
    return model


def outermost_new_modules(model, missing_keys) -> list[str]:
    """The outermost modules all of whose weights are newly initialised: `classifier` for ELECTRA's two-layer head
    (classifier.dense, classifier.out_proj), as peft names the head it saves by itself; naming the inner layers too
    would wrap them twice and break loading the adapter."""
    missing, outermost = set(missing_keys), set()
    for key in missing:
        parts = key.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            names = {f"{prefix}.{name}" for name, _ in model.get_submodule(prefix).named_parameters()}
            if names and names <= missing:
                outermost.add(prefix)
                break
    return sorted(outermost)


def apply_lora(model, finetune_args: FinetuneArguments):
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=finetune_args.lora_r, lora_alpha=finetune_args.lora_alpha,
                      lora_dropout=finetune_args.lora_dropout, use_rslora=finetune_args.lora_use_rslora,
                      modules_to_save=getattr(model, "newly_initialised_modules", None) or None,
                      target_modules=(finetune_args.lora_target_modules[0]
                                      if finetune_args.lora_target_modules == ["all-linear"]
                                      else finetune_args.lora_target_modules))
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:
        raise RecipeError(f"key 'lora_target_modules': {str(err).strip().splitlines()[0]}") from None
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA on %s: %s trainable parameters of %s (%.2f%%)", sorted(model.peft_config["default"].target_modules),
                f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


def head_parameters(model) -> list:
    """The trainable parameters of the classification head: the modules of the (LoRA-wrapped) classifier outside
    its body (`score` for Llama, `classifier` for BERT; with LoRA, peft's trained copy of them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix, None)
    if body is None:
        raise RecipeError(f"key 'head_learning_rate': cannot tell the head of {type(base).__name__} from its body")
    return [p for child in base.children() if child is not body for p in child.parameters() if p.requires_grad]


def optimizer_with_head_learning_rate(training_args, model, head_learning_rate: float):
    """(optimizer class, kwargs) for the Trainer's `optimizer_cls_and_kwargs`: the optimizer that `optim` names,
    with the head's parameters in groups of their own at `head_learning_rate` (the scheduler scales every group's
    rate alike). Hand-written: the Trainer groups parameters by weight decay only."""
    import torch

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise RecipeError(f"key 'head_learning_rate': not supported with optim: {training_args.optim}")
    head = {id(p) for p in head_parameters(model)}
    if not head:
        raise RecipeError("key 'head_learning_rate': this model has no trainable head outside its body")

    class WithHeadLearningRate(optimizer_cls):
        def __init__(self, groups, **options):
            split = []
            for group in groups:
                params = list(group["params"])
                split.append({**group, "params": [p for p in params if id(p) not in head]})
                split.append({**group, "params": [p for p in params if id(p) in head], "lr": head_learning_rate})
            found = sum(len(group["params"]) for group in split[1::2])
            if not found or found == sum(len(group["params"]) for group in split):  # e.g. FSDP replaced them
                raise RecipeError("key 'head_learning_rate': the optimizer's parameters are not the model's head "
                                  "and body as built (a wrapper replaced them, e.g. FSDP); remove the key")
            super().__init__([group for group in split if group["params"]], **options)

    WithHeadLearningRate.__name__ = f"{optimizer_cls.__name__}WithHeadLearningRate"
    return WithHeadLearningRate, kwargs


# ---------------------------------------------------------------- model selection and results


def check_model_selection(finetune_args: FinetuneArguments, training_args) -> None:
    """Early stopping and best-model selection settings that would fail (or do nothing) at run time: one line now."""
    if finetune_args.early_stopping_patience is not None:
        if training_args.eval_strategy == "no":
            raise RecipeError("key 'early_stopping_patience': needs evaluations to compare (eval_strategy: steps or "
                              "epoch)")
        if not training_args.load_best_model_at_end:
            raise RecipeError("key 'early_stopping_patience': needs load_best_model_at_end: true (the best "
                              "checkpoint is what early stopping keeps)")
    metric = training_args.metric_for_best_model
    known = task_class(finetune_args.problem_type).metric_names
    if metric is not None and metric.removeprefix("eval_") not in known:
        raise RecipeError(f"key 'metric_for_best_model': {metric!r} is not a metric of {finetune_args.problem_type} "
                          f"(one of {', '.join(known)})")


def architecture_summary(model) -> dict:
    """The body's architecture, for model cards of LoRA adapters (whose folders hold no config.json)."""
    config = model.config
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = config.get_text_config()
    return {"model_type": config.model_type, "architectures": [type(base).__name__],
            **{k: getattr(text, k, None) for k in ("hidden_size", "num_hidden_layers", "vocab_size")}}


def predict_in_order(trainer, dataset):
    """Trainer.predict with the rows in the dataset's order. Hand-written around the Trainer: with
    `train_sampling_strategy: group_by_length` its evaluation sampler also groups rows by length (seeded), so
    per-row predictions would come back shuffled; the metrics are the same either way."""
    strategy = trainer.args.train_sampling_strategy
    trainer.args.train_sampling_strategy = "random"
    try:
        return trainer.predict(dataset, metric_key_prefix="test")
    finally:
        trainer.args.train_sampling_strategy = strategy


def per_text(prediction, documents: Documents | None):
    """(logits, targets) of a Trainer prediction, one row per text (a text's windows averaged: long_text chunk)."""
    logits, targets = logits_of(prediction.predictions), np.asarray(prediction.label_ids)
    return documents.average(logits, targets) if documents is not None else (logits, targets)


def save_test_predictions(out: Path, task: Task, logits, targets, dataset) -> None:
    """The prediction and the target of every test text, in the test split's order (as the task writes them: label
    ids, 0/1 rows, scores), and a hash of the rows' token ids (two runs scored the same rows in the same order only
    if it matches)."""
    rows = hashlib.sha256(json.dumps([list(ids) for ids in dataset["input_ids"]]).encode()).hexdigest()
    (out / TEST_PREDICTIONS).write_text(json.dumps({
        "problem_type": task.problem_type, "labels": task.labels, "test_inputs_sha256": rows,
        "predictions": task.predictions(logits), "references": np.asarray(targets).tolist()}))


# ---------------------------------------------------------------- the run


def run_finetuning(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                   data_args: ClassificationDataArguments, finetune_args: FinetuneArguments,
                   training_args: RunArguments, explicit: dict | None = None, callbacks=()) -> dict:
    """Fine-tune a classifier end to end; returns the results also written to `output_dir/all_results.json`."""
    setup_logging(training_args)
    use_the_cpus(training_args)
    check_world_size(training_args)
    check_resume_request(training_args)
    warn_remote_code(model_args)
    set_seed(training_args.seed)  # the new head's initial weights depend on it
    hub = hub_target(training_args)
    if not model_args.model_name_or_path:
        raise RecipeError("key 'model_name_or_path': fine-tuning needs a checkpoint (local folder or Hub id)")
    check_model_selection(finetune_args, training_args)
    if training_args.n_gpu > 1:  # the task's loss sees the gathered batch, which nn.DataParallel's scaling does not
        raise RecipeError(f"fine-tuning does not drive {training_args.n_gpu} GPUs from one process (nn.DataParallel)"
                          f": launch one process per GPU, accelerate launch --num_processes {training_args.n_gpu} "
                          "scripts/finetune.py ...")
    recipe = resolved_recipe(explicit or {}, model_args, tokenizer_args, data_args, finetune_args)
    tokenizer = load_tokenizer(
        resolve_model_path(tokenizer_args.tokenizer_name_or_path or model_args.model_name_or_path),
        trust_remote_code=model_args.trust_remote_code,
        key="tokenizer_name_or_path" if tokenizer_args.tokenizer_name_or_path else "model_name_or_path")
    prepare_pad_token(tokenizer)
    with training_args.main_process_first(desc="classification data"):
        splits, task = load_classification_data(data_args, finetune_args.problem_type, finetune_args,
                                                training_args.label_smoothing_factor)
        encoded, documents = tokenize_for_classification(splits, tokenizer, task, data_args, training_args.seed)
    model = build_classifier(model_args, finetune_args, tokenizer, task)
    if finetune_args.use_lora:
        model = apply_lora(model, finetune_args)
    logger.info("Classifier (%s): %s parameters, %s trainable; labels %s; %d/%d/%d train/validation/test rows "
                "(windows with long_text: chunk)",
                task.problem_type, f"{count_parameters(model):,}", f"{count_parameters(model, trainable_only=True):,}",
                task.labels, len(encoded["train"]), len(encoded["validation"]), len(encoded["test"]))
    for line in task.notes():
        logger.info("%s", line)

    imbalanced = task.imbalance
    selects = training_args.load_best_model_at_end or finetune_args.early_stopping_patience is not None or \
        training_args.save_strategy == "best"
    if selects and "metric_for_best_model" not in (explicit or {}):  # the task's default
        training_args.metric_for_best_model, greater_is_better = task.best_metric
        if "greater_is_better" not in (explicit or {}):
            training_args.greater_is_better = greater_is_better
        logger.info("Best checkpoints%s are judged by %s (metric_for_best_model: the %s default%s; set it to "
                    "choose)", " and early stopping" if finetune_args.early_stopping_patience else "",
                    training_args.metric_for_best_model, task.problem_type,
                    f" for imbalanced labels, {imbalanced}" if imbalanced else "")
    elif imbalanced:
        logger.info("Imbalanced labels (%s): macro F1 and the per-class scores say more than accuracy "
                    "(class_weights: balanced weighs the loss)", imbalanced)
    stopping = [EarlyStoppingCallback(finetune_args.early_stopping_patience, finetune_args.early_stopping_threshold)] \
        if finetune_args.early_stopping_patience is not None else []
    throughput = throughput_callback(model, training_args, data_args.max_length)
    trainer = build_trainer(training_args, lambda: Trainer(
        model=model, args=training_args, train_dataset=encoded["train"], eval_dataset=encoded["validation"],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics_function(task, documents), compute_loss_func=task_loss(task, documents),
        optimizer_cls_and_kwargs=optimizer_with_head_learning_rate(training_args, model,
                                                                   finetune_args.head_learning_rate)
        if finetune_args.head_learning_rate is not None else None,
        callbacks=[throughput, *stopping, *callbacks]))

    finished = claim_output_dir(training_args, recipe, "# Resolved recipe of this run (lmrecipes finetune)",
                                run_inputs(model_args, tokenizer, source_fingerprint(data_args)))
    if finished is not None:
        return finished
    out = Path(training_args.output_dir)

    def save_labels():
        (out / LABELS_FILE).write_text(json.dumps(
            {**task.saved(), "base_model": model_args.model_name_or_path, "init_from": finetune_args.init_from,
             "use_lora": finetune_args.use_lora, "base_config": architecture_summary(model),
             "long_text": data_args.long_text, "stride": data_args.window_overlap()}, indent=2))

    if training_args.should_save:
        save_labels()
        record_run(out, files=[LABELS_FILE])
    checkpoint = find_checkpoint(training_args)
    train_metrics = train_and_save(trainer, checkpoint, throughput)

    if task.tunes:  # e.g. the multi-label decision threshold: chosen on validation, used on test and saved
        logger.info("%s", task.tune(*per_text(predict_in_order(trainer, encoded["validation"]), documents)))
        if training_args.should_save:
            save_labels()
    eval_metrics = trainer.evaluate(metric_key_prefix="eval")
    test = predict_in_order(trainer, encoded["test"])
    test_metrics = dict(test.metrics)
    test_logits, test_targets = per_text(test, documents)
    train_targets = documents.split_targets("train") if documents is not None else encoded["train"]["labels"]
    test_metrics.update(task.baseline(np.asarray(train_targets), test_targets))
    eval_metrics["eval_samples"] = documents.texts["validation"] if documents is not None \
        else len(encoded["validation"])
    test_metrics["test_samples"] = len(test_targets)
    for split, metrics in (("eval", eval_metrics), ("test", test_metrics)):
        trainer.log_metrics(split, {k: v for k, v in metrics.items() if not isinstance(v, list)})
        if f"{split}_confusion_matrix" in metrics:
            logger.info("%s confusion matrix (rows: true %s, columns: predicted): %s", split, task.labels,
                        metrics[f"{split}_confusion_matrix"])
        trainer.save_metrics(split, metrics)
    if training_args.should_save:  # per row, for paired comparisons of runs on the same test split (label_curve)
        save_test_predictions(out, task, test_logits, test_targets, encoded["test"])
    if finetune_args.use_lora and finetune_args.merge_lora and training_args.should_save:
        from .lora import merge_adapter

        merge_adapter(training_args.output_dir, out / "merged")
    results = {**train_metrics, **eval_metrics, **test_metrics}
    if training_args.should_save:
        record_saved_files(out, finished=True)  # results, merged/: the run is done
    if training_args.should_log:
        print(f"Fine-tuning done: {task.summary(test_metrics)}. Model in {training_args.output_dir}", flush=True)
    publish_if_asked(training_args, hub)
    return results
