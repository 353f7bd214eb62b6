"""Batch inference with a fine-tuned classifier: labels, label sets or scores, as its task says; a file's rows
kept with their predictions, and scored against a label column with the task's own metrics."""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import DataCollatorWithPadding

from .data.rows import csv_records, json_records, text_problem
from .errors import RecipeError
from .lora import load_classifier
from .ownership import file_mode
from .recipe import read_run_recipe
from .run_folder import is_run_folder
from .tasks import Task, saved_task
from .tasks.base import mean_per_text
from .values import read_json_file

INPUT_TYPES = (".txt", ".jsonl", ".json", ".csv")


@dataclass
class Inputs:
    """What a file gives prediction, one entry per text kept."""

    rows: list[dict] = field(default_factory=list)  # the row's columns (a .txt line: its number and text)
    texts: list = field(default_factory=list)  # what the model reads: a string, or a {"text", "text_pair"} dict
    places: list[str] = field(default_factory=list)  # "FILE line N", for errors about the row


def read_inputs(path, text_column: str = "text", text_pair_column: str | None = None,
                skip_bad_rows: bool = False, label_column: str | None = None) -> Inputs:
    """The rows of a file to classify and their texts (`text_column`, and `text_pair_column` for pair tasks).

    .txt: one text per line (any line ending: \\n, \\r\\n or \\r; blank lines are skipped), as rows {line, text}.
    .jsonl / .json (an array of rows, or one row per line) / .csv: each row with all its columns. A column that
    the file does not have (the csv header; no json row) is one error listing the file's columns. A row whose
    text is missing, null, not a string or empty is an error naming its line, or is skipped (and counted on
    stderr) with `skip_bad_rows`. A UTF-8 byte order mark is ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in INPUT_TYPES:
        raise RecipeError(f"{path}: unsupported input type {suffix!r} ({', '.join(INPUT_TYPES)})")
    if suffix == ".txt":
        _check_text_lines(path, text_column, text_pair_column, label_column)
    try:  # utf-8-sig drops a BOM; newline=None reads \r\n and \r as \n
        if suffix == ".txt":
            records, text_column = _text_lines(path), "text"
        else:
            records = list(csv_records(str(path)) if suffix == ".csv" else json_records(str(path)))
            columns = _file_columns(path, records)
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path} is not valid UTF-8 (byte 0x{err.object[err.start]:02x}); convert it to UTF-8") \
            from None
    except ValueError as err:  # a line that does not parse: 'line N: not valid JSON (...)'
        raise RecipeError(f"{path} {err}") from None
    if suffix != ".txt":
        _check_columns(path, columns, text_column, text_pair_column, label_column)
    inputs, skipped = Inputs(), []
    columns = [c for c in (text_column, text_pair_column) if c]
    for position, row in records:
        where = f"{path} {position}"
        if not isinstance(row, dict):
            if isinstance(row, str) and not text_pair_column:  # a .json array of plain strings
                row = {text_column: row}
            else:
                raise RecipeError(f"{where}: expected an object with a {text_column!r} field, got {type(row).__name__}")
        problem = _row_problem(row, columns)
        if problem:
            if not skip_bad_rows:
                raise RecipeError(f"{where}: {problem} (--skip_bad_rows to skip such rows)")
            skipped.append(f"{where}: {problem}")
            continue
        inputs.rows.append(row)
        inputs.texts.append({"text": row[text_column], "text_pair": row[text_pair_column]} if text_pair_column
                            else row[text_column])
        inputs.places.append(where)
    if skipped:
        shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        print(f"skipped {len(skipped)} rows without a text: {shown}", file=sys.stderr)
    return inputs if inputs.rows else _nothing(path)


def _check_text_lines(path: Path, text_column: str, text_pair_column: str | None, label_column: str | None):
    if text_pair_column:
        raise RecipeError(f"{path}: this model classifies text pairs ({text_column!r}, {text_pair_column!r}): give "
                          "a .jsonl, .json or .csv file with both columns")
    if label_column:
        raise RecipeError(f"{path}: a .txt file has no columns to score against (--label_column {label_column}): "
                          "give a .jsonl, .json or .csv file with a text and a label column")


def _text_lines(path: Path) -> list:
    """(where, {line, text}) of each non-blank line of a .txt file."""
    with open(path, encoding="utf-8-sig", newline=None) as handle:
        return [(f"line {number}", {"line": number, "text": line})
                for number, line in enumerate(handle.read().split("\n"), 1) if line.strip()]


def _file_columns(path: Path, records: list) -> list[str] | None:
    """A csv file's header; the columns of a json file's rows, in order of appearance (None: no row is an
    object, e.g. an array of strings)."""
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle), [])
    rows = [row for _, row in records if isinstance(row, dict)]
    return list(dict.fromkeys(key for row in rows for key in row)) if rows else None


def _check_columns(path: Path, columns: list[str] | None, text_column: str, text_pair_column: str | None,
                   label_column: str | None) -> None:
    for column, flag in ((text_column, "text_column"), (text_pair_column, "text_pair_column"),
                         (label_column, "label_column")):
        if column and columns is not None and column not in columns:
            raise RecipeError(f"{path}: no column {column!r} (--{flag}); its columns: "
                              f"{', '.join(columns) or '(none)'}")


def _row_problem(row: dict, columns: list[str]) -> str | None:
    for column in columns:
        if column not in row:
            return f"has no column {column!r}"
        problem = text_problem(row[column], required=True)
        if problem:
            return f"column {column!r} {problem}"
    return None


def _nothing(path):
    raise RecipeError(f"{path}: no text to classify")


def check_texts(texts) -> None:
    """`texts` is a list of non-empty strings or {"text", "text_pair"} dicts (the Python API's input)."""
    if isinstance(texts, (str, dict)) or not isinstance(texts, (list, tuple)):
        raise RecipeError(f"texts: a list of texts (strings, or text/text_pair dicts), got {type(texts).__name__}"
                          f"{' (one text: put it in a list)' if isinstance(texts, str) else ''}")
    for index, text in enumerate(texts):
        pair = isinstance(text, dict)
        problem = text_problem(text.get("text") if pair else text, required=True) or (
            text_problem(text.get("text_pair"), required=True) if pair else None)
        if problem:
            raise RecipeError(f"text {index}: {problem}")


def predict(model_dir, texts: list, batch_size: int = 32, max_length: int | None = None) -> list[dict]:
    """For each text (a string, or a {"text", "text_pair"} dict for pair tasks) the text plus what the model's task
    returns: {label, score} (single label), {labels, scores} (multi-label: every label at or above the saved
    threshold), {score} (regression). Texts are cut into windows as the model was trained (long_text: chunk) and
    a text's window logits averaged."""
    check_texts(texts)
    if not texts:
        return []
    classifier = Classifier(model_dir, max_length)
    logits = classifier.logits(texts, batch_size)
    return [{**(text if isinstance(text, dict) else {"text": text}), **out} for text, out in
            zip(texts, classifier.task.outputs(logits))]


class Classifier:
    """A fine-tuned model loaded for prediction: its task (labels.json) and how it cuts texts (max_length,
    windows)."""

    def __init__(self, model_dir, max_length: int | None = None):
        self.recipe = read_run_recipe(model_dir)
        self.model_dir = model_dir
        self.model, self.tokenizer = load_classifier(model_dir)
        info = read_labels_file(model_dir, self.model.config)
        self.task: Task = saved_task(info)
        self.max_length = max_length or self.recipe.get("max_length") or 512
        self.stride = info.get("stride", self.max_length // 4) if info.get("long_text") == "chunk" else None
        if self.stride is not None and self.stride >= self.max_length // 2:
            raise RecipeError(f"--max_length {self.max_length} is too short for this model's windows, which overlap "
                              f"by {self.stride} tokens: give at least {2 * self.stride + 2}")

    def logits(self, texts: list, batch_size: int, progress: bool | None = None) -> np.ndarray:
        if self.recipe.get("text_pair_column") and any(not isinstance(text, dict) for text in texts):
            raise RecipeError(f"{self.model_dir} classifies text pairs ({self.recipe.get('text_column')!r}, "
                              f"{self.recipe['text_pair_column']!r}): give each text as "
                              "{'text': ..., 'text_pair': ...}")
        return text_logits(self.model, self.tokenizer, texts, self.max_length, self.stride, batch_size, progress)


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


def text_logits(model, tokenizer, texts: list, max_length: int, stride: int | None, batch_size: int,
                progress: bool | None = None) -> np.ndarray:
    """The model's logits for each text: truncated at max_length tokens, or (stride given) the mean over windows of
    max_length tokens overlapping by `stride`. A progress bar over the batches on stderr (`progress` None: when
    stderr is a terminal). Hand-written: the text-classification pipeline truncates and has no windows."""
    import torch
    from tqdm import tqdm

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
    starts = tqdm(range(0, len(rows), batch_size), desc="predicting", unit="batch", file=sys.stderr,
                  disable=None if progress is None else not progress)
    with torch.no_grad(), starts:
        for start in starts:
            batch = {k: v.to(model.device) for k, v in collate(rows[start:start + batch_size]).items()}
            outputs.append(model(**batch).logits.float().cpu().numpy())
    return mean_per_text(np.concatenate(outputs), text_of_row)[1]  # every text has at least one row


@dataclass
class FilePredictions:
    count: int  # rows predicted
    metrics: dict | None = None  # scored against --label_column
    metrics_path: Path | None = None  # where the metrics were written


def predict_file(model_dir, input_path, output_path=None, text_column=None, batch_size=32, max_length=None,
                 text_pair_column=None, skip_bad_rows=False, label_column=None, metrics_path=None,
                 progress: bool | None = None) -> FilePredictions:
    """Classify a file: each input row with its columns and the prediction's fields (an input column named like
    one of those is kept as input_<name>). `text_column` and `text_pair_column` default to the run's own
    (recipe.yaml), else "text". With `label_column`, the predictions are scored against it with the task's metrics
    (those of the run's test split), written to `metrics_path` (default: beside the output, NAME.metrics.json).
    The output file is written whole or not at all."""
    output_path = Path(output_path) if output_path else None
    if metrics_path is None and output_path is not None and label_column:
        metrics_path = output_path.with_suffix(".metrics.json")
    metrics_path = Path(metrics_path) if metrics_path and label_column else None
    for key, path in (("output", output_path), ("metrics_output", metrics_path)):
        if path is not None:
            check_output_path(path, Path(input_path), Path(model_dir), key)
    if metrics_path is not None and output_path is not None and metrics_path.resolve() == output_path.resolve():
        raise RecipeError(f"key 'metrics_output': {metrics_path} is the predictions' file; name another file")
    recipe = read_run_recipe(model_dir)
    text_column = text_column or recipe.get("text_column") or "text"
    if text_pair_column is None:
        text_pair_column = recipe.get("text_pair_column")
    inputs = read_inputs(input_path, text_column, text_pair_column, skip_bad_rows, label_column)
    classifier = Classifier(model_dir, max_length)
    # the labels are read before the model runs: an unknown label stops the command before minutes of predicting
    labelled = labelled_targets(classifier.task, inputs, label_column, input_path) if label_column else None
    logits = classifier.logits(inputs.texts, batch_size, progress)
    rows = [_joined(row, out) for row, out in zip(inputs.rows, classifier.task.outputs(logits))]
    if output_path is None:
        for row in rows:
            sys.stdout.write(json_line(row))
    else:
        write_rows(output_path, rows)
    result = FilePredictions(len(rows))
    if labelled is not None:
        result.metrics = {"input": str(input_path), "model": str(model_dir), "label_column": label_column,
                          "rows_scored": len(labelled[0]), "rows_without_label": len(rows) - len(labelled[0]),
                          **classifier.task.metrics(logits[labelled[0]], np.asarray(labelled[1]))}
        if metrics_path is not None:
            _write(metrics_path, "metrics_output", lambda out: out.write(json.dumps(result.metrics, indent=2)))
            result.metrics_path = metrics_path
    return result


def labelled_targets(task: Task, inputs: Inputs, label_column: str, input_path) -> tuple[list[int], list]:
    """(the rows that hold a label in `label_column`, their targets as the task reads them); rows without one
    (missing, null, empty) are predicted but not scored."""
    labelled = [i for i, row in enumerate(inputs.rows) if not _no_label(row.get(label_column))]
    if not labelled:
        raise RecipeError(f"{input_path}: column {label_column!r} (--label_column) holds no label to score against")
    values = [inputs.rows[i][label_column] for i in labelled]
    return labelled, task.file_targets(values, [inputs.places[i] for i in labelled], label_column)


def _no_label(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def metrics_summary(metrics: dict) -> str:
    """The metrics' numbers in one line (lists, e.g. per class, left to the metrics file)."""
    return ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in metrics.items()
                     if isinstance(value, (int, float)) and not key.startswith("rows_"))


def _joined(row: dict, out: dict) -> dict:
    """The input row's columns and the prediction's fields; an input column named like one of those (e.g. a
    gold `label`) is kept as input_<name>."""
    return {**{f"input_{key}" if key in out else key: value for key, value in row.items()}, **out}


def write_rows(output_path: Path, rows: list[dict]) -> None:
    """jsonl, or csv when the name ends in .csv (columns: every row's, in order of appearance; lists and mappings
    as JSON)."""
    if output_path.suffix != ".csv":
        _write(output_path, "output", lambda out: out.writelines(json_line(row) for row in rows))
        return

    def write_csv(out):
        writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows({key: json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict))
                          else value for key, value in row.items()} for row in rows)

    _write(output_path, "output", write_csv)


# Characters JSON leaves unescaped that str.splitlines() (and JavaScript) read as line breaks.
LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(row: dict) -> str:
    """One jsonl line that every line reader reads as one row (UTF-8 kept, U+0085/U+2028/U+2029 escaped)."""
    line = json.dumps(row, ensure_ascii=False)
    for char, escaped in LINE_BREAKS.items():
        line = line.replace(char, escaped)
    return line + "\n"


def _write(path: Path, key: str, write) -> None:
    """Written whole or not at all, with the umask's mode (mkstemp makes 0600)."""
    try:
        handle, tmp = tempfile.mkstemp(prefix=".predictions-", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise RecipeError(f"key '{key}': cannot write {path} ({err.strerror or err})") from None
    try:
        os.fchmod(handle, file_mode())
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            write(out)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RecipeError(f"key '{key}': cannot write {path} ({err.strerror or err})") from None
        raise


def check_output_path(output: Path, input_path: Path, model_dir: Path, key: str = "output") -> None:
    """Predictions go to a file of their own, in a folder that exists: never over the input, and never into a run
    or model folder (a name there could replace the model's weights or a run's files)."""
    try:
        if output.is_dir():
            raise RecipeError(f"key '{key}': {output} is a folder; name a file in it, e.g. "
                              f"{output / 'predictions.jsonl'}")
        if not output.parent.is_dir():
            raise RecipeError(f"key '{key}': the folder {output.parent} does not exist")
        if output.exists() and input_path.exists() and output.samefile(input_path):
            raise RecipeError(f"key '{key}': {output} is the input file; name another file")
        folder = output.parent.resolve()
        inside = next((f for f in (folder, *folder.parents) if is_run_folder(f) or f == model_dir.resolve()), None)
        if inside is None and ((folder / "config.json").is_file() or any(folder.glob("*.safetensors"))):
            inside = folder  # a model folder (a checkpoint, an export, a base model)
        if inside is not None:
            raise RecipeError(f"key '{key}': {output} is inside a run or model folder ({inside}); write "
                              "predictions elsewhere")
    except OSError as err:  # a name too long, a loop of links
        raise RecipeError(f"key '{key}': {output}: {err.strerror or err}") from None
