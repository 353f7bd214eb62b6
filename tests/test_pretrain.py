"""Pretraining, as a user runs it: tiny causal and masked runs, reload into pipelines, DDP on 2 CPUs, streaming.
(Kill and resume: test_faults.py.)"""

import json
import re

import pytest
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, pipeline

import lmrecipes
from conftest import LLAMA_PRETRAIN, REPO, TINY_BERT, TINY_LLAMA, pixels_of, png_pixels, read_json, run_ddp_probe
from lmrecipes.demonstrations import demonstrate
from lmrecipes.objectives.masked_lm import MASKED_LM

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


def test_a_finished_pretraining_run_says_what_it_trained_on_what_in_results_md(causal_run):
    """results.md: the model, the data and its blocks, the held-out metrics, time and speed; loss_curve.png; both
    recorded as the run's. On CPU the data loaders pin no memory (torch warned about it at every loader)."""
    import torch

    out, results = causal_run
    report = (out / "results.md").read_text()
    assert report.startswith("# Pretraining: run\n")
    assert re.search(r"- \*\*model\*\*: llama \(causal_lm\), [\d,]+ parameters, from random weights", report), report
    assert re.search(r"- \*\*data\*\*: train: .*corpus.*\.jsonl \([\d,]+ blocks of 64 tokens\); validation: held out "
                     r"from train \([\d,]+ blocks of 64 tokens\)", report), report
    assert f"{results['train_tokens']:,} tokens" in report and "tokens/s" in report
    for key in ("loss", "perplexity", "bits_per_byte"):
        assert f"| {key} | {results['eval_' + key if key == 'loss' else key]:.4f} |" in report, (key, report)
    assert "![loss curve](loss_curve.png)" in report and "confusion" not in report
    pixels = png_pixels(out / "loss_curve.png")
    assert pixels_of(pixels, "#1f77b4") > 200 and pixels_of(pixels, "#ff7f0e") > 20  # 30 logged steps, 1 held-out
    assert {"results.md", "loss_curve.png"} <= set(read_json(out / ".lmrecipes-run.json")["files"])
    assert torch.load(out / "training_args.bin", weights_only=False).dataloader_pin_memory is False


def test_causal_model_reloads_and_generates(causal_run):
    out, _ = causal_run
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 512 and model.config.hidden_size == 48
    generator = pipeline("text-generation", model=str(out))
    text = generator("The king", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The king") and len(text) > len("The king")
    # what it learnt, from a notebook: the same greedy words, and random weights' words beside them
    shown = lmrecipes.demonstrate(out, ["The king"])
    greedy = generator("The king", max_new_tokens=16, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert shown["rows"][0]["pretrained"] == " ".join(greedy.split()) != shown["rows"][0]["random_weights"]
    assert lmrecipes.demonstrate(out, ["The king"]) == shown  # greedy, seeded: the same words every time
    with pytest.raises(lmrecipes.RecipeError, match="not a finished pretraining run of lmrecipes"):
        lmrecipes.demonstrate(out.parent)
    with pytest.raises(lmrecipes.RecipeError, match="a list of texts, got 'The king'"):
        lmrecipes.demonstrate(out, "The king")
    long = lmrecipes.demonstrate(out, ["the king spoke and " * 300])  # past the positions: cut to its end
    assert long["rows"][0]["prompt"] == "the king spoke and " * 300 and isinstance(long["rows"][0]["pretrained"], str)


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
    shown = demonstrate(out, MASKED_LM, ["the king spoke to the"])  # what the pipeline summary shows
    assert shown["rows"][0]["pretrained"] == ", ".join(p["token_str"] for p in filler("the king spoke to the [MASK]."))
    assert shown["rows"][0]["random_weights"] != shown["rows"][0]["pretrained"]
    with pytest.raises(lmrecipes.RecipeError, match="key 'demonstration_prompts': 'the \\[MASK\\] spoke' holds the mask"):
        demonstrate(out, MASKED_LM, ["the [MASK] spoke"])
    assert demonstrate(out, MASKED_LM, ["the king spoke to " * 200])["rows"][0]["pretrained"]  # cut to its end


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
    """...and reports the eval loss one process reports for the same weights: 37 held-out blocks at eval batch 16
    leave the last batch uneven across 2 processes (the Trainer pads it with blocks from the start)."""
    out = tmp_path / "ddp"
    settings = {**TINY_LLAMA, "validation_fraction": 0.15, "max_eval_samples": 37, "per_device_eval_batch_size": 16}
    ranks = run_ddp_probe(LLAMA_RECIPE, small_corpus, out, {**settings, "max_steps": 6})
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["steps"] == 6 and len(r["batches"]) == 6 for r in ranks)
    assert not set(ranks[0]["batches"]) & set(ranks[1]["batches"]), "each rank saw different data"
    assert ranks[0]["params"] == ranks[1]["params"], "parameters identical on both ranks"
    assert all(r["fused_calls"] == [True] * 6 for r in ranks), "fused_loss auto: on for CPU training, DDP included"
    assert ranks[0]["tokens"] == 0, "the Trainer's count (a gather and a sync per micro-batch) is off"
    results = read_json(out / "all_results.json")
    assert results["train_tokens"] == 6 * 2 * 8 * 64, "tokens counted on the host, over both processes"
    assert results["eval_scored_tokens"] == 37 * 63, "every held-out block scored once"
    # the same weights evaluated by one process (continued at learning rate 0 for one step: unchanged)
    alone = lmrecipes.pretrain(LLAMA_RECIPE, **{**settings, "max_steps": 1, "learning_rate": 0.0},
                               model_name_or_path=str(out), train_file=[small_corpus], output_dir=str(tmp_path / "one"))
    assert alone["eval_scored_tokens"] == 37 * 63
    assert abs(alone["eval_loss"] - results["eval_loss"]) < 1e-6, (alone["eval_loss"], results["eval_loss"])


def test_streaming_under_ddp_gives_each_rank_other_blocks(tmp_path, small_corpus):
    """A stream read by 2 DDP processes: each reads its own shard of the stream (the corpus's one file split in 2;
    no dispatch from rank 0), no block is trained on by both ranks, and each rank's blocks are all different."""
    out = tmp_path / "ddp-stream"
    ranks = run_ddp_probe(LLAMA_RECIPE, small_corpus, out, {**TINY_LLAMA, "validation_fraction": 0.15,
                                                            "max_steps": 5, "streaming": True, "max_eval_samples": 8})
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["steps"] == 5 for r in ranks)
    assert [(r["loader"], r["stream_shards"]) for r in ranks] == [("DataLoaderShard", 1)] * 2
    blocks = [set(r["blocks"]) for r in ranks]
    assert all(len(b) == 5 * 8 for b in blocks), "8 different blocks per step on each rank"
    assert not blocks[0] & blocks[1], "no block seen by both ranks"
    assert ranks[0]["params"] == ranks[1]["params"]


def test_streaming_mode_trains_from_a_stream(tmp_path, small_corpus):
    out = tmp_path / "stream"
    results = lmrecipes.pretrain(LLAMA_RECIPE, **{**TINY_LLAMA, "max_eval_samples": 8}, train_file=[small_corpus],
                                 validation_fraction=0.15, streaming=True, max_steps=5, output_dir=str(out))
    assert results["train_tokens"] == 5 * 8 * 64
    assert results["eval_loss"] > 0 and 0 < results["bits_per_byte"] < 10
    assert read_json(out / "trainer_state.json")["global_step"] == 5


def test_a_resumed_stream_says_what_it_skips_and_ends_as_an_uninterrupted_run(tmp_path, small_corpus, capsys):
    """A streaming run resumed at step 6 of 12 (shuffled stream, dropout on so the random state matters): the log
    says how many batches and blocks are skipped, with progress, and the run ends where an uninterrupted one
    does."""
    from transformers import TrainerCallback

    class StopAt6(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 6

    settings = {**TINY_LLAMA, "max_eval_samples": 8, "train_file": [small_corpus], "validation_fraction": 0.15,
                "streaming": True, "max_steps": 12, "save_steps": 6, "seed": 3,
                "config_overrides": {**TINY_LLAMA["config_overrides"], "attention_dropout": 0.1}}
    whole = lmrecipes.pretrain(LLAMA_RECIPE, **settings, output_dir=str(tmp_path / "whole"))
    lmrecipes.pretrain(LLAMA_RECIPE, **settings, output_dir=str(tmp_path / "first"), callbacks=[StopAt6()])
    capsys.readouterr()
    resumed = lmrecipes.pretrain(LLAMA_RECIPE, **settings, output_dir=str(tmp_path / "second"),
                                 resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-6"))
    log = capsys.readouterr().out
    assert "Resuming a stream at step 6: skipping the 6 batches (48 blocks) trained on" in log
    assert "Resuming the stream: 48 of 48 blocks read again (100%)" in log and "Resuming the stream: skipped in" in log
    assert resumed["train_tokens"] == whole["train_tokens"] == 12 * 8 * 64
    assert abs(resumed["eval_loss"] - whole["eval_loss"]) < 1e-6, (resumed["eval_loss"], whole["eval_loss"])


def test_streaming_without_max_steps_is_refused(tmp_path, small_corpus):
    with pytest.raises(lmrecipes.RecipeError, match="key 'streaming': streaming needs max_steps"):
        lmrecipes.pretrain(LLAMA_RECIPE, **TINY_LLAMA, train_file=[small_corpus], streaming=True, max_steps=-1,
                           output_dir=str(tmp_path / "x"))


def test_bits_per_byte_is_total_nats_over_the_bytes_of_the_evaluated_text(tmp_path):
    """Documents with 1, 2 and 3 UTF-8 bytes per character, so bytes per token differ widely between blocks; the
    held-out blocks are a seeded sample. Hand computation: the model's summed loss over every predicted token of
    the evaluated blocks, over the bytes of exactly those tokens (a byte-level BPE token is one character per
    byte), in bits."""
    import math
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmrecipes.arguments import PRETRAIN_ARGUMENTS
    from lmrecipes.data.packing import prepare_pretraining_data
    from lmrecipes.objectives.causal_lm import CAUSAL_LM
    from lmrecipes.pretraining import load_corpus_and_tokenizer

    rng = random.Random(0)
    words = [["the", "king", "spoke", "of", "war", "and", "peace"], ["καλή", "μέρα", "κόσμε", "θάλασσα", "ήλιος"],
             [chr(0x4E00 + i) + chr(0x1F300 + i % 700) for i in range(2000)]]  # too many to merge: split characters
    corpus = tmp_path / "mixed.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(words[i % 3]) for _ in range(300))},
                                         ensure_ascii=False) + "\n" for i in range(60)), encoding="utf-8")
    settings = {**TINY_LLAMA, "train_file": [str(corpus)], "validation_fraction": 0.3, "max_eval_samples": 12,
                "per_device_eval_batch_size": 5, "max_steps": 8, "output_dir": str(tmp_path / "run")}  # 5 + 5 + 2
    results = lmrecipes.pretrain(LLAMA_RECIPE, **settings)

    model_args, tokenizer_args, data_args, training_args, _ = lmrecipes.load_recipe(LLAMA_RECIPE, PRETRAIN_ARGUMENTS,
                                                                                   **settings)
    raw, fingerprint, _ = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, CAUSAL_LM)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    _, evaluation, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, CAUSAL_LM, data_args,
                                                shuffle_seed=training_args.seed)
    assert len(evaluation) == 12
    _, every_block, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, CAUSAL_LM,
                                                 data_args.__class__(**{**vars(data_args), "max_eval_samples": None}))
    assert len(every_block) > 24 and evaluation["input_ids"] != every_block["input_ids"][:12]  # a sample, no prefix
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run").eval()
    ids = torch.tensor(evaluation["input_ids"])
    from lmrecipes.objectives.documents import document_positions

    with torch.no_grad():  # as the run evaluated: each document of a block on its own (document_masking auto)
        logits = model(ids, position_ids=document_positions(ids, tokenizer.eos_token_id), use_cache=False).logits
        logits = logits[:, :-1]
    nats = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                             reduction="sum").item()
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(ids[:, 1:].reshape(-1).tolist())
    nbytes = sum(len(token) for token, i in zip(tokens, ids[:, 1:].reshape(-1).tolist()) if i not in special)
    assert abs(results["bits_per_byte"] - nats / (math.log(2) * nbytes)) < 1e-6, (results["bits_per_byte"], nats, nbytes)


def test_packing_carries_remainders_and_marks_every_special_token(tmp_path, masked_run):
    """Short documents (reviews): tokens lost to packing are fewer than one block (the remainder of each map batch
    is carried into the next); masked blocks mark every special token, the [SEP]s between documents included."""
    import gzip

    from datasets import Dataset
    from transformers import AutoTokenizer

    from lmrecipes.data.packing import _tokenize_and_pack
    from lmrecipes.objectives.masked_lm import MASKED_LM

    reviews = [json.loads(line)["text"] for line in gzip.open(REPO / "data/sentiment/movie_reviews.jsonl.gz", "rt")]
    documents = Dataset.from_dict({"text": reviews[:2000]})
    tokenizer = AutoTokenizer.from_pretrained(masked_run[0])
    tokens_in = sum(len(ids) + 1 for ids in tokenizer(reviews[:2000], add_special_tokens=False)["input_ids"])
    blocks = _tokenize_and_pack(documents, tokenizer, MASKED_LM, 128, "text", with_bytes=True)
    body = 128 - 2
    assert 0 <= tokens_in - len(blocks) * body < body, (tokens_in, len(blocks))
    stream = _tokenize_and_pack(documents.to_iterable_dataset(), tokenizer, MASKED_LM, 128, "text",
                                with_bytes=True)
    first, second = [b["input_ids"] for b in stream], [b["input_ids"] for b in stream]  # two passes (epochs)
    assert first == second == blocks["input_ids"]  # streaming packs the same way, each pass from the start
    for block, mask in zip(blocks["input_ids"][:50], blocks["special_tokens_mask"][:50]):
        assert mask == [int(t in tokenizer.all_special_ids) for t in block]  # as the collator's own default
        assert sum(mask) > 2  # inner [SEP]s between the short documents


def test_ddp_searches_for_unused_parameters_only_when_the_model_has_some():
    """One forward/backward pass decides `find_unused_parameters` for DDP (a per-step cost and a warning when on)."""
    from types import SimpleNamespace

    import torch
    from accelerate.utils import DistributedDataParallelKwargs
    from transformers import LlamaConfig, LlamaForCausalLM, default_data_collator

    from lmrecipes.parallelism import choose_unused_parameter_search

    def decided(model, loss=lambda model, inputs: model(**inputs).loss, **args):
        handler = DistributedDataParallelKwargs(find_unused_parameters=True)  # the Trainer's default
        rows = [{"input_ids": list(range(1, 17)), "labels": list(range(1, 17)), "text": "dropped"}]
        trainer = SimpleNamespace(
            args=SimpleNamespace(**{"world_size": 2, "ddp_find_unused_parameters": None, "device": torch.device("cpu"),
                                    **args}),
            accelerator=SimpleNamespace(ddp_handler=handler), model=model, train_dataset=rows,
            data_collator=default_data_collator, is_fsdp_enabled=False, is_deepspeed_enabled=False,
            compute_loss=loss)
        state = torch.random.get_rng_state()
        model.eval()
        choose_unused_parameter_search(trainer)
        assert torch.equal(state, torch.random.get_rng_state()), "random state kept"
        assert all(p.grad is None for p in model.parameters()), "gradients cleared"
        assert not model.training, "mode kept"
        return handler.find_unused_parameters

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.1)  # draws random numbers
    assert decided(LlamaForCausalLM(config)) is False
    assert decided(LlamaForCausalLM(config), ddp_find_unused_parameters=True) is True  # the recipe's word
    assert decided(LlamaForCausalLM(config), world_size=1) is True  # one process: no DDP, nothing to decide
    unused = LlamaForCausalLM(config)
    unused.model.spare = torch.nn.Linear(4, 4)  # never called in forward
    assert decided(unused) is True
    config.num_local_experts = 4
    assert decided(LlamaForCausalLM(config)) is True
    del config.num_local_experts
    config.ffn_config = {"moe_num_experts": 4}  # nested, as DBRX's
    assert decided(LlamaForCausalLM(config)) is True
    del config.ffn_config
    config.layerdrop = 0.1  # a layer dropped in some steps
    assert decided(LlamaForCausalLM(config)) is True
    config.layerdrop = 0.0  # not dropped: the probe decides
    assert decided(LlamaForCausalLM(config)) is False
    # a model without a loss: the probe cannot tell, the search stays on (and the run goes on)
    assert decided(LlamaForCausalLM(config), loss=lambda model, inputs: model(input_ids=inputs["input_ids"]).loss) \
        is True



def test_build_model_from_a_recipe_has_the_recipes_vocabulary(causal_run):
    """Without a tokenizer, the model is sized to the recipe's: the trained tokenizer's vocab_size, or the tokenizer
    the recipe names (it used to be the config class's default, 32,000 tokens for Llama)."""
    from transformers import AutoTokenizer

    assert lmrecipes.build_model(LLAMA_PRETRAIN).config.vocab_size == 4096  # the recipe's vocab_size
    assert lmrecipes.build_model(LLAMA_PRETRAIN, **TINY_LLAMA).config.vocab_size == 512
    named = lmrecipes.build_model(LLAMA_PRETRAIN, **TINY_LLAMA, tokenizer_name_or_path=str(causal_run[0]))
    tokenizer = AutoTokenizer.from_pretrained(causal_run[0])
    assert named.config.vocab_size == len(tokenizer) and named.config.eos_token_id == tokenizer.eos_token_id


def test_a_stream_is_split_into_shares_that_cover_it_once():
    """stream_in_shares: 3 source shards for 4 shares (2 processes x 2 workers): the 4 shares a launcher gives out
    hold every row once, each drawing on every source in proportion to its size (repeating a share keeps each
    file's weight), also from files of one document each; read by a process's 2 data-loader workers, its shares
    arrive whole. For writing token shards, a source of enough files is left as it is."""
    import torch
    from datasets import Dataset, concatenate_datasets

    from lmrecipes.data.sources import stream_in_shares

    big = Dataset.from_dict({"text": [f"big {i}" for i in range(40)]})
    small = Dataset.from_dict({"text": [f"small {i}" for i in range(8)]})
    stream = concatenate_datasets([big, small]).to_iterable_dataset(num_shards=3)  # 16 rows a shard: 16, 16, 8 + 8
    split = stream_in_shares(stream, 4)
    assert split.n_shards == 4
    shares = [[row["text"] for row in split.shard(num_shards=4, index=i)] for i in range(4)]
    assert sorted(sum(shares, [])) == sorted(list(big["text"]) + list(small["text"]))
    assert [sum(t.startswith("small") for t in share) for share in shares] == [2, 2, 2, 2]
    loader = torch.utils.data.DataLoader(split.shard(num_shards=2, index=1), batch_size=None, num_workers=2)
    assert sorted(row["text"] for row in loader) == sorted(shares[2] + shares[3])
    assert stream_in_shares(stream, 3, balanced=False) is stream
    one_each = Dataset.from_dict({"text": [f"file {i}" for i in range(10)]}).to_iterable_dataset(num_shards=10)
    assert [len(list(stream_in_shares(one_each, 4).shard(num_shards=4, index=i))) for i in range(4)] == [3, 3, 2, 2]
    lonely = stream_in_shares(Dataset.from_dict({"text": ["one document"]}).to_iterable_dataset(), 2)
    with pytest.raises(lmrecipes.RecipeError, match="share 2 of the 2 the training stream is split into"):
        list(lonely.shard(num_shards=2, index=1))
