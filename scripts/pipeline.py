#!/usr/bin/env python
"""The whole path in one command: pretrain, fine-tune (and from scratch, same budget), evaluate, export, summarise.

    python scripts/pipeline.py recipes/tiny-llama/pipeline.yaml [--output_dir runs/x]
    python scripts/pipeline.py recipes/tiny-bert/pipeline.yaml        # the masked model

A rerun reuses a stage only when its recipe and inputs are unchanged (else it is refused, naming what changed;
--overwrite_output_dir true runs it again). Results: OUTPUT_DIR/summary.{json,md}, loss_curves.png, model/.
"""

import sys

from lmrecipes.arguments import PipelineArguments
from lmrecipes.launch import exit_on_recipe_error
from lmrecipes.pipeline import run_pipeline
from lmrecipes.recipe import parse_recipe


@exit_on_recipe_error
def main(argv=None):
    args, _ = parse_recipe([PipelineArguments], sys.argv[1:] if argv is None else argv)
    return run_pipeline(args)


if __name__ == "__main__":
    main()
