"""Pretraining data: the corpus's train and held-out splits, tokenized, separated by the objective's separator and
packed into fixed-length blocks, each with the UTF-8 bytes its scored tokens came from (for bits per byte), cached
on disk per corpus, tokenizer and settings."""

from __future__ import annotations

import hashlib
import json
import logging
from itertools import chain
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, IterableDataset, Sequence, Value, load_from_disk

from ..arguments import PretrainDataArguments
from ..cache import cached, tokenizer_fingerprint
from ..errors import RecipeError, first_line
from ..objectives import Objective
from .rows import RowRules
from .sources import STREAM_BATCH, check_text_column, load_raw_splits, sample_indices, split_held_out

logger = logging.getLogger(__name__)

# Documents per tokenize batch instead of datasets' default 1000, so that memory is set by the largest documents,
# not by the corpus (a small corpus fits whole in one batch of 1000). Normal mode takes 64: short documents tokenize
# at 70% of the speed of 1000 (10k vs 14k reviews/s), 16 would be 55%. Streaming takes 16 (sources.STREAM_BATCH).
MAP_BATCH = 64
EVAL_SAMPLE_SEED = 0  # max_eval_samples: the same held-out blocks whatever the training seed


def corpus_texts(dataset, column: str):
    """The texts of a split, one at a time (batches of 64 from an in-memory dataset), e.g. to train a tokenizer."""
    if hasattr(dataset, "iter") and not hasattr(dataset, "_ex_iterable"):
        return chain.from_iterable(batch[column] for batch in dataset.iter(batch_size=64))
    return (row[column] for row in dataset)


def load_corpus(data_args: PretrainDataArguments):
    """The raw train/validation splits and their fingerprint (what the tokenizer and the packed data depend on)."""
    raw, fingerprint = load_raw_splits(data_args, streaming=data_args.streaming,
                                       rules=RowRules(texts={"text_column": data_args.text_column}))
    if "validation" not in raw:
        raw.update(split_held_out(raw["train"], {"validation": data_args.validation_fraction},
                                  data_args.text_column))
    # the training split, and so the tokenizer and the packed data, also depend on these keys and rows checks
    fingerprint = hashlib.sha256(json.dumps([fingerprint, data_args.text_column, data_args.validation_fraction,
                                             data_args.skip_bad_rows]).encode()).hexdigest()
    return raw, fingerprint


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


def _document_tokenizer(tokenizer, separator: int, text_column: str):
    """The batched map function that tokenizes documents (no special tokens), ends each with `separator`, and gives
    every token the UTF-8 bytes of the text it came from (`token_bytes`)."""
    byte_level = _is_byte_level(tokenizer)

    def token_sizes(text: str, ids: list[int], offsets) -> list[int]:
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
            sizes = [token_sizes(text, ids, offsets) for text, ids, offsets in
                     zip(texts, encoded["input_ids"], encoded["offset_mapping"])]
        except NotImplementedError:  # a slow tokenizer has no offsets: the document's bytes spread evenly
            encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
            sizes = [_spread(len(t.encode("utf-8")), len(ids)) for t, ids in zip(texts, encoded["input_ids"])]
        return {"input_ids": [row + [separator] for row in encoded["input_ids"]],
                "token_bytes": [row + [0] for row in sizes]}

    return tokenize


def _block_packer(tokenizer, block_size: int, wrap: bool):
    """The batched map function (with indices) that cuts the token stream into blocks of `block_size`, carrying
    the remainder of each batch into the next; `wrap`: blocks laid out as [CLS] ... [SEP]."""
    body = block_size - 2 if wrap else block_size
    specials = set(tokenizer.all_special_ids)
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

    return pack


def _tokenize_and_pack(dataset, tokenizer, objective: Objective, block_size: int, text_column: str, num_proc=None):
    """Tokenize documents, separate them with the objective's separator (EOS causal, SEP masked), and cut the
    stream into blocks.

    The remainder of each map batch is carried into the next (hand-written: datasets' map has no state between
    batches), so at most one partial block is lost per corpus (per process with num_proc). Masked blocks are
    wrapped as [CLS] ... [SEP], and every special token (the [SEP]s between documents too) is marked in
    `special_tokens_mask`. Each block records `block_bytes`: the exact UTF-8 bytes of the text its predicted tokens
    came from (causal: tokens 2..block_size, which the loss is computed on), for bits per byte.
    """
    separator = getattr(tokenizer, f"{objective.separator}_id")
    if separator is None:
        raise RecipeError(f"the tokenizer has no {objective.separator}, needed to separate documents for "
                          f"{objective.name}")
    wrap = objective.wraps_blocks
    # IterableDataset.map takes neither num_proc nor desc; a stream is tokenized STREAM_BATCH documents at a time
    streaming = isinstance(dataset, IterableDataset)
    options = {} if streaming else {"num_proc": num_proc}
    desc = (lambda text: {}) if streaming else (lambda text: {"desc": text})
    tokenized = dataset.select_columns([text_column]).map(
        _document_tokenizer(tokenizer, separator, text_column), batched=True, remove_columns=[text_column],
        batch_size=STREAM_BATCH if streaming else MAP_BATCH, **options, **desc("Tokenizing"))
    if not streaming and len(tokenized) == 0:
        raise RecipeError(f"key '{text_column}': the documents hold no text, so there is no block to train or "
                          "evaluate on")
    features = Features({"input_ids": Sequence(Value("int32")), "block_bytes": Value("float64"),
                         **({"special_tokens_mask": Sequence(Value("int8"))} if wrap
                            else {"labels": Sequence(Value("int32"))})})
    return tokenized.map(_block_packer(tokenizer, block_size, wrap), batched=True, batch_size=64, with_indices=True,
                         remove_columns=["input_ids", "token_bytes"], features=features, **options, **desc("Packing"))


def _spread(total: int, count: int) -> list[int]:
    share, rest = divmod(total, max(count, 1))
    return [share + (i < rest) for i in range(count)]


def prepare_pretraining_data(raw: dict, fingerprint: str, tokenizer, objective: Objective, args: PretrainDataArguments,
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
        key_parts = [fingerprint, tokenizer_fingerprint(tokenizer), objective.name, args.block_size, args.text_column,
                     args.validation_fraction, args.preprocessing_num_workers, 5]  # each process packs its share
        key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
        folder = args.cache_root / "data" / key

        def build(tmp: Path) -> None:
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
            packed.save_to_disk(str(tmp))

        reused = cached(folder, build, "tokenized data cache")
        logger.info("%s %s", "Reusing tokenized and packed data from" if reused else "Tokenized data saved to", folder)
        try:
            packed = load_from_disk(str(folder))
        except Exception as err:  # noqa: BLE001 - pyarrow raises its own errors for a damaged file
            raise RecipeError(f"the tokenized data cached at {folder} cannot be read ({first_line(err)}); delete "
                              "that folder and run again") from None
        train, evaluation = packed["train"].remove_columns(["block_bytes"]), packed["validation"]
        if args.max_train_samples:  # seeded random samples of the blocks, not the first ones
            train = train.select(sample_indices(len(train), args.max_train_samples, shuffle_seed))
        if args.max_eval_samples:  # one fixed seed: runs with other training seeds are scored on the same blocks
            evaluation = evaluation.select(sample_indices(len(evaluation), args.max_eval_samples, EVAL_SAMPLE_SEED))
    if len(evaluation) == 0:
        raise RecipeError("the held-out data produced no evaluation block")
    predicted = objective.scored_per_block(args.block_size)
    eval_bytes_per_token = sum(evaluation["block_bytes"]) / (len(evaluation) * predicted)
    return train, evaluation.remove_columns(["block_bytes"]), eval_bytes_per_token
