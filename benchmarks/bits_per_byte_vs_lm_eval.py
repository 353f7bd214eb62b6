"""lmrecipes' held-out bits/byte against lm-evaluation-harness's on the same model and the same documents.

    PYTHONPATH=/path/to/lm_eval .venv/bin/python benchmarks/bits_per_byte_vs_lm_eval.py runs/tiny-llama/pipeline/pretrain

lmrecipes: the pretraining recipe's held-out split packed into blocks (EOS between documents, the first token of a
block unscored), every block evaluated, summed loss / (ln 2 x exact UTF-8 bytes of the scored tokens).
lm-evaluation-harness: the same documents one by one (`loglikelihood_rolling`, windows of the model's context,
each document scored from an end-of-text token), summed log-likelihood / (ln 2 x UTF-8 bytes of the documents).
The two differ only in context (lmrecipes' blocks cross document boundaries and restart every block_size tokens)
and in the scored separators. lm_eval is not a dependency: install it anywhere on PYTHONPATH (`pip install --target
DIR --no-deps lm_eval` plus what it imports).
"""

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]


def lmrecipes_bits_per_byte(run_dir: Path):
    from lmrecipes import load_recipe
    from lmrecipes.data import prepare_pretraining_data
    from lmrecipes.pretraining import PRETRAIN_ARGUMENTS, load_corpus_and_tokenizer
    from lmrecipes.recipe import read_run_recipe

    recipe = {k: v for k, v in read_run_recipe(run_dir).items() if k != "objective"}
    model_args, tokenizer_args, data_args, training_args, _ = load_recipe(recipe, PRETRAIN_ARGUMENTS,
                                                                          max_eval_samples=None)
    raw, fingerprint, _ = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, "causal_lm")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    _, evaluation, bytes_per_token = prepare_pretraining_data(raw, fingerprint, tokenizer, "causal_lm", data_args,
                                                              shuffle_seed=training_args.seed)
    model = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(evaluation), 32):
            ids = torch.tensor(evaluation[start:start + 32]["input_ids"])
            logits = model(ids).logits[:, :-1]
            nats += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                      reduction="sum").item()
            tokens += ids[:, 1:].numel()
    documents = [text for text in raw["validation"][data_args.text_column] if text]
    return nats / (math.log(2) * bytes_per_token * tokens), len(evaluation), documents


def lm_eval_bits_per_byte(run_dir: Path, documents: list[str]) -> float:
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = Path(tempfile.mkdtemp())
    (folder / "heldout.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    (folder / "lmrecipes_heldout.yaml").write_text(
        "task: lmrecipes_heldout\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'heldout.jsonl'}\ntest_split: test\noutput_type: loglikelihood_rolling\n"
        "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n  - metric: bits_per_byte\n"
        "  - metric: byte_perplexity\n  - metric: word_perplexity\n")
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={run_dir},dtype=float32", device="cpu",
                                      tasks=["lmrecipes_heldout"], batch_size=8,
                                      task_manager=TaskManager(include_path=str(folder)))
    return results["results"]["lmrecipes_heldout"]["bits_per_byte,none"]


def main(run_dir: str):
    run_dir = Path(run_dir)
    started = time.time()
    ours, blocks, documents = lmrecipes_bits_per_byte(run_dir)
    theirs = lm_eval_bits_per_byte(run_dir, documents)
    report = {"run": str(run_dir), "heldout_documents": len(documents),
              "heldout_bytes": sum(len(d.encode("utf-8")) for d in documents), "lmrecipes_blocks": blocks,
              "lmrecipes_bits_per_byte": round(ours, 4), "lm_eval_bits_per_byte": round(theirs, 4),
              "relative_difference": round(ours / theirs - 1, 4), "seconds": round(time.time() - started)}
    print(json.dumps(report, indent=2))
    (REPO / "benchmarks" / "results-bits-per-byte.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
