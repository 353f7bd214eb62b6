"""Causal language modelling: predict every next token (Llama, GPT-2, Qwen...)."""

from __future__ import annotations

import math

from transformers import AutoModelForCausalLM, default_data_collator
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..fused_loss import use_fused_loss
from .base import Objective, loss_sums_per_block, perplexity, pipeline_snippet, token_weighted_loss


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float) -> float:
    """Cross-entropy per UTF-8 byte in bits: comparable across tokenizers (nats/token / (ln 2 x bytes/token))."""
    return loss_nats_per_token / (math.log(2) * bytes_per_token)


CAUSAL_LM = Objective(
    name="causal_lm",
    auto_model=AutoModelForCausalLM,
    model_type_names=MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    heads="causal language-model head",
    special_tokens={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
    tokenizer_type="bpe",
    separator="eos_token",
    wraps_blocks=False,
    needs_mask_token=False,
    scored_per_block=lambda block_size: block_size - 1,  # every token but the first is predicted
    collator=lambda tokenizer, data_args, seed: default_data_collator,  # packed blocks carry their labels, no padding
    eval_metrics=lambda metrics, bytes_per_token: {
        "perplexity": perplexity(metrics["eval_loss"]),
        "bits_per_byte": bits_per_byte(metrics["eval_loss"], bytes_per_token)},
    reported_metrics=(("perplexity", "held-out perplexity", ".2f"), ("bits_per_byte", "held-out bits/byte", ".3f")),
    loss_label="loss (nats/token)",
    architecture_markers=("CausalLM", "LMHead"),
    pipeline_tag="text-generation",
    usage=lambda repo_id, mask_token: pipeline_snippet(
        "text-generation", "generate", repo_id,
        'generate("It was a dark and stormy night", max_new_tokens=40)[0]["generated_text"]'),
    card_tag="causal-lm",
    description="a causal language model pretrained from scratch",
    compute_metrics=token_weighted_loss,
    preprocess_logits=lambda logits, labels: loss_sums_per_block(logits, labels, shift=True),
    recipe_keys=("fused_loss",),
    attach_training_loss=use_fused_loss,
)
