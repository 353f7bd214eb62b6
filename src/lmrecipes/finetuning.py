"""Fine-tuning for text classification: a sequence-classification head on a pretrained body, full or LoRA."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import evaluate
import numpy as np
from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, EarlyStoppingCallback,
                          Trainer, set_seed)

from .arguments import EMBEDDED_SENTIMENT, DataSourceArguments, ModelArguments, RunArguments, TokenizerArguments
from .data import load_raw_splits, sample_indices, source_fingerprint, split_held_out
from .errors import RecipeError, first_line
from .modeling import build_config, count_parameters, resolve_model_path, warn_remote_code
from .recipe import resolved_recipe
from .rows import RowRules, label_key
from .tokenizer import load_tokenizer
from .training import (build_trainer, check_resume_request, check_world_size, claim_output_dir, find_checkpoint,
                       hub_target, publish_if_asked, record_run, record_saved_files, run_inputs, setup_logging,
                       throughput_callback, train_and_save, use_the_cpus)

logger = logging.getLogger("lmrecipes")

METRICS_DIR = Path(__file__).parent / "metrics"
LABELS_FILE = "labels.json"
TEST_PREDICTIONS = "test_predictions.json"


@dataclass
class ClassificationDataArguments(DataSourceArguments):
    """Classification data: text (or text pairs) and a label per row."""

    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column, for pair tasks."})
    label_column: str = field(default="label", metadata={"help": "Column holding the label (string or integer)."})
    test_file: list[str] | None = field(
        default=None, metadata={"help": "Local test files. Default: a deterministic held-out split of train."}
    )
    test_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of training rows held out as the test split when none is given."}
    )
    max_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})

    def __post_init__(self):
        super().__post_init__()
        if self.train_file is None and self.dataset_name is None:
            self.train_file = [EMBEDDED_SENTIMENT]
        if not 0.0 < self.test_fraction < 1.0 or self.validation_fraction + self.test_fraction >= 1.0:
            raise RecipeError(f"key 'test_fraction': must be in (0, 1) with validation_fraction + test_fraction < 1, "
                              f"got {self.test_fraction}")
        if self.max_length < 2:
            raise RecipeError(f"key 'max_length': must be at least 2, got {self.max_length}")


@dataclass
class FinetuneArguments:
    """How the model is fine-tuned: from the checkpoint or from scratch, fully or with LoRA."""

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
                  "sets metric_for_best_model, fine-tuning judges by accuracy, or by macro F1 (f1) when one class "
                  "holds more than 60% of the training rows."},
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
        if self.class_weights is not None and [w.lower() for w in self.class_weights] not in (["none"], ["balanced"]):
            try:
                numbers = [float(w) for w in self.class_weights]
            except ValueError:
                raise RecipeError(f"key 'class_weights': none, balanced or one number per class, got "
                                  f"{' '.join(self.class_weights)}") from None
            if not all(np.isfinite(w) and w > 0 for w in numbers):
                raise RecipeError(f"key 'class_weights': weights must be positive numbers, got {numbers}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise RecipeError(f"key 'early_stopping_patience': must be at least 1, got {self.early_stopping_patience}")
        if self.early_stopping_threshold < 0:
            raise RecipeError(f"key 'early_stopping_threshold': must be 0 or more, got {self.early_stopping_threshold}")


FINETUNE_ARGUMENTS = (ModelArguments, TokenizerArguments, ClassificationDataArguments, FinetuneArguments,
                      RunArguments)


# ---------------------------------------------------------------- data


def _label_names(dataset, column: str) -> list[str]:
    """The classes, sorted (numerically for numbers); the rows were checked (rows.check_rows): no nulls, one type."""
    feature = dataset.features[column] if dataset.features else None
    if hasattr(feature, "names"):  # datasets.ClassLabel
        return list(feature.names)
    return [label_key(v) for v in sorted(set(dataset[column]))]


def _unlabelled(dataset, column: str) -> int:
    """Rows a ClassLabel column marks as unlabelled (-1); other columns' missing labels are rows.check_rows'."""
    if not hasattr(dataset.features[column], "names"):
        return 0
    return sum(1 for v in dataset[column] if v is None or v < 0)


def load_classification_data(args: ClassificationDataArguments):
    """Train / validation / test splits (held out deterministically when missing) and the label names."""
    if args.streaming:
        raise RecipeError("key 'streaming': fine-tuning loads its data into memory; set streaming: false")
    rules = RowRules(texts={"text_column": args.text_column, "text_pair_column": args.text_pair_column},
                     label={"label_column": args.label_column}, text_required=True)
    raw, _ = load_raw_splits(args, streaming=False, rules=rules)
    raw = {name: raw[name] for name in ("train", "validation", "test") if name in raw}  # e.g. not "unsupervised"
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
    labels = _label_names(raw["train"], args.label_column)
    if len(labels) < 2:
        raise RecipeError(f"key 'label_column': the training data has a single class ({labels[0] if labels else '-'})"
                          "; classification needs at least two")
    known = set(labels)
    for split in ("validation", "test"):
        feature = raw[split].features[args.label_column]
        unseen = set() if hasattr(feature, "names") else \
            {label_key(v) for v in set(raw[split][args.label_column])} - known
        if unseen:
            raise RecipeError(f"key 'label_column': label(s) {sorted(unseen)} in the {split} split never occur in "
                              "training")
    return {k: raw[k] for k in ("train", "validation", "test")}, labels


def tokenize_for_classification(splits: dict, tokenizer, labels: list[str], args: ClassificationDataArguments,
                                seed: int = 42):
    """Tokenize (truncating at max_length; padding happens per batch) and map labels to ids 0..n-1."""
    label_ids = {name: i for i, name in enumerate(labels)}
    class_label = hasattr(splits["train"].features[args.label_column], "names")  # already ids

    def encode(batch):
        pair = batch[args.text_pair_column] if args.text_pair_column else None
        encoded = tokenizer(batch[args.text_column], pair, truncation=True, max_length=args.max_length)
        encoded["labels"] = [v if class_label else label_ids[label_key(v)] for v in batch[args.label_column]]
        return encoded

    out = {}
    for name, dataset in splits.items():
        limit = {"train": args.max_train_samples, "validation": args.max_eval_samples}.get(name)
        if limit:  # a seeded sample stratified by label, not the first rows (data files are often sorted by label)
            dataset = dataset.select(sample_indices(len(dataset), limit, seed,
                                                    [label_key(v) for v in dataset[args.label_column]]))
        out[name] = dataset.map(encode, batched=True, remove_columns=dataset.column_names,
                                num_proc=args.preprocessing_num_workers, desc=f"Tokenizing {name}")
    return out


# ---------------------------------------------------------------- model


def prepare_pad_token(tokenizer) -> None:
    """Batched classification needs a pad token: use EOS when the tokenizer has no pad token (decoder LMs)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise RecipeError("the tokenizer has no pad_token and no eos_token to pad with; give it a pad token "
                              "(special_tokens.pad_token) or use another tokenizer")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("The tokenizer has no pad token: padding with its EOS token %r", tokenizer.eos_token)


def build_classifier(model_args: ModelArguments, finetune_args: FinetuneArguments, tokenizer, labels: list[str]):
    """AutoModelForSequenceClassification with labels from the data; new head, body loaded (or random: scratch)."""
    path = resolve_model_path(model_args.model_name_or_path)
    config = build_config(model_args)
    config.num_labels = len(labels)
    config.id2label, config.label2id = dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
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
                      lora_dropout=finetune_args.lora_dropout,
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


# ---------------------------------------------------------------- metrics


def load_metric(name: str):
    """The shipped `evaluate` module (works offline): accuracy, f1, precision, recall, confusion_matrix."""
    return evaluate.load(str(METRICS_DIR / name))


AVERAGED = ("f1", "precision", "recall")
# what classification_metrics reports (without the split prefix): metric_for_best_model must be one of them
CLASSIFICATION_METRICS = ("loss", "accuracy", *AVERAGED, *(f"{name}_weighted" for name in AVERAGED))


def classification_metrics(num_labels: int):
    """accuracy; F1, precision and recall macro-averaged (`f1`...), weighted by class frequency (`f1_weighted`...)
    and per class (`f1_per_class`...: lists in the order of the labels); the confusion matrix."""
    metrics = {name: load_metric(name) for name in ("accuracy", *AVERAGED, "confusion_matrix")}
    every_class = list(range(num_labels))

    def compute(eval_prediction):
        logits = eval_prediction.predictions[0] if isinstance(eval_prediction.predictions, tuple) \
            else eval_prediction.predictions
        predictions, references = np.argmax(logits, axis=-1), eval_prediction.label_ids
        result = metrics["accuracy"].compute(predictions=predictions, references=references)
        for name in AVERAGED:
            for average, suffix in (("macro", ""), ("weighted", "_weighted"), (None, "_per_class")):
                value = metrics[name].compute(  # averages over the classes present, as scikit-learn
                    predictions=predictions, references=references, average=average,
                    labels=every_class if average is None else None)[name]
                result[f"{name}{suffix}"] = np.asarray(value).tolist() if average is None else float(value)
        result.update(metrics["confusion_matrix"].compute(predictions=predictions, references=references,
                                                          num_labels=num_labels))
        return result

    return compute


def class_weight_values(spec: list[str] | None, train_labels, labels: list[str]) -> list[float] | None:
    """The loss weight of each class from `class_weights` (None: unweighted)."""
    if spec is None or [w.lower() for w in spec] == ["none"]:
        return None
    if [w.lower() for w in spec] == ["balanced"]:
        counts = np.bincount(np.asarray(train_labels), minlength=len(labels))
        return [float(len(train_labels) / (len(labels) * count)) if count else 0.0 for count in counts]
    if len(spec) != len(labels):
        raise RecipeError(f"key 'class_weights': {len(spec)} weights for {len(labels)} classes {labels}")
    return [float(w) for w in spec]


def weighted_cross_entropy(weights: list[float], label_smoothing: float = 0.0):
    """The Trainer's `compute_loss_func`: mean over rows of weight(label) x cross-entropy (label_smoothing_factor
    kept: a compute_loss_func replaces the Trainer's label smoother); with gradient accumulation the Trainer passes
    the rows of the whole step (num_items_in_batch) to divide by."""
    import torch

    table = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        losses = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none",
                                                   label_smoothing=label_smoothing)
        total = (losses * table.to(logits.device)[labels]).sum()
        rows = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return total / (rows.to(total.device) if torch.is_tensor(rows) else rows)

    return loss


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
    if metric is not None and metric.removeprefix("eval_") not in CLASSIFICATION_METRICS:
        raise RecipeError(f"key 'metric_for_best_model': {metric!r} is not a metric of fine-tuning (one of "
                          f"{', '.join(CLASSIFICATION_METRICS)})")


def imbalance_note(train_labels, labels: list[str]) -> str | None:
    """When the majority class holds more than 60% of the training rows: a description of it, else None."""
    counts = np.bincount(np.asarray(train_labels), minlength=len(labels))
    share = counts.max() / counts.sum()
    return f"majority class {labels[int(counts.argmax())]} holds {share:.0%} of the training rows" \
        if share > 0.6 else None


def architecture_summary(model) -> dict:
    """The body's architecture, for model cards of LoRA adapters (whose folders hold no config.json)."""
    config = model.config
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = config.get_text_config()
    return {"model_type": config.model_type, "architectures": [type(base).__name__],
            **{k: getattr(text, k, None) for k in ("hidden_size", "num_hidden_layers", "vocab_size")}}


def majority_accuracy(train_labels, test_labels) -> float:
    """Accuracy of always predicting the most frequent training label: what chance is on this test split."""
    majority = np.bincount(np.asarray(train_labels)).argmax()
    return float((np.asarray(test_labels) == majority).mean())


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


def save_test_predictions(out: Path, test, dataset, labels: list[str]) -> None:
    """The predicted and true label id of every test row, in the test split's order, and a hash of the rows' token
    ids (two runs scored the same rows in the same order only if it matches)."""
    logits = test.predictions[0] if isinstance(test.predictions, tuple) else test.predictions
    rows = hashlib.sha256(json.dumps([list(ids) for ids in dataset["input_ids"]]).encode()).hexdigest()
    (out / TEST_PREDICTIONS).write_text(json.dumps({
        "labels": labels, "test_inputs_sha256": rows, "predictions": np.argmax(logits, axis=-1).tolist(),
        "references": np.asarray(test.label_ids).tolist()}))


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
    recipe = resolved_recipe(explicit or {}, model_args, tokenizer_args, data_args, finetune_args)
    tokenizer = load_tokenizer(
        resolve_model_path(tokenizer_args.tokenizer_name_or_path or model_args.model_name_or_path),
        trust_remote_code=model_args.trust_remote_code,
        key="tokenizer_name_or_path" if tokenizer_args.tokenizer_name_or_path else "model_name_or_path")
    prepare_pad_token(tokenizer)
    with training_args.main_process_first(desc="classification data"):
        splits, labels = load_classification_data(data_args)
        encoded = tokenize_for_classification(splits, tokenizer, labels, data_args, training_args.seed)
    model = build_classifier(model_args, finetune_args, tokenizer, labels)
    if finetune_args.use_lora:
        model = apply_lora(model, finetune_args)
    logger.info("Classifier: %s parameters, %s trainable; labels %s; %d/%d/%d train/validation/test rows",
                f"{count_parameters(model):,}", f"{count_parameters(model, trainable_only=True):,}", labels,
                len(encoded["train"]), len(encoded["validation"]), len(encoded["test"]))

    imbalanced = imbalance_note(encoded["train"]["labels"], labels)
    selects = training_args.load_best_model_at_end or finetune_args.early_stopping_patience is not None or \
        training_args.save_strategy == "best"
    if selects and "metric_for_best_model" not in (explicit or {}):  # default: accuracy, macro F1 if imbalanced
        training_args.metric_for_best_model = "f1" if imbalanced else "accuracy"
        if "greater_is_better" not in (explicit or {}):
            training_args.greater_is_better = True
        if imbalanced:
            logger.info("Imbalanced labels (%s): best checkpoints and early stopping are judged by macro F1 "
                        "(metric_for_best_model: f1; set it to choose)", imbalanced)
    elif imbalanced:
        logger.info("Imbalanced labels (%s): macro F1 and the per-class scores say more than accuracy "
                    "(class_weights: balanced weighs the loss)", imbalanced)
    weights = class_weight_values(finetune_args.class_weights, encoded["train"]["labels"], labels)
    if weights is not None and training_args.n_gpu > 1:
        raise RecipeError("key 'class_weights': not supported with one process driving several GPUs (nn.DataParallel);"
                          " launch one process per GPU (accelerate launch)")
    if weights is not None:
        logger.info("Class weights in the loss: %s", dict(zip(labels, [round(w, 4) for w in weights])))
    stopping = [EarlyStoppingCallback(finetune_args.early_stopping_patience, finetune_args.early_stopping_threshold)] \
        if finetune_args.early_stopping_patience is not None else []
    throughput = throughput_callback(model, training_args, data_args.max_length)
    trainer = build_trainer(training_args, lambda: Trainer(
        model=model, args=training_args, train_dataset=encoded["train"], eval_dataset=encoded["validation"],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=classification_metrics(len(labels)),
        compute_loss_func=weighted_cross_entropy(weights, training_args.label_smoothing_factor)
        if weights is not None else None,
        callbacks=[throughput, *stopping, *callbacks]))

    finished = claim_output_dir(training_args, recipe, "# Resolved recipe of this run (lmrecipes finetune)",
                                run_inputs(model_args, tokenizer, source_fingerprint(data_args)))
    if finished is not None:
        return finished
    if training_args.should_save:
        (Path(training_args.output_dir) / LABELS_FILE).write_text(json.dumps(
            {"labels": labels, "base_model": model_args.model_name_or_path, "init_from": finetune_args.init_from,
             "use_lora": finetune_args.use_lora, "base_config": architecture_summary(model)}, indent=2))
        record_run(Path(training_args.output_dir), files=[LABELS_FILE])
    checkpoint = find_checkpoint(training_args)
    train_metrics = train_and_save(trainer, checkpoint, throughput)

    eval_metrics = trainer.evaluate(metric_key_prefix="eval")
    test = predict_in_order(trainer, encoded["test"])
    test_metrics = dict(test.metrics)
    test_metrics["test_majority_accuracy"] = majority_accuracy(encoded["train"]["labels"], encoded["test"]["labels"])
    eval_metrics["eval_samples"], test_metrics["test_samples"] = len(encoded["validation"]), len(encoded["test"])
    for split, metrics in (("eval", eval_metrics), ("test", test_metrics)):
        trainer.log_metrics(split, {k: v for k, v in metrics.items() if not isinstance(v, list)})
        logger.info("%s confusion matrix (rows: true %s, columns: predicted): %s", split, labels,
                    metrics[f"{split}_confusion_matrix"])
        trainer.save_metrics(split, metrics)
    if training_args.should_save:  # per row, for paired comparisons of runs on the same test split (label_curve)
        save_test_predictions(Path(training_args.output_dir), test, encoded["test"], labels)
    if finetune_args.use_lora and finetune_args.merge_lora and training_args.should_save:
        from .lora import merge_adapter

        merge_adapter(training_args.output_dir, Path(training_args.output_dir) / "merged")
    results = {**train_metrics, **eval_metrics, **test_metrics}
    if training_args.should_save:
        record_saved_files(Path(training_args.output_dir), finished=True)  # results, merged/: the run is done
    if training_args.should_log:
        print(f"Fine-tuning done: test accuracy {test_metrics['test_accuracy']:.4f}, macro F1 "
              f"{test_metrics['test_f1']:.4f} (majority class {test_metrics['test_majority_accuracy']:.4f}). "
              f"Model in {training_args.output_dir}", flush=True)
    publish_if_asked(training_args, hub)
    return results
