#!/usr/bin/env python
"""Classify every row of a text, jsonl, json or csv file with a fine-tuned model (plain or LoRA adapter folder).

    python scripts/predict.py runs/tiny-llama/finetune-sentiment reviews.txt --output predictions.jsonl

Writes one row per input: the text (and text_pair), the predicted label and its probability (jsonl, or csv if
--output ends in .csv; stdout as jsonl when --output is not given). A .txt file holds one text per line (any line
ending; blank lines skipped); a row whose text is missing, null, not a string or empty is an error naming its line
unless --skip_bad_rows is given.
"""

import argparse

from lmrecipes.launch import exit_on_recipe_error
from lmrecipes.prediction import predict_file


@exit_on_recipe_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("model_dir", help="fine-tuning output folder (or merged checkpoint)")
    parser.add_argument("input", help="a .txt (one text per line), .jsonl, .json (array of rows) or .csv file")
    parser.add_argument("--output", help="where to write predictions (.jsonl or .csv)")
    parser.add_argument("--text_column", default="text", help="column holding the text in jsonl/json/csv input")
    parser.add_argument("--text_pair_column", default=None,
                        help="column holding the second text of pair tasks (default: the run's text_pair_column)")
    parser.add_argument("--skip_bad_rows", action="store_true", help="skip rows without a text instead of stopping")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=None, help="truncate inputs (default: the run's max_length)")
    args = parser.parse_args(argv)
    count = predict_file(args.model_dir, args.input, args.output, text_column=args.text_column,
                         batch_size=args.batch_size, max_length=args.max_length,
                         text_pair_column=args.text_pair_column, skip_bad_rows=args.skip_bad_rows)
    if args.output:
        print(f"{count} predictions written to {args.output}")


if __name__ == "__main__":
    main()
