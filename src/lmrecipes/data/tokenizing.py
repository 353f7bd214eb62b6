"""Documents to token ids for pretraining data: each document tokenized without special tokens and ended with the
objective's separator, with (held-out data) the UTF-8 bytes each token came from, for bits per byte."""

from __future__ import annotations

import json

import numpy as np


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


def document_tokenizer(tokenizer, separator: int, text_column: str, with_bytes: bool):
    """The batched map function that tokenizes documents (no special tokens) and ends each with `separator`;
    `with_bytes`: also gives every token the UTF-8 bytes of the text it came from (`token_bytes`), which held-out
    data needs for bits per byte and training data does not (tokenizing is 1.5x faster without them:
    benchmarks/data_path.py)."""
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
            return {"input_ids": [], **({"token_bytes": []} if with_bytes else {})}
        if not with_bytes:
            encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
            return {"input_ids": [row + [separator] for row in encoded["input_ids"]]}
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


def _spread(total: int, count: int) -> list[int]:
    share, rest = divmod(total, max(count, 1))
    return [share + (i < rest) for i in range(count)]
