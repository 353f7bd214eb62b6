"""Pretraining from scratch: tokenizer, model from a config class, packed data, `Trainer`, perplexity and bits/byte."""

from __future__ import annotations

import hashlib
import json
import logging
from itertools import chain
from pathlib import Path

from transformers import Trainer, set_seed

from .arguments import ModelArguments, PretrainDataArguments, RunArguments, TokenizerArguments
from .data import load_raw_splits, prepare_pretraining_data, split_held_out
from .errors import RecipeError
from .modeling import (build_config, build_language_model, check_model_arguments, check_tokenizer_for,
                       count_parameters, fit_config_to_tokenizer, infer_objective, warn_remote_code)
from .objectives import get_objective
from .recipe import resolved_recipe
from .rows import RowRules
from .tokenizer import get_or_train_tokenizer, tokenizer_made_once
from .training import (build_trainer, check_resume_request, check_world_size, claim_output_dir, find_checkpoint,
                       hub_target, publish_if_asked, record_saved_files, run_inputs, setup_logging, throughput_callback,
                       train_and_save, use_the_cpus)

logger = logging.getLogger("lmrecipes")

PRETRAIN_ARGUMENTS = (ModelArguments, TokenizerArguments, PretrainDataArguments, RunArguments)


def _iter_texts(dataset, column: str):
    if hasattr(dataset, "iter") and not hasattr(dataset, "_ex_iterable"):
        return chain.from_iterable(batch[column] for batch in dataset.iter(batch_size=64))
    return (row[column] for row in dataset)


def load_corpus(data_args: PretrainDataArguments):
    """The raw train/validation splits and their fingerprint (what the tokenizer and the packed data depend on)."""
    raw, fingerprint = load_raw_splits(data_args, streaming=data_args.streaming,
                                       rules=RowRules(texts={"text_column": data_args.text_column}))
    if "validation" not in raw:
        raw.update(split_held_out(raw["train"], {"validation": data_args.validation_fraction},
                                  data_args.text_column))
    # the training split, and so the tokenizer and the packed data, also depend on these keys and rows checks
    fingerprint = hashlib.sha256(json.dumps([fingerprint, data_args.text_column, data_args.validation_fraction,
                                             data_args.skip_bad_rows]).encode()).hexdigest()
    return raw, fingerprint


def corpus_tokenizer(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                     data_args: PretrainDataArguments, objective: str, raw: dict, fingerprint: str):
    """The recipe's tokenizer: loaded, or trained on the training split (cached per corpus and settings)."""
    tokenizer = get_or_train_tokenizer(
        tokenizer_args, objective, lambda: _iter_texts(raw["train"], data_args.text_column), fingerprint,
        data_args.cache_root, trust_remote_code=model_args.trust_remote_code)
    check_tokenizer_for(objective, tokenizer)
    return tokenizer


def load_corpus_and_tokenizer(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                              data_args: PretrainDataArguments, objective: str):
    """The raw train/validation splits, their fingerprint, and the recipe's tokenizer (trained on train if needed)."""
    raw, fingerprint = load_corpus(data_args)
    return raw, fingerprint, corpus_tokenizer(model_args, tokenizer_args, data_args, objective, raw, fingerprint)


def recipe_tokenizer(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                     data_args: PretrainDataArguments):
    """(raw splits, tokenizer) of a pretraining recipe, without training a model (train_tokenizer script and API)."""
    objective = infer_objective(build_config(model_args), model_args.objective)
    raw, _, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, objective)
    return raw, tokenizer


def run_pretraining(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                    data_args: PretrainDataArguments, training_args: RunArguments, explicit: dict | None = None,
                    callbacks=()) -> dict:
    """Run a pretraining recipe end to end; returns the results also written to `output_dir/all_results.json`.

    `explicit` holds the keys the user set (recorded in recipe.yaml); `callbacks` are extra `TrainerCallback`s.
    """
    setup_logging(training_args)
    use_the_cpus(training_args)
    check_world_size(training_args)
    check_resume_request(training_args)
    warn_remote_code(model_args)
    set_seed(training_args.seed)  # the model's initial weights depend on it
    hub = hub_target(training_args)
    config = build_config(model_args)
    objective = infer_objective(config, model_args.objective)
    check_model_arguments(config, objective, model_args)
    if data_args.streaming and training_args.max_steps <= 0:
        raise RecipeError("key 'streaming': streaming needs max_steps (the stream has no known length)")

    # caches are filled by the first process of each machine (machines need not share a filesystem); a tokenizer
    # trained on the corpus is made once for the whole run and sent to every process (a named one: each loads it)
    with training_args.main_process_first(desc="reading the corpus"):
        raw, fingerprint = load_corpus(data_args)
    make_tokenizer = lambda: corpus_tokenizer(model_args, tokenizer_args, data_args, objective, raw, fingerprint)  # noqa: E731
    tokenizer = make_tokenizer() if tokenizer_args.tokenizer_name_or_path else \
        tokenizer_made_once(make_tokenizer, training_args)
    with training_args.main_process_first(desc="data preparation"):
        train_dataset, eval_dataset, eval_bytes_per_token = prepare_pretraining_data(
            raw, fingerprint, tokenizer, objective, data_args, shuffle_seed=training_args.seed)

    fit_config_to_tokenizer(config, tokenizer, objective, data_args.block_size,
                            vocab_size_set="vocab_size" in model_args.config_overrides)
    tokenizer.model_max_length = data_args.block_size
    model = build_language_model(config, objective, model_args, data_args.mlm_probability)
    logger.info("Model: %s (%s), %s parameters (shared weights counted once)", config.model_type, objective,
                f"{count_parameters(model):,}")
    if not data_args.streaming:
        logger.info("Data: %d training blocks, %d evaluation blocks of %d tokens", len(train_dataset),
                    len(eval_dataset), data_args.block_size)

    recipe = resolved_recipe(explicit or {}, model_args, tokenizer_args, data_args)
    recipe["objective"] = objective
    rules = get_objective(objective)
    # eval keeps the loss only (no logits in memory) unless the objective computes metrics from the model's outputs
    training_args.prediction_loss_only = rules.compute_metrics is None
    collator = rules.collator(tokenizer, data_args, training_args.seed)
    throughput = throughput_callback(model, training_args, data_args.block_size)
    # a faster training loss (causal_lm: fused_loss) is chosen, and a refused one reported, before anything is written
    faster_loss = rules.attach_training_loss and rules.attach_training_loss(model, training_args,
                                                                             model_args.fused_loss)
    try:
        trainer = build_trainer(training_args, lambda: Trainer(
            model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            processing_class=tokenizer, data_collator=collator, compute_metrics=rules.compute_metrics,
            preprocess_logits_for_metrics=rules.preprocess_logits, callbacks=[throughput, *callbacks]))
        finished = claim_output_dir(training_args, recipe, "# Resolved recipe of this run (lmrecipes pretrain)",
                                    run_inputs(model_args, tokenizer, fingerprint))
        if finished is not None:
            return finished
        checkpoint = find_checkpoint(training_args)
        train_metrics = train_and_save(trainer, checkpoint, throughput)
    finally:
        if faster_loss:
            faster_loss.detach()
    if rules.finalize_saved is not None and training_args.should_save:
        rules.finalize_saved(training_args.output_dir)

    eval_metrics = trainer.evaluate()
    eval_metrics.update(rules.eval_metrics(eval_metrics, eval_bytes_per_token))
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    results = {**train_metrics, **eval_metrics}
    if training_args.should_save:
        record_saved_files(Path(training_args.output_dir), finished=True)  # results, merged/: the run is done
    if training_args.should_log:
        figures = "".join(f", {label} {eval_metrics[key]:{spec}}" for key, label, spec in rules.reported_metrics
                          if eval_metrics.get(key) is not None)
        print(f"Pretraining done: held-out {rules.loss_label} {eval_metrics['eval_loss']:.4f}{figures}. Model in "
              f"{training_args.output_dir}", flush=True)
    publish_if_asked(training_args, hub)
    return results
