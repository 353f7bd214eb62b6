"""lmrecipes' held-out bits/byte against lm-evaluation-harness's on the same model and the same documents.

    PYTHONPATH=/path/to/lm_eval .venv/bin/python benchmarks/bits_per_byte_vs_lm_eval.py \
        runs/tiny-llama/pipeline/pretrain

lmrecipes: the pretraining recipe's held-out split packed into blocks (EOS between documents, the first token of a
block unscored), every block evaluated, summed loss / (ln 2 x exact UTF-8 bytes of the scored tokens).
lm-evaluation-harness: the same documents one by one (`loglikelihood_rolling`, windows of block_size tokens as in
training, each document scored from an end-of-text token), summed log-likelihood / (ln 2 x UTF-8 bytes of the
documents). The two differ only in context (lmrecipes' blocks cross document boundaries and leave each block's first
token unscored) and in the scored separators. Also reported: lmrecipes on the first 200 blocks (what
max_eval_samples took before issue 12) against a seeded sample of 200 (what it takes now) and all blocks. lm_eval is
not a dependency: install it anywhere on PYTHONPATH (`pip install --target DIR --no-deps lm_eval` plus what it
imports).
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
    from lmrecipes.arguments import PRETRAIN_ARGUMENTS
    from lmrecipes.data.packing import prepare_pretraining_data
    from lmrecipes.objectives.causal_lm import CAUSAL_LM
    from lmrecipes.pretraining import load_corpus_and_tokenizer
    from lmrecipes.recipe import read_run_recipe

    recipe = {k: v for k, v in read_run_recipe(run_dir).items() if k != "objective"}
    model_args, tokenizer_args, data_args, training_args, _ = load_recipe(recipe, PRETRAIN_ARGUMENTS,
                                                                          max_eval_samples=None)
    raw, fingerprint, _ = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, CAUSAL_LM)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    data_args.max_eval_samples = None
    _, evaluation, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, CAUSAL_LM, data_args)
    # block_bytes again, for subsets: prepare_pretraining_data drops the column it averages
    from lmrecipes.data.packing import _tokenize_and_pack
    block_bytes = _tokenize_and_pack(raw["validation"], tokenizer, CAUSAL_LM, data_args.block_size,
                                     data_args.text_column, with_bytes=True)["block_bytes"]
    model = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    nats = []
    with torch.no_grad():
        for start in range(0, len(evaluation), 32):
            ids = torch.tensor(evaluation[start:start + 32]["input_ids"])
            logits = model(ids).logits[:, :-1]
            nats += torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(
                -1).tolist()

    def bits_per_byte(blocks):
        return sum(nats[i] for i in blocks) / (math.log(2) * sum(block_bytes[i] for i in blocks))

    from lmrecipes.data.packing import EVAL_SAMPLE_SEED
    from lmrecipes.data.sources import sample_indices

    n = min(200, len(nats))
    subsets = {"all blocks": range(len(nats)), f"first {n} blocks": range(n),
               f"seeded sample of {n} blocks": sample_indices(len(nats), n, EVAL_SAMPLE_SEED)}
    documents = [text for text in raw["validation"][data_args.text_column] if text]
    return {name: round(bits_per_byte(list(blocks)), 4) for name, blocks in subsets.items()}, len(nats), documents


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
    # windows of the block size the model was trained on (its config allows more, where it was never trained)
    from lmrecipes.recipe import read_run_recipe

    block_size = read_run_recipe(run_dir).get("block_size") or 256
    results = lm_eval.simple_evaluate(model="hf", device="cpu",
                                      model_args=f"pretrained={run_dir},dtype=float32,max_length={block_size}",
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
              "lmrecipes_bits_per_byte": ours, "lm_eval_bits_per_byte": round(theirs, 4),
              "relative_difference_all_blocks": round(ours["all blocks"] / theirs - 1, 4),
              "seconds": round(time.time() - started)}
    print(json.dumps(report, indent=2))
    (REPO / "benchmarks" / "results-bits-per-byte.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
