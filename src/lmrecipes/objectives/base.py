"""What every pretraining objective provides: the Objective base class (one subclass and one instance per objective
module), the base of the recipe keys an objective declares, and the evaluation helpers the language models share."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

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


@dataclass
class ObjectiveKeys:
    """Base of the recipe keys an objective declares: a dataclass of fields (their help is the key's documentation)
    that arguments.ModelArguments inherits. A subclass's __post_init__ calls super().__post_init__() first."""

    def __post_init__(self):
        pass


class Objective:
    """One pretraining objective. Class attributes describe it; methods do what differs between objectives.

    name: the recipe's `objective` value.
    auto_model: the transformers Auto class whose head it trains (and whose mapping says which model types have it).
    model_type_names: model types it can train (model type -> class name; transformers' auto mapping names).
    heads: what a model type needs for it, in words (errors name it).
    special_tokens: the tokenizer's special tokens when lmrecipes trains one (the recipe's special_tokens override).
    tokenizer_type: the tokenizer model trained by default (bpe / wordpiece / unigram).
    separator: the special-token role put between packed documents.
    wraps_blocks: blocks are laid out as [CLS] ... [SEP] (encoders) instead of a plain token stream.
    needs_mask_token: the objective masks tokens, so the tokenizer must have a mask token.
    reported_metrics: (results key, label, format) of the figures that describe a run: printed at the end, in the
        pipeline summary and (with eval_loss) in the model card's model-index.
    loss_label: what its loss is (logs, plots, model card).
    architecture_markers: substrings of a saved config's `architectures` that mark a checkpoint of this objective.
    pipeline_tag: the Hub / transformers pipeline task of the saved model.
    card_tag: the model card's tag for the objective.
    description: what the saved model is, for the model card.
    keys: the ObjectiveKeys dataclass of the recipe keys only this objective reads (set for another objective: an
        error), or None.
    saved_folders: subfolders of a finished run that belong to the model (published and recorded with it).
    demonstration_task: the transformers pipeline task that shows what a pretrained model learnt, prompt by prompt
        (text-generation: its greedy continuation; fill-mask: its top predictions for a mask after the prompt).
    compute_metrics: the Trainer's `compute_metrics` over what the model returns at evaluation (after
        preprocess_logits); None: the Trainer's loss only.
    preprocess_logits: the Trainer's `preprocess_logits_for_metrics`: what of each evaluation batch's logits is kept
        for compute_metrics.
    """

    name: ClassVar[str]
    auto_model: ClassVar[type]
    model_type_names: ClassVar[dict]
    heads: ClassVar[str]
    special_tokens: ClassVar[dict]
    tokenizer_type: ClassVar[str]
    separator: ClassVar[str]
    wraps_blocks: ClassVar[bool]
    needs_mask_token: ClassVar[bool]
    reported_metrics: ClassVar[tuple[tuple[str, str, str], ...]]
    loss_label: ClassVar[str]
    architecture_markers: ClassVar[tuple[str, ...]]
    pipeline_tag: ClassVar[str]
    card_tag: ClassVar[str]
    description: ClassVar[str]
    keys: ClassVar[type | None] = None
    saved_folders: ClassVar[tuple[str, ...]] = ()
    demonstration_task: ClassVar[str]
    compute_metrics = None
    preprocess_logits = None

    @property
    def recipe_keys(self) -> tuple[str, ...]:
        """ModelArguments keys only this objective reads."""
        return tuple(f.name for f in fields(self.keys)) if self.keys is not None else ()

    def scored_per_block(self, block_size: int) -> int:
        """How many tokens of a block of `block_size` the loss scores (for bits per byte)."""
        raise NotImplementedError

    def collator(self, tokenizer, data_args, seed: int, documents: bool = False):
        """The Trainer's data collator (random masking: seeded); `documents`: keep packed documents apart
        (document_masking_problem found none)."""
        raise NotImplementedError

    def document_masking_problem(self, model) -> str | None:
        """Why packed documents cannot be kept apart in `model` with this objective (None: they can)."""
        return (f"{self.name}: transformers builds document masks from restarting position ids for causal attention "
                "only")

    def eval_metrics(self, metrics: dict, bytes_per_token: float) -> dict:
        """The metrics it adds (perplexity...) to the Trainer's eval metrics; `bytes_per_token`: UTF-8 bytes per
        scored token of the held-out blocks."""
        raise NotImplementedError

    def usage(self, repo_id: str, mask_token: str | None) -> str:
        """The model card's how-to-use snippet."""
        raise NotImplementedError

    def demonstration_folder(self, run_dir):
        """The folder of a finished run whose model `demonstration_task`'s pipeline loads."""
        return run_dir

    def check_arguments(self, config, model_args) -> None:
        """Raise RecipeError for settings the objective refuses (checked before any data is prepared)."""

    def build_model(self, config, model_args, masked_fraction: float, source: str | None):
        """The model to train: `auto_model` from the config (random weights), or from the weights of `source` (a
        folder or Hub id; safetensors only). `masked_fraction`: the data's mlm_probability."""
        kwargs = {"attn_implementation": model_args.attn_implementation,
                  "trust_remote_code": model_args.trust_remote_code}
        if source:
            return self.auto_model.from_pretrained(source, config=config, use_safetensors=True,
                                                   revision=model_args.model_revision, **kwargs)
        return self.auto_model.from_config(config, **kwargs)

    def attach_training_loss(self, model, training_args, model_args):
        """Before the Trainer is built, replace the model's training loss by a faster one with the same value; the
        returned attachment's detach() undoes it. None: the model's own loss."""
        return None

    def finalize_saved(self, output_dir) -> None:
        """Run on the main process after the final save: turn what the Trainer saved into the published layout."""
