"""What every pretraining objective provides (one instance per objective module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def pipeline_snippet(task: str, variable: str, repo_id: str, call: str) -> str:
    """A model card's how-to-use code: a transformers pipeline of `task` on `repo_id`, then `print(call)`."""
    return f'from transformers import pipeline\n{variable} = pipeline("{task}", model="{repo_id}")\nprint({call})'


@dataclass(frozen=True)
class Objective:
    """One pretraining objective.

    name: the recipe's `objective` value.
    auto_model: the transformers Auto class whose head it trains (and whose mapping says which model types have it).
    model_type_names: model types with that head (transformers' auto mapping names).
    special_tokens: the tokenizer's special tokens when lmrecipes trains one (the recipe's special_tokens override).
    tokenizer_type: the tokenizer model trained by default (bpe / wordpiece / unigram).
    separator: the special-token role put between packed documents.
    wraps_blocks: blocks are laid out as [CLS] ... [SEP] (encoders) instead of a plain token stream.
    needs_mask_token: the objective masks tokens, so the tokenizer must have a mask token.
    scored_per_block: how many tokens of a block of `block_size` the loss scores (for bits per byte).
    collator: (tokenizer, data arguments) -> the data collator of the Trainer.
    eval_metrics: (eval loss in nats per token, UTF-8 bytes per scored token) -> metrics beyond the loss.
    architecture_markers: substrings of a saved config's `architectures` that mark a checkpoint of this objective.
    pipeline_tag: the Hub / transformers pipeline task of the saved model.
    usage: (repo id, the tokenizer's mask token or None) -> the model card's how-to-use snippet.
    card_tag: the model card's tag for the objective.
    description: what the saved model is, for the model card.
    """

    name: str
    auto_model: type
    model_type_names: dict
    special_tokens: dict
    tokenizer_type: str
    separator: str
    wraps_blocks: bool
    needs_mask_token: bool
    scored_per_block: Callable[[int], int]
    collator: Callable
    eval_metrics: Callable[[float, float], dict]
    architecture_markers: tuple[str, ...]
    pipeline_tag: str
    usage: Callable[[str, str | None], str]
    card_tag: str
    description: str
