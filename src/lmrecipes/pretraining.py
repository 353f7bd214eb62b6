"""Pretraining from scratch: tokenizer, model from a config class, packed data, `Trainer`, perplexity and bits/byte."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import Trainer

from .arguments import ModelArguments, PretrainDataArguments, RunArguments, TokenizerArguments
from .data.packing import corpus_texts, load_corpus, prepare_pretraining_data
from .data.token_shards import check_made_for, read_index, token_shards_fingerprint, write_token_shards
from .errors import RecipeError
from .modeling import (
    build_config,
    check_tokenizer_for,
    config_and_objective,
    count_parameters,
    infer_objective,
    pretraining_model,
)
from .objectives import Objective
from .objectives.documents import use_document_masking
from .recipe import resolved_recipe
from .run import Run
from .run_folder import run_inputs
from .run_report import RunReport, split_sources
from .tokenizer import get_or_train_tokenizer, tokenizer_made_once

logger = logging.getLogger("lmrecipes")


def corpus_tokenizer(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                     data_args: PretrainDataArguments, objective: Objective, raw: dict, fingerprint: str):
    """The recipe's tokenizer: loaded, or trained on the training split (cached per corpus and settings)."""
    tokenizer = get_or_train_tokenizer(
        tokenizer_args, objective, lambda: corpus_texts(raw["train"], data_args.text_column), fingerprint,
        data_args.cache_root, trust_remote_code=model_args.trust_remote_code)
    check_tokenizer_for(objective, tokenizer)
    return tokenizer


def load_corpus_and_tokenizer(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                              data_args: PretrainDataArguments, objective: Objective):
    """The raw train/validation splits, their fingerprint, and the recipe's tokenizer (trained on train if needed)."""
    raw, fingerprint = load_corpus(data_args)
    return raw, fingerprint, corpus_tokenizer(model_args, tokenizer_args, data_args, objective, raw, fingerprint)


def recipe_tokenizer(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                     data_args: PretrainDataArguments):
    """(raw splits, tokenizer) of a pretraining recipe, without training a model (train_tokenizer script and API)."""
    objective = infer_objective(build_config(model_args), model_args.objective)
    raw, _, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, objective)
    return raw, tokenizer


def run_corpus_and_tokenizer(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                             data_args: PretrainDataArguments, objective: Objective, training_args: RunArguments):
    """(raw splits, fingerprint, tokenizer) of a run. Caches are filled by the first process of each machine
    (machines need not share a filesystem); a tokenizer trained on the corpus is made once for the whole run and
    sent to every process (a named one: each loads it)."""
    with training_args.main_process_first(desc="reading the corpus"):
        raw, fingerprint = load_corpus(data_args)
    make_tokenizer = lambda: corpus_tokenizer(model_args, tokenizer_args, data_args, objective, raw, fingerprint)  # noqa: E731
    tokenizer = make_tokenizer() if tokenizer_args.tokenizer_name_or_path else \
        tokenizer_made_once(make_tokenizer, training_args)
    return raw, fingerprint, tokenizer


def tokenize_corpus(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                    data_args: PretrainDataArguments) -> dict:
    """Write the training split of a recipe's corpus as token shards to its token_shards_dir (scripts/
    tokenize_corpus.py); returns the shards' index. The tokenizer is the recipe's, trained first if it is made."""
    if not data_args.token_shards_dir:
        raise RecipeError("key 'token_shards_dir': name the folder to write the token shards to")
    objective = infer_objective(build_config(model_args), model_args.objective)
    raw, fingerprint, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, objective)
    folder = Path(data_args.token_shards_dir)
    there = write_token_shards(folder, raw["train"], tokenizer, objective, data_args.text_column, fingerprint,
                               workers=data_args.preprocessing_num_workers or 0)
    index = read_index(folder)
    check_made_for(index, folder, tokenizer, objective, fingerprint,
                   remedy="delete that folder or name another token_shards_dir, and run this again")
    logger.info("%s %s: %d documents, %d tokens in %d shards", "Token shards already in" if there else
                "Token shards written to", folder, index["documents"], index["tokens"], len(index["shards"]))
    return index


def run_data(raw: dict, fingerprint: str, tokenizer, objective: Objective, data_args: PretrainDataArguments,
             training_args: RunArguments):
    """(train, eval, eval bytes per token, the run's data fingerprint): a stream is read by every process on its own
    share of it, token shards are part of the fingerprint (a rerun on other shards is another run)."""
    shares = training_args.world_size * max(training_args.dataloader_num_workers, 1)
    if data_args.streaming and not data_args.token_shards_dir:
        if training_args.accelerator_config.dispatch_batches is None:
            # accelerate's default for a stream is process 0 reading every process's batches and sending them out,
            # which starves 8 GPUs
            training_args.accelerator_config.dispatch_batches = False
        if training_args.accelerator_config.split_batches and training_args.world_size > 1:
            logger.warning("accelerator_config split_batches: every process reads and tokenizes the whole stream "
                           "(accelerate splits each batch instead of giving each process its own share)")
        if data_args.max_train_samples and data_args.max_train_samples < shares:
            raise RecipeError(f"key 'max_train_samples': the stream is split into {shares} shares (processes x "
                              f"data-loader workers), and each needs at least one of the "
                              f"{data_args.max_train_samples} blocks; give at least {shares}")
    with training_args.main_process_first(desc="data preparation"):
        train, evaluation, eval_bytes_per_token = prepare_pretraining_data(
            raw, fingerprint, tokenizer, objective, data_args, shuffle_seed=training_args.seed, stream_shares=shares)
    if data_args.token_shards_dir:
        fingerprint = f"{fingerprint} {token_shards_fingerprint(train)}"
    return train, evaluation, eval_bytes_per_token, fingerprint


def evaluate_language_model(trainer, objective: Objective, bytes_per_token: float) -> dict:
    """The held-out metrics: the Trainer's loss (token-weighted) and what the objective adds (perplexity...)."""
    metrics = trainer.evaluate()
    metrics.update(objective.eval_metrics(metrics, bytes_per_token))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def pretraining_report(config, objective: Objective, model_args: ModelArguments, data_args: PretrainDataArguments,
                       model, train_dataset, eval_dataset) -> RunReport:
    """What results.md says the run trained on what."""
    start = f"from {model_args.model_name_or_path}" if model_args.model_name_or_path else "from random weights"
    blocks = {split: f"{len(dataset):,} blocks of {data_args.block_size} tokens" if hasattr(dataset, "__len__")
              else f"streamed in blocks of {data_args.block_size} tokens"
              for split, dataset in (("train", train_dataset), ("validation", eval_dataset))}
    data = split_sources(data_args, blocks)
    if data_args.token_shards_dir:
        data += f"; training blocks read from the token shards in {data_args.token_shards_dir}"
    return RunReport("Pretraining", {"model": f"{config.model_type} ({objective.name}), "
                                              f"{count_parameters(model):,} parameters, {start}", "data": data},
                     objective.loss_label, validation_keys=tuple(key for key, _, _ in objective.reported_metrics))


def run_pretraining(model_args: ModelArguments, tokenizer_args: TokenizerArguments,
                    data_args: PretrainDataArguments, training_args: RunArguments, explicit: dict | None = None,
                    callbacks=()) -> dict:
    """Run a pretraining recipe end to end; returns the results also written to `output_dir/all_results.json`.

    `explicit` holds the keys the user set (recorded in recipe.yaml); `callbacks` are extra `TrainerCallback`s.
    """
    run = Run(training_args, model_args, "pretrain")
    config, objective = config_and_objective(model_args)
    if data_args.streaming and not data_args.token_shards_dir and training_args.max_steps <= 0:
        raise RecipeError("key 'streaming': streaming needs max_steps (the stream has no known length)")

    raw, fingerprint, tokenizer = run_corpus_and_tokenizer(model_args, tokenizer_args, data_args, objective,
                                                           training_args)
    train_dataset, eval_dataset, eval_bytes_per_token, fingerprint = run_data(raw, fingerprint, tokenizer, objective,
                                                                              data_args, training_args)
    model = pretraining_model(config, objective, model_args, data_args, tokenizer)
    tokenizer.model_max_length = data_args.block_size
    logger.info("Model: %s (%s), %s parameters (shared weights counted once)", config.model_type, objective.name,
                f"{count_parameters(model):,}")
    if hasattr(train_dataset, "__len__"):
        logger.info("Data: %d training blocks, %d evaluation blocks of %d tokens", len(train_dataset),
                    len(eval_dataset), data_args.block_size)

    recipe = {**resolved_recipe(explicit or {}, model_args, tokenizer_args, data_args), "objective": objective.name}
    # eval keeps the loss only (no logits in memory) unless the objective computes metrics from the model's outputs
    training_args.prediction_loss_only = objective.compute_metrics is None
    collator = objective.collator(tokenizer, data_args, training_args.seed,
                                  documents=use_document_masking(objective, model, data_args.document_masking))
    throughput = run.throughput(model, data_args.block_size, packed=True)
    # a faster training loss (causal_lm: fused_loss) is chosen, and a refused one reported, before anything is written
    faster_loss = objective.attach_training_loss(model, training_args, model_args)
    try:
        trainer = run.trainer(lambda: Trainer(
            model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            processing_class=tokenizer, data_collator=collator,
            compute_metrics=objective.compute_metrics, preprocess_logits_for_metrics=objective.preprocess_logits,
            callbacks=[throughput, *callbacks]))
        finished = run.claim(recipe, run_inputs(model_args, tokenizer, fingerprint))
        if finished is not None:
            return finished
        train_metrics = run.train(trainer)
    finally:
        if faster_loss:
            faster_loss.detach()
    if training_args.should_save:
        objective.finalize_saved(training_args.output_dir)
    eval_metrics = evaluate_language_model(trainer, objective, eval_bytes_per_token)
    figures = "".join(f", {label} {eval_metrics[key]:{spec}}" for key, label, spec in objective.reported_metrics
                      if eval_metrics.get(key) is not None)
    summary = (f"Pretraining done: held-out {objective.loss_label} {eval_metrics['eval_loss']:.4f}{figures}. Model in "
               f"{training_args.output_dir}")
    return run.finish({**train_metrics, **eval_metrics}, summary, folders=objective.saved_folders,
                      report=pretraining_report(config, objective, model_args, data_args, model, train_dataset,
                                                eval_dataset))
