"""Data keys: where the data comes from and how held-out splits are made, then what pretraining (packed blocks)
and fine-tuning (texts and labels) add."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import RecipeError
from ..values import auto_true_false

EMBEDDED_CORPUS = "data/corpus/*.jsonl.gz"
EMBEDDED_SENTIMENT = "data/sentiment/movie_reviews.jsonl.gz"


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
    line_by_line: bool = field(
        default=False,
        metadata={"help": "Text files (.txt): false (the default): each file is one document; true: each line is a "
                  "document (blank lines skipped), as run_mlm.py's line_by_line and scripts/predict.py read a .txt. "
                  "Documents matter for the held-out split (by document) and for document_masking."})
    mlm_probability: float = field(
        default=0.15, metadata={"help": "masked_lm: fraction of tokens masked (DataCollatorForLanguageModeling)."}
    )
    document_masking: str = field(
        default="auto",
        metadata={"help": "Keep the documents packed into one block apart: positions restart at each document and "
                  "attention stays inside it (transformers builds the mask from the position ids). auto (the "
                  "default): on where the objective and the model support it (causal LMs whose attention honours "
                  "restarting position ids, checked on a one-layer copy), off otherwise; true: on or refused; "
                  "false: documents attend to the earlier documents of their block (run_clm.py, nanoGPT). Logged. "
                  "On GPUs with attn_implementation: sdpa the document mask rules out the flash kernel "
                  "(flash_attention_2 keeps it)."},
    )
    token_shards_dir: str | None = field(
        default=None,
        metadata={"help": "A folder of token shards written by scripts/tokenize_corpus.py from this recipe's corpus "
                  "and tokenizer: the training blocks are read from it (memory-mapped; each process reads just its "
                  "own batches, and a resumed run starts at its exact position) instead of being tokenized, for "
                  "any block_size. The held-out split still comes from the corpus (streaming or not)."},
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
        self.document_masking = auto_true_false(self.document_masking, "document_masking")
        if not 0.0 < self.mlm_probability < 1.0:
            raise RecipeError(f"key 'mlm_probability': must be between 0 and 1, got {self.mlm_probability}")


@dataclass
class ClassificationDataArguments(DataSourceArguments):
    """Classification data: text (or text pairs) and a label per row."""

    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column, for pair tasks."})
    label_column: str = field(
        default="label",
        metadata={"help": "Column holding the label: a class (string or integer); a list of labels for "
                  "problem_type: multi_label_classification; a number for problem_type: regression."})
    label_columns: list[str] | None = field(
        default=None,
        metadata={"help": "multi_label_classification only: one 0/1 column per label, instead of a list-valued "
                  "label_column (the column names are the label names)."})
    test_file: list[str] | None = field(
        default=None, metadata={"help": "Local test files. Default: a deterministic held-out split of train (none: no "
                                "test file)."}
    )
    test_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of training rows held out as the test split when no test_file is "
                               "given. 0: no test split (the run evaluates validation only; score a test file later "
                               "with scripts/predict.py --label_column)."}
    )
    max_length: int = field(default=128, metadata={"help": "Tokens per input: truncated there (long_text: "
                                                       "truncate) or cut into windows of this size (chunk)."})
    long_text: Literal["truncate", "chunk"] = field(
        default="truncate",
        metadata={"help": "Texts longer than max_length tokens: truncate (keep the start), or chunk: windows of "
                  "max_length tokens over the whole text, each trained on with the text's label; evaluation and "
                  "predict.py average the logits of a text's windows."})
    stride: int | None = field(
        default=None,
        metadata={"help": "long_text: chunk: tokens shared by consecutive windows (default max_length // 4)."})

    def __post_init__(self):
        super().__post_init__()
        if self.train_file is None and self.dataset_name is None:
            self.train_file = [EMBEDDED_SENTIMENT]
        if self.test_file is not None and [name.lower() for name in self.test_file] in (["none"], []):
            self.test_file = None
        if not 0.0 <= self.test_fraction < 1.0 or self.validation_fraction + self.test_fraction >= 1.0:
            raise RecipeError(f"key 'test_fraction': must be in [0, 1) with validation_fraction + test_fraction < 1, "
                              f"got {self.test_fraction}")
        if self.max_length < 2:
            raise RecipeError(f"key 'max_length': must be at least 2, got {self.max_length}")
        if self.long_text == "chunk" and self.text_pair_column:
            raise RecipeError("key 'long_text': chunk cuts single texts into windows; text pairs (text_pair_column) "
                              "are truncated (long_text: truncate)")
        if self.stride is not None and not 0 <= self.stride < self.max_length // 2:
            raise RecipeError(f"key 'stride': must be at least 0 and below max_length / 2 ({self.max_length // 2}), "
                              f"got {self.stride}")
        if self.label_columns is not None and len(self.label_columns) < 2:
            raise RecipeError(f"key 'label_columns': needs at least two columns (one per label), got "
                              f"{self.label_columns}")

    def window_overlap(self) -> int:
        return self.max_length // 4 if self.stride is None else self.stride
