#!/usr/bin/env python
"""Tokens/s the pretraining data path hands one process of a launch, per data-loader worker: normal mode (packed
Arrow blocks from the cache), streaming (the process's own share of the stream, tokenized and packed on the fly)
and token shards (memory-mapped, written once by scripts/tokenize_corpus.py); and what an 8 x H100 run of
recipes/llama-125m needs.

    .venv/bin/python benchmarks/data_path.py [--ranks 8] [--workers 0 1 2] [--batches 100] [--output FILE]

One process stands for rank 0 of `--ranks`: it reads the share that rank reads (a DistributedSampler's indices for
map-style data; `IterableDataset.shard`, as accelerate does with dispatch_batches off, for a stream) through a
DataLoader with the recipe's collator (document positions included), batches of llama-125m's shape (32 x 1024).
Each rank of a real node has its own CPU cores, so one rank measured here is one rank there (given cores). With
workers, "per worker" is the rank's rate over its workers; the main process shares the machine's cores with them.
The corpus is the embedded one (~21 MB) as 100 kB documents; the tokenizer GPT-2's (50,257 tokens) from
../shared/data/tokenizers/gpt2 when there, else a 32k BPE trained on the corpus. Startup (time to the first
batch: cache build, shard write, stream start) is reported apart from the steady rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
RECIPE = str(REPO / "recipes" / "llama-125m" / "pretrain.yaml")
GPT2 = REPO.parent / "shared" / "data" / "tokenizers" / "gpt2"
H100_BF16_DENSE = 989e12  # NVIDIA H100 SXM data sheet, dense bf16


def llama_125m_needs(mfus=(0.30, 0.45)) -> dict:
    """Tokens/s one H100 consumes training recipes/llama-125m at the given MFUs (its FLOPs/token, built on meta)."""
    import lmrecipes
    from lmrecipes.throughput import model_flops_per_token

    with torch.device("meta"):
        model = lmrecipes.build_model(RECIPE, tokenizer_name_or_path=None, vocab_size=49152)  # SmolLM2: 49,152 tokens
    per_token = model_flops_per_token(model, 1024)
    return {"flops_per_token": per_token, **{f"tokens_per_second_per_gpu_at_{int(100 * m)}pct_mfu":
                                             m * H100_BF16_DENSE / per_token for m in mfus}}


def rank_loader(mode: str, corpus: Path, tokenizer_dir: str, shards_dir: Path, ranks: int, workers: int):
    """(the DataLoader rank 0 of `ranks` reads with `workers` workers, seconds to set it up)."""
    import lmrecipes
    from lmrecipes.arguments import PRETRAIN_ARGUMENTS
    from lmrecipes.data.packing import load_corpus, prepare_pretraining_data
    from lmrecipes.objectives.causal_lm import CAUSAL_LM
    from lmrecipes.tokenizer import load_tokenizer

    keys = {"train_file": [str(corpus)], "tokenizer_name_or_path": tokenizer_dir, "streaming": mode == "streaming",
            "token_shards_dir": str(shards_dir) if mode == "shards" else None, "max_eval_samples": 8,
            "dataset_name": None, "dataset_config_name": None}
    _, _, data_args, _, _ = lmrecipes.load_recipe(RECIPE, PRETRAIN_ARGUMENTS, **keys)
    tokenizer = load_tokenizer(tokenizer_dir, key="tokenizer_name_or_path")
    start = time.perf_counter()
    raw, fingerprint = load_corpus(data_args)
    train, _, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, CAUSAL_LM, data_args,
                                           stream_shares=ranks * max(workers, 1))
    collator = CAUSAL_LM.collator(tokenizer, data_args, 0, documents=True)
    options = {"batch_size": 32, "collate_fn": collator, "num_workers": workers}
    if mode == "streaming":
        loader = torch.utils.data.DataLoader(train.shard(num_shards=ranks, index=0), **options)
    else:
        sampler = torch.utils.data.DistributedSampler(train, num_replicas=ranks, rank=0, seed=0)
        loader = torch.utils.data.DataLoader(train, sampler=sampler, **options)
    return loader, time.perf_counter() - start


def measure(loader, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, tokens/s over the next `batches`). A rank's share of the small corpus may end
    first: the loader starts over, its restart (first batch of the next pass) left out of the clock."""
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    tokens, seconds = 0, 0.0
    while batches > 0:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            next(iterator)
            continue
        seconds += time.perf_counter() - start
        tokens, batches = tokens + batch["input_ids"].numel(), batches - 1
    return first, tokens / seconds


def byte_count_cost(tokenizer_dir: str, corpus: Path, rounds: int = 2) -> dict:
    """Tokens/s of the document tokenizer with and without the per-token byte counts (which only held-out data
    needs, for bits per byte), one process, batches of 16 documents as a stream tokenizes them."""
    from lmrecipes.data.tokenizing import document_tokenizer
    from lmrecipes.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir, key="tokenizer_name_or_path")
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")][:160]
    rates = {True: [], False: []}
    for _ in range(rounds):
        for with_bytes in (True, False):
            tokenize = document_tokenizer(tokenizer, tokenizer.eos_token_id, "text", with_bytes=with_bytes)
            start, tokens = time.perf_counter(), 0
            for i in range(0, len(texts), 16):
                tokens += sum(map(len, tokenize({"text": texts[i:i + 16]})["input_ids"]))
            rates[with_bytes].append(tokens / (time.perf_counter() - start))
    return {"ids_only_tokens_per_second": max(rates[False]), "with_bytes_tokens_per_second": max(rates[True])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--base_mb", type=float, default=21.0)
    parser.add_argument("--output", help="write the measurements to this JSON file")
    args = parser.parse_args()

    from data_pipeline import write_corpus

    work = Path(tempfile.mkdtemp(prefix="bench-data-path-"))
    os.environ["LMRECIPES_CACHE"] = str(work / "cache")
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf")
    import lmrecipes
    from lmrecipes.peak_flops import cpu_model_name

    corpus = write_corpus(work, args.base_mb, 1)
    tokenizer_dir = str(work / "tokenizer")
    if (GPT2 / "vocab.json").is_file():
        from transformers import GPT2TokenizerFast

        GPT2TokenizerFast(vocab=str(GPT2 / "vocab.json"), merges=str(GPT2 / "merges.txt")).save_pretrained(
            tokenizer_dir)
    else:
        lmrecipes.train_tokenizer(RECIPE, train_file=[str(corpus)], tokenizer_name_or_path=None, vocab_size=32000,
                                  dataset_name=None, dataset_config_name=None, save_dir=tokenizer_dir)
    shards = work / "shards"
    start = time.perf_counter()
    index = lmrecipes.tokenize_corpus(RECIPE, train_file=[str(corpus)], tokenizer_name_or_path=tokenizer_dir,
                                      dataset_name=None, dataset_config_name=None, token_shards_dir=str(shards),
                                      preprocessing_num_workers=2)
    write_seconds = time.perf_counter() - start
    print(f"token shards: {index['tokens']:,} tokens written in {write_seconds:.1f} s "
          f"({index['tokens'] / write_seconds:,.0f} tokens/s, 2 workers)", flush=True)
    cost = byte_count_cost(tokenizer_dir, corpus)
    print(f"tokenizing: {cost['ids_only_tokens_per_second']:,.0f} tokens/s for ids only (training data), "
          f"{cost['with_bytes_tokens_per_second']:,.0f} with per-token bytes (held-out data): "
          f"{cost['ids_only_tokens_per_second'] / cost['with_bytes_tokens_per_second']:.2f}x", flush=True)
    rows = []
    for mode in ("normal", "streaming", "shards"):
        for workers in args.workers:
            loader, setup = rank_loader(mode, corpus, tokenizer_dir, shards, args.ranks, workers)
            first, rate = measure(loader, args.batches)
            row = {"mode": mode, "workers": workers, "ranks": args.ranks, "setup_seconds": setup,
                   "first_batch_seconds": first, "seconds_to_first_batch": setup + first,
                   "tokens_per_second_per_rank": rate,
                   "tokens_per_second_per_worker": rate / max(workers, 1)}
            rows.append(row)
            print(f"{mode:>9}, {workers} worker(s): {rate:>12,.0f} tokens/s per rank "
                  f"({row['tokens_per_second_per_worker']:,.0f} per worker); first batch after {setup + first:5.2f}"
                  f" s (setup {setup:.2f} s)", flush=True)
            del loader
    needs = llama_125m_needs()
    print(f"\nrecipes/llama-125m: {needs['flops_per_token']:.3g} FLOPs/token; one H100 (989 TFLOP/s dense bf16) "
          f"consumes {needs['tokens_per_second_per_gpu_at_30pct_mfu']:,.0f} tokens/s at 30% MFU, "
          f"{needs['tokens_per_second_per_gpu_at_45pct_mfu']:,.0f} at 45%; 8 GPUs "
          f"{8 * needs['tokens_per_second_per_gpu_at_45pct_mfu']:,.0f} tokens/s at 45%")
    for row in rows:
        row["keeps_up_with_one_h100_at_45pct_mfu"] = \
            row["tokens_per_second_per_rank"] >= needs["tokens_per_second_per_gpu_at_45pct_mfu"]
    if args.output:
        Path(args.output).write_text(json.dumps({"rows": rows, "needs": needs, "shard_write_seconds": write_seconds,
                                                 "shard_tokens": index["tokens"], "byte_count_cost": cost,
                                                 "cpu": cpu_model_name()}, indent=2))


if __name__ == "__main__":
    main()
