"""Token shards: a corpus's training split tokenized once into flat binary files of token ids, read back as packed
blocks through memory maps. Every process of a run reads just the blocks of its own batches, at disk speed, and a
resumed run starts at its exact position (the Trainer's sampler skips indices, it reads nothing again).

    scripts/tokenize_corpus.py RECIPE --token_shards_dir DIR      # once
    scripts/pretrain.py RECIPE --token_shards_dir DIR             # any number of runs, any block_size

Hand-written: datasets' Arrow files hold blocks of one block_size and a row index per block; a flat token array
(nanoGPT's train.bin, Megatron's .bin) is cut into blocks of any size at read time, at a few bytes per token.
The folder holds `train-NNNNN.bin` (uint16 ids, uint32 for vocabularies over 65,536) and `token-shards.json`:
the shards and their token counts, and what they were made from (corpus, tokenizer, separator), which a run
checks against its own recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from datasets import IterableDataset

from ..cache import CACHE_MANIFEST, cache_entry_problem, cached, tokenizer_fingerprint
from ..errors import RecipeError
from ..objectives import Objective
from .sources import stream_in_shares
from .tokenizing import document_tokenizer

logger = logging.getLogger(__name__)

INDEX = "token-shards.json"
FORMAT = "lmrecipes-token-shards-1"
TOKENS_PER_SHARD = 2**28  # 512 MiB of uint16 per file: few files for a large corpus, each well under any file limit


def _dtype(tokenizer) -> str:
    return "uint16" if len(tokenizer) <= 2**16 else "uint32"


def write_token_shards(folder: Path, documents, tokenizer, objective: Objective, text_column: str,
                       corpus_fingerprint: str, *, workers: int = 0) -> bool:
    """Tokenize the stream of `documents` (each ends with the objective's separator) into token shards in `folder`,
    by `workers` data-loader processes, each on its own share of the stream, in a fixed order; True when `folder`
    already held them whole. Written to a temporary folder and renamed: a stopped write leaves nothing half-done,
    and its rerun starts over."""
    separator = getattr(tokenizer, f"{objective.separator}_id")
    dtype = np.dtype(_dtype(tokenizer))
    folder = Path(folder)
    _check_writable_here(folder)

    if not isinstance(documents, IterableDataset):  # read as a stream all the same: nothing cached twice
        documents = documents.to_iterable_dataset(num_shards=max(workers, 1))

    def build(tmp: Path) -> None:
        stream = stream_in_shares(documents, max(workers, 1), balanced=False).select_columns([text_column]).map(
            document_tokenizer(tokenizer, separator, text_column, with_bytes=False), batched=True,
            remove_columns=[text_column])
        # batch_size=None: one tokenized document at a time, as an array; workers take turns in a fixed order
        loader = torch.utils.data.DataLoader(stream.with_format("numpy"), batch_size=None, num_workers=workers,
                                             collate_fn=_as_is)
        shards, buffer, documents_seen = [], [], 0

        def flush(pieces: list) -> None:
            name = f"train-{len(shards):05d}.bin"
            tokens = np.concatenate(pieces)
            _write_tokens(tokens, tmp / name)
            shards.append({"file": name, "tokens": int(tokens.size),
                           "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()})

        filled = 0
        for row in loader:
            ids = np.asarray(row["input_ids"]).astype(dtype)  # held at 2 or 4 bytes a token until written
            documents_seen += 1
            while filled + ids.size >= TOKENS_PER_SHARD:  # a document may go on in the next shard
                room = TOKENS_PER_SHARD - filled
                flush([*buffer, ids[:room]])
                buffer, filled, ids = [], 0, ids[room:]
            if ids.size:
                buffer.append(ids)
                filled += ids.size
        if buffer:
            flush(buffer)
        if not shards:
            raise RecipeError(f"key '{text_column}': the training documents hold no text, so there are no tokens "
                              "to write")
        index = {"format": FORMAT, "dtype": dtype.name, "shards": shards, "tokens": sum(s["tokens"] for s in shards),
                 "documents": documents_seen, "separator": objective.separator, "separator_id": separator,
                 "vocabulary": len(tokenizer), "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                 "corpus_fingerprint": corpus_fingerprint, "text_column": text_column}
        (tmp / INDEX).write_text(json.dumps(index, indent=1))

    return cached(folder, build, "token shards", remedy="pick a writable token_shards_dir with space")


def _check_writable_here(folder: Path) -> None:
    """Token shards are written to a new or empty folder, or over the shards of an earlier write (cached() replaces
    a damaged entry whole): never over a folder that holds files of the user's."""
    if folder.is_symlink():
        raise RecipeError(f"key 'token_shards_dir': {folder} is a link; name the folder itself")
    if folder.exists() and not folder.is_dir():
        raise RecipeError(f"key 'token_shards_dir': {folder} is a file, not a folder")
    if not folder.is_dir() or cache_entry_problem(folder) is None:  # new, or whole shards: reused as they are
        return
    try:
        written = set(json.loads((folder / CACHE_MANIFEST).read_text())["sizes"]) | {CACHE_MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        written = set()
    others = sorted(path.name for path in folder.iterdir() if path.name not in written)
    if others:
        raise RecipeError(f"key 'token_shards_dir': {folder} holds files that are no token shards of lmrecipes "
                          f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); name a new or empty "
                          "folder")


def _as_is(row):
    return row


def _write_tokens(tokens: np.ndarray, path: Path) -> None:
    tokens.tofile(path)


def read_index(folder: Path) -> dict:
    """The shards' index, once the folder is checked whole (every file there at the size it was written)."""
    problem = cache_entry_problem(folder)
    if problem == "not there":
        raise RecipeError(f"key 'token_shards_dir': {folder} does not exist; write it first with "
                          "scripts/tokenize_corpus.py RECIPE --token_shards_dir " + str(folder))
    if problem is not None:
        raise RecipeError(f"key 'token_shards_dir': the token shards in {folder} are not whole ({problem}); write "
                          "them again with scripts/tokenize_corpus.py")
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError) as err:
        raise RecipeError(f"key 'token_shards_dir': {folder / INDEX} cannot be read ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise RecipeError(f"key 'token_shards_dir': {folder} holds no lmrecipes token shards ({INDEX} is not "
                          f"{FORMAT})")
    try:
        itemsize = np.dtype(index["dtype"]).itemsize
        for shard in index["shards"]:
            if (folder / shard["file"]).stat().st_size != int(shard["tokens"]) * itemsize:
                raise ValueError(f"{shard['file']} does not hold {shard['tokens']} tokens of {index['dtype']}")
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise RecipeError(f"key 'token_shards_dir': {folder / INDEX} does not describe its shards ({err}); write "
                          "them again with scripts/tokenize_corpus.py") from None
    return index


def check_made_for(index: dict, folder: Path, tokenizer, objective: Objective, corpus_fingerprint: str,
                   remedy: str = "write this recipe's with scripts/tokenize_corpus.py into another token_shards_dir"
                   ) -> None:
    """The shards were written from this run's corpus (so that the held-out split is not among them), with its
    tokenizer and separator."""
    made = [("corpus (files, text_column, validation_fraction, skip_bad_rows)", index.get("corpus_fingerprint"),
             corpus_fingerprint),
            ("tokenizer", index.get("tokenizer_fingerprint"), tokenizer_fingerprint(tokenizer)),
            ("document separator", index.get("separator"), objective.separator)]
    for what, theirs, ours in made:
        if theirs != ours:
            raise RecipeError(f"key 'token_shards_dir': the token shards in {folder} were written with another "
                              f"{what} than this recipe's; {remedy}")


class TokenShardBlocks(torch.utils.data.Dataset):
    """The packed training blocks of a token-shard folder, as a map-style dataset: block i is tokens
    [i*body, (i+1)*body) of its shard (blocks never cross shards: under one block lost per shard), laid out as the
    objective's packed blocks are (causal: input_ids and labels; wrapped: [CLS] ... [SEP] with
    special_tokens_mask). Shards are memory-mapped on first use in each process (data-loader workers included)."""

    def __init__(self, folder: Path, index: dict, block_size: int, tokenizer, wrap: bool):
        self.folder, self.dtype, self.wrap = Path(folder), index["dtype"], wrap
        self.body = block_size - 2 if wrap else block_size
        self.shards = [(shard["file"], shard["tokens"]) for shard in index["shards"]]
        self.starts = np.cumsum([0] + [tokens // self.body for _, tokens in self.shards])
        self.cls, self.sep, self.vocabulary = tokenizer.cls_token_id, tokenizer.sep_token_id, len(tokenizer)
        self.specials = set(tokenizer.all_special_ids)
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self):  # a worker started by spawn maps the files itself
        return {**self.__dict__, "_maps": {}}

    def _shard(self, number: int) -> np.memmap:
        if number not in self._maps:
            self._maps[number] = np.memmap(self.folder / self.shards[number][0], dtype=self.dtype, mode="r")
        return self._maps[number]

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        index %= len(self)
        number = int(np.searchsorted(self.starts, index, side="right")) - 1
        start = int(index - self.starts[number]) * self.body
        tokens = self._shard(number)[start : start + self.body].astype(np.int64)
        if tokens.size and tokens.max() >= self.vocabulary:  # a shard written over since: never an index error
            raise RecipeError(f"key 'token_shards_dir': {self.folder / self.shards[number][0]} holds token id "
                              f"{tokens.max()} at block {index}, past the tokenizer's {self.vocabulary}: the file "
                              "was changed since it was written; write the shards again")
        tokens = tokens.tolist()
        if not self.wrap:
            return {"input_ids": tokens, "labels": list(tokens)}
        ids = [self.cls, *tokens, self.sep]
        return {"input_ids": ids, "special_tokens_mask": [int(t in self.specials) for t in ids]}


def token_shard_blocks(folder: Path, block_size: int, tokenizer, objective: Objective,
                       corpus_fingerprint: str) -> TokenShardBlocks:
    """The training blocks of `folder` for this run; their `fingerprint` is what a run records of the shards."""
    folder = Path(folder)
    index = read_index(folder)
    check_made_for(index, folder, tokenizer, objective, corpus_fingerprint)
    blocks = TokenShardBlocks(folder, index, block_size, tokenizer, objective.wraps_blocks)
    if len(blocks) == 0:
        raise RecipeError(f"key 'token_shards_dir': the {index['tokens']} tokens in {folder} make no block of "
                          f"block_size={block_size}")
    logger.info("Training blocks from the token shards in %s: %d shards, %d tokens, %d blocks of %d tokens",
                folder, len(index["shards"]), index["tokens"], len(blocks), block_size)
    blocks.fingerprint = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()
    return blocks


def token_shards_fingerprint(train) -> str:
    """What a run records of the token shards it trains on (a Subset of them: max_train_samples)."""
    return getattr(train, "dataset", train).fingerprint
