#!/usr/bin/env python
"""The baseline for benchmarks/gpu_pretrain.sh: the same ~125M Llama trained by a stock `Trainer`, the way
run_clm.py does it (concatenate and cut into blocks with datasets.map, default collator, no lmrecipes), on the
tokenizer lmrecipes trained for the benchmark run (its saved folder), with the same batch, precision, compile and
optimizer as recipes/llama-125m/pretrain-gpu-benchmark.yaml.

    python benchmarks/stock_trainer_baseline.py TOKENIZER_DIR [--max_steps 300] [--output FILE]
    python benchmarks/stock_trainer_baseline.py TOKENIZER_DIR --smoke      # a 2-layer model, a few steps, on CPU

Printed: the Trainer's own figure (train_samples_per_second x block, warm-up and compile included, what a stock
run reports) and the steady state measured like lmrecipes' callback (steps after the first 30, the GPU synchronised
at both ends), so that the two runs compare on equal terms; and MFU against the H100 SXM / H200 dense bf16 peak.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import time
from itertools import chain
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

REPO = Path(__file__).resolve().parents[1]
BLOCK, BATCH, WARMUP_STEPS = 1024, 32, 30
PEAK_BF16 = 989e12  # H100 SXM and H200 data sheets, dense bf16


class SteadyClock(TrainerCallback):
    """Seconds between the end of step WARMUP_STEPS and the end of training, the device synchronised."""

    def __init__(self, warmup_steps: int):
        self.start = self.seconds = None
        self.steps, self.warmup_steps = 0, warmup_steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup_steps:
            synchronize()
            self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        synchronize()
        if self.start is not None:
            self.seconds, self.steps = time.perf_counter() - self.start, state.global_step - self.warmup_steps


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def blocks(tokenizer) -> Dataset:
    texts = [json.loads(line)["text"] for path in sorted(glob.glob(str(REPO / "data/corpus/*.jsonl.gz")))
             for line in gzip.open(path, "rt", encoding="utf-8")]
    documents = Dataset.from_dict({"text": texts})

    def tokenize(batch):
        return {"input_ids": [ids + [tokenizer.eos_token_id] for ids in
                              tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]}

    def group(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        ids = [ids[i:i + BLOCK] for i in range(0, len(ids) // BLOCK * BLOCK, BLOCK)]
        return {"input_ids": ids, "labels": [list(b) for b in ids]}

    tokenized = documents.map(tokenize, batched=True, remove_columns=["text"], num_proc=8)
    return tokenized.map(group, batched=True, num_proc=8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer_dir")
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--output", default="runs/llama-125m/stock-baseline.json")
    parser.add_argument("--smoke", action="store_true", help="2 layers of 64, 6 steps, fp32, no compile: on CPU")
    args = parser.parse_args()
    gpu = not args.smoke
    warmup = WARMUP_STEPS if gpu else 2
    if args.smoke:
        args.max_steps = 6
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    sizes = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
             "num_key_value_heads": 4} if gpu else {"hidden_size": 64, "intermediate_size": 128,
                                                     "num_hidden_layers": 2, "num_attention_heads": 4,
                                                     "num_key_value_heads": 2}
    config = LlamaConfig(vocab_size=len(tokenizer), **sizes, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    training_args = TrainingArguments(
        output_dir="runs/llama-125m/stock-baseline", max_steps=args.max_steps, per_device_train_batch_size=BATCH,
        learning_rate=6e-4, lr_scheduler_type="cosine", warmup_steps=30, weight_decay=0.1, adam_beta2=0.95,
        bf16=gpu, torch_compile=gpu, optim="adamw_torch_fused", logging_steps=20, save_strategy="no",
        eval_strategy="no", dataloader_num_workers=4 if gpu else 0, report_to="none", seed=42)
    clock = SteadyClock(warmup)
    trainer = Trainer(model=model, args=training_args, train_dataset=blocks(tokenizer),
                      data_collator=default_data_collator, callbacks=[clock])
    metrics = trainer.train().metrics
    parameters = sum(p.numel() for p in model.parameters())
    matmul = parameters - model.get_input_embeddings().weight.numel() * (0 if config.tie_word_embeddings else 1)
    flops_per_token = 6 * matmul + 12 * config.num_hidden_layers * config.hidden_size * BLOCK
    stock = metrics["train_samples_per_second"] * BLOCK
    steady = clock.steps * BATCH * BLOCK / clock.seconds if clock.seconds else None
    result = {"device": torch.cuda.get_device_name(0) if gpu else "cpu (smoke)", "steps": args.max_steps,
              "parameters": parameters,
              "flops_per_token": flops_per_token, "trainer_tokens_per_second": stock,
              "steady_tokens_per_second": steady, "trainer_mfu": stock * flops_per_token / PEAK_BF16,
              "steady_mfu": steady * flops_per_token / PEAK_BF16 if steady else None,
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if gpu else None}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"Stock Trainer baseline on {result['device']}: {stock:,.0f} tokens/s as the Trainer reports it (MFU "
          f"{100 * result['trainer_mfu']:.1f}%), steady state after step {warmup}: "
          f"{steady or float('nan'):,.0f} tokens/s (MFU {100 * (result['steady_mfu'] or float('nan')):.1f}%), "
          f"peak memory {result['peak_memory_gb'] or float('nan'):.1f} GB")


if __name__ == "__main__":
    main()
