"""Fine-tuning for text classification: a sequence-classification head on a pretrained body, full or LoRA.

What depends on the problem type (single-label, multi-label, regression: targets, head, loss, metrics, saved files)
is the task's (tasks/); the data is data/classification.py's, the model modeling.py's; this module runs them
through the run protocol (run.py) and writes what a fine-tuned run adds: labels.json and per-row test
predictions."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer

from .arguments import (
    FINETUNE_ARGUMENTS,
    ClassificationDataArguments,
    FinetuneArguments,
    ModelArguments,
    RunArguments,
    TokenizerArguments,
)
from .data.classification import load_classification_data, tokenize_for_classification
from .data.sources import source_fingerprint
from .errors import RecipeError
from .lora import apply_lora, merge_adapter
from .modeling import build_classifier, count_parameters
from .recipe import resolved_recipe
from .run import Run
from .run_folder import is_run_folder, record_run, run_inputs, run_record
from .run_report import RunReport, split_sources
from .tasks import Task, task_class
from .tasks.base import Documents, logits_of, metrics_function, task_loss
from .tokenizer import load_tokenizer, prepare_pad_token
from .values import resolve_model_path

logger = logging.getLogger("lmrecipes")

LABELS_FILE = "labels.json"
TEST_PREDICTIONS = "test_predictions.json"
TEST_DETAILS = "test_details.json"  # metrics too large for the results (Task.detailed_metrics)


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


# Fewer validation rows than this cannot choose a checkpoint (a 1-row split scores 0 or 1: chance decides).
MIN_SELECTION_ROWS = 10


def check_validation_size(training_args, finetune_args: FinetuneArguments, data_args, validation_rows: int) -> None:
    """A validation split too small for what is chosen on it (the best checkpoint, when to stop early), counted as
    evaluated (max_eval_samples)."""
    chooses = training_args.load_best_model_at_end or training_args.save_strategy == "best" or \
        finetune_args.early_stopping_patience is not None
    rows = min(validation_rows, data_args.max_eval_samples or validation_rows)
    if chooses and rows < MIN_SELECTION_ROWS:
        raise RecipeError(f"the validation split has {rows} row(s) to evaluate, too few to choose the best checkpoint "
                          f"by (at least {MIN_SELECTION_ROWS}): raise validation_fraction or max_eval_samples, or give "
                          "a larger validation_file (or choose no best checkpoint: load_best_model_at_end: false)")


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
    """The prediction and the target of every test text, in the test split's order: as the task compares them
    (`predictions`, `references`: label ids, 0/1 rows, scores) and, for labels, by name (`predicted_labels`,
    `reference_labels`: a label, or a list of labels per row); and a hash of the rows' token ids (two runs scored
    the same rows in the same order only if it matches)."""
    rows = hashlib.sha256(json.dumps([list(ids) for ids in dataset["input_ids"]]).encode()).hexdigest()
    predictions, references = task.predictions(logits), np.asarray(targets).tolist()
    named = task.named(predictions)  # None for scores
    names = {} if named is None else {"predicted_labels": named, "reference_labels": task.named(references)}
    (out / TEST_PREDICTIONS).write_text(json.dumps({
        "problem_type": task.problem_type, "labels": task.labels, "test_inputs_sha256": rows,
        "predictions": predictions, "references": references, **names}))


def choose_best_metric(training_args, task: Task, finetune_args: FinetuneArguments, explicit: dict) -> None:
    """Where checkpoints are selected (load_best_model_at_end, early stopping, save_strategy: best) and the recipe
    names no metric_for_best_model, the task's default judges them (macro F1 for imbalanced labels); logged."""
    imbalanced = task.imbalance
    selects = training_args.load_best_model_at_end or finetune_args.early_stopping_patience is not None or \
        training_args.save_strategy == "best"
    if selects and "metric_for_best_model" not in explicit:  # the task's default
        training_args.metric_for_best_model, greater_is_better = task.best_metric
        if "greater_is_better" not in explicit:
            training_args.greater_is_better = greater_is_better
        logger.info("Best checkpoints%s are judged by %s (metric_for_best_model: the %s default%s; set it to "
                    "choose)", " and early stopping" if finetune_args.early_stopping_patience else "",
                    training_args.metric_for_best_model, task.problem_type,
                    f" for imbalanced labels, {imbalanced}" if imbalanced else "")
    elif imbalanced:
        logger.info("Imbalanced labels (%s): macro F1 and the per-class scores say more than accuracy "
                    "(class_weights: balanced weighs the loss)", imbalanced)


def split_rows(encoded: dict, documents: Documents | None) -> dict[str, str]:
    """Per split, what the run uses of it, in words: rows, or texts and the windows they were cut into."""
    if documents is None:
        return {split: f"{len(rows):,} rows" for split, rows in encoded.items()}
    return {split: f"{documents.texts[split]:,} texts in {len(rows):,} windows" for split, rows in encoded.items()}


def classifier_to_train(model_args: ModelArguments, finetune_args: FinetuneArguments, tokenizer, task: Task,
                        encoded: dict, documents: Documents | None = None):
    """The classifier as it trains (LoRA-wrapped when asked), logged with its data."""
    model, new_modules = build_classifier(model_args, finetune_args, tokenizer, task)
    if finetune_args.use_lora:
        model = apply_lora(model, finetune_args, new_modules)
    logger.info("Classifier (%s): %s parameters, %s trainable; labels %s; %s (long_text: %s)", task.problem_type,
                f"{count_parameters(model):,}", f"{count_parameters(model, trainable_only=True):,}", task.labels,
                ", ".join(f"{split} {rows}" for split, rows in split_rows(encoded, documents).items()),
                "chunk" if documents is not None else "truncate, longer texts cut at max_length tokens")
    for line in task.notes():
        logger.info("%s", line)
    return model


def save_labels(out: Path, task: Task, model, model_args, finetune_args, data_args) -> None:
    """labels.json: what prediction, publishing and merging need to rebuild the head and read its outputs."""
    (out / LABELS_FILE).write_text(json.dumps(
        {**task.saved(), "base_model": model_args.model_name_or_path, "init_from": finetune_args.init_from,
         "use_lora": finetune_args.use_lora, "base_config": architecture_summary(model),
         "long_text": data_args.long_text, "stride": data_args.window_overlap()}, indent=2))


def save_test_results(out: Path, task: Task, logits, targets, dataset) -> dict:
    """The test split's predictions per row (for paired comparisons of runs on the same test split: label_curve), the
    task's detailed metrics, and its figures of the split ({file name: figure}, for results.md)."""
    save_test_predictions(out, task, logits, targets, dataset)
    detailed = task.detailed_metrics(logits, targets)
    if detailed:
        (out / TEST_DETAILS).write_text(json.dumps(detailed))
    return task.test_figures(task.predictions(logits), np.asarray(targets).tolist())


def finetuning_report(model_args: ModelArguments, finetune_args: FinetuneArguments, data_args, task: Task, model,
                      encoded: dict, documents: Documents | None, figures: dict) -> RunReport:
    """What results.md says the run trained on what."""
    start = "random weights (init_from: scratch)" if finetune_args.init_from == "scratch" else \
        model_args.model_name_or_path
    lora = f", LoRA rank {finetune_args.lora_r}" if finetune_args.use_lora else ""
    labels = ", ".join(task.labels[:20]) + (f" and {len(task.labels) - 20} more" if len(task.labels) > 20 else "")
    return RunReport("Fine-tuning", {
        "model": f"{model.config.model_type} from {start}{lora}: {count_parameters(model):,} parameters, "
                 f"{count_parameters(model, trainable_only=True):,} trained",
        "task": f"{task.problem_type}, {task.card_description.format(labels=labels)}",
        "data": split_sources(data_args, split_rows(encoded, documents))}, figures=figures)


def evaluate_classifier(trainer, task: Task, encoded: dict, documents: Documents | None) -> tuple[dict, dict, tuple]:
    """(validation metrics, test metrics with the task's text-blind baseline, the test split's (logits, targets)
    per text); without a test split (test_fraction 0), ({...}, {}, None)."""
    eval_metrics = trainer.evaluate(metric_key_prefix="eval")
    eval_metrics["eval_samples"] = documents.texts["validation"] if documents is not None \
        else len(encoded["validation"])
    if "test" not in encoded:
        trainer.log_metrics("eval", {k: v for k, v in eval_metrics.items() if not isinstance(v, list)})
        trainer.save_metrics("eval", eval_metrics)
        return eval_metrics, {}, None
    test = predict_in_order(trainer, encoded["test"])
    test_metrics = dict(test.metrics)
    test_logits, test_targets = per_text(test, documents)
    train_targets = documents.split_targets("train") if documents is not None else encoded["train"]["labels"]
    test_metrics.update(task.baseline(np.asarray(train_targets), test_targets))
    test_metrics["test_samples"] = len(test_targets)
    for split, metrics in (("eval", eval_metrics), ("test", test_metrics)):
        trainer.log_metrics(split, {k: v for k, v in metrics.items() if not isinstance(v, list)})
        if f"{split}_confusion_matrix" in metrics:
            logger.info("%s confusion matrix (rows: true %s, columns: predicted): %s", split, task.labels,
                        metrics[f"{split}_confusion_matrix"])
        trainer.save_metrics(split, metrics)
    return eval_metrics, test_metrics, (test_logits, test_targets)


def said_at_the_end(task: Task, eval_metrics: dict, test_metrics: dict) -> str:
    """The end-of-run line's figures: the task's test summary, or validation's without a test split."""
    if test_metrics:
        return task.summary(test_metrics)
    best = task.best_metric[0]
    return f"no test split (test_fraction: 0); validation {best} {eval_metrics.get(f'eval_{best}', float('nan')):.4f}"


def check_base_run_finished(path: str) -> None:
    """A pretraining run to fine-tune from has finished: a stopped one has no final model yet (only checkpoints)."""
    folder = Path(path)
    if folder.is_dir() and is_run_folder(folder) and run_record(folder).get("finished") is not True:
        raise RecipeError(f"key 'model_name_or_path': {folder} holds a run that has not finished (no final model): "
                          "run its command again to finish it, then fine-tune")


def run_finetuning(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                   data_args: ClassificationDataArguments, finetune_args: FinetuneArguments,
                   training_args: RunArguments, explicit: dict | None = None, callbacks=()) -> dict:
    """Fine-tune a classifier end to end; returns the results also written to `output_dir/all_results.json`."""
    explicit = explicit or {}
    run = Run(training_args, model_args, "finetune")
    if not model_args.model_name_or_path:
        raise RecipeError("key 'model_name_or_path': fine-tuning needs a checkpoint (local folder or Hub id)")
    check_model_selection(finetune_args, training_args)
    recipe = resolved_recipe(explicit, model_args, tokenizer_args, data_args, finetune_args,
                             left_out=FINETUNE_ARGUMENTS.left_out)
    check_base_run_finished(resolve_model_path(model_args.model_name_or_path))
    tokenizer = load_tokenizer(
        resolve_model_path(tokenizer_args.tokenizer_name_or_path or model_args.model_name_or_path),
        trust_remote_code=model_args.trust_remote_code,
        key="tokenizer_name_or_path" if tokenizer_args.tokenizer_name_or_path else "model_name_or_path")
    prepare_pad_token(tokenizer)
    with training_args.main_process_first(desc="classification data"):
        splits, task = load_classification_data(data_args, finetune_args.problem_type, finetune_args,
                                                training_args.label_smoothing_factor)
        check_validation_size(training_args, finetune_args, data_args, len(splits["validation"]))
        encoded, documents = tokenize_for_classification(splits, tokenizer, task, data_args, training_args.seed)
    model = classifier_to_train(model_args, finetune_args, tokenizer, task, encoded, documents)
    choose_best_metric(training_args, task, finetune_args, explicit)
    stopping = [EarlyStoppingCallback(finetune_args.early_stopping_patience, finetune_args.early_stopping_threshold)] \
        if finetune_args.early_stopping_patience is not None else []
    throughput = run.throughput(model, data_args.max_length)
    trainer = run.trainer(lambda: Trainer(
        model=model, args=training_args, train_dataset=encoded["train"], eval_dataset=encoded["validation"],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics_function(task, documents), compute_loss_func=task_loss(task, documents),
        optimizer_cls_and_kwargs=optimizer_with_head_learning_rate(training_args, model,
                                                                   finetune_args.head_learning_rate)
        if finetune_args.head_learning_rate is not None else None,
        callbacks=[throughput, *stopping, *callbacks]))
    finished = run.claim(recipe, run_inputs(model_args, tokenizer, source_fingerprint(data_args)),
                         unused_keys=set(FINETUNE_ARGUMENTS.left_out))
    if finished is not None:
        return finished
    out = Path(training_args.output_dir)
    if training_args.should_save:
        save_labels(out, task, model, model_args, finetune_args, data_args)
        record_run(out, files=[LABELS_FILE])
    train_metrics = run.train(trainer)

    if task.tunes:  # e.g. the multi-label decision threshold: chosen on validation, used on test and saved
        logger.info("%s", task.tune(*per_text(predict_in_order(trainer, encoded["validation"]), documents)))
        if training_args.should_save:
            save_labels(out, task, model, model_args, finetune_args, data_args)
    eval_metrics, test_metrics, test_rows = evaluate_classifier(trainer, task, encoded, documents)
    figures = save_test_results(out, task, *test_rows, encoded["test"]) \
        if training_args.should_save and test_rows is not None else {}
    if finetune_args.use_lora and finetune_args.merge_lora and training_args.should_save:
        merge_adapter(training_args.output_dir, out / "merged", replace=True)  # a merge a stop cut short
    return run.finish({**train_metrics, **eval_metrics, **test_metrics},
                      f"Fine-tuning done: {said_at_the_end(task, eval_metrics, test_metrics)}. Model in "
                      f"{training_args.output_dir}",
                      report=finetuning_report(model_args, finetune_args, data_args, task, model, encoded, documents,
                                               figures))
