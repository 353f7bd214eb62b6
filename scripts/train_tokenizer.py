#!/usr/bin/env python
"""Train (or load) the tokenizer a pretraining recipe describes and save it to a folder.

    python scripts/train_tokenizer.py recipes/tiny-llama/pretrain.yaml --save_dir runs/tokenizer [--vocab_size 8000]

The result loads with `AutoTokenizer.from_pretrained(save_dir)`; point `tokenizer_name_or_path` at it to reuse it.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmrecipes import RecipeError
from lmrecipes.arguments import PRETRAIN_ARGUMENTS
from lmrecipes.launch import exit_on_recipe_error, setup_logging
from lmrecipes.pretraining import recipe_tokenizer
from lmrecipes.recipe import parse_recipe


@dataclass
class SaveArguments:
    save_dir: str = field(metadata={"help": "Folder the tokenizer is saved to (save_pretrained)."})

    def __post_init__(self):
        if Path(self.save_dir).exists() and not Path(self.save_dir).is_dir():
            raise RecipeError(f"key 'save_dir': {self.save_dir} is a file, not a folder")


@exit_on_recipe_error
def main(argv=None):
    model_args, tokenizer_args, data_args, training_args, save, _ = parse_recipe(
        (*PRETRAIN_ARGUMENTS, SaveArguments), sys.argv[1:] if argv is None else argv)
    setup_logging(training_args)
    raw, tokenizer = recipe_tokenizer(model_args, tokenizer_args, data_args)
    tokenizer.save_pretrained(save.save_dir)
    sample = next(iter(raw["validation"]))[data_args.text_column][:2000]
    chars_per_token = len(sample) / max(len(tokenizer(sample, add_special_tokens=False)["input_ids"]), 1)
    print(f"Tokenizer ({len(tokenizer)} tokens, {chars_per_token:.2f} characters/token on held-out text) saved to "
          f"{save.save_dir}")
    return tokenizer


if __name__ == "__main__":
    main()
