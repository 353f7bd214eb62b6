#!/usr/bin/env python
"""Fine-tune a checkpoint for text classification with a recipe, fully or with LoRA.

    accelerate launch scripts/finetune.py recipes/tiny-llama/finetune-sentiment.yaml [--key value ...]
    python scripts/finetune.py recipes/minilm/finetune-sentiment-lora.yaml --num_train_epochs 1

YAML values are defaults; flags override them. `--help` lists the keys, `--help_all` every TrainingArguments key too.
"""

import sys

from lmrecipes.arguments import FINETUNE_ARGUMENTS
from lmrecipes.finetuning import run_finetuning
from lmrecipes.launch import exit_on_recipe_error
from lmrecipes.recipe import parse_recipe


@exit_on_recipe_error
def main(argv=None):
    *args, explicit = parse_recipe(FINETUNE_ARGUMENTS, sys.argv[1:] if argv is None else argv)
    return run_finetuning(*args, explicit=explicit)


if __name__ == "__main__":
    main()
