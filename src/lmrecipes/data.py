"""Data shared by pretraining and fine-tuning: find and load the files (or a Hub dataset), split off held-out rows
deterministically, and, for pretraining, tokenize and pack into fixed-length blocks with a reusable cache."""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
import hashlib
import json
import logging
from pathlib import Path

import datasets
import numpy as np
from datasets import (Dataset, DatasetDict, Features, IterableDataset, Sequence, Value, load_dataset,
                      load_from_disk)

from .arguments import REPO_ROOT, DataSourceArguments, PretrainDataArguments
from .cache import atomic_directory, files_fingerprint
from .errors import RecipeError, first_line
from .objectives import get_objective
from .rows import RowLocator, RowRules, check_rows, first_defect_in_files

logger = logging.getLogger(__name__)

# Documents per tokenize (and, streaming, split) batch instead of datasets' default 1000, so that memory is set by
# the largest documents, not by the corpus (a small corpus fits whole in one batch of 1000). Normal mode takes 64:
# short documents tokenize at 70% of the speed of 1000 (10k vs 14k reviews/s), 16 would be 55%. Streaming takes 16.
MAP_BATCH, STREAM_BATCH = 64, 16
EVAL_SAMPLE_SEED = 0  # max_eval_samples: the same held-out blocks whatever the training seed

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
FILE_KEYS = {"train": "train_file", "validation": "validation_file", "test": "test_file"}


def resolve_data_files(patterns: list[str], key: str) -> list[str]:
    """Expand paths and globs: relative ones from the working directory first, then from the repository root."""
    found = []
    for pattern in patterns:
        expanded = str(Path(pattern).expanduser())
        matches = sorted(glob.glob(expanded))
        if not matches and not Path(expanded).is_absolute():
            matches = sorted(glob.glob(str(REPO_ROOT / expanded)))
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise RecipeError(f"key '{key}': no file matches {pattern!r}")
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
            builder = _builder_for(files, key)
            check_utf8(files, key)
            kwargs = {"sample_by": text_sample_by} if builder == "text" else {}
            try:
                with _quiet_datasets():
                    splits[split] = load_dataset(builder, data_files=files, split="train", streaming=streaming,
                                                 **kwargs)
            except Exception as err:
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


# ---------------------------------------------------------------- pretraining: tokenize and pack


def _is_byte_level(tokenizer) -> bool:
    if not hasattr(tokenizer, "backend_tokenizer"):
        return False
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    return decoder.get("type") == "ByteLevel"


def _token_bytes(text: str, offsets) -> list[int]:
    """UTF-8 bytes of `text` per token, summing to the text's bytes: token i gets the bytes from the end of token
    i-1's span to the end of its own (the first also takes what precedes it, the last what follows it). Hand-written:
    tokenizers give character offsets only. Byte-level tokenizers are counted exactly by the caller instead (a
    character split between tokens gives all its bytes to the first piece here)."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    width = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    prefix = np.concatenate([[0], np.cumsum(width)])
    ends = np.maximum.accumulate(prefix[[min(end, len(text)) for _, end in offsets]]) if offsets else np.zeros(0, int)
    counts = np.diff(ends, prepend=0)
    if len(counts):
        counts[-1] += prefix[-1] - ends[-1]
    return counts.astype(int).tolist()


def _tokenize_and_pack(dataset, tokenizer, objective: str, block_size: int, text_column: str, num_proc=None):
    """Tokenize documents, separate them with the objective's separator (EOS causal, SEP masked), and cut the
    stream into blocks.

    The remainder of each map batch is carried into the next (hand-written: datasets' map has no state between
    batches), so at most one partial block is lost per corpus (per process with num_proc). Masked blocks are
    wrapped as [CLS] ... [SEP], and every special token (the [SEP]s between documents too) is marked in
    `special_tokens_mask`. Each block records `block_bytes`: the exact UTF-8 bytes of the text its predicted tokens
    came from (causal: tokens 2..block_size, which the loss is computed on), for bits per byte.
    """
    layout = get_objective(objective)
    separator = getattr(tokenizer, f"{layout.separator}_id")
    if separator is None:
        raise RecipeError(f"the tokenizer has no {layout.separator}, needed to separate documents for {objective}")
    wrap = layout.wraps_blocks
    body = block_size - 2 if wrap else block_size
    specials = set(tokenizer.all_special_ids)
    byte_level = _is_byte_level(tokenizer)

    def _token_sizes(text: str, ids: list[int], offsets) -> list[int]:
        if byte_level:  # a byte-level token is one character per byte: exact even where it splits a character
            exact = [len(piece) for piece in tokenizer.convert_ids_to_tokens(ids)]
            if sum(exact) == len(text.encode("utf-8")):  # else a prefix space was added: offsets below
                return exact
        return _token_bytes(text, offsets)

    def tokenize(batch):
        texts = [t for t in batch[text_column] if t]
        if not texts:  # the tokenizer fails on an empty batch
            return {"input_ids": [], "token_bytes": []}
        try:
            encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                                return_offsets_mapping=True, verbose=False)
            sizes = [_token_sizes(text, ids, offsets) for text, ids, offsets in
                     zip(texts, encoded["input_ids"], encoded["offset_mapping"])]
        except NotImplementedError:  # a slow tokenizer has no offsets: the document's bytes spread evenly
            encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
            sizes = [_spread(len(t.encode("utf-8")), len(ids)) for t, ids in zip(texts, encoded["input_ids"])]
        return {"input_ids": [row + [separator] for row in encoded["input_ids"]],
                "token_bytes": [row + [0] for row in sizes]}

    carry = {"ids": [], "bytes": []}  # the tokens of the batches so far that did not fill a block

    def pack(batch, indices):
        if indices and indices[0] == 0:  # a new pass over the data (a stream's next epoch): nothing carried into it
            carry["ids"], carry["bytes"] = [], []
        ids = carry["ids"] + [token for row in batch["input_ids"] for token in row]
        sizes = carry["bytes"] + [size for row in batch["token_bytes"] for size in row]
        full = len(ids) // body * body
        carry["ids"], carry["bytes"] = ids[full:], sizes[full:]
        blocks = [ids[i : i + body] for i in range(0, full, body)]
        first = 0 if wrap else 1  # a causal block's first token is never predicted
        out = {"block_bytes": [float(sum(sizes[i + first : i + body])) for i in range(0, full, body)]}
        if wrap:
            out["input_ids"] = [[tokenizer.cls_token_id, *b, tokenizer.sep_token_id] for b in blocks]
            out["special_tokens_mask"] = [[int(t in specials) for t in block] for block in out["input_ids"]]
        else:
            out["input_ids"], out["labels"] = blocks, [list(b) for b in blocks]
        return out

    # IterableDataset.map takes neither num_proc nor desc; a stream is tokenized STREAM_BATCH documents at a time
    streaming = isinstance(dataset, IterableDataset)
    options = {} if streaming else {"num_proc": num_proc}
    desc = (lambda text: {}) if streaming else (lambda text: {"desc": text})
    tokenized = dataset.select_columns([text_column]).map(tokenize, batched=True, remove_columns=[text_column],
                                                          batch_size=STREAM_BATCH if streaming else MAP_BATCH,
                                                          **options, **desc("Tokenizing"))
    if not streaming and len(tokenized) == 0:
        raise RecipeError(f"key '{text_column}': the documents hold no text, so there is no block to train or "
                          "evaluate on")
    features = Features({"input_ids": Sequence(Value("int32")), "block_bytes": Value("float64"),
                         **({"special_tokens_mask": Sequence(Value("int8"))} if wrap
                            else {"labels": Sequence(Value("int32"))})})
    return tokenized.map(pack, batched=True, batch_size=64, with_indices=True,
                         remove_columns=["input_ids", "token_bytes"], features=features, **options, **desc("Packing"))


def _spread(total: int, count: int) -> list[int]:
    share, rest = divmod(total, max(count, 1))
    return [share + (i < rest) for i in range(count)]


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


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's vocabulary, model and pipeline, without the truncation / padding state that calling it sets."""
    if not hasattr(tokenizer, "backend_tokenizer"):
        return hashlib.sha256(repr(tokenizer).encode()).hexdigest()
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None), state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def prepare_pretraining_data(raw: dict, fingerprint: str, tokenizer, objective: str, args: PretrainDataArguments,
                             *, shuffle_seed: int = 42):
    """Tokenize and pack `raw["train"]` and `raw["validation"]`; return (train, eval, eval_bytes_per_token).

    Normal mode: tokenized+packed blocks are saved under the cache once per corpus+tokenizer+settings and
    reused on later runs (hand-written: datasets' own map cache cannot tell the user it was reused, and is
    keyed on pickled function state rather than on what defines the result). Streaming mode: the training
    blocks are produced on the fly; the evaluation blocks (max_eval_samples, default 256) are materialized.
    """
    for split in raw.values():
        check_text_column(split, args.text_column)
    train_raw, eval_raw = raw["train"], raw["validation"]

    if args.streaming:
        train = _tokenize_and_pack(train_raw, tokenizer, objective, args.block_size, args.text_column)
        train = train.remove_columns(["block_bytes"]).shuffle(seed=shuffle_seed,
                                                                buffer_size=args.shuffle_buffer_size)
        if args.max_train_samples:
            train = train.take(args.max_train_samples)
        blocks = _tokenize_and_pack(eval_raw, tokenizer, objective, args.block_size, args.text_column)
        evaluation = Dataset.from_list(list(blocks.take(args.max_eval_samples or 256)))
    else:
        key_parts = [fingerprint, tokenizer_fingerprint(tokenizer), objective, args.block_size, args.text_column,
                     args.validation_fraction, args.preprocessing_num_workers, 5]  # each process packs its share
        key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
        folder = args.cache_root / "data" / key
        if (folder / "dataset_dict.json").is_file():
            logger.info("Reusing tokenized and packed data from %s", folder)
        else:
            packed = DatasetDict({
                "train": _tokenize_and_pack(train_raw, tokenizer, objective, args.block_size, args.text_column,
                                            args.preprocessing_num_workers),
                "validation": _tokenize_and_pack(eval_raw, tokenizer, objective, args.block_size, args.text_column,
                                                 args.preprocessing_num_workers),
            })
            # checked before saving: datasets cannot load back a saved split of zero rows
            if len(packed["train"]) == 0:
                raise RecipeError(f"the training text is shorter than one block of block_size={args.block_size} "
                                  "tokens")
            if len(packed["validation"]) == 0:
                raise RecipeError(f"the held-out text is shorter than one block of block_size={args.block_size} "
                                  "tokens; raise validation_fraction or give validation_file")
            with atomic_directory(folder) as tmp:
                packed.save_to_disk(str(tmp))
            logger.info("Tokenized data saved to %s", folder)
        packed = load_from_disk(str(folder))
        train, evaluation = packed["train"].remove_columns(["block_bytes"]), packed["validation"]
        if args.max_train_samples:  # seeded random samples of the blocks, not the first ones
            train = train.select(sample_indices(len(train), args.max_train_samples, shuffle_seed))
        if args.max_eval_samples:  # one fixed seed: runs with other training seeds are scored on the same blocks
            evaluation = evaluation.select(sample_indices(len(evaluation), args.max_eval_samples, EVAL_SAMPLE_SEED))
    if len(evaluation) == 0:
        raise RecipeError("the held-out data produced no evaluation block")
    predicted = get_objective(objective).scored_per_block(args.block_size)
    eval_bytes_per_token = sum(evaluation["block_bytes"]) / (len(evaluation) * predicted)
    return train, evaluation.remove_columns(["block_bytes"]), eval_bytes_per_token


datasets.logging.set_verbosity_warning()
