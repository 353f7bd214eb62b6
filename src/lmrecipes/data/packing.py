"""Pretraining data: the corpus's train and held-out splits, tokenized, separated by the objective's separator and
packed into fixed-length blocks, each with the UTF-8 bytes its scored tokens came from (for bits per byte), cached
on disk per corpus, tokenizer and settings."""

from __future__ import annotations

import hashlib
import json
import logging
from itertools import chain
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, IterableDataset, Sequence, Value, load_from_disk
from torch.utils.data import Subset

from ..arguments import PretrainDataArguments
from ..cache import cached, tokenizer_fingerprint
from ..errors import RecipeError, first_line
from ..objectives import Objective
from .rows import RowRules
from .sources import STREAM_BATCH, check_text_column, load_raw_splits, sample_indices, split_held_out, stream_in_shares
from .token_shards import token_shard_blocks
from .tokenizing import document_tokenizer

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
                                       text_sample_by="line" if data_args.line_by_line else "document",
                                       rules=RowRules(texts={"text_column": data_args.text_column}))
    if data_args.line_by_line:  # blank lines are no documents (run_mlm.py's line_by_line drops them too)
        column = data_args.text_column
        raw = {name: split.filter(lambda batch: [bool(text and text.strip()) for text in batch[column]],
                                  batched=True, **({} if data_args.streaming else {"desc": "Blank lines"}))
               for name, split in raw.items()}
    if "validation" not in raw:
        try:
            raw.update(split_held_out(raw["train"], {"validation": data_args.validation_fraction},
                                      data_args.text_column))
        except RecipeError as err:
            if data_args.line_by_line or not any(".txt" in name for name in data_args.train_file or ()):
                raise
            raise RecipeError(f"{err} (a .txt file is one document; line_by_line: true reads one per line)") from None
    return raw, corpus_fingerprint(fingerprint, data_args)


def corpus_fingerprint(files_fingerprint: str, data_args) -> str:
    """What a pretraining run's marker records of its data (sources.source_fingerprint of the files): the
    training split, and so the tokenizer and the packed data, also depend on these keys and rows checks."""
    return hashlib.sha256(json.dumps([files_fingerprint, data_args.text_column, data_args.validation_fraction,
                                      data_args.skip_bad_rows,
                                      # only when set: the fingerprints of corpora read before the key stay valid
                                      *([data_args.line_by_line] if data_args.line_by_line else [])]
                                     ).encode()).hexdigest()


def _block_packer(tokenizer, block_size: int, wrap: bool, with_bytes: bool):
    """The batched map function (with indices) that cuts the token stream into blocks of `block_size`, carrying
    the remainder of each batch into the next; `wrap`: blocks laid out as [CLS] ... [SEP]; `with_bytes`: each block
    with the bytes its scored tokens came from (`block_bytes`)."""
    body = block_size - 2 if wrap else block_size
    specials = set(tokenizer.all_special_ids)
    carry = {"ids": [], "bytes": []}  # the tokens of the batches so far that did not fill a block

    def pack(batch, indices):
        if indices and indices[0] == 0:  # a new pass over the data (a stream's next epoch): nothing carried into it
            carry["ids"], carry["bytes"] = [], []
        ids = carry["ids"] + [token for row in batch["input_ids"] for token in row]
        full = len(ids) // body * body
        carry["ids"] = ids[full:]
        blocks = [ids[i : i + body] for i in range(0, full, body)]
        out = {}
        if with_bytes:
            sizes = carry["bytes"] + [size for row in batch["token_bytes"] for size in row]
            carry["bytes"] = sizes[full:]
            first = 0 if wrap else 1  # a causal block's first token is never predicted
            out["block_bytes"] = [float(sum(sizes[i + first : i + body])) for i in range(0, full, body)]
        if wrap:
            out["input_ids"] = [[tokenizer.cls_token_id, *b, tokenizer.sep_token_id] for b in blocks]
            out["special_tokens_mask"] = [[int(t in specials) for t in block] for block in out["input_ids"]]
        else:
            out["input_ids"], out["labels"] = blocks, [list(b) for b in blocks]
        return out

    return pack


def _tokenize_and_pack(dataset, tokenizer, objective: Objective, block_size: int, text_column: str, num_proc=None, *,
                       with_bytes: bool):
    """Tokenize documents, separate them with the objective's separator (EOS causal, SEP masked), and cut the
    stream into blocks.

    The remainder of each map batch is carried into the next (hand-written: datasets' map has no state between
    batches), so at most one partial block is lost per corpus (per process with num_proc). Masked blocks are
    wrapped as [CLS] ... [SEP], and every special token (the [SEP]s between documents too) is marked in
    `special_tokens_mask`. `with_bytes` (held-out data): each block records `block_bytes`, the exact UTF-8 bytes of
    the text its predicted tokens came from (causal: tokens 2..block_size, which the loss is computed on), for bits
    per byte.
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
        document_tokenizer(tokenizer, separator, text_column, with_bytes), batched=True, remove_columns=[text_column],
        batch_size=STREAM_BATCH if streaming else MAP_BATCH, **options, **desc("Tokenizing"))
    if not streaming and len(tokenized) == 0:
        raise RecipeError(f"key '{text_column}': the documents hold no text, so there is no block to train or "
                          "evaluate on")
    features = Features({"input_ids": Sequence(Value("int32")),
                         **({"block_bytes": Value("float64")} if with_bytes else {}),
                         **({"special_tokens_mask": Sequence(Value("int8"))} if wrap
                            else {"labels": Sequence(Value("int32"))})})
    return tokenized.map(_block_packer(tokenizer, block_size, wrap, with_bytes), batched=True, batch_size=64,
                         with_indices=True, remove_columns=["input_ids", *(["token_bytes"] if with_bytes else [])],
                         features=features, **options, **desc("Packing"))


def prepare_pretraining_data(raw: dict, fingerprint: str, tokenizer, objective: Objective, args: PretrainDataArguments,
                             *, shuffle_seed: int = 42, stream_shares: int = 1, endless: bool = True):
    """Tokenize and pack `raw["train"]` and `raw["validation"]`; return (train, eval, eval_bytes_per_token).

    Normal mode: tokenized+packed blocks are saved under the cache once per corpus+tokenizer+settings and
    reused on later runs (hand-written: datasets' own map cache cannot tell the user it was reused, and is
    keyed on pickled function state rather than on what defines the result). Streaming mode: the training
    blocks are produced on the fly, from `stream_shares` shares of the corpus (processes x data-loader workers,
    `stream_in_shares`), and repeated without end (`endless`) so that no process runs out before another (max_steps
    ends the run); the evaluation blocks (max_eval_samples, default 256) are materialized. token_shards_dir: the
    training blocks come from its token shards instead (written by scripts/tokenize_corpus.py), the held-out ones as
    above.
    """
    for split in raw.values():
        check_text_column(split, args.text_column)
    train = None
    if args.token_shards_dir:
        train = token_shard_blocks(Path(args.token_shards_dir), args.block_size, tokenizer, objective, fingerprint)
        if args.max_train_samples:
            train = Subset(train, sample_indices(len(train), args.max_train_samples, shuffle_seed))
    if args.streaming:
        if train is None:
            train = _training_stream(raw["train"], tokenizer, objective, args, shuffle_seed, stream_shares, endless)
        blocks = _tokenize_and_pack(raw["validation"], tokenizer, objective, args.block_size, args.text_column,
                                    with_bytes=True)
        evaluation = Dataset.from_list(list(blocks.take(args.max_eval_samples or 256)))
    else:
        packed = _cached_blocks(raw, fingerprint, tokenizer, objective, args, with_train=train is None)
        evaluation = packed["validation"]
        if train is None:
            train = packed["train"]
            if args.max_train_samples:  # seeded random samples of the blocks, not the first ones
                train = train.select(sample_indices(len(train), args.max_train_samples, shuffle_seed))
        if args.max_eval_samples:  # one fixed seed: runs with other training seeds are scored on the same blocks
            evaluation = evaluation.select(sample_indices(len(evaluation), args.max_eval_samples, EVAL_SAMPLE_SEED))
    if len(evaluation) == 0:
        raise RecipeError("the held-out data produced no evaluation block")
    predicted = objective.scored_per_block(args.block_size)
    eval_bytes_per_token = sum(evaluation["block_bytes"]) / (len(evaluation) * predicted)
    return train, evaluation.remove_columns(["block_bytes"]), eval_bytes_per_token


def _training_stream(train_raw, tokenizer, objective: Objective, args: PretrainDataArguments, shuffle_seed: int,
                     stream_shares: int, endless: bool):
    passes = None if endless else 1
    # repeated below the shuffle buffer: each pass comes out in another order
    train_raw = stream_in_shares(train_raw, stream_shares).repeat(passes)
    train = _tokenize_and_pack(train_raw, tokenizer, objective, args.block_size, args.text_column,
                               with_bytes=False).shuffle(seed=shuffle_seed, buffer_size=args.shuffle_buffer_size)
    if args.max_train_samples:  # the first blocks of the shuffled stream, the same ones on every pass
        train = train.take(args.max_train_samples).repeat(passes)
    return train


def _cached_blocks(raw: dict, fingerprint: str, tokenizer, objective: Objective, args: PretrainDataArguments,
                   with_train: bool) -> DatasetDict:
    """The packed validation split, and the training one if `with_train`, from the cache (built once)."""
    splits = ["train", "validation"] if with_train else ["validation"]
    key_parts = [fingerprint, tokenizer_fingerprint(tokenizer), objective.name, args.block_size, args.text_column,
                 args.validation_fraction, args.preprocessing_num_workers, 6, splits]  # each process packs its share
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
    folder = args.cache_root / "data" / key

    def build(tmp: Path) -> None:
        packed = DatasetDict({split: _tokenize_and_pack(raw[split], tokenizer, objective, args.block_size,
                                                        args.text_column, args.preprocessing_num_workers,
                                                        with_bytes=split == "validation") for split in splits})
        # checked before saving: datasets cannot load back a saved split of zero rows
        if with_train and len(packed["train"]) == 0:
            raise RecipeError(f"the training text is shorter than one block of block_size={args.block_size} tokens")
        if len(packed["validation"]) == 0:
            raise RecipeError(f"the held-out text is shorter than one block of block_size={args.block_size} "
                              "tokens; raise validation_fraction or give validation_file")
        packed.save_to_disk(str(tmp))

    reused = cached(folder, build, "tokenized data cache")
    logger.info("%s %s", "Reusing tokenized and packed data from" if reused else "Tokenized data saved to", folder)
    try:
        return load_from_disk(str(folder))
    except Exception as err:  # noqa: BLE001 - pyarrow raises its own errors for a damaged file
        raise RecipeError(f"the tokenized data cached at {folder} cannot be read ({first_line(err)}); delete "
                          "that folder and run again") from None
