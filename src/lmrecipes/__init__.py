"""lmrecipes: pretrain language models from scratch and fine-tune them on the Hugging Face stack."""

from .api import (
    build_model,
    demonstrate,
    end_launched_process,
    finetune,
    load_recipe,
    predict,
    pretrain,
    publish,
    tokenize_corpus,
    train_tokenizer,
)
from .errors import RecipeError

__all__ = ["RecipeError", "build_model", "demonstrate", "end_launched_process", "finetune", "load_recipe", "predict",
           "pretrain", "publish", "tokenize_corpus", "train_tokenizer"]
__version__ = "0.1.0"
