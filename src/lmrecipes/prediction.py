"""Batch inference with a fine-tuned classifier through the `text-classification` pipeline."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from transformers import pipeline

from .errors import RecipeError
from .lora import load_classifier
from .recipe import read_run_recipe


def read_texts(path, text_column: str = "text") -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8", newline="") as handle:
        if suffix == ".txt":
            texts = [line.rstrip("\n") for line in handle if line.strip()]
        elif suffix in (".jsonl", ".json", ".csv"):
            rows = csv.DictReader(handle) if suffix == ".csv" else (json.loads(l) for l in handle if l.strip())
            texts = []
            for number, row in enumerate(rows, 1):
                if text_column not in row:
                    raise RecipeError(f"{path}: row {number} has no column {text_column!r} (--text_column)")
                texts.append(str(row[text_column]))
        else:
            raise RecipeError(f"{path}: unsupported input type {suffix!r} (.txt, .jsonl, .csv)")
    if not texts:
        raise RecipeError(f"{path}: no text to classify")
    return texts


def predict(model_dir, texts: list[str], batch_size: int = 32, max_length: int | None = None) -> list[dict]:
    """[{text, label, score}] for each text."""
    model, tokenizer = load_classifier(model_dir)
    if max_length is None:
        max_length = read_run_recipe(model_dir).get("max_length") or 512
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer)
    outputs = classifier(texts, batch_size=batch_size, truncation=True, max_length=max_length)
    return [{"text": text, "label": out["label"], "score": float(out["score"])} for text, out in zip(texts, outputs)]


def predict_file(model_dir, input_path, output_path=None, text_column="text", batch_size=32, max_length=None) -> int:
    rows = predict(model_dir, read_texts(input_path, text_column), batch_size, max_length)
    if output_path and str(output_path).endswith(".csv"):
        with open(output_path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label", "score"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        handle = open(output_path, "w", encoding="utf-8") if output_path else sys.stdout
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if output_path:
            handle.close()
    return len(rows)
