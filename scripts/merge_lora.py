#!/usr/bin/env python
"""Merge a LoRA classification adapter into its base model and write a plain checkpoint.

    python scripts/merge_lora.py runs/tiny-llama/finetune-sentiment-lora runs/tiny-llama/merged

The output loads with AutoModelForSequenceClassification.from_pretrained(OUTPUT_DIR), without peft.
"""

import argparse

from lmrecipes.launch import exit_on_recipe_error
from lmrecipes.lora import merge_adapter


@exit_on_recipe_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("adapter_dir", help="fine-tuning output folder holding adapter_config.json")
    parser.add_argument("output_dir", help="folder for the merged checkpoint")
    args = parser.parse_args(argv)
    out = merge_adapter(args.adapter_dir, args.output_dir)
    print(f"Merged checkpoint written to {out}")


if __name__ == "__main__":
    main()
