"""Batch inference with a fine-tuned classifier: labels, label sets or scores, as its task says."""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from transformers import DataCollatorWithPadding

from .data.rows import csv_records, json_records, text_problem
from .errors import RecipeError
from .lora import load_classifier
from .recipe import read_run_recipe
from .run_folder import is_run_folder
from .tasks import saved_task
from .tasks.base import mean_per_text
from .values import read_json_file

INPUT_TYPES = (".txt", ".jsonl", ".json", ".csv")


def read_inputs(path, text_column: str = "text", text_pair_column: str | None = None,
                skip_bad_rows: bool = False) -> list:
    """The texts of a file to classify: strings, or {"text", "text_pair"} dicts when `text_pair_column` is set.

    .txt: one text per line (any line ending: \\n, \\r\\n or \\r; blank lines are skipped). .jsonl / .json (an array
    of rows, or one row per line) / .csv: the `text_column` (and `text_pair_column`) of each row. A row whose text
    is missing, null, not a string or empty is an error naming its line, or is skipped (and counted on stderr)
    with `skip_bad_rows`. A UTF-8 byte order mark is ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in INPUT_TYPES:
        raise RecipeError(f"{path}: unsupported input type {suffix!r} ({', '.join(INPUT_TYPES)})")
    try:  # utf-8-sig drops a BOM; newline=None reads \r\n and \r as \n
        if suffix == ".txt":
            if text_pair_column:
                raise RecipeError(f"{path}: this model classifies text pairs ({text_column!r}, "
                                  f"{text_pair_column!r}): give a .jsonl, .json or .csv file with both columns")
            with open(path, encoding="utf-8-sig", newline=None) as handle:
                return [line for line in handle.read().split("\n") if line.strip()] or _nothing(path)
        rows = list(csv_records(str(path)) if suffix == ".csv" else json_records(str(path)))
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path} is not valid UTF-8 (byte 0x{err.object[err.start]:02x}); convert it to UTF-8") \
            from None
    except ValueError as err:  # a line that does not parse: 'line N: not valid JSON (...)'
        raise RecipeError(f"{path} {err}") from None
    inputs, skipped = [], []
    columns = [c for c in (text_column, text_pair_column) if c]
    for position, row in rows:
        where = f"{path} {position}"
        if not isinstance(row, dict):
            if isinstance(row, str) and not text_pair_column:  # a .json array of plain strings
                row = {text_column: row}
            else:
                raise RecipeError(f"{where}: expected an object with a {text_column!r} field, got {type(row).__name__}")
        problem = _row_problem(row, columns, text_pair_column)
        if problem:
            if not skip_bad_rows:
                raise RecipeError(f"{where}: {problem} (--skip_bad_rows to skip such rows)")
            skipped.append(f"{where}: {problem}")
            continue
        inputs.append({"text": row[text_column], "text_pair": row[text_pair_column]} if text_pair_column
                      else row[text_column])
    if skipped:
        shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        print(f"skipped {len(skipped)} rows without a text: {shown}", file=sys.stderr)
    return inputs or _nothing(path)


def _row_problem(row: dict, columns: list[str], text_pair_column: str | None) -> str | None:
    for column in columns:
        if column not in row:
            return f"has no column {column!r} (--{'text_pair_column' if column == text_pair_column else 'text_column'})"
        problem = text_problem(row[column], required=True)
        if problem:
            return f"column {column!r} {problem}"
    return None


def _nothing(path):
    raise RecipeError(f"{path}: no text to classify")


def predict(model_dir, texts: list, batch_size: int = 32, max_length: int | None = None) -> list[dict]:
    """For each text (a string, or a {"text", "text_pair"} dict for pair tasks) the text plus what the model's task
    returns: {label, score} (single label), {labels, scores} (multi-label: every label at or above the saved
    threshold), {score} (regression). Texts are cut into windows as the model was trained (long_text: chunk) and
    a text's window logits averaged."""
    if isinstance(texts, (str, dict)) or not isinstance(texts, (list, tuple)):
        raise RecipeError(f"texts: a list of texts (strings, or text/text_pair dicts), got {type(texts).__name__}"
                          f"{' (one text: put it in a list)' if isinstance(texts, str) else ''}")
    for index, text in enumerate(texts):
        pair = isinstance(text, dict)
        problem = text_problem(text.get("text") if pair else text, required=True) or (
            text_problem(text.get("text_pair"), required=True) if pair else None)
        if problem:
            raise RecipeError(f"text {index}: {problem}")
    if not texts:
        return []
    recipe = read_run_recipe(model_dir)
    if recipe.get("text_pair_column") and any(not isinstance(text, dict) for text in texts):
        raise RecipeError(f"{model_dir} classifies text pairs ({recipe.get('text_column')!r}, "
                          f"{recipe['text_pair_column']!r}): give each text as {{'text': ..., 'text_pair': ...}}")
    model, tokenizer = load_classifier(model_dir)
    info = read_labels_file(model_dir, model.config)
    task = saved_task(info)
    if max_length is None:
        max_length = recipe.get("max_length") or 512
    stride = info.get("stride", max_length // 4) if info.get("long_text") == "chunk" else None
    if stride is not None and stride >= max_length // 2:
        raise RecipeError(f"--max_length {max_length} is too short for this model's windows, which overlap by "
                          f"{stride} tokens: give at least {2 * stride + 2}")
    logits = text_logits(model, tokenizer, texts, max_length, stride, batch_size)
    return [{**(text if isinstance(text, dict) else {"text": text}), **out} for text, out in
            zip(texts, task.outputs(logits))]


def read_labels_file(model_dir, config) -> dict:
    """The run's labels.json; for a checkpoint made elsewhere, what its config says (problem type, labels)."""
    path = Path(model_dir) / "labels.json"
    if path.is_file():
        return read_json_file(path)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    # as transformers reads a config without problem_type: one output is a regression
    problem_type = config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification")
    if problem_type == "multi_label_classification":
        print(f"{model_dir} has no labels.json: deciding each label at probability 0.5, not a tuned threshold",
              file=sys.stderr)
    return {"problem_type": problem_type, "labels": labels, "label_columns": labels, "column_per_label": True,
            "threshold": 0.5}


def text_logits(model, tokenizer, texts: list, max_length: int, stride: int | None, batch_size: int) -> np.ndarray:
    """The model's logits for each text: truncated at max_length tokens, or (stride given) the mean over windows of
    max_length tokens overlapping by `stride`. Hand-written: the text-classification pipeline truncates and has no
    windows."""
    import torch

    pairs = [text["text_pair"] for text in texts] if texts and isinstance(texts[0], dict) else None
    firsts = [text["text"] if isinstance(text, dict) else text for text in texts]
    if stride is None:
        encoded = tokenizer(firsts, pairs, truncation=True, max_length=max_length)
        text_of_row = list(range(len(texts)))
    else:
        encoded = tokenizer(firsts, truncation=True, max_length=max_length, stride=stride,
                            return_overflowing_tokens=True)
        text_of_row = list(encoded.pop("overflow_to_sample_mapping"))
    rows = [{key: encoded[key][i] for key in encoded.keys()} for i in range(len(text_of_row))]
    collate = DataCollatorWithPadding(tokenizer)
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(rows[start:start + batch_size]).items()}
            outputs.append(model(**batch).logits.float().cpu().numpy())
    return mean_per_text(np.concatenate(outputs), text_of_row)[1]  # every text has at least one row


def predict_file(model_dir, input_path, output_path=None, text_column="text", batch_size=32, max_length=None,
                 text_pair_column=None, skip_bad_rows=False) -> int:
    """Classify a file; `text_pair_column` defaults to the run's own (pair tasks). The output file is written
    whole or not at all."""
    if output_path:
        check_output_path(Path(output_path), Path(input_path), Path(model_dir))
    if text_pair_column is None:
        text_pair_column = read_run_recipe(model_dir).get("text_pair_column")
    rows = predict(model_dir, read_inputs(input_path, text_column, text_pair_column, skip_bad_rows), batch_size,
                   max_length)
    if not output_path:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return len(rows)
    output_path = Path(output_path)
    handle, tmp = tempfile.mkstemp(prefix=".predictions-", suffix=".tmp", dir=output_path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            if output_path.suffix == ".csv":
                writer = csv.DictWriter(out, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows({key: json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict))
                                  else value for key, value in row.items()} for row in rows)  # multi-label: JSON
            else:
                out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp, output_path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RecipeError(f"key 'output': cannot write {output_path} ({err.strerror or err})") from None
        raise
    return len(rows)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(output: Path, input_path: Path, model_dir: Path) -> None:
    """Predictions go to a file of their own, in a folder that exists: never over the input, and never into a run
    or model folder (a name there could replace the model's weights or a run's files)."""
    try:
        if output.is_dir():
            raise RecipeError(f"key 'output': {output} is a folder; name a file in it, e.g. "
                              f"{output / 'predictions.jsonl'}")
        if not output.parent.is_dir():
            raise RecipeError(f"key 'output': the folder {output.parent} does not exist")
        if output.exists() and input_path.exists() and output.samefile(input_path):
            raise RecipeError(f"key 'output': {output} is the input file; name another file")
        folder = output.parent.resolve()
        inside = next((f for f in (folder, *folder.parents) if is_run_folder(f) or f == model_dir.resolve()), None)
        if inside is None and ((folder / "config.json").is_file() or any(folder.glob("*.safetensors"))):
            inside = folder  # a model folder (a checkpoint, an export, a base model)
        if inside is not None:
            raise RecipeError(f"key 'output': {output} is inside a run or model folder ({inside}); write "
                              "predictions elsewhere")
    except OSError as err:  # a name too long, a loop of links
        raise RecipeError(f"key 'output': {output}: {err.strerror or err}") from None
