"""Row-level checks of loaded data: every row's text is a string (non-empty where a text is needed) and every
label is present and of the column's type. A defective row is an error naming the file, the row and the column,
or, with `skip_bad_rows`, is dropped and counted.

Hand-written: `datasets` loads such rows as they are (a null becomes None, a number among strings turns the column
into a `Json` feature), and the failure surfaces later, deep in the tokenizer or in Arrow, without a row number.
Well-typed columns are checked in Arrow (null counts, empty strings); rows are looked at one by one only when the
column's type or those counts say that something is wrong.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from datasets import IterableDataset, Value, load_dataset

from .errors import RecipeError

logger = logging.getLogger("lmrecipes")

SHOWN = 3  # bad rows named in the skip_bad_rows log line


@dataclass
class RowRules:
    """What a row must hold: `texts` and `label` map recipe keys to column names (e.g. {"text_column": "text"})."""

    texts: dict[str, str]
    label: dict[str, str] = field(default_factory=dict)
    text_required: bool = False  # empty / whitespace-only texts are defects too (classification), else skipped


def label_key(value) -> str:
    """A label's name: integral floats (csv columns with a gap are read as floats) are named as integers."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def text_problem(value, required: bool) -> str | None:
    if value is None:
        return "is empty (null)"
    if not isinstance(value, str):
        return f"holds the {type(value).__name__} {repr(value)[:40]}, not a text"
    if required and not value.strip():
        return "holds no text (empty or whitespace only)"
    return None


def _label_problem(value, dominant: str | None) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "has no label (null)"
    if isinstance(value, (list, dict)):
        return f"holds the {type(value).__name__} {repr(value)[:40]}, not a label"
    if dominant and type(value).__name__ != dominant:
        return f"holds the {type(value).__name__} {value!r} where the column's other labels are {dominant}s"
    return None


def _is_clean_text_column(table: pa.Table, column: str, required: bool) -> bool:
    values = table.column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)) or values.null_count:
        return False
    return not required or not pc.any(pc.equal(pc.utf8_trim_whitespace(values), "")).as_py()


def _is_clean_label_column(table: pa.Table, column: str) -> bool:
    values = table.column(column)
    if values.null_count:
        return False
    if pa.types.is_floating(values.type):
        return not pc.any(pc.is_nan(values)).as_py()
    return pa.types.is_integer(values.type) or pa.types.is_string(values.type) or pa.types.is_boolean(values.type) \
        or pa.types.is_dictionary(values.type)


def find_bad_rows(dataset, rules: RowRules) -> list[tuple[int, str, str]]:
    """[(row index, column, problem)] of a (non-streaming) dataset, in row order."""
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    text_columns = [c for c in rules.texts.values() if c]
    label_columns = [c for c in rules.label.values() if c]
    dirty_texts = [c for c in text_columns if not _is_clean_text_column(table, c, rules.text_required)]
    dirty_labels = [c for c in label_columns if not _is_clean_label_column(table, c)]
    if not dirty_texts and not dirty_labels:
        return []
    dominant = {}
    for column in dirty_labels:  # the column's type is that of most of its labels
        kinds = Counter(type(v).__name__ for v in dataset[column] if v is not None and not isinstance(v, (list, dict))
                        and not (isinstance(v, float) and math.isnan(v)))
        dominant[column] = kinds.most_common(1)[0][0] if kinds else None
    bad, columns = [], dataset.select_columns(dirty_texts + dirty_labels)
    for start in range(0, len(dataset), 1000):
        batch = columns[start:start + 1000]
        for offset in range(len(next(iter(batch.values())))):
            for column in dirty_texts:
                problem = text_problem(batch[column][offset], rules.text_required)
                if problem:
                    bad.append((start + offset, column, problem))
                    break
            else:
                for column in dirty_labels:
                    problem = _label_problem(batch[column][offset], dominant[column])
                    if problem:
                        bad.append((start + offset, column, problem))
                        break
    return bad


class RowLocator:
    """Names row i of a split loaded from several files as 'FILE row N' (rows counted from 1 in each file; a csv
    header is not a row). The per-file counts are read only when a row has to be named."""

    def __init__(self, files: list[str] | None, builder: str | None, split: str):
        self.files, self.builder, self.split, self._ends = files, builder, split, None

    def __call__(self, index: int) -> str:
        if not self.files:
            return f"the {self.split} split, row {index + 1}"
        if len(self.files) == 1:
            return f"{self.files[0]} row {index + 1}"
        if self._ends is None:
            total, self._ends = 0, []
            for name in self.files:
                total += len(load_dataset(self.builder, data_files=[name], split="train"))
                self._ends.append(total)
        start = 0
        for name, end in zip(self.files, self._ends):
            if index < end:
                return f"{name} row {index - start + 1}"
            start = end
        return f"the {self.split} split, row {index + 1}"


def _key_of(rules: RowRules, column: str) -> str:
    return next(k for k, c in {**rules.texts, **rules.label}.items() if c == column)


def check_rows(dataset, rules: RowRules, locate: RowLocator, skip: bool):
    """The dataset, checked: a defective row is a RecipeError naming file, row, column and key, or (skip) dropped.

    Streaming datasets are checked as they stream (the error, or the skipping, happens when the row is reached).
    """
    if isinstance(dataset, IterableDataset):
        return _check_stream(dataset, rules, locate, skip)
    bad = find_bad_rows(dataset, rules)
    if bad and not skip:
        index, column, problem = bad[0]
        more = f" ({len(bad)} bad rows in all)" if len(bad) > 1 else ""
        raise RecipeError(f"{locate(index)}: column {column!r} ({_key_of(rules, column)}) {problem}{more}; fix the "
                          "data or set skip_bad_rows: true to drop such rows")
    if bad:
        shown = "; ".join(f"{locate(i)}: column {c!r} {p}" for i, c, p in bad[:SHOWN])
        logger.warning("skip_bad_rows: dropped %d of %d rows of the %s split (%s%s)", len(bad), len(dataset),
                       locate.split, shown, "; ..." if len(bad) > SHOWN else "")
        dropped = {i for i, _, _ in bad}
        dataset = dataset.select([i for i in range(len(dataset)) if i not in dropped])
        if len(dataset) == 0:
            raise RecipeError(f"skip_bad_rows: every row of the {locate.split} split is defective ({shown})")
    # A text column that held numbers is a Json feature; its rows are strings now. Rebuilt from the decoded values:
    # cast_column would keep the stored JSON text, quotes included.
    retyped = [c for c in rules.texts.values() if c and dataset.features[c] != Value("string")]
    if retyped:
        features = dataset.features.copy()
        features.update({c: Value("string") for c in retyped})
        dataset = dataset.map(lambda batch: {c: list(batch[c]) for c in retyped}, batched=True, features=features,
                              desc="Text columns as strings")
    return dataset


def _check_stream(dataset, rules: RowRules, locate: RowLocator, skip: bool):
    columns = [(c, True) for c in rules.texts.values() if c] + [(c, False) for c in rules.label.values() if c]
    counts = {"dropped": 0}

    def keep(batch, indices):
        kept = []
        for offset, index in enumerate(indices):
            problem = None
            for column, is_text in columns:
                value = batch[column][offset]
                problem = text_problem(value, rules.text_required) if is_text else _label_problem(value, None)
                if problem:
                    where = f"row {index + 1} of the {locate.split} stream ({', '.join(locate.files or ['Hub'])})"
                    if not skip:
                        raise RecipeError(f"{where}: column {column!r} "
                                          f"({_key_of(rules, column)}) {problem}; fix the data or set "
                                          "skip_bad_rows: true to drop such rows")
                    counts["dropped"] += 1
                    if counts["dropped"] <= SHOWN:
                        logger.warning("skip_bad_rows: dropping %s: column %r %s", where, column, problem)
                    break
            kept.append(problem is None)
        return kept

    return dataset.filter(keep, with_indices=True, batched=True, batch_size=16)


# ---------------------------------------------------------------- when the reader itself fails


def _json_rows(name: str, text: str):
    """(line, row) of a .jsonl file, or of a .json file holding one array; raises ValueError('line N: ...')."""
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"line {err.lineno}: not valid JSON ({err.msg})") from None
        yield from ((None, row) for row in rows)
        return
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 is valid inside a JSON string
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number}: not valid JSON ({err.msg}, column {err.colno})") from None


def _csv_rows(text: str):
    """(line where the row starts, row) of a csv file; a quote left open names the line it opens on."""
    reader = csv.DictReader(text.splitlines(keepends=True), strict=True)
    start = 2
    try:
        for row in reader:
            yield start, {k: None if v in ("", None) else v for k, v in row.items()}
            start = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"line {start}: not valid CSV ({err})") from None


def _csv_value(text):
    """A csv label cell as the csv reader types it: an int, a float, else the text."""
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def first_defect_in_files(files: list[str], builder: str, rules: RowRules | None) -> str | None:
    """'FILE line N: problem' for the first line of json/jsonl/csv files that is not valid or breaks `rules`.

    Used when datasets' reader fails on the files (a type change past its first block, a malformed line): its
    message names a byte position or a 0-based row of a block at best. Hand-written, and only on that error path.
    """
    for name in files:
        with (gzip.open if name.endswith(".gz") else open)(name, "rt", encoding="utf-8-sig", newline="") as f:
            text = f.read()
        rows = _csv_rows(text) if builder == "csv" else _json_rows(name, text.replace("\r\n", "\n"))
        label_kind = {}
        try:
            for number, row in rows:
                where = f"{name} line {number}" if number else f"{name} (array row)"
                if not isinstance(row, dict):
                    return f"{where}: a row is an object of columns, got {type(row).__name__}"
                if rules is None:
                    continue
                for key, column in rules.texts.items():
                    problem = column and text_problem(row.get(column), rules.text_required)
                    if problem:
                        return f"{where}: column {column!r} ({key}) {problem}"
                for key, column in rules.label.items():
                    value = row.get(column) if builder == "json" else _csv_value(row.get(column))
                    kind = label_kind.setdefault(column, type(value).__name__) if value is not None else None
                    problem = column and _label_problem(value, kind)
                    if problem:
                        return f"{where}: column {column!r} ({key}) {problem}"
        except ValueError as err:
            return f"{name} {err}"
    return None
