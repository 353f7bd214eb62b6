#!/usr/bin/env python
"""Classify every row of a text, jsonl, json or csv file with a fine-tuned model (plain or LoRA adapter folder),
and score the predictions against a label column.

    python scripts/predict.py runs/tiny-llama/finetune-sentiment reviews.csv --output predictions.csv
    python scripts/predict.py runs/tiny-llama/finetune-sentiment reviews.csv --output predictions.csv \\
        --label_column category

Reads the text from the run's own text_column (and text_pair_column for pair tasks), as its recipe.yaml names them
(a folder without one: "text"); --text_column / --text_pair_column choose others. A column the file lacks stops
the command with one line listing the file's columns. A .txt file holds one text per line (any line ending; blank
lines skipped).

Writes one row per input: the input row with all its columns (a .txt line: its `line` number and `text`), plus
the prediction: `label` and its probability `score` (single label), `labels` at or above the saved threshold and
every label's `scores` (multi-label), `score` (regression). An input column named like one of these (a gold
`label`) is kept as `input_label`. jsonl, or csv if --output ends in .csv; stdout as jsonl when --output is not
given. A progress bar over the batches goes to stderr when it is a terminal.

With --label_column, the predictions are scored against that column (label names as in training, or label ids; a
JSON list of labels per row for multi-label; a number for regression) with the metrics the fine-tuning run reports
for its test split; rows with no label are predicted but not scored; a value that is not one of the model's labels
stops the command before predicting. The metrics are printed and written to --metrics_output (default: beside
--output, predictions.csv -> predictions.metrics.json; without --output only printed, to stderr).

A row whose text is null, not a string or empty is an error naming its line unless --skip_bad_rows is given.
"""

import argparse
import sys

from lmrecipes.launch import exit_on_recipe_error
from lmrecipes.prediction import metrics_summary, predict_file


@exit_on_recipe_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("model_dir", help="fine-tuning output folder (or merged checkpoint)")
    parser.add_argument("input", help="a .txt (one text per line), .jsonl, .json (array of rows) or .csv file")
    parser.add_argument("--output", help="where to write predictions (.jsonl or .csv)")
    parser.add_argument("--text_column", default=None,
                        help="column holding the text in jsonl/json/csv input (default: the run's text_column, from "
                             "its recipe.yaml; 'text' for a folder without one)")
    parser.add_argument("--text_pair_column", default=None,
                        help="column holding the second text of pair tasks (default: the run's text_pair_column)")
    parser.add_argument("--label_column", default=None,
                        help="score the predictions against this column with the task's test metrics (label names "
                             "as in training, or ids; regression: numbers)")
    parser.add_argument("--metrics_output", default=None,
                        help="where to write the --label_column metrics as JSON (default: OUTPUT with the suffix "
                             ".metrics.json, e.g. predictions.metrics.json)")
    parser.add_argument("--skip_bad_rows", action="store_true",
                        help="skip rows whose text is null, not a string or empty instead of stopping")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=None, help="truncate inputs (default: the run's max_length)")
    args = parser.parse_args(argv)
    if args.metrics_output and not args.label_column:
        parser.error("--metrics_output needs --label_column (the column to score against)")
    result = predict_file(args.model_dir, args.input, args.output, text_column=args.text_column,
                          batch_size=args.batch_size, max_length=args.max_length,
                          text_pair_column=args.text_pair_column, skip_bad_rows=args.skip_bad_rows,
                          label_column=args.label_column, metrics_path=args.metrics_output)
    report = sys.stdout if args.output else sys.stderr  # without --output, stdout holds the predictions
    if args.output:
        print(f"{result.count} predictions written to {args.output}", file=report)
    if result.metrics is not None:
        unscored = result.metrics["rows_without_label"]
        print(f"scored {result.metrics['rows_scored']} rows against {args.label_column!r}"
              f"{f' ({unscored} without a label)' if unscored else ''}: {metrics_summary(result.metrics)}",
              file=report)
        if result.metrics_path is not None:
            print(f"metrics written to {result.metrics_path}", file=report)


if __name__ == "__main__":
    main()
