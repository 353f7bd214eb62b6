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

from ..errors import RecipeError

logger = logging.getLogger("lmrecipes")

SHOWN = 3  # bad rows named in the skip_bad_rows log line


@dataclass
class RowRules:
    """What a row must hold: `texts` and `label` map recipe keys to column names (e.g. {"text_column": "text"})."""

    texts: dict[str, str]
    label: dict[str, str] = field(default_factory=dict)
    text_required: bool = False  # empty / whitespace-only texts are defects too (classification), else skipped


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


def find_bad_rows(dataset, rules: RowRules, raw: dict | None = None) -> list[tuple[int, str, str]]:
    """[(row index, column, problem)] of a (non-streaming) dataset, in row order; `raw` holds a column's values as
    the files hold them, where datasets' own are not to be trusted."""
    raw = raw or {}
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    text_columns = [c for c in rules.texts.values() if c]
    label_columns = [c for c in rules.label.values() if c]
    dirty_texts = [c for c in text_columns if c in raw or not _is_clean_text_column(table, c, rules.text_required)]
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
                value = raw[column][start + offset] if column in raw else batch[column][offset]
                problem = text_problem(value, rules.text_required)
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
    raw = {}  # a text column datasets stored as Json (mixed types) decodes "10" as 10: read it from the files
    for column in [c for c in rules.texts.values() if c and dataset.features[c] != Value("string")]:
        if locate.builder == "json" and locate.files:
            values = raw_json_column(locate.files, column)
            if len(values) == len(dataset):
                raw[column] = values
    bad = find_bad_rows(dataset, rules, raw)
    kept = range(len(dataset))
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
        kept = [i for i in range(len(dataset)) if i not in dropped]
        dataset = dataset.select(kept)
        if len(dataset) == 0:
            raise RecipeError(f"skip_bad_rows: every row of the {locate.split} split is defective ({shown})")
    # A text column that held numbers is a Json feature; its rows are strings now. Rebuilt from the files' own
    # values (or the decoded ones): cast_column would keep the stored JSON text, quotes included.
    for column in [c for c in rules.texts.values() if c and dataset.features[c] != Value("string")]:
        values = [raw[column][i] for i in kept] if column in raw else list(dataset[column])
        dataset = dataset.remove_columns(column).add_column(column, values, feature=Value("string"))
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


# ---------------------------------------------------------------- lmrecipes' own reading of json/jsonl/csv files
# Hand-written, and used only where datasets' reader falls short: when it fails (its message names a byte position
# or a 0-based row of a block at best), and when it stores a column of mixed types as Json (which decodes the
# string "10" as the number 10). Files are read a line at a time; a .json array is read whole.


def _open_text(name: str, newline=None):
    return (gzip.open if name.endswith(".gz") else open)(name, "rt", encoding="utf-8-sig", newline=newline)


def json_records(name: str):
    """(where, row) of a .jsonl file (where = 'line N') or of a .json array ('row N of the array'); a line that is
    not JSON raises ValueError('line N: ...')."""
    with _open_text(name) as handle:
        head = handle.read(4096).lstrip()
        handle.seek(0)
        if head.startswith("["):  # one JSON document: an array of rows
            try:
                rows = json.load(handle)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {err.lineno}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise ValueError("is nested too deeply to read") from None
            yield from ((f"row {i} of the array", row) for i, row in enumerate(rows, 1))
            return
        for number, line in enumerate(handle, 1):  # lines end at \n, \r\n or \r only (not at U+2028)
            if line.strip():
                try:
                    yield f"line {number}", json.loads(line.strip())
                except json.JSONDecodeError as err:
                    raise ValueError(f"line {number}: not valid JSON ({err.msg}, column {err.colno})") from None
                except RecursionError:
                    raise ValueError(f"line {number}: nested too deeply to read") from None


def csv_records(name: str):
    """(where, row) of a csv file, where = the line the row starts on (blank lines and quoted line breaks counted);
    empty cells are None. A quote left open raises ValueError naming the line it opens on."""
    with _open_text(name, newline="") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader, None)
            while True:
                start = reader.line_num + 1
                cells = next(reader, None)
                if cells is None:
                    return
                if cells:  # a blank line
                    yield f"line {start}", {k: v or None for k, v in zip(header, cells)}
        except csv.Error as err:
            raise ValueError(f"line {start}: not valid CSV ({err})") from None


def _kind(value, builder: str) -> str | None:
    """What pyarrow / pandas type a value as: a change of kind down a column is what stops datasets' reader."""
    if value is None:
        return None
    if builder == "csv":
        try:
            float(value)
            return "number"
        except ValueError:
            return "text"
    if isinstance(value, bool):
        return "boolean"
    return {int: "number", float: "number", str: "text", list: "list", dict: "mapping"}.get(type(value), "value")


def first_defect_in_files(files: list[str], builder: str, rules: RowRules | None) -> str | None:
    """'FILE line N: problem' for what stops datasets' reader on these files: a line that does not parse, else the
    first row whose value in a column is of another kind than the column's earlier values. None if neither."""
    records = csv_records if builder == "csv" else json_records
    try:
        for name in files:  # first: syntax, in every file
            for where, row in records(name):
                if not isinstance(row, dict):
                    return f"{name} {where}: a row is an object of columns, got {type(row).__name__}"
    except ValueError as err:
        return f"{name} {err}"
    keys = {column: key for key, column in {**(rules.texts if rules else {}), **(rules.label if rules else {})}.items()
            if column}
    kinds = {}
    for name in files:  # then: a change of kind down a column, across the files in order
        for where, row in records(name):
            for column, value in row.items():
                kind = _kind(value, builder)
                if kind is None:
                    continue
                first = kinds.setdefault(column, kind)
                if kind != first:
                    named = f"column {column!r}" + (f" ({keys[column]})" if column in keys else "")
                    return (f"{name} {where}: {named} holds the {kind} {repr(value)[:40]} where the column's "
                            f"earlier values are {first}s")
    return None


def raw_json_column(files: list[str], column: str) -> list:
    """The values of `column` in json/jsonl files, row by row, as the files hold them."""
    return [row.get(column) for name in files for _, row in json_records(name)]
