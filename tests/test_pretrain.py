"""Pretraining, as a user runs it: tiny causal and masked runs, reload into pipelines, DDP on 2 CPUs, streaming.
(Kill and resume: test_reliability.py.)"""

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, pipeline

from conftest import REPO, TINY_BERT, TINY_LLAMA, read_json

import lmrecipes

LLAMA_RECIPE = str(REPO / "recipes" / "tiny-llama" / "pretrain.yaml")


def losses(output_dir):
    history = read_json(output_dir / "trainer_state.json")["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_causal_pretraining_learns_and_writes_its_results(causal_run):
    out, results = causal_run
    written = read_json(out / "all_results.json")
    for key in ("eval_loss", "perplexity", "bits_per_byte", "train_tokens_per_second", "mfu", "train_loss"):
        assert key in written, key
    assert written["perplexity"] == pytest.approx(2.718281828 ** written["eval_loss"], rel=1e-6)
    assert 0.5 < written["bits_per_byte"] < 8
    assert written["train_tokens"] == 30 * 8 * 64
    curve = losses(out)
    assert len(curve) == 30
    assert sum(curve[-5:]) / 5 < curve[0] - 0.6, f"loss did not fall: {curve[0]:.2f} -> {curve[-5:]}"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "recipe.yaml", "trainer_state.json"):
        assert (out / name).is_file(), name
    recipe = (out / "recipe.yaml").read_text()
    assert "max_steps: 30" in recipe and "objective: causal_lm" in recipe


def test_causal_model_reloads_and_generates(causal_run):
    out, _ = causal_run
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 512 and model.config.hidden_size == 48
    generator = pipeline("text-generation", model=str(out))
    text = generator("The king", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The king") and len(text) > len("The king")


def test_masked_pretraining_learns_and_fills_masks(masked_run):
    out, _ = masked_run
    written = read_json(out / "all_results.json")
    assert {"eval_loss", "perplexity"} <= set(written)
    curve = losses(out)
    assert sum(curve[-5:]) / 5 < curve[0] - 0.4, f"loss did not fall: {curve[0]:.2f} -> {curve[-5:]}"
    assert AutoModelForMaskedLM.from_pretrained(out).config.model_type == "bert"
    filler = pipeline("fill-mask", model=str(out))
    predictions = filler("the king [MASK] the land .")
    assert len(predictions) == 5 and all(0 <= p["score"] <= 1 for p in predictions)


TOPICS = [["red", "green", "blue", "pink", "gray", "brown"], ["cat", "dog", "fish", "bird", "horse", "mouse"],
          ["sun", "moon", "star", "sky", "cloud", "rain"]]


def test_masked_pretraining_learns_a_fill_mask_pattern(tmp_path):
    """Documents drawn from one of three word groups: a masked word is predictable from its context only (a model
    that learnt word frequencies alone ranks the same words first everywhere). After 300 tiny steps the top 3
    fillers of a masked context all come from the context's group."""
    import random

    rng = random.Random(0)
    corpus = tmp_path / "topics.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(TOPICS[i % 3]) for _ in range(80))}) + "\n"
                              for i in range(300)))
    out = tmp_path / "mlm"
    lmrecipes.pretrain(str(REPO / "recipes" / "tiny-bert" / "pretrain.yaml"), **{**TINY_BERT, "vocab_size": 100},
                       train_file=[str(corpus)], validation_fraction=0.1, max_steps=300, output_dir=str(out))
    fill = pipeline("fill-mask", model=str(out))
    for words in TOPICS:
        for _ in range(3):
            context = [rng.choice(words) for _ in range(8)]
            context[4] = fill.tokenizer.mask_token
            top = [p["token_str"] for p in fill(" ".join(context), top_k=3)]
            assert set(top) <= set(words), (context, top)


def test_ddp_on_two_cpu_processes_shards_data_and_keeps_replicas_identical(tmp_path, small_corpus):
    out = tmp_path / "ddp"
    overrides = {**TINY_LLAMA, "validation_fraction": 0.15, "max_steps": 6}
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", "0",
         str(REPO / "tests" / "ddp_probe.py"), LLAMA_RECIPE, small_corpus, str(out), json.dumps(overrides)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [read_json(out / f"probe-rank{r}.json") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["steps"] == 6 and len(r["batches"]) == 6 for r in ranks)
    assert not set(ranks[0]["batches"]) & set(ranks[1]["batches"]), "each rank saw different data"
    assert ranks[0]["params"] == ranks[1]["params"], "parameters identical on both ranks"
    assert ranks[0]["tokens"] == 6 * 2 * 8 * 64, "tokens counted over both processes"
    assert read_json(out / "all_results.json")["train_tokens"] == 6 * 2 * 8 * 64


def test_streaming_mode_trains_from_a_stream(tmp_path, small_corpus):
    out = tmp_path / "stream"
    results = lmrecipes.pretrain(LLAMA_RECIPE, **{**TINY_LLAMA, "max_eval_samples": 8}, train_file=[small_corpus],
                                 validation_fraction=0.15, streaming=True, max_steps=5, output_dir=str(out))
    assert results["train_tokens"] == 5 * 8 * 64
    assert results["eval_loss"] > 0 and 0 < results["bits_per_byte"] < 10
    assert read_json(out / "trainer_state.json")["global_step"] == 5


def test_streaming_without_max_steps_is_refused(tmp_path, small_corpus):
    with pytest.raises(lmrecipes.RecipeError, match="key 'streaming': streaming needs max_steps"):
        lmrecipes.pretrain(LLAMA_RECIPE, **TINY_LLAMA, train_file=[small_corpus], streaming=True, max_steps=-1,
                           output_dir=str(tmp_path / "x"))
