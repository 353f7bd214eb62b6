#!/usr/bin/env python
"""Pretrain a language model from scratch with a recipe.

    accelerate launch scripts/pretrain.py recipes/tiny-llama/pretrain.yaml [--key value ...]
    python scripts/pretrain.py --config recipes/tiny-bert/pretrain.yaml --max_steps 20 --output_dir runs/x

YAML values are defaults; flags override them. `--help` lists the keys, `--help_all` every TrainingArguments key too.
"""

import sys

from lmrecipes.arguments import PRETRAIN_ARGUMENTS
from lmrecipes.launch import exit_on_recipe_error
from lmrecipes.pretraining import run_pretraining
from lmrecipes.recipe import parse_recipe


@exit_on_recipe_error
def main(argv=None):
    *args, explicit = parse_recipe(PRETRAIN_ARGUMENTS, sys.argv[1:] if argv is None else argv)
    return run_pretraining(*args, explicit=explicit)


if __name__ == "__main__":
    main()
