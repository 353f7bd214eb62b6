"""The typed recipe keys, all of them. Every key a recipe may hold is a field of a dataclass here (its `help` is
the key's documentation: `scripts/pretrain.py --help` prints them) or of `transformers.TrainingArguments`, through
RunArguments. Objectives declare their own keys in their modules; ModelArguments inherits them.

    model.py     ModelArguments, TokenizerArguments
    data.py      DataSourceArguments, PretrainDataArguments, ClassificationDataArguments
    run.py       RunArguments (TrainingArguments + overwrite_output_dir, bf16: auto)
    finetune.py  FinetuneArguments
    pipeline.py  PipelineArguments
    publish.py   PublishArguments

The tuples below are what each script parses, in order.
"""

from .data import ClassificationDataArguments, DataSourceArguments, PretrainDataArguments
from .finetune import FinetuneArguments
from .model import ModelArguments, TokenizerArguments
from .pipeline import PipelineArguments
from .publish import PublishArguments
from .run import RunArguments

PRETRAIN_ARGUMENTS = (ModelArguments, TokenizerArguments, PretrainDataArguments, RunArguments)
FINETUNE_ARGUMENTS = (ModelArguments, TokenizerArguments, ClassificationDataArguments, FinetuneArguments,
                      RunArguments)

__all__ = ["FINETUNE_ARGUMENTS", "PRETRAIN_ARGUMENTS", "ClassificationDataArguments", "DataSourceArguments",
           "FinetuneArguments", "ModelArguments", "PipelineArguments", "PretrainDataArguments", "PublishArguments",
           "RunArguments", "TokenizerArguments"]
