"""What a model card says of the data a run trained on, read from the run itself: its local files with their rows
and bytes, whether it was lmrecipes' embedded demonstration data, and the first row's text, the card's usage
example. Files are read only when they provably are the ones the run trained on (their fingerprint is the one in
the run's marker: a relative path published from another folder can name another file), so that no other file's
text or size is ever published as the run's."""

from __future__ import annotations

import fnmatch
import gzip
from pathlib import Path
from types import SimpleNamespace

from .arguments.data import EMBEDDED_CORPUS, EMBEDDED_SENTIMENT
from .data.packing import corpus_fingerprint
from .data.rows import csv_records, json_records
from .data.sources import FILE_KEYS, resolve_data_files, source_fingerprint
from .errors import RecipeError
from .run_folder import run_record
from .values import REPO_ROOT

EXAMPLE_CHARS = 200  # the usage example: the start of a text, cut at a word
CHECKED_UP_TO = 2 * 2**30  # bytes of local data read at publishing to prove and count it; more: named only

# What the embedded data is, in the words of a card's limitations (data/README.md describes it in full).
EMBEDDED = {EMBEDDED_CORPUS: "old literature and political speeches", EMBEDDED_SENTIMENT: "movie-review snippets"}


def embedded_data(pattern: str) -> str | None:
    """The embedded data set (EMBEDDED_CORPUS / EMBEDDED_SENTIMENT) a recipe's file pattern names, or None."""
    path = Path(pattern)
    if path.is_absolute() and path.is_relative_to(REPO_ROOT):
        path = path.relative_to(REPO_ROOT)
    for embedded in EMBEDDED:
        if fnmatch.fnmatch(str(path), embedded) or fnmatch.fnmatch(str(path), f"{Path(embedded).parent}/*"):
            return embedded
    return None


def trained_on_embedded_data(recipe: dict) -> list[str]:
    """The embedded data sets a run trained on when its training data is embedded data only; [] otherwise (a Hub
    dataset, or any file of the user's own)."""
    found = [embedded_data(pattern) for pattern in recipe.get("train_file") or []]
    return [] if recipe.get("dataset_name") or not found or None in found else sorted(set(found))


def _marker_fingerprint(files_fingerprint: str, recipe: dict) -> set[str]:
    """What a run on these files recorded as its data: fine-tuning the files' fingerprint, pretraining that with
    the keys that choose its split (packing.corpus_fingerprint)."""
    pretraining = SimpleNamespace(**{"line_by_line": False, "skip_bad_rows": False, "text_column": "text",
                                     "validation_fraction": 0.05, **recipe})
    return {files_fingerprint, corpus_fingerprint(files_fingerprint, pretraining)}


def proven_files(run_dir: Path, recipe: dict) -> dict[str, list[str]]:
    """The run's local data files by recipe key (train_file, validation_file, test_file) when they are the very
    files it trained on; {} otherwise (a Hub dataset, files moved, changed or over CHECKED_UP_TO, no marker)."""
    keys = [key for key in FILE_KEYS.values() if recipe.get(key)]
    recorded = str((run_record(run_dir).get("inputs") or {}).get("data") or "").split(" ")[0]  # shards: after " "
    if recipe.get("dataset_name") or not keys or not recorded:
        return {}
    try:
        files = {key: resolve_data_files(recipe[key], key) for key in keys}
        if sum(Path(name).stat().st_size for names in files.values() for name in names) > CHECKED_UP_TO:
            return {}
        source = SimpleNamespace(dataset_name=None, **{key: recipe.get(key) for key in FILE_KEYS.values()})
        fingerprint = source_fingerprint(source)
    except (RecipeError, OSError, TypeError):
        return {}
    return files if recorded in _marker_fingerprint(fingerprint, recipe) else {}


def _format(name: str) -> str:
    suffixes = [s.lower() for s in Path(name).suffixes if s.lower() != ".gz"]
    return suffixes[-1] if suffixes else ""


def _records(name: str):
    """The rows of a data file as dicts (csv, json, jsonl, parquet); a .txt file has none (it is text)."""
    kind = _format(name)
    if kind == ".csv":
        yield from (row for _, row in csv_records(name))
    elif kind in (".json", ".jsonl"):
        yield from (row for _, row in json_records(name))
    elif kind == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(name).iter_batches(batch_size=64):
            yield from batch.to_pylist()


def file_rows(name: str) -> int | None:
    """Rows of a data file (None: a text file, or one that cannot be read)."""
    try:
        if _format(name) == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(name).metadata.num_rows
        return None if _format(name) in (".txt", ".text") else sum(1 for _ in _records(name))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _cut(text: str, chars: int = EXAMPLE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0]


def _first_text(names: list[str], column: str, pair: str | None):
    for name in names:
        if _format(name) in (".txt", ".text"):
            with (gzip.open if name.endswith(".gz") else open)(name, "rt", encoding="utf-8-sig") as handle:
                line = next((line for line in handle if line.strip()), None)
            if line:
                return _cut(line)
            continue
        for row in _records(name):
            text = row.get(column) if isinstance(row, dict) else None
            if isinstance(text, str) and text.strip():
                second = row.get(pair) if pair else None
                if pair and isinstance(second, str) and second.strip():
                    return {"text": _cut(text, EXAMPLE_CHARS // 2), "text_pair": _cut(second, EXAMPLE_CHARS // 2)}
                return None if pair else _cut(text)
    return None


def first_text(files: dict[str, list[str]], recipe: dict):
    """The start of the first text of the run's validation file (else its training file): a string, or a
    {"text", "text_pair"} dict for pair tasks; None when there is none to read (`files`: proven_files)."""
    for key in ("validation_file", "train_file"):
        try:
            found = _first_text(files.get(key, []), recipe.get("text_column") or "text", recipe.get("text_pair_column"))
        except (OSError, ValueError, UnicodeDecodeError):
            found = None
        if found:
            return found
    return None
