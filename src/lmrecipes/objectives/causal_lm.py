"""Causal language modelling: predict every next token (Llama, GPT-2, Qwen...)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, default_data_collator
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..fused_loss import use_fused_loss
from ..values import auto_true_false
from .base import Objective, ObjectiveKeys, loss_sums_per_block, perplexity, pipeline_snippet, token_weighted_loss
from .documents import DocumentPositionsCollator, causal_masking_problem


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float) -> float:
    """Cross-entropy per UTF-8 byte in bits: comparable across tokenizers (nats/token / (ln 2 x bytes/token))."""
    return loss_nats_per_token / (math.log(2) * bytes_per_token)


@dataclass
class CausalLMKeys(ObjectiveKeys):
    fused_loss: str | None = field(
        default=None,
        metadata={"help": "causal_lm: compute the output layer and the cross-entropy together, a chunk of tokens at a "
                  "time with their gradients, without keeping [tokens x vocabulary] logits (lmrecipes.fused_loss): "
                  "true, false or auto (the default): on for training on the CPU (the tiny Llama in bf16 on Zen 4: "
                  "1.35-1.7x tokens/s over the model's own loss), off on GPUs (true: on there too). Same loss; a "
                  "model that changes its logits before the loss (Gemma 2's soft-capping) keeps its own; not with "
                  "FSDP, DeepSpeed, torch_compile, use_liger_kernel or label_smoothing_factor. Logged."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.fused_loss is not None:
            self.fused_loss = auto_true_false(self.fused_loss, "fused_loss")


class CausalLM(Objective):
    name = "causal_lm"
    auto_model = AutoModelForCausalLM
    model_type_names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    heads = "causal language-model head"
    special_tokens = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    tokenizer_type = "bpe"
    separator = "eos_token"
    wraps_blocks = False
    needs_mask_token = False
    reported_metrics = (("perplexity", "held-out perplexity", ".2f"), ("bits_per_byte", "held-out bits/byte", ".3f"))
    loss_label = "loss (nats/token)"
    architecture_markers = ("CausalLM", "LMHead")
    pipeline_tag = "text-generation"
    demonstration_task = "text-generation"
    card_tag = "causal-lm"
    description = "a causal language model pretrained from scratch"
    keys = CausalLMKeys
    compute_metrics = staticmethod(token_weighted_loss)

    def scored_per_block(self, block_size):
        return block_size - 1  # every token but the first is predicted

    def collator(self, tokenizer, data_args, seed, documents=False):
        if documents:
            return DocumentPositionsCollator(getattr(tokenizer, f"{self.separator}_id"))
        return default_data_collator  # packed blocks carry their labels, no padding

    def document_masking_problem(self, model):
        return causal_masking_problem(model)

    def eval_metrics(self, metrics, bytes_per_token):
        return {"perplexity": perplexity(metrics["eval_loss"]),
                "bits_per_byte": bits_per_byte(metrics["eval_loss"], bytes_per_token)}

    def preprocess_logits(self, logits, labels):
        return loss_sums_per_block(logits, labels, shift=True)

    def usage(self, repo_id, mask_token):
        return pipeline_snippet("text-generation", "generate", repo_id,
                                'generate("It was a dark and stormy night", max_new_tokens=40)[0]["generated_text"]')

    def attach_training_loss(self, model, training_args, model_args):
        return use_fused_loss(model, training_args, model_args.fused_loss)


CAUSAL_LM = CausalLM()
