#!/usr/bin/env python
"""Publish a pretraining or fine-tuning run to the Hugging Face Hub, with a model card.

    python scripts/publish.py runs/tiny-llama/pretrain --repo_id USER/tiny-llama --dry-run
    HF_TOKEN=... python scripts/publish.py runs/tiny-llama/finetune-sentiment --repo_id USER/tiny-llama-sentiment

Writes the Hub-ready folder (MODEL_DIR/hub unless --publish_dir), then creates the repository and uploads it.
--dry-run only writes the folder and lists what would be uploaded. `--help` lists every option.
"""

import sys

from lmrecipes.api import publish
from lmrecipes.arguments import PublishArguments
from lmrecipes.launch import exit_on_recipe_error
from lmrecipes.recipe import parse_recipe


@exit_on_recipe_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--model_dir", *argv]  # MODEL_DIR is positional
    args, _ = parse_recipe((PublishArguments,), argv)
    result = publish(**vars(args))
    verb = "would be uploaded" if args.dry_run else f"uploaded to {result['url']}"
    print(f"{result['folder']} ({result['kind']}{', base ' + result['base_model'] if result['base_model'] else ''}); "
          f"{len(result['files'])} files {verb}:")
    for name, size in result["files"]:
        print(f"  {name}  {size:,} bytes")
    return result


if __name__ == "__main__":
    main()
