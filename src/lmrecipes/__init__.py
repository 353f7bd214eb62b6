"""lmrecipes: pretrain language models from scratch and fine-tune them on the Hugging Face stack."""

from .api import finetune, load_recipe, pretrain
from .errors import RecipeError

__all__ = ["RecipeError", "finetune", "load_recipe", "pretrain"]
__version__ = "0.1.0"
