#!/usr/bin/env python
"""Tokenize + pack throughput and peak memory, normal and streaming, as the corpus grows 10x.

    .venv/bin/python benchmarks/data_pipeline.py [--base_mb 21] [--scales 1 10] [--num_proc 1 2]

The corpus (default: the embedded data/corpus, ~21 MB, cut to --base_mb, in 100 kB documents) is written `scale`
times into a temporary jsonl file; each configuration runs in a fresh process with an empty cache, tokenizing with the
tiny-llama recipe's tokenizer settings (trained once on the 1x corpus beforehand and then loaded) and packing into
256-token blocks. Normal mode builds the whole packed dataset (Arrow, memory-mapped) like a pretraining run does;
streaming mode consumes the packed stream once. Printed: tokens/s of tokenize+pack and peak resident memory
(ru_maxrss of the process). Streaming memory must stay flat (within 20%) as the corpus grows.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "tiny-llama" / "pretrain.yaml")


def write_corpus(folder: Path, base_mb: float, scale: int) -> Path:
    texts, size = [], 0
    for path in sorted((REPO / "data" / "corpus").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                text = json.loads(line)["text"]
                texts.append(text[: int(base_mb * 1e6) - size])
                size += len(texts[-1])
                if size >= base_mb * 1e6:
                    break
        if size >= base_mb * 1e6:
            break
    path = folder / f"corpus-x{scale}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for copy in range(scale):
            for number, text in enumerate(texts):  # 100 kB documents; each copy's differ (split by text hash)
                for start in range(0, len(text), 100_000):
                    handle.write(json.dumps({"text": f"[copy {copy} doc {number}.{start}] "
                                                     f"{text[start:start + 100_000]}"}) + "\n")
    return path


def run_one(corpus: str, tokenizer_dir: str, streaming: bool, num_proc: int) -> dict:
    # empty caches: neither lmrecipes' packed data nor datasets' own Arrow/map cache may be reused
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="bench-hf-datasets-")
    os.environ["LMRECIPES_CACHE"] = tempfile.mkdtemp(prefix="bench-data-")
    from lmrecipes.api import load_recipe
    from lmrecipes.arguments import PRETRAIN_ARGUMENTS
    from lmrecipes.data.packing import prepare_pretraining_data
    from lmrecipes.data.sources import load_raw_splits, split_held_out
    from lmrecipes.objectives.causal_lm import CAUSAL_LM
    from lmrecipes.tokenizer import load_tokenizer

    _, _, data_args, _, _ = load_recipe(RECIPE, PRETRAIN_ARGUMENTS, train_file=[corpus], streaming=streaming,
                                        preprocessing_num_workers=num_proc if num_proc > 1 else None,
                                        max_eval_samples=32, output_dir=tempfile.mkdtemp())
    tokenizer = load_tokenizer(tokenizer_dir, key="tokenizer_name_or_path")
    start = time.perf_counter()
    raw, fingerprint = load_raw_splits(data_args, streaming=streaming)
    raw.update(split_held_out(raw["train"], {"validation": data_args.validation_fraction}, data_args.text_column))
    train, _, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, CAUSAL_LM, data_args, endless=False)
    if streaming:
        blocks = sum(1 for _ in train)
    else:
        blocks = len(train)
    seconds = time.perf_counter() - start
    tokens = blocks * data_args.block_size
    return {"streaming": streaming, "num_proc": num_proc, "blocks": blocks, "tokens": tokens, "seconds": seconds,
            "tokens_per_second": tokens / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_mb", type=float, default=21.0, help="size of the 1x corpus in MB of text")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--num_proc", type=int, nargs="+", default=[1, 2], help="tokenize with num_proc (normal mode)")
    parser.add_argument("--output", help="write the measurements to this JSON file")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        corpus, tokenizer_dir, streaming, num_proc = args.child
        print(json.dumps(run_one(corpus, tokenizer_dir, streaming == "1", int(num_proc))))
        return

    import lmrecipes

    work = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    corpora = {scale: write_corpus(work, args.base_mb, scale) for scale in args.scales}
    tokenizer_dir = str(work / "tokenizer")
    lmrecipes.train_tokenizer(RECIPE, train_file=[str(corpora[min(args.scales)])], save_dir=tokenizer_dir)
    rows = []
    configs = [(False, n) for n in args.num_proc] + [(True, 1)]
    for scale in args.scales:
        for streaming, num_proc in configs:
            cmd = [sys.executable, __file__, "--child", str(corpora[scale]), tokenizer_dir, str(int(streaming)),
                   str(num_proc)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            row = {"scale": scale, "text_mb": corpora[scale].stat().st_size / 1e6,
                   **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{scale:>3}x ({row['text_mb']:6.0f} MB) {'streaming' if streaming else 'normal':>9} num_proc "
                  f"{num_proc}: {row['tokens']:>11,} tokens in {row['seconds']:6.1f} s = "
                  f"{row['tokens_per_second']:8.0f} tokens/s, peak RSS {row['peak_rss_mb']:6.0f} MB (largest worker "
                  f"{row['peak_rss_worker_mb']:.0f} MB)", flush=True)
    streaming_rss = [r["peak_rss_mb"] for r in rows if r["streaming"]]
    if len(streaming_rss) >= 2:
        growth = streaming_rss[-1] / streaming_rss[0] - 1
        print(f"\nstreaming peak memory {streaming_rss[0]:.0f} MB -> {streaming_rss[-1]:.0f} MB ({100 * growth:+.1f}%) "
              f"as the corpus grows {max(args.scales) // min(args.scales)}x: "
              f"{'flat (within 20%)' if abs(growth) <= 0.2 else 'NOT flat'}")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
