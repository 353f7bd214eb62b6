#!/usr/bin/env python
"""Pretraining throughput: the stock Hugging Face path against lmrecipes, on the same model, data and machine.

    .venv/bin/python benchmarks/pretrain_throughput.py [--steps 40] [--rounds 2] [--levers]

(a) "stock": a plain `Trainer` with default `TrainingArguments` (fp32, lr 5e-5, adamw_torch, ...), as the
    transformers run_clm.py example runs it; (b) "lmrecipes": `lmrecipes.pretrain` with the recipe's defaults.
Both train the recipe's model (same config, tokenizer, block size, batch and number of steps) on the same packed
blocks, in alternating fresh processes (rounds), and are evaluated on the same held-out blocks. Printed per run:
tokens/s (tokens trained / train_runtime), final training loss (mean of the last 5 logged steps), held-out loss
and peak resident memory; then the ratio (b)/(a). `--levers` also times single changes on top of (b): fused
AdamW, torch.compile, eager attention, bf16 autocast (only where the CPU has native bf16), one thread, 2
dataloader workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEVERS = {
    "fused AdamW (optim adamw_torch_fused)": {"optim": "adamw_torch_fused"},
    "torch.compile": {"torch_compile": True},
    "eager attention (instead of SDPA)": {"attn_implementation": "eager"},
    "bf16 autocast": {"bf16": True},
    "1 CPU thread (OMP_NUM_THREADS=1)": {"__threads": 1},
    "2 dataloader workers": {"dataloader_num_workers": 2},
}


def cpu_has_native_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def last_losses(log_history) -> float:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return sum(losses[-5:]) / len(losses[-5:])


def run_one(mode: str, recipe: str, steps: int, overrides: dict) -> dict:
    """Inside a fresh process: train one configuration and return its measurements."""
    import torch

    import lmrecipes
    from lmrecipes.api import load_recipe
    from lmrecipes.data import prepare_pretraining_data
    from lmrecipes.pretraining import PRETRAIN_ARGUMENTS, load_corpus_and_tokenizer

    out = tempfile.mkdtemp(prefix=f"bench-{mode}-")
    common = {"max_steps": steps, "output_dir": out, "eval_strategy": "no", "save_strategy": "no",
              "logging_steps": 5, "report_to": "none", "disable_tqdm": True, "max_eval_samples": 64}
    model_args, tokenizer_args, data_args, training_args, _ = load_recipe(recipe, PRETRAIN_ARGUMENTS, **common)
    if mode == "stock":
        from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

        set_seed(42)
        raw, fingerprint, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, "causal_lm")
        train, evaluation, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, "causal_lm", data_args)
        model = lmrecipes.build_model(recipe, tokenizer=tokenizer, **common)
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=training_args.per_device_train_batch_size,
                                 max_steps=steps, logging_steps=5, report_to="none", disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=default_data_collator)
        metrics = trainer.train().metrics
        eval_loss = trainer.evaluate(evaluation)["eval_loss"]
        history = trainer.state.log_history
    else:
        results = lmrecipes.pretrain(recipe, **common, **overrides)
        metrics, eval_loss = results, results["eval_loss"]
        history = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
    tokens = steps * training_args.per_device_train_batch_size * data_args.block_size
    return {"mode": mode, "tokens": tokens, "tokens_per_second": tokens / metrics["train_runtime"],
            "train_loss_end": last_losses(history), "eval_loss": eval_loss, "threads": torch.get_num_threads(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(mode: str, recipe: str, steps: int, overrides: dict) -> dict:
    env = dict(os.environ)
    overrides = dict(overrides)
    if "__threads" in overrides:
        env["OMP_NUM_THREADS"] = str(overrides.pop("__threads"))
    cmd = [sys.executable, __file__, "--child", mode, "--recipe", recipe, "--steps", str(steps),
           "--overrides", json.dumps(overrides)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(row: dict) -> str:
    return (f"{row['tokens_per_second']:8.0f} tokens/s   train loss {row['train_loss_end']:.3f}   eval loss "
            f"{row['eval_loss']:.3f}   peak RSS {row['peak_rss_mb']:.0f} MB   threads {row['threads']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "tiny-llama" / "pretrain.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of (a) and (b)")
    parser.add_argument("--levers", action="store_true", help="also time single changes on top of (b)")
    parser.add_argument("--output", help="write all measurements to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.recipe, args.steps, json.loads(args.overrides))))
        return

    rows = {"stock": [], "lmrecipes": []}
    for round_number in range(1, args.rounds + 1):
        for mode in ("stock", "lmrecipes"):
            row = spawn(mode, args.recipe, args.steps, {})
            rows[mode].append(row)
            print(f"round {round_number} {mode:>9}: {describe(row)}", flush=True)
    mean = {mode: sum(r["tokens_per_second"] for r in runs) / len(runs) for mode, runs in rows.items()}
    ratio = mean["lmrecipes"] / mean["stock"]
    print(f"\n(a) stock {mean['stock']:.0f} tokens/s, (b) lmrecipes {mean['lmrecipes']:.0f} tokens/s: "
          f"ratio (b)/(a) = {ratio:.2f}; eval loss after {rows['stock'][0]['tokens']:,} tokens: "
          f"(a) {rows['stock'][-1]['eval_loss']:.3f}, (b) {rows['lmrecipes'][-1]['eval_loss']:.3f}")
    report = {"rows": rows, "ratio": ratio, "levers": {}}
    if args.levers:
        base = mean["lmrecipes"]
        print("\nLevers, each alone on top of (b):")
        for name, overrides in LEVERS.items():
            if overrides.get("bf16") and not cpu_has_native_bf16():
                print(f"  {name:40s} skipped: this CPU has no native bf16 (avx512_bf16 / AMX); emulated bf16 is slower")
                continue
            row = spawn("lmrecipes", args.recipe, args.steps, overrides)
            report["levers"][name] = row
            print(f"  {name:40s} {row['tokens_per_second'] / base:5.2f}x  {describe(row)}", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
