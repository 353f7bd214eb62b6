"""Document-aware packing: in a packed block each document's positions start at 0 and its tokens attend only to
their own document. transformers builds that mask itself from position ids that restart (masking_utils' packed
sequences, when no attention mask is given: eager, SDPA and flex attention; flash-attention reads them as separate
sequences); lmrecipes adds the position ids to fixed-size blocks (hand-written: DataCollatorWithFlattening
flattens unpadded rows into one row, it does not split packed blocks at their separators)."""

from __future__ import annotations

import logging

import torch
from transformers import default_data_collator

from ..errors import RecipeError, first_line

logger = logging.getLogger("lmrecipes")

# Sizes of the one-layer copy a model's masking is checked on (keys of the common config classes).
_PROBE_SIZES = {"hidden_size": 32, "n_embd": 32, "intermediate_size": 64, "n_inner": 64, "num_hidden_layers": 1,
                "n_layer": 1, "num_attention_heads": 2, "n_head": 2, "num_key_value_heads": 2, "head_dim": 16,
                "vocab_size": 64}


def document_positions(input_ids: torch.Tensor, separator: int) -> torch.Tensor:
    """Position ids that restart after each separator token (a separator ends its document)."""
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 1:] = input_ids[:, :-1] == separator
    index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values


class DocumentPositionsCollator:
    """Packed blocks as they are (no padding) plus `position_ids` restarting at each document."""

    def __init__(self, separator: int):
        self.separator = separator

    def __call__(self, features):
        batch = default_data_collator(features)
        batch["position_ids"] = document_positions(batch["input_ids"], self.separator)
        return batch


def _attention(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def causal_masking_problem(model) -> str | None:
    """Why `model` would let tokens attend across documents given restarting position ids (None: it keeps each
    document to itself). Checked on a one-layer copy of its configuration: the second document's logits must not
    change when the first document changes."""
    implementation = _attention(model)
    if implementation.startswith("flash_attention"):
        return None  # flash-attention takes restarting position ids as separate sequences
    config = model.config.__class__.from_dict({**model.config.to_dict(), **{
        key: value for key, value in _PROBE_SIZES.items() if key in model.config.to_dict()}})
    try:
        config._attn_implementation = implementation
        # the model's own class, built directly: from_config would build it partitioned under DeepSpeed ZeRO-3
        probe = type(model)(config).eval().float()
        separator = 3
        first = torch.tensor([[5, 6, 7, 8, separator, 9, 10, 11, 12, 13]])
        other = first.clone()
        other[0, :4] = torch.tensor([20, 21, 22, 23])
        positions = document_positions(first, separator)
        with torch.no_grad():
            logits = [probe(input_ids=ids, position_ids=positions, use_cache=False).logits[0, 5:]
                      for ids in (first, other)]
    except Exception as err:  # noqa: BLE001 - a config that cannot be shrunk, a model without position_ids
        return f"could not be checked on {config.model_type} ({first_line(err)})"
    if not torch.allclose(*logits, atol=1e-5):
        return f"{config.model_type} with {implementation} attention does not build masks from position ids"
    return None


def use_document_masking(objective, model, setting: str) -> bool:
    """Whether packed documents are kept apart (`document_masking`: auto, true, false), logged with the reason."""
    if setting == "false":
        logger.info("Documents in a block: attend to each other (document_masking: false)")
        return False
    problem = objective.document_masking_problem(model)
    if problem is not None:
        if setting == "true":
            raise RecipeError(f"key 'document_masking': {problem} (set document_masking: auto or false)")
        logger.info("Documents in a block: attend to each other (document_masking auto: %s)", problem)
        return False
    # transformers builds the document mask only without a KV cache, which training does not need (generate() and
    # pipelines still use one: generation_config.json keeps use_cache)
    model.config.use_cache = False
    kernel = " (SDPA with a document mask: not the flash kernel on GPUs; flash_attention_2 keeps it)" \
        if _attention(model) == "sdpa" else ""
    logger.info("Documents in a block: positions restart and attention stays inside each document "
                "(document_masking %s)%s", setting, kernel)
    return True
