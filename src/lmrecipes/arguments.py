"""The typed recipe keys. Every key a recipe may hold is a field below or a `transformers.TrainingArguments` field.

Each field's `help` is the documentation of that recipe key (`scripts/pretrain.py --help` prints them all).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import TrainingArguments

from .errors import RecipeError
from .objectives import ObjectiveName

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_CORPUS = "data/corpus/*.jsonl.gz"
EMBEDDED_SENTIMENT = "data/sentiment/movie_reviews.jsonl.gz"


def find_file(path: str | Path) -> Path:
    """A relative path from the working directory, else from the repository root (recipes and data files are
    found from a notebook or another folder too); returned unchanged when neither exists."""
    path = Path(path).expanduser()
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def parse_mapping(value, key: str) -> dict:
    """Accept a YAML mapping, a JSON object string or `k=v,k=v` (values parsed as JSON where possible)."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    text = str(value).strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"key '{key}': not valid JSON: {err}") from None
        if not isinstance(parsed, dict):
            raise RecipeError(f"key '{key}': expected a mapping, got {text!r}")
        return parsed
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise RecipeError(f"key '{key}': expected key=value pairs, got {item!r}")
        try:
            result[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            result[name.strip()] = raw.strip()
    return result


def auto_true_false(value, key: str) -> str:
    """A key that takes auto, true or false (YAML booleans and yes/no/on/off/1/0 spellings too)."""
    setting = {"1": "true", "yes": "true", "y": "true", "on": "true", "0": "false", "no": "false", "n": "false",
               "off": "false"}.get(str(value).lower(), str(value).lower())
    if setting not in ("auto", "true", "false"):
        raise RecipeError(f"key '{key}': auto, true or false, got {value!r}")
    return setting


@dataclass
class ModelArguments:
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
        metadata={"help": "Pretraining objective: causal_lm (next token), masked_lm (recover 15 percent of tokens, masked) or "
                  "electra (a small generator fills the masked tokens, the model learns which tokens were replaced: "
                  "a loss on every token). Default: electra for model_type electra, masked_lm for other encoder types "
                  "(bert, roberta, ...), causal_lm otherwise."},
    )
    generator_size: float | None = field(
        default=None,
        metadata={"help": "electra: the generator's width (hidden size, attention heads, feed-forward size) as a "
                  "fraction of the discriminator's; same depth, shared embeddings. Default 0.25 (the paper's)."},
    )
    generator_config_overrides: dict | str | None = field(
        default=None,
        metadata={"help": "electra: generator config attributes set after generator_size, e.g. "
                  "{num_hidden_layers: 6}. Its hidden size may not exceed the discriminator's."},
    )
    discriminator_weight: float | None = field(
        default=None,
        metadata={"help": "electra: loss = generator MLM loss + this x replaced-token detection loss (binary "
                  "cross-entropy over every non-pad token). Default 50 (the paper's)."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained weights to start from (local folder, Hub id, or package:NAME for a model an "
                  "installed Python package ships). Pretraining: continue from them instead of a random init. "
                  "Fine-tuning: the checkpoint to fine-tune."},
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow model/tokenizer code from the checkpoint's repository to run. Off unless you "
                  "set it; logged loudly when on."},
    )
    fused_loss: str | None = field(
        default=None,
        metadata={"help": "causal_lm: compute the output layer and the cross-entropy together, a chunk of tokens at a "
                  "time with their gradients, without keeping [tokens x vocabulary] logits (lmrecipes.fused_loss): "
                  "true, false or auto (the default): on for training on the CPU (the tiny Llama in bf16 on Zen 4: "
                  "1.35-1.7x tokens/s over the model's own loss), off on GPUs (true: on there too). Same loss; a "
                  "model that changes its logits before the loss (Gemma 2's soft-capping) keeps its own; not with "
                  "FSDP, DeepSpeed, torch_compile, use_liger_kernel or label_smoothing_factor. Logged."},
    )
    attn_implementation: str | None = field(
        default="sdpa",
        metadata={"help": "Attention kernel: sdpa (PyTorch scaled_dot_product_attention), eager, "
                  "flash_attention_2, ..."},
    )

    def __post_init__(self):
        self.config_overrides = parse_mapping(self.config_overrides, "config_overrides")
        if self.fused_loss is not None:
            self.fused_loss = auto_true_false(self.fused_loss, "fused_loss")
        if self.generator_config_overrides is not None:
            self.generator_config_overrides = parse_mapping(self.generator_config_overrides,
                                                            "generator_config_overrides")
        if self.discriminator_weight is not None and self.discriminator_weight <= 0:
            raise RecipeError(f"key 'discriminator_weight': must be above 0, got {self.discriminator_weight}")


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
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of a trained tokenizer (special tokens included)."})
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


@dataclass
class DataSourceArguments:
    """Where the data comes from: local files (default: the embedded data) or a Hub dataset."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id (e.g. HuggingFaceFW/fineweb-edu). Overrides train_file."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: list[str] | None = field(
        default=None,
        metadata={"help": "Local training files or glob patterns: txt, json, jsonl, csv, parquet (txt/json/jsonl/csv"
                  " may be .gz). Relative paths are tried from the working directory, then the repository root."},
    )
    validation_file: list[str] | None = field(
        default=None, metadata={"help": "Local validation files. Default: a deterministic held-out split of train."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Fraction of training rows held out for validation when none is given."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training examples (blocks when pretraining): a random "
                                "sample seeded by `seed` (classification: stratified by label), not the first ones. "
                                "Streaming: the first N blocks of the shuffled stream."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many examples (blocks when pretraining), sampled "
                                "like max_train_samples. Streaming: the first N held-out blocks (default 256)."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the data instead of preparing it up front (corpora larger than memory). "
                  "Needs max_steps."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."}
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata={"help": "Rows with a defect (text null, not a string, or empty where a text is needed; a label "
                  "missing or of another type than the column's other labels) are an error naming file, row and "
                  "column. true: such rows are dropped instead, and how many and the first few are logged."},
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where trained tokenizers and tokenized data are cached and reused. Default: "
                  "$LMRECIPES_CACHE or ~/.cache/lmrecipes."},
    )

    def __post_init__(self):
        if not 0.0 < self.validation_fraction < 1.0:
            raise RecipeError(f"key 'validation_fraction': must be between 0 and 1, got {self.validation_fraction}")
        for key in ("max_train_samples", "max_eval_samples", "preprocessing_num_workers"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise RecipeError(f"key '{key}': must be at least 1, got {value}")

    @property
    def cache_root(self) -> Path:
        root = self.data_cache_dir or os.environ.get("LMRECIPES_CACHE") or Path.home() / ".cache" / "lmrecipes"
        return Path(root)


@dataclass
class PretrainDataArguments(DataSourceArguments):
    """Pretraining data: packed into fixed-length blocks."""

    block_size: int = field(default=256, metadata={"help": "Tokens per packed training block (sequence length)."})
    mlm_probability: float = field(
        default=0.15, metadata={"help": "masked_lm: fraction of tokens masked (DataCollatorForLanguageModeling)."}
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={"help": "streaming: packed blocks held in memory to shuffle the stream (memory grows with it, "
                  "not with the corpus)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.train_file is None and self.dataset_name is None:
            self.train_file = [EMBEDDED_CORPUS]
        if self.block_size < 8:
            raise RecipeError(f"key 'block_size': must be at least 8, got {self.block_size}")
        if self.shuffle_buffer_size < 1:
            raise RecipeError(f"key 'shuffle_buffer_size': must be at least 1, got {self.shuffle_buffer_size}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise RecipeError(f"key 'mlm_probability': must be between 0 and 1, got {self.mlm_probability}")


@dataclass
class RunArguments(TrainingArguments):
    """`transformers.TrainingArguments` plus the consent that transformers 5 dropped with `overwrite_output_dir`."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete what output_dir holds (a finished run, or a run of another recipe) and start over. "
                  "Without it such a folder is refused, and a finished run of the same recipe is reported, not "
                  "retrained."})

    bf16: str = field(
        default="false",
        metadata={"nargs": "?", "const": "true",
                  "help": "bf16 mixed precision (autocast): true, false, or auto: on where the device computes bf16 "
                  "natively (a GPU that supports it; a CPU with avx512_bf16 or AMX), fp32 elsewhere; the log names "
                  "the choice and why. On a machine without an accelerator, bf16 runs on the CPU (use_cpu is set)."})

    def __post_init__(self):
        # accelerate launch does not pass a config's `use_cpu` to the processes it starts: several processes on a
        # machine without an accelerator would each train alone. They are one DDP run over gloo instead.
        import torch
        from transformers.utils import is_torch_xla_available

        from .precision import bf16_choice

        no_accelerator = not torch.accelerator.is_available() and not is_torch_xla_available()
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and not self.use_cpu and no_accelerator:
            logging.getLogger("lmrecipes").warning("No accelerator found: the %d processes train on CPU, one DDP run "
                                                   "over gloo", launched)
            self.use_cpu = True
        setting = auto_true_false(self.bf16, "bf16")
        if setting == "auto" and self.fp16:
            setting = "false"  # fp16 asked for: not both
        on_cpu = self.use_cpu or no_accelerator or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        self.bf16, self.precision_choice = bf16_choice(setting, on_cpu=on_cpu)
        if self.bf16 and no_accelerator:  # else transformers stops: "Your setup doesn't support bf16/gpu"
            self.use_cpu = True
        super().__post_init__()
