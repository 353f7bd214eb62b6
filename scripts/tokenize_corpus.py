#!/usr/bin/env python
"""Tokenize the training split of a pretraining recipe's corpus once, into token shards that runs read back.

    python scripts/tokenize_corpus.py recipes/llama-125m/pretrain.yaml --token_shards_dir data/shards \
        [--preprocessing_num_workers 8]
    accelerate launch scripts/pretrain.py recipes/llama-125m/pretrain.yaml --token_shards_dir data/shards

The recipe's tokenizer is used (trained first, and cached, if the recipe makes one) and its held-out split is left
out, so a run of the same recipe evaluates on text its shards do not hold. A run checks that the shards were written
from its corpus and tokenizer. Rerunning this finds the shards there and leaves them; a stopped write leaves
nothing behind but a temporary folder that the next write removes.
"""

import sys

from lmrecipes.arguments import PRETRAIN_ARGUMENTS
from lmrecipes.launch import exit_on_recipe_error, setup_logging
from lmrecipes.pretraining import tokenize_corpus
from lmrecipes.recipe import parse_recipe


def main(argv=None):
    model_args, tokenizer_args, data_args, training_args, _ = parse_recipe(
        PRETRAIN_ARGUMENTS, sys.argv[1:] if argv is None else argv)
    setup_logging(training_args)
    index = tokenize_corpus(model_args, tokenizer_args, data_args)
    print(f"Token shards in {data_args.token_shards_dir}: {index['documents']:,} documents, {index['tokens']:,} tokens "
          f"({index['dtype']}) in {len(index['shards'])} file(s); train on them with --token_shards_dir "
          f"{data_args.token_shards_dir}")
    return index


main.rerun = "the same command writes the token shards again (nothing was left half-written)"
main = exit_on_recipe_error(main)

if __name__ == "__main__":
    main()
