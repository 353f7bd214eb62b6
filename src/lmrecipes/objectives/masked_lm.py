"""Masked language modelling: recover the masked 15% of tokens (BERT, RoBERTa, ModernBERT...)."""

from __future__ import annotations

from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .base import Objective, pipeline_snippet

MASKED_LM = Objective(
    name="masked_lm",
    auto_model=AutoModelForMaskedLM,
    model_type_names=MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    special_tokens={"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                    "mask_token": "[MASK]"},
    tokenizer_type="wordpiece",
    separator="sep_token",
    wraps_blocks=True,  # [CLS] ... [SEP]
    needs_mask_token=True,
    scored_per_block=lambda block_size: block_size - 2,  # the body between [CLS] and [SEP] (denominator of bits/byte)
    collator=lambda tokenizer, data_args: DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=data_args.mlm_probability),
    # the masked-token perplexity is the only meaningful figure: no bits per byte for a masked LM
    eval_metrics=lambda loss, bytes_per_token: {},
    architecture_markers=("MaskedLM",),
    pipeline_tag="fill-mask",
    usage=lambda repo_id, mask_token: pipeline_snippet(
        "fill-mask", "fill", repo_id, f'fill("The ship sailed across the {mask_token or "[MASK]"}.")'),
    card_tag="masked-lm",
    description="a masked language model pretrained from scratch",
)
