#!/usr/bin/env python
"""Pretraining throughput: the stock Hugging Face path against lmrecipes, on the same model, data and machine.

    .venv/bin/python benchmarks/pretrain_throughput.py [--steps 40] [--rounds 2] [--levers] [--compile_break_even]

(a) "stock": a plain `Trainer` with default `TrainingArguments` (fp32, lr 5e-5, adamw_torch, ...), as the
    transformers run_clm.py example runs it; (b) "lmrecipes": `lmrecipes.pretrain` with the recipe as shipped
    (the CPU recipes' bf16: auto: bf16 autocast where the CPU has native bf16; fused_loss auto: on a CPU, the
    output layer and the cross-entropy computed together in chunks). The CPU model and its bf16 flags are printed
    first.
Both train the recipe's model (same config, tokenizer, block size, batch and number of steps) on the same packed
blocks, in alternating fresh processes (rounds), and are evaluated on the same held-out blocks. Printed per run:
tokens/s (tokens trained / train_runtime), final training loss (mean of the last 5 logged steps), held-out loss
and peak resident memory; then the ratio (b)/(a). `--levers` also times single changes on top of (b): fused
AdamW, torch.compile, eager or SDPA attention (the one the recipe names repeats (b)), the model's own loss instead
of the fused one, fp32 instead of bf16 auto (with the fused loss, and with the model's own), one thread, 2
dataloader workers.
`--compile_break_even` times (b) eager and compiled at two step counts and solves time = overhead + steps x
per-step time for both: the step count after which compiling pays. `--alternate A B` times (b) with two sets of
JSON overrides instead, alternating (e.g. the attention kernels). To measure an AVX2-only CPU on a newer one, run
it under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 (bf16: auto then keeps fp32).
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
    "eager attention": {"attn_implementation": "eager"},
    "SDPA attention": {"attn_implementation": "sdpa"},
    "the model's own loss (fused_loss: false)": {"fused_loss": "false"},
    "fp32 (bf16: false instead of auto)": {"bf16": "false"},
    "fp32 and the model's own loss": {"bf16": "false", "fused_loss": "false"},
    "1 CPU thread (OMP_NUM_THREADS=1)": {"__threads": 1},
    "2 dataloader workers": {"dataloader_num_workers": 2},
}


# The environment variables that make a newer x86 CPU run as an older one (e.g. AVX2 only): torch's own kernels,
# oneDNN's (bf16 and conv/matmul) and MKL's (fp32 matmul)
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def last_losses(log_history) -> float:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return sum(losses[-5:]) / len(losses[-5:])


def run_one(mode: str, recipe: str, steps: int, overrides: dict) -> dict:
    """Inside a fresh process: train one configuration and return its measurements."""
    import torch

    import lmrecipes
    from lmrecipes.api import load_recipe
    from lmrecipes.arguments import PRETRAIN_ARGUMENTS
    from lmrecipes.data.packing import prepare_pretraining_data
    from lmrecipes.objectives.causal_lm import CAUSAL_LM
    from lmrecipes.pretraining import load_corpus_and_tokenizer

    out = tempfile.mkdtemp(prefix=f"bench-{mode}-")
    common = {"max_steps": steps, "output_dir": out, "eval_strategy": "no", "save_strategy": "no",
              "logging_steps": 5, "report_to": "none", "disable_tqdm": True, "max_eval_samples": 64}
    model_args, tokenizer_args, data_args, training_args, _ = load_recipe(recipe, PRETRAIN_ARGUMENTS, **common)
    if mode == "stock":
        from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

        set_seed(42)
        raw, fingerprint, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, CAUSAL_LM)
        train, evaluation, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, CAUSAL_LM, data_args)
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
            "train_runtime": metrics["train_runtime"],
            "train_loss_end": last_losses(history), "eval_loss": eval_loss, "threads": torch.get_num_threads(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(mode: str, recipe: str, steps: int, overrides: dict) -> dict:
    env = dict(os.environ)
    overrides = dict(overrides)
    if "__threads" in overrides:
        env["OMP_NUM_THREADS"] = str(overrides.pop("__threads"))
    if overrides.get("torch_compile"):  # a cold compile, as a first run on a machine: no kernels cached before
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")
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
    parser.add_argument("--compile_break_even", type=int, nargs=2, metavar=("STEPS1", "STEPS2"), default=None,
                        help="time (b) eager and compiled at these two step counts: where compiling pays")
    parser.add_argument("--alternate", nargs=2, metavar=("OVERRIDES_A", "OVERRIDES_B"), default=None,
                        help="instead of (a) vs (b): (b) with these two JSON overrides, alternating for --rounds; "
                        "e.g. '{\"attn_implementation\": \"sdpa\"}' '{\"attn_implementation\": \"eager\"}'")
    parser.add_argument("--output", help="write all measurements to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.recipe, args.steps, json.loads(args.overrides))))
        return

    from lmrecipes.peak_flops import cpu_model_name
    from lmrecipes.precision import bf16_choice

    bf16, why = bf16_choice("auto", on_cpu=True)
    limits = {name: os.environ[name] for name in ISA_LIMITS if name in os.environ}
    machine = {"cpu": cpu_model_name(), "cpus": os.cpu_count(), "bf16_auto": bf16, "why": why, "isa_limits": limits}
    if limits:
        print(f"Instruction sets limited: {limits}")
    print(f"CPU: {machine['cpu']}, {machine['cpus']} CPUs; bf16: auto -> {'bf16' if bf16 else 'fp32'} ({why})")
    if args.alternate:
        report = {"machine": machine, **alternate(args.recipe, args.steps, args.rounds, args.alternate)}
        if args.output:
            Path(args.output).write_text(json.dumps(report, indent=2))
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
    report = {"machine": machine, "rows": rows, "ratio": ratio, "levers": {}}
    if args.levers:
        base = mean["lmrecipes"]
        print("\nLevers, each alone on top of (b):")
        for name, overrides in LEVERS.items():
            if overrides.get("bf16") == "false" and not bf16:
                print(f"  {name:40s} skipped: (b) already runs fp32 on this CPU")
                continue
            row = spawn("lmrecipes", args.recipe, args.steps, overrides)
            report["levers"][name] = row
            print(f"  {name:40s} {row['tokens_per_second'] / base:5.2f}x  {describe(row)}", flush=True)
    if args.compile_break_even:
        report["compile_break_even"] = break_even(args.recipe, args.compile_break_even)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))


def alternate(recipe: str, steps: int, rounds: int, settings: list[str]) -> dict:
    """(b) with two sets of overrides, alternating in fresh processes: tokens/s of each run, the ratio of means."""
    rows = {label: [] for label in settings}
    for round_number in range(1, rounds + 1):
        for label in settings:
            row = spawn("lmrecipes", recipe, steps, json.loads(label))
            rows[label].append(row)
            print(f"round {round_number} {label}: {describe(row)}", flush=True)
    mean = {label: sum(r["tokens_per_second"] for r in runs) / len(runs) for label, runs in rows.items()}
    ratio = mean[settings[1]] / mean[settings[0]]
    print(f"\n{settings[1]} / {settings[0]}: {mean[settings[1]]:.0f} / {mean[settings[0]]:.0f} tokens/s = {ratio:.2f}")
    return {"rows": rows, "mean_tokens_per_second": mean, "ratio_b_over_a": ratio}


def break_even(recipe: str, counts: list[int]) -> dict:
    """train_runtime = overhead + steps x per-step time, solved from two step counts for eager and compiled (b):
    compiling pays after overhead difference / per-step saving steps (never, if it saves nothing per step)."""
    fits = {}
    for name, overrides in (("eager", {}), ("compiled", {"torch_compile": True})):
        times = [spawn("lmrecipes", recipe, steps, overrides)["train_runtime"] for steps in counts]
        per_step = (times[1] - times[0]) / (counts[1] - counts[0])
        fits[name] = {"steps": counts, "train_runtime": times, "per_step_s": per_step,
                      "overhead_s": times[0] - counts[0] * per_step}
        print(f"  {name:9s}: {times[0]:.1f} s for {counts[0]} steps, {times[1]:.1f} s for {counts[1]}: "
              f"{1000 * per_step:.1f} ms/step + {fits[name]['overhead_s']:.1f} s", flush=True)
    saving = fits["eager"]["per_step_s"] - fits["compiled"]["per_step_s"]
    extra = fits["compiled"]["overhead_s"] - fits["eager"]["overhead_s"]
    steps = extra / saving if saving > 0 else None
    print(f"  torch.compile pays after {steps:.0f} steps" if steps is not None else
          "  torch.compile is not faster per step here: it never pays", flush=True)
    return {**fits, "break_even_steps": steps}


if __name__ == "__main__":
    main()
