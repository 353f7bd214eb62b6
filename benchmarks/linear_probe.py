"""How much sentiment does a pretrained body hold before fine-tuning? A linear probe on frozen features.

    .venv/bin/python benchmarks/linear_probe.py runs/tiny-llama/pipeline/pretrain

Features of every sentiment review from the pretrained body and from the same architecture with random weights
(mean over the tokens, and the last token: what LlamaForSequenceClassification's head reads), then an L2-regularised
logistic regression (standardised features, L-BFGS) trained on the same seeded, label-stratified 250 / 1,000 / all
training rows as the pipeline's curve (seeds 42, 43, 44), scored on the test split. Mean test accuracy over the
seeds; writes results-linear-probe.json next to this script (or --output). The probe is written here (a few lines
of torch): scikit-learn is not a dependency of the project.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def features(model, tokenizer, texts: list[str], max_length: int = 64) -> dict[str, np.ndarray]:
    pooled = {"mean": [], "last": []}
    with torch.no_grad():
        for start in range(0, len(texts), 128):
            batch = tokenizer(texts[start:start + 128], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled["mean"].append((hidden * mask).sum(1) / mask.sum(1))
            last = batch["attention_mask"].sum(1) - 1  # right padding: the last real token
            pooled["last"].append(hidden[torch.arange(len(hidden)), last])
    return {name: torch.cat(parts).numpy() for name, parts in pooled.items()}


def probe_accuracy(train_x, train_y, test_x, test_y, l2: float = 1e-2) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, xt = torch.tensor((train_x - mean) / std), torch.tensor((test_x - mean) / std)
    y = torch.tensor(train_y, dtype=torch.float32)
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(((xt @ weight + bias > 0).numpy() == test_y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pretrained_dir")
    parser.add_argument("--finetune_recipe", default="recipes/tiny-llama/finetune-sentiment.yaml")
    parser.add_argument("--output", default=str(Path(__file__).with_name("results-linear-probe.json")))
    args = parser.parse_args()

    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from lmrecipes import load_recipe
    from lmrecipes.arguments import FINETUNE_ARGUMENTS
    from lmrecipes.data.classification import load_classification_data
    from lmrecipes.data.sources import sample_indices
    from lmrecipes.tasks.base import label_key

    _, _, data, *_ = load_recipe(args.finetune_recipe, FINETUNE_ARGUMENTS)
    splits, task = load_classification_data(data)
    labels = task.labels
    tokenizer = AutoTokenizer.from_pretrained(args.pretrained_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    ids = {name: np.array([labels.index(label_key(v)) for v in splits[name][data.label_column]])
           for name in ("train", "test")}
    torch.manual_seed(0)
    bodies = {"pretrained": AutoModel.from_pretrained(args.pretrained_dir),
              "random weights": AutoModel.from_config(AutoConfig.from_pretrained(args.pretrained_dir))}
    results = []
    for body, model in bodies.items():
        model.eval()
        train = features(model, tokenizer, list(splits["train"][data.text_column]), data.max_length)
        test = features(model, tokenizer, list(splits["test"][data.text_column]), data.max_length)
        for count in (250, 1000, len(ids["train"])):
            for pooling in ("mean", "last"):
                accuracies = []
                for seed in (42, 43, 44):
                    rows = sample_indices(len(ids["train"]), count, seed, ids["train"].tolist())
                    accuracies.append(probe_accuracy(train[pooling][rows], ids["train"][rows], test[pooling],
                                                     ids["test"]))
                results.append({"body": body, "labels": count, "pooling": pooling,
                                "test_accuracy_mean": float(np.mean(accuracies)), "per_seed": accuracies})
                print(f"{body:>14} {count:>5} labels, {pooling:>4} pooling: {100 * np.mean(accuracies):.1f}%",
                      flush=True)
    out = Path(args.output)
    out.write_text(json.dumps({"pretrained_dir": args.pretrained_dir, "results": results}, indent=2))


if __name__ == "__main__":
    main()
