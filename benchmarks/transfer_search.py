"""Where is the transfer lost? Fine-tuning variants of a pretrained body against the same body from random weights.

    .venv/bin/python benchmarks/transfer_search.py runs/tiny-llama/pipeline/pretrain --labels 250 1000 \
        --variants '{"name": "last token, lr 1e-3"}' '{"name": "mean", "pool": "mean"}' ...

Each variant is fine-tuned on the main job's label-curve samples (the same seeded, label-stratified N training rows,
seeds 42, 43, 44; ceil(2500 / N) epochs; 3 validations on the whole validation split, the best kept; batch 32;
AdamW, linear schedule with 6% warm-up, weight decay 0.01, gradient clipping 1.0; texts cut at 64 tokens) and
scored on the 1,066 test rows, paired per seed and test row with the reference arm (`--reference`, by default the
body's architecture from random weights, last-token head, learning rate 1e-3: the pipeline's scratch arm).

A variant's keys (all optional):
  pool: what the head reads: last (the last real token: what LlamaForSequenceClassification reads), mean (mean over
      the real tokens), meanmax (mean and max, concatenated, as ULMFiT), first ([CLS]: encoders, without their pooler)
  scratch: true: random weights of the same architecture
  lr: the body's peak learning rate (1e-3); head_lr: the head's (default lr)
  layer_decay: each layer below the top trains at this times the learning rate of the one above (Llama bodies)
  embedding_lr_scale: the token embeddings' learning rate times this (0: frozen; Llama bodies)
  head_only_fraction: the first fraction of the steps trains the head only (ULMFiT's gradual unfreezing, in one step)
  suffix: text appended to every review (a prompt-like template; the head reads its last token)
  verbalizer: two words [negative, positive]: the head starts as the language model's output rows of those words
      (tied embeddings), so that at step 0 it scores the next-word preference (PET / LM-BFF)
  examples: examples per run below all labels (2500)
  no_training: true: scored as built (with verbalizer: the language model's zero-shot next-word preference)

The loop is hand-written (plain torch, not the Trainer) because most variants are not recipe keys. It differs from
the pipeline's fine-tuning in details (random batches, not grouped by length; weight decay on every parameter; a
warm-up from step 1; clipping over all gradients in a head-only phase). On the main job's body at 1,000 labels its
pretrained arm gives 64.0% as the pipeline's did; its scratch arm 64.0% where the pipeline's gave 65.7%. Writes
--output (json: every run's per-row correctness) and prints one line per variant.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from lmrecipes import load_recipe
from lmrecipes.arguments import FINETUNE_ARGUMENTS
from lmrecipes.data.classification import load_classification_data
from lmrecipes.data.sources import sample_indices
from lmrecipes.label_curve import difference_summary, interval
from lmrecipes.tasks.base import label_key

FINETUNE_RECIPE = "recipes/tiny-llama/finetune-sentiment.yaml"
REFERENCE = {"name": "scratch, last token, lr 1e-3", "scratch": True}


class Classifier(torch.nn.Module):
    def __init__(self, body, pool: str, labels: int = 2):
        super().__init__()
        self.body, self.pool = body, pool
        width = body.config.hidden_size * (2 if pool == "meanmax" else 1)
        self.score = torch.nn.Linear(width, labels, bias=False)
        torch.nn.init.normal_(self.score.weight, std=body.config.initializer_range)

    def forward(self, ids, mask):
        hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * real).sum(1) / real.sum(1)
        pooled = {"last": lambda: hidden[torch.arange(len(hidden)), mask.sum(1) - 1], "mean": lambda: mean,
                  "first": lambda: hidden[:, 0],
                  "meanmax": lambda: torch.cat([mean, hidden.masked_fill(real == 0, -1e4).max(1).values], -1)}
        return self.score(pooled[self.pool]())


def parameter_groups(model: Classifier, variant: dict) -> list[dict]:
    lr = variant.get("lr", 1e-3)
    groups = [(list(model.score.parameters()), variant.get("head_lr", lr))]
    body = model.body
    if hasattr(body, "layers") and hasattr(body, "embed_tokens"):  # Llama-like: per-layer rates
        decay, depth = variant.get("layer_decay", 1.0), len(body.layers)
        groups.append((list(body.norm.parameters()), lr))
        groups += [(list(layer.parameters()), lr * decay ** (depth - 1 - i)) for i, layer in enumerate(body.layers)]
        groups.append((list(body.embed_tokens.parameters()), lr * decay ** depth * variant.get("embedding_lr_scale",
                                                                                                 1.0)))
    else:
        groups.append((list(body.parameters()), lr))
    return [{"params": params, "lr": rate, "peak": rate, "weight_decay": 0.01} for params, rate in groups if params]


class Data:
    def __init__(self, body_dir: str, max_length: int):
        _, _, data, *_ = load_recipe(FINETUNE_RECIPE, FINETUNE_ARGUMENTS)
        splits, task = load_classification_data(data)
        self.tokenizer = AutoTokenizer.from_pretrained(body_dir)
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        self.splits = {}
        for name in ("train", "validation", "test"):
            ids = [self.tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in splits[name]["text"]]
            labels = np.array([task.labels.index(label_key(v)) for v in splits[name][data.label_column]])
            self.splits[name] = (ids, labels)

    def batch(self, split: str, rows, suffix: list[int]):
        ids = self.splits[split][0]
        seqs = [ids[i] + suffix for i in rows]
        width = max(map(len, seqs))
        x = torch.full((len(seqs), width), self.pad)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            x[r, :len(seq)], mask[r, :len(seq)] = torch.tensor(seq), 1
        return x, mask


def correct(model, data: Data, split: str, suffix: list[int]) -> np.ndarray:
    labels = data.splits[split][1]
    model.eval()
    with torch.no_grad():
        predicted = np.concatenate([model(*data.batch(split, range(s, min(s + 256, len(labels))), suffix))
                                    .argmax(-1).numpy() for s in range(0, len(labels), 256)])
    model.train()
    return predicted == labels


def fine_tune(body_dir: str, data: Data, variant: dict, labels: int | str, seed: int) -> tuple[float, np.ndarray]:
    """(best validation accuracy, the test rows' correctness at that validation)."""
    torch.manual_seed(seed)
    body = AutoModel.from_config(AutoConfig.from_pretrained(body_dir)) if variant.get("scratch") else \
        AutoModel.from_pretrained(body_dir)
    model = Classifier(body, variant.get("pool", "last"))
    tok = data.tokenizer
    if variant.get("verbalizer"):
        pieces = [tok(w, add_special_tokens=False)["input_ids"] for w in variant["verbalizer"]]
        if any(len(ids) != 1 for ids in pieces):
            raise SystemExit(f"verbalizer {variant['verbalizer']}: each word must be one token of the body's tokenizer")
        rows = [ids[0] for ids in pieces]
        with torch.no_grad():
            model.score.weight.copy_(body.get_input_embeddings().weight[rows])
    suffix = tok(variant["suffix"], add_special_tokens=False)["input_ids"] if variant.get("suffix") else []
    if variant.get("no_training"):
        return float(correct(model, data, "validation", suffix).mean()), correct(model, data, "test", suffix)
    train_labels = data.splits["train"][1]
    rows = list(range(len(train_labels))) if labels == "all" else sample_indices(len(train_labels), labels, seed,
                                                                                 train_labels)
    epochs = 1 if labels == "all" else max(1, math.ceil(variant.get("examples", 2500) / len(rows)))
    batches = math.ceil(len(rows) / 32)
    steps, warm = epochs * batches, max(1, int(0.06 * epochs * batches))
    head_only = int(variant.get("head_only_fraction", 0) * steps)
    groups = parameter_groups(model, variant)
    optimizer = torch.optim.AdamW(groups)
    checkpoints = {round(steps * k / 3) for k in (1, 2, 3)}
    rng, step, best = np.random.default_rng(seed), 0, (-1.0, None)
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(rows), batches):
            loss = torch.nn.functional.cross_entropy(model(*data.batch("train", batch, suffix)),
                                                     torch.tensor(train_labels[batch]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if step < head_only:
                for group in groups[1:]:
                    for p in group["params"]:
                        p.grad = None
            scale = (step + 1) / warm if step < warm else max(0.0, (steps - step) / (steps - warm))
            for group in optimizer.param_groups:
                group["lr"] = group["peak"] * scale
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step in checkpoints:
                accuracy = correct(model, data, "validation", suffix).mean()
                if accuracy > best[0]:
                    best = (float(accuracy), correct(model, data, "test", suffix))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("body_dir")
    parser.add_argument("--variants", nargs="+", required=True, help="json objects (keys: see the docstring)")
    parser.add_argument("--labels", nargs="+", default=["250", "1000"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--reference", default=json.dumps(REFERENCE))
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    data = Data(args.body_dir, args.max_length)
    variants = [json.loads(v) for v in [args.reference, *args.variants]]
    results = []
    for labels in [n if n == "all" else int(n) for n in args.labels]:
        by_variant = {}
        for variant in variants:
            start, runs = time.time(), [fine_tune(args.body_dir, data, variant, labels, s) for s in args.seeds]
            by_variant[variant["name"]] = np.stack([r[1] for r in runs])
            reference = by_variant[variants[0]["name"]]
            accuracy, difference = interval(by_variant[variant["name"]]), difference_summary(
                by_variant[variant["name"]], reference)
            results.append({"labels": labels, "variant": variant, "seeds": args.seeds,
                            "validation": [r[0] for r in runs], "test": accuracy, "minus_reference": difference,
                            "seconds": time.time() - start,
                            "correct": by_variant[variant["name"]].astype(int).tolist()})
            print(f"{labels:>5} labels | {variant['name']:<45} | test {100 * accuracy['mean']:.1f} | validation "
                  f"{100 * np.mean(results[-1]['validation']):.1f} | vs reference {100 * difference['mean']:+.1f} "
                  f"[{100 * difference['ci95'][0]:+.1f}, {100 * difference['ci95'][1]:+.1f}]", flush=True)
            with open(args.output, "w") as handle:
                json.dump({"body": args.body_dir, "reference": variants[0], "runs": results}, handle)


if __name__ == "__main__":
    main()
