"""Where the data comes from: local files (txt, json, jsonl, csv, parquet; globs, .gz) or a Hub dataset, loaded as
splits whose rows are checked (rows.py); held-out splits split off deterministically by a hash of the text; seeded
samples; and the fingerprint of the source, which caches and run markers key on."""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
import hashlib
import json
import logging
import os
from itertools import islice
from pathlib import Path

import datasets
import numpy as np
from datasets import IterableDataset, load_dataset

from ..arguments import DataSourceArguments
from ..cache import files_fingerprint
from ..errors import RecipeError, first_line
from ..values import REPO_ROOT
from .rows import RowLocator, RowRules, check_rows, first_defect_in_files

# Rows per batch when a stream is split: memory set by the largest documents, not by the corpus.
STREAM_BATCH = 16

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
FILE_KEYS = {"train": "train_file", "validation": "validation_file", "test": "test_file"}


def _files_named(path: str) -> list[str]:
    """The file of that name when it exists (a literal name may hold glob characters: `c[1].jsonl`), else the
    files the name matches as a glob pattern."""
    return [path] if Path(path).is_file() else [m for m in sorted(glob.glob(path)) if Path(m).is_file()]


def _why_no_file(expanded: str, pattern: str) -> str:
    for candidate in (Path(expanded), REPO_ROOT / expanded):
        if candidate.is_dir():
            return f"{pattern!r} is a folder; name its files, e.g. '{pattern.rstrip('/')}/*.txt'"
        if candidate.is_symlink():
            return f"{pattern!r} is a link to {os.readlink(candidate)!r}, which does not exist"
    return f"no file matches {pattern!r}"


def resolve_data_files(patterns: list[str], key: str) -> list[str]:
    """Expand paths and globs: relative ones from the working directory first, then from the repository root."""
    found = []
    for pattern in patterns:
        expanded = str(Path(pattern).expanduser())
        matches = _files_named(expanded)
        if not matches and not Path(expanded).is_absolute():
            matches = _files_named(str(REPO_ROOT / expanded))
        if not matches:
            raise RecipeError(f"key '{key}': {_why_no_file(expanded, pattern)}")
        found += matches
    return found


def _builder_for(files: list[str], key: str) -> str:
    kinds = set()
    for name in files:
        suffixes = [s.lower() for s in Path(name).suffixes]
        if suffixes and suffixes[-1] == ".gz":
            suffixes = suffixes[:-1]
        ext = suffixes[-1] if suffixes else ""
        if ext not in _BUILDERS or (ext == ".parquet" and name.endswith(".gz")):
            raise RecipeError(f"key '{key}': unsupported file type {name!r} (txt, json, jsonl, csv, parquet; .gz for "
                              "text formats)")
        kinds.add(_BUILDERS[ext])
    if len(kinds) > 1:
        raise RecipeError(f"key '{key}': files of different formats in one split: {sorted(kinds)}")
    return kinds.pop()


def check_utf8(files: list[str], key: str) -> None:
    """Refuse text files that are not valid UTF-8, naming the file and the byte offset (decoding with replacement
    would silently train on mojibake). Parquet is typed and left to its reader."""
    for name in files:
        if ".parquet" in Path(name).suffixes:
            continue
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with (gzip.open(name, "rb") if name.endswith(".gz") else open(name, "rb")) as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    raise RecipeError(f"key '{key}': {name} is not valid UTF-8 (byte 0x{chunk[err.start]:02x} at "
                                      f"offset {offset + err.start}); convert it to UTF-8") from None
                offset += len(chunk)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise RecipeError(f"key '{key}': {name} is not valid UTF-8 (truncated character at the end)") from None


def _reader_message(err: BaseException) -> str:
    """The reader's own words: datasets wraps a parser's error (which names the line) in a generic one."""
    inner, seen = err, {id(err)}
    while (inner.__cause__ or inner.__context__) is not None and id(inner.__cause__ or inner.__context__) not in seen:
        inner = inner.__cause__ or inner.__context__
        seen.add(id(inner))
    message = first_line(inner)
    return message if inner is err else f"{message} ({type(inner).__name__})"


def _check_not_trained_on(files: list[str], key: str, source: DataSourceArguments) -> None:
    """A held-out file that is also a training file would report training results as held-out ones."""
    if key == "train_file":
        return
    trained = {os.path.realpath(f) for f in resolve_data_files(source.train_file or [], "train_file")}
    both = [f for f in files if os.path.realpath(f) in trained]
    if both:
        raise RecipeError(f"key '{key}': {both[0]} is also a train_file: its results would be measured on the "
                          "training data; give held-out data, or leave the key out to hold out a fraction")


def _check_not_the_cache(err: BaseException, files: list[str]) -> None:
    """An OS error on a path that is none of the data files is datasets' own cache (HF_DATASETS_CACHE, under HOME by
    default) that cannot be written: said as such, not as the data file's fault."""
    path = getattr(err, "filename", None)
    if isinstance(err, OSError) and path and not any(os.path.abspath(path) == os.path.abspath(f) for f in files):
        raise RecipeError(f"the datasets cache cannot be written at {path} ({err.strerror or err}): set "
                          "HF_DATASETS_CACHE (or HF_HOME) to a writable folder") from None


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs a reader's failure at ERROR level before raising it: the user gets one line, from lmrecipes."""
    root = logging.getLogger("datasets")
    level, root.level = root.level, logging.CRITICAL
    try:
        yield
    finally:
        root.setLevel(level)


def load_raw_splits(source: DataSourceArguments, *, streaming: bool = False, text_sample_by: str = "document",
                    rules: RowRules | None = None):
    """Load the recipe's data as a dict of split name -> (Iterable)Dataset, plus a fingerprint of the source.

    Local files: `train_file` / `validation_file` / `test_file` (txt files are one row per file:
    `text_sample_by`). Hub: `dataset_name` / `dataset_config_name` with its own splits. With `rules`, each split
    must have their columns and its rows are checked (rows.check_rows: a defect is an error naming file and row,
    or the row is dropped when the recipe sets skip_bad_rows).
    """
    if source.dataset_name:
        try:
            loaded = load_dataset(source.dataset_name, source.dataset_config_name, streaming=streaming)
        except Exception as err:  # offline, unknown id, bad config: all one line for the user
            raise RecipeError(f"key 'dataset_name': cannot load {source.dataset_name!r}: {first_line(err)}") from None
        splits = dict(loaded)
        locators = {split: RowLocator(None, None, split) for split in splits}
    else:
        splits, locators = {}, {}
        for split, key in FILE_KEYS.items():
            patterns = getattr(source, key, None)
            if not patterns:
                continue
            files = resolve_data_files(patterns, key)
            _check_not_trained_on(files, key, source)
            builder = _builder_for(files, key)
            check_utf8(files, key)
            kwargs = {"sample_by": text_sample_by} if builder == "text" else {}
            try:
                with _quiet_datasets():
                    splits[split] = load_dataset(builder, data_files=files, split="train", streaming=streaming,
                                                 **kwargs)
            except Exception as err:
                _check_not_the_cache(err, files)
                where = first_defect_in_files(files, builder, rules) if builder in ("json", "csv") else None
                message = _reader_message(err)
                if where is None and ("corresponds to no data" in message or message.startswith("StopIteration")):
                    raise RecipeError(f"key '{key}': {', '.join(files)} holds no rows") from None
                if where is not None:  # the reader stopped there: skip_bad_rows cannot drop what was never read
                    raise RecipeError(f"key '{key}': cannot read {where}; fix the file (the reader stops at it)"
                                      ) from None
                raise RecipeError(f"key '{key}': cannot read {', '.join(files)}: {message}") from None
            if not streaming and len(splits[split]) == 0:
                raise RecipeError(f"key '{key}': {', '.join(files)} holds no rows")
            locators[split] = RowLocator(files, builder, split)
    if "train" not in splits:
        raise RecipeError(f"the data has no 'train' split (splits: {', '.join(splits) or 'none'})")
    if rules is not None:
        for split, dataset in list(splits.items()):
            for key, column in {**rules.texts, **rules.label}.items():
                if column:
                    check_text_column(dataset, column, key, split)
            splits[split] = check_rows(dataset, rules, locators[split], source.skip_bad_rows)
    return splits, source_fingerprint(source)


def source_fingerprint(source: DataSourceArguments) -> str:
    """What identifies the recipe's data: the contents of its local files (names and bytes), or the Hub dataset id."""
    if source.dataset_name:
        return json.dumps([source.dataset_name, source.dataset_config_name])
    files = [f for key in FILE_KEYS.values() if getattr(source, key, None)
             for f in resolve_data_files(getattr(source, key), key)]
    return files_fingerprint(files)


def _unit_hash(text) -> float:
    digest = hashlib.blake2b(str(text).encode("utf-8"), digest_size=8, person=b"lmrecipes").digest()
    return int.from_bytes(digest, "big") / 2**64


def split_held_out(dataset, fractions: dict[str, float], key_column: str):
    """Deterministically split rows into 'train' and the named held-out splits.

    A row's split depends only on its `key_column` value (the text), through a fixed hash: the same in normal
    and streaming mode, on every machine and run, and identical texts never straddle two splits (no leakage
    through duplicates). Returns a dict split name -> dataset.
    """
    bounds, low = {}, 0.0
    for name, fraction in fractions.items():
        bounds[name] = (low, low + fraction)
        low += fraction

    def in_split(name):
        lo, hi = bounds[name] if name != "train" else (low, 1.0 + 1e-9)
        return lambda batch: [lo <= _unit_hash(key) < hi for key in batch[key_column]]

    check_text_column(dataset, key_column)
    if isinstance(dataset, IterableDataset):  # STREAM_BATCH rows per batch: memory independent of the corpus
        return {name: dataset.filter(in_split(name), batched=True, batch_size=STREAM_BATCH)
                for name in ["train", *fractions]}
    splits = {name: dataset.filter(in_split(name), batched=True, desc="Splitting") for name in ["train", *fractions]}
    for name, split in splits.items():
        if len(split) == 0:
            what = f"key '{name}_fraction': {fractions[name]}" if name in fractions else "the held-out fractions"
            raise RecipeError(f"{what} of {len(dataset)} rows leaves the {name} split empty: change it or give "
                              f"the {name} split as a file")
    return splits


def check_text_column(dataset, column: str, key: str = "text_column", split: str | None = None) -> None:
    """A one-line error naming the recipe key when the data has no such column (a stream may not know its own)."""
    names = dataset.column_names
    if names is not None and column not in names:
        where = f"the {split} data" if split else "the data"
        raise RecipeError(f"key '{key}': column {column!r} not in {where} (columns: {', '.join(names)})")


def sample_indices(count: int, size: int, seed: int, labels=None) -> list[int]:
    """`size` of `count` rows (all when size >= count), a seeded random sample in their original order; with
    `labels`, stratified: each label gets its share by largest remainders, and every label at least one row when
    size allows."""
    rng = np.random.default_rng(seed)
    if size >= count:
        return list(range(count))
    if labels is None:
        return sorted(rng.choice(count, size=size, replace=False).tolist())
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / count
    take = np.floor(quota).astype(int)
    if size >= len(classes):
        take = np.maximum(take, 1)
    while take.sum() > size:  # the one-per-label floor overshot: trim the largest
        take[np.argmax(take)] -= 1
    while take.sum() < size:  # then the largest remaining shares, never beyond a label's rows
        room = np.where(take < counts, quota - take, -np.inf)
        take[np.argmax(room)] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=n, replace=False) for c, n in zip(classes, take)]
    return sorted(np.concatenate(chosen).tolist())


datasets.logging.set_verbosity_warning()


OPEN_SOURCES = 8  # source shards (files) a share reads at a time, taking rows from each in turn so that they mix


def stream_in_shares(dataset: IterableDataset, shares: int, balanced: bool = True) -> IterableDataset:
    """`dataset` as a stream of `shares` shards (processes x data-loader workers): accelerate gives each process its
    run of them (`IterableDataset.shard`, with dispatch_batches off) and datasets each worker one, so that every
    process reads, tokenizes and packs only its share, and none waits on process 0.

    `balanced` (training): the rows of all source shards (files) are numbered in one order (OPEN_SOURCES files at a
    time, a row from each in turn) and share j keeps rows j, j + shares, j + 2 x shares, ...: the shares are equal
    whatever the files' sizes, even with files of one document, so that repeating each share keeps every file's
    weight (the price: every share reads every file). Else (writing token shards, where only the total matters) a
    stream of at least `shares` files is split by file, each read once.
    Hand-written: datasets' `split_dataset_by_node` gives each process whole files when their number divides (shares
    as unequal as the files) and leaves one shard per process, which data-loader workers cannot share out.
    """
    sources = dataset.n_shards
    if not balanced and sources >= shares:
        return dataset

    def source_rows(each: int):
        # the source shard's examples iterable, not the stream: a stream iterated inside a data-loader worker reads
        # just that worker's share of its shards, and the other workers' rows would be lost
        return (example for _, example in dataset._ex_iterable.shard_data_sources(num_shards=sources, index=each))

    def rows(part: list[int]):
        for share in part:
            waiting, reading, number, kept = iter(range(sources)), [], 0, 0
            while True:
                reading += [source_rows(each) for each in islice(waiting, OPEN_SOURCES - len(reading))]
                if not reading:
                    break
                for source in list(reading):
                    example = next(source, None)
                    if example is None:
                        reading.remove(source)
                        continue
                    if number % shares == share:
                        kept += 1
                        yield example
                    number += 1
            if balanced and not kept:  # its process would stop while the others wait for it
                raise RecipeError(f"share {share + 1} of the {shares} the training stream is split into (processes "
                                  "x data-loader workers) holds no row: the stream has fewer documents than "
                                  "shares; launch fewer processes or workers, or give more data")

    return IterableDataset.from_generator(rows, features=dataset.features, gen_kwargs={"part": list(range(shares))})
