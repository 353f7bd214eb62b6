"""What every pretraining objective provides (one instance per objective module)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


def pipeline_snippet(task: str, variable: str, repo_id: str, call: str) -> str:
    """A model card's how-to-use code: a transformers pipeline of `task` on `repo_id`, then `print(call)`."""
    return f'from transformers import pipeline\n{variable} = pipeline("{task}", model="{repo_id}")\nprint({call})'


def perplexity(loss_nats_per_token: float) -> float:
    return math.exp(loss_nats_per_token) if loss_nats_per_token < 700 else math.inf


def loss_sums_per_block(logits, labels, shift: bool):
    """The Trainer's `preprocess_logits_for_metrics` for a language-model loss: per block, [summed cross-entropy of
    its scored tokens (label != -100), their count], so that only two numbers a block are kept and gathered.
    `shift`: labels are the inputs (causal: token t predicts t+1)."""
    import torch

    logits = logits[0] if isinstance(logits, tuple) else logits
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    scored = labels != -100
    losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels.masked_fill(~scored, 0),
                                               reduction="none")
    return torch.stack([(losses * scored).sum(1), scored.sum(1).to(losses.dtype)], dim=1)


def token_weighted_loss(prediction) -> dict:
    """The Trainer's `compute_metrics` over loss_sums_per_block's rows of the whole evaluation set: the mean loss
    per scored token. Returned as `loss`, it replaces the Trainer's eval_loss, which averages each batch's mean per
    block: that weighs masked-LM batches wrongly (their blocks score different numbers of tokens) and, under DDP,
    counts the blocks that pad the last uneven batch (an eval loss that changed with the number of processes)."""
    sums = np.asarray(prediction.predictions, dtype=np.float64).reshape(-1, 2).sum(0)
    return {"loss": float(sums[0] / sums[1]) if sums[1] else math.nan, "scored_tokens": int(sums[1])}


@dataclass(frozen=True)
class Objective:
    """One pretraining objective.

    name: the recipe's `objective` value.
    auto_model: the transformers Auto class whose head it trains (and whose mapping says which model types have it).
    model_type_names: model types it can train (model type -> class name; transformers' auto mapping names).
    heads: what a model type needs for it, in words (errors name it).
    special_tokens: the tokenizer's special tokens when lmrecipes trains one (the recipe's special_tokens override).
    tokenizer_type: the tokenizer model trained by default (bpe / wordpiece / unigram).
    separator: the special-token role put between packed documents.
    wraps_blocks: blocks are laid out as [CLS] ... [SEP] (encoders) instead of a plain token stream.
    needs_mask_token: the objective masks tokens, so the tokenizer must have a mask token.
    scored_per_block: how many tokens of a block of `block_size` the loss scores (for bits per byte).
    collator: (tokenizer, data arguments, seed) -> the data collator of the Trainer (random masking: seeded).
    eval_metrics: (the Trainer's eval metrics, UTF-8 bytes per scored token) -> metrics it adds (perplexity...).
    reported_metrics: (results key, label, format) of the figures that describe a run: printed at the end, in the
        pipeline summary and (with eval_loss) in the model card's model-index.
    loss_label: what its loss is (logs, plots, model card).
    architecture_markers: substrings of a saved config's `architectures` that mark a checkpoint of this objective.
    pipeline_tag: the Hub / transformers pipeline task of the saved model.
    usage: (repo id, the tokenizer's mask token or None) -> the model card's how-to-use snippet.
    card_tag: the model card's tag for the objective.
    description: what the saved model is, for the model card.
    recipe_keys: ModelArguments keys only this objective reads (set for another objective: an error).
    check_arguments: (config, model arguments) -> None; raises RecipeError for settings the objective refuses
        (checked before any data is prepared).
    build_model: (config, model arguments, masked fraction, weights folder or Hub id or None) -> the model to
        train, when `auto_model.from_config` / `from_pretrained` is not it.
    compute_metrics: the Trainer's `compute_metrics` over what the model returns at evaluation (after
        preprocess_logits); None: the Trainer's loss only.
    preprocess_logits: the Trainer's `preprocess_logits_for_metrics`: what of each evaluation batch's logits is kept
        for compute_metrics.
    finalize_saved: (output_dir) -> None, run on the main process after the final save: turns what the Trainer
        saved into the published layout.
    saved_folders: subfolders of a finished run that belong to the model (published and recorded with it).
    attach_training_loss: (model, training arguments, the recipe's fused_loss) -> an attachment (its detach()
        undoes it) or None: before the Trainer is built, replaces the model's training loss by a faster one with the
        same value (causal_lm: lmrecipes.fused_loss).
    """

    name: str
    auto_model: type
    model_type_names: dict
    heads: str
    special_tokens: dict
    tokenizer_type: str
    separator: str
    wraps_blocks: bool
    needs_mask_token: bool
    scored_per_block: Callable[[int], int]
    collator: Callable
    eval_metrics: Callable[[dict, float], dict]
    reported_metrics: tuple[tuple[str, str, str], ...]
    loss_label: str
    architecture_markers: tuple[str, ...]
    pipeline_tag: str
    usage: Callable[[str, str | None], str]
    card_tag: str
    description: str
    recipe_keys: tuple[str, ...] = ()
    check_arguments: Callable | None = None
    build_model: Callable | None = None
    compute_metrics: Callable | None = None
    preprocess_logits: Callable | None = None
    finalize_saved: Callable | None = None
    saved_folders: tuple[str, ...] = ()
    attach_training_loss: Callable | None = None
