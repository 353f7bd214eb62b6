"""Masked language modelling: recover the masked 15% of tokens (BERT, RoBERTa, ModernBERT...)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .base import Objective, loss_sums_per_block, perplexity, pipeline_snippet, token_weighted_loss


class BatchSeededMasking(DataCollatorForLanguageModeling):
    """DataCollatorForLanguageModeling whose masks come from a generator seeded with (seed, the batch's token ids)
    instead of the global random state.

    Hand-written because the Trainer (transformers 5.25 and earlier), resuming mid-epoch, collates the first optimizer
    step's batches before it restores the checkpoint's random state: masks drawn from the global state differ after a
    resume, these do not (the stock collator will do once the Trainer restores the state first). Masking stays
    dynamic as long as batches change between epochs (shuffled data: a block meets other blocks, so it gets new
    masks); a batch that repeats exactly (batch size 1, an unshuffled stream) gets the same masks each epoch. An
    evaluation masks the same held-out tokens every time.
    """

    def __init__(self, tokenizer, seed: int, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.masking_seed = seed

    def torch_call(self, examples):
        digest = hashlib.blake2b(str(self.masking_seed).encode(), digest_size=8)
        for example in examples:
            ids = example["input_ids"] if isinstance(example, Mapping) else example
            digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        self.generator = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
        return super().torch_call(examples)


class MaskedLM(Objective):
    name = "masked_lm"
    auto_model = AutoModelForMaskedLM
    model_type_names = MODEL_FOR_MASKED_LM_MAPPING_NAMES
    heads = "masked language-model head"
    special_tokens = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                      "mask_token": "[MASK]"}
    tokenizer_type = "wordpiece"
    separator = "sep_token"
    wraps_blocks = True  # [CLS] ... [SEP]
    needs_mask_token = True
    reported_metrics = (("perplexity", "held-out perplexity (masked tokens)", ".2f"),)
    loss_label = "loss (nats per masked token)"
    architecture_markers = ("MaskedLM",)
    pipeline_tag = "fill-mask"
    demonstration_task = "fill-mask"
    card_tag = "masked-lm"
    description = "a masked language model pretrained from scratch"
    compute_metrics = staticmethod(token_weighted_loss)

    def scored_per_block(self, block_size):
        return block_size - 2  # the body between [CLS] and [SEP] (denominator of bits/byte)

    def collator(self, tokenizer, data_args, seed, documents=False):
        return BatchSeededMasking(tokenizer, seed, mlm_probability=data_args.mlm_probability)

    def eval_metrics(self, metrics, bytes_per_token):
        # the masked-token perplexity is the only meaningful figure: no bits per byte for a masked LM
        return {"perplexity": perplexity(metrics["eval_loss"])}

    def preprocess_logits(self, logits, labels):
        return loss_sums_per_block(logits, labels, shift=False)

    def usage(self, repo_id, mask_token):
        return pipeline_snippet("fill-mask", "fill", repo_id,
                                f'fill("The ship sailed across the {mask_token or "[MASK]"}.")')


MASKED_LM = MaskedLM()
