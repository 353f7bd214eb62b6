"""The typed recipe keys, all of them. Every key a recipe may hold is a field of a dataclass here (its `help` is
the key's documentation: `scripts/pretrain.py --help` prints them) or of `transformers.TrainingArguments`, through
RunArguments. Objectives declare their own keys in their modules; ModelArguments inherits them.

    model.py     ModelArguments, TokenizerArguments
    data.py      DataSourceArguments, PretrainDataArguments, ClassificationDataArguments
    run.py       RunArguments (TrainingArguments + overwrite_output_dir, bf16: auto)
    finetune.py  FinetuneArguments
    pipeline.py  PipelineArguments
    publish.py   PublishArguments

The key sets below are what each script parses, in order: the dataclasses, the keys of theirs a script leaves out
(fine-tuning loads its checkpoint's tokenizer and trains no objective) and Hugging Face's example-script names it
reads (hf_names.py).
"""

import dataclasses

from ..objectives import OBJECTIVE_KEYS
from ..recipe_names import KeySet
from .data import ClassificationDataArguments, DataSourceArguments, PretrainDataArguments
from .finetune import FinetuneArguments
from .hf_names import ALIASES, NOT_TAKEN
from .model import ModelArguments, TokenizerArguments
from .pipeline import PipelineArguments
from .publish import PublishArguments
from .run import RunArguments

PRETRAINING_ONLY = {
    **{f.name: "a pretraining objective's key; fine-tuning trains a classifier" for keys in OBJECTIVE_KEYS
       for f in dataclasses.fields(keys)},
    "objective": "a pretraining key; fine-tuning trains a classifier",
    **{f.name: "a key of tokenizer training; fine-tuning uses the checkpoint's tokenizer (or tokenizer_name_or_path)"
       for f in dataclasses.fields(TokenizerArguments) if f.name != "tokenizer_name_or_path"},
}

_PRETRAINING = {f.name for f in dataclasses.fields(PretrainDataArguments)}
_FINETUNING = {f.name for t in (ClassificationDataArguments, FinetuneArguments) for f in dataclasses.fields(t)}
PRETRAIN_ARGUMENTS = KeySet((ModelArguments, TokenizerArguments, PretrainDataArguments, RunArguments),
                            aliases=ALIASES, not_taken={**NOT_TAKEN, **dict.fromkeys(_FINETUNING - _PRETRAINING,
                                                                                     "a fine-tuning key")})
FINETUNE_ARGUMENTS = KeySet((ModelArguments, TokenizerArguments, ClassificationDataArguments, FinetuneArguments,
                             RunArguments), left_out=PRETRAINING_ONLY, aliases=ALIASES,
                            not_taken={**NOT_TAKEN, **dict.fromkeys(_PRETRAINING - _FINETUNING, "a pretraining key")})

__all__ = ["FINETUNE_ARGUMENTS", "PRETRAINING_ONLY", "PRETRAIN_ARGUMENTS", "ClassificationDataArguments",
           "DataSourceArguments", "FinetuneArguments", "ModelArguments", "PipelineArguments", "PretrainDataArguments",
           "PublishArguments", "RunArguments", "TokenizerArguments"]
