"""ELECTRA pretraining, as a user runs it: a tiny run learns to spot replaced tokens on held-out blocks and reports
it; what it saves loads as a plain discriminator (fine-tuned full and with LoRA) and a fill-mask generator; two CPU
processes train it with DDP; bad settings fail in one line. (Kill and resume: test_faults.py.)"""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining, AutoTokenizer, ElectraConfig, EvalPrediction, pipeline

import lmrecipes
from conftest import ELECTRA_PRETRAIN, REPO, TINY_ELECTRA, read_json, run_ddp_probe
from lmrecipes import load_recipe
from lmrecipes.arguments import FINETUNE_ARGUMENTS, PRETRAIN_ARGUMENTS
from lmrecipes.demonstrations import demonstrate
from lmrecipes.modeling import build_classifier
from lmrecipes.objectives.electra import ELECTRA, build_electra, electra_metrics
from lmrecipes.tasks import SingleLabelClassification

METRICS = ("eval_loss", "eval_generator_loss", "eval_discriminator_loss", "eval_discriminator_accuracy",
           "eval_all_original_accuracy", "eval_replaced_precision", "eval_replaced_recall", "generator_perplexity")


def evaluations(out):
    return [entry for entry in read_json(out / "trainer_state.json")["log_history"] if "eval_loss" in entry]


def test_electra_learns_to_spot_replaced_tokens_on_held_out_blocks(electra_run):
    out, results = electra_run
    written = read_json(out / "all_results.json")
    for key in (*METRICS, "train_tokens_per_second", "mfu", "train_loss"):
        assert key in written, key
    first, *_, last = evaluations(out)  # held-out blocks at steps 100, 200, 300 (and the final evaluation)
    assert last["eval_generator_loss"] < first["eval_generator_loss"], "the generator's masked-token loss falls"
    assert last["eval_discriminator_loss"] < first["eval_discriminator_loss"], "the discriminator's loss falls"
    assert written["eval_loss"] == pytest.approx(written["eval_generator_loss"] + 50 * written[
        "eval_discriminator_loss"], rel=0.05)  # the mean of per-batch losses, the others per token
    # it beats answering "original" everywhere, and what it flags is mostly replaced
    assert written["eval_discriminator_accuracy"] > written["eval_all_original_accuracy"] + 0.005
    assert written["eval_replaced_recall"] > 0.05 and written["eval_replaced_precision"] > 0.8
    replaced = 1 - written["eval_all_original_accuracy"]
    assert 0 < replaced < 0.16, "at most 15% masked (special tokens never), minus samples that hit the original"
    assert written["eval_scored_tokens"] == 32 * 64, "every token of the 32 held-out blocks scored"
    recipe = (out / "recipe.yaml").read_text()
    assert "objective: electra" in recipe and "generator_size: 0.25" in recipe


def test_saved_run_is_a_plain_discriminator_with_its_fill_mask_generator(electra_run):
    out, _ = electra_run
    config = read_json(out / "config.json")
    assert config["architectures"] == ["ElectraForPreTraining"] and config["hidden_size"] == 48
    assert not {"generator_config", "discriminator_weight", "masked_fraction"} & set(config)
    assert not [key for key in load_file(out / "model.safetensors") if key.startswith("generator.")]
    discriminator = AutoModelForPreTraining.from_pretrained(out)
    assert type(discriminator).__name__ == "ElectraForPreTraining"
    generator_config = read_json(out / "generator" / "config.json")
    assert generator_config["hidden_size"] == 12 and generator_config["num_attention_heads"] == 1
    assert generator_config["num_hidden_layers"] == 2 and generator_config["embedding_size"] == 48
    fill = pipeline("fill-mask", model=str(out / "generator"))
    answers = fill(f"alpha bravo {fill.tokenizer.mask_token} delta echo")
    assert len(answers) == 5 and all(0 <= a["score"] <= 1 for a in answers)
    # the pipeline summary's demonstration reads the generator: the fill-mask pipeline's own top 5
    shown = demonstrate(out, ELECTRA, ["alpha bravo"])
    assert shown["task"] == "fill-mask" and shown["folder"] == str(out / "generator")
    top = [a["token_str"].strip() for a in fill(f"alpha bravo {fill.tokenizer.mask_token}.")]
    assert shown["rows"][0]["pretrained"] == ", ".join(top) != shown["rows"][0]["random_weights"]
    # the embeddings were shared in training: the generator's copy equals the discriminator's
    assert torch.equal(fill.model.electra.embeddings.word_embeddings.weight,
                       discriminator.electra.embeddings.word_embeddings.weight)
    # a Trainer checkpoint holds both (resume), the shared embeddings once
    checkpoint = load_file(next(out.glob("checkpoint-*")) / "model.safetensors")
    assert "generator.generator_lm_head.bias" in checkpoint
    assert "generator.electra.embeddings.word_embeddings.weight" not in checkpoint


@pytest.mark.parametrize("recipe", ["finetune-sentiment.yaml", "finetune-sentiment-lora.yaml"])
def test_saved_discriminator_fine_tunes_full_and_with_lora(tmp_path, electra_run, learnable_csv, recipe):
    out, _ = electra_run
    results = lmrecipes.finetune(
        str(REPO / "recipes" / "tiny-electra" / recipe), model_name_or_path=str(out), train_file=[learnable_csv],
        text_column="review", label_column="verdict", max_length=32, num_train_epochs=2,
        per_device_train_batch_size=16, eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
        disable_tqdm=True, report_to="none", warmup_steps=0, output_dir=str(tmp_path / "ft"))
    assert 0 <= results["test_accuracy"] <= 1 and results["test_majority_accuracy"] > 0.3
    if "lora" in recipe:
        assert (tmp_path / "ft" / "adapter_config.json").is_file()
        assert read_json(tmp_path / "ft" / "adapter_config.json")["peft_type"] == "LORA"
    labels = read_json(tmp_path / "ft" / "test_predictions.json")
    assert len(labels["predictions"]) > 0


def test_the_classifier_takes_the_discriminator_body_and_a_new_head(electra_run):
    out, _ = electra_run
    saved = load_file(out / "model.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model_args, _, _, finetune_args, _, _ = load_recipe(str(REPO / "recipes/tiny-electra/finetune-sentiment.yaml"),
                                                        FINETUNE_ARGUMENTS, model_name_or_path=str(out))
    model, new_modules = build_classifier(model_args, finetune_args, tokenizer,
                                          SingleLabelClassification(["neg", "pos"], "label"))
    assert type(model).__name__ == "ElectraForSequenceClassification"
    assert new_modules == ["classifier"]  # LoRA trains it whole, as peft names it
    body = model.state_dict()
    shared = [name for name in saved if name in body]
    assert len(shared) >= 30 and all(torch.equal(saved[name], body[name]) for name in shared)


def test_electra_statistics_add_up_to_the_reported_metrics():
    """Two hand-made blocks: 10 and 6 scored tokens, 2 and 1 replaced; flagged 2 (1 right) and 1 (right)."""
    rows = np.array([[4.0, 2, 3.0, 10, 1, 1, 1], [2.0, 2, 1.0, 6, 1, 0, 0]])
    metrics = electra_metrics(EvalPrediction(predictions=rows, label_ids=None))
    assert metrics == {"generator_loss": 1.5, "discriminator_loss": 0.25, "discriminator_accuracy": 14 / 16,
                       "all_original_accuracy": 13 / 16, "replaced_fraction": 3 / 16,
                       "replaced_precision": 2 / 3, "replaced_recall": 2 / 3, "scored_tokens": 16}


def test_one_electra_step_replaces_masked_tokens_only():
    config = ElectraConfig(vocab_size=50, embedding_size=16, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32)
    model = build_electra(config, load_recipe(ELECTRA_PRETRAIN, PRETRAIN_ARGUMENTS)[0], 0.15)
    torch.manual_seed(0)
    input_ids = torch.randint(5, 50, (3, 12))
    labels = torch.full_like(input_ids, -100)
    labels[:, [2, 7]] = input_ids[:, [2, 7]]
    masked = input_ids.clone()
    masked[:, [2, 7]] = 4
    seen = {}
    model.electra.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs) or None,
                                            with_kwargs=True)
    model.electra.register_forward_pre_hook(lambda module, args: seen.update(ids=args[0]) or None)
    out = model(input_ids=masked, labels=labels)
    corrupted = seen.get("input_ids", seen.get("ids"))
    keep = labels == -100
    assert torch.equal(corrupted[keep], input_ids[keep]), "unmasked tokens reach the discriminator unchanged"
    assert (corrupted[~keep] != 4).all(), "every masked position holds a sampled token"
    statistics = out.statistics
    assert statistics.shape == (3, 7) and statistics[:, 1].tolist() == [2, 2, 2] and statistics[:, 3].tolist() == [12] * 3
    replaced = (corrupted != input_ids).sum(-1).float()
    assert torch.equal(statistics[:, 4] + statistics[:, 6], replaced)  # true positives + false negatives
    out.loss.backward()
    assert model.generator.electra.encoder.layer[0].attention.self.query.weight.grad is not None


def test_two_cpu_processes_train_electra_with_ddp(tmp_path, small_corpus):
    out = tmp_path / "ddp"
    ranks = run_ddp_probe(ELECTRA_PRETRAIN, small_corpus, out,
                          {**TINY_ELECTRA, "validation_fraction": 0.15, "max_steps": 4})
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["steps"] == 4 and len(r["batches"]) == 4 for r in ranks)
    assert not set(ranks[0]["batches"]) & set(ranks[1]["batches"]), "each rank saw different data"
    assert ranks[0]["params"] == ranks[1]["params"], "discriminator and generator identical on both ranks"
    results = read_json(out / "all_results.json")
    assert results["train_tokens"] == 4 * 2 * 8 * 64
    # the evaluation's per-block statistics gathered from both ranks: every held-out token, none counted twice
    assert results["eval_scored_tokens"] == 32 * 64
    assert (out / "generator" / "model.safetensors").is_file()


def test_published_electra_folder_holds_both_models_and_a_card_whose_code_runs(tmp_path, electra_run):
    from huggingface_hub import ModelCard

    out, results = electra_run
    folder = tmp_path / "hub"
    lmrecipes.publish(out, "someone/tiny-electra", dry_run=True, publish_dir=str(folder))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generator/model.safetensors",
                 "generator/config.json", "generator/tokenizer.json"):
        assert (folder / name).is_file(), name
    card = ModelCard.load(folder / "README.md")
    assert "electra" in card.data.tags and card.data.pipeline_tag == "feature-extraction"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "discriminator_accuracy": round(results["eval_discriminator_accuracy"], 4),
        "all_original_accuracy": round(results["eval_all_original_accuracy"], 4),
        "replaced_recall": round(results["eval_replaced_recall"], 4),
        "replaced_precision": round(results["eval_replaced_precision"], 4),
        "generator_perplexity": round(results["generator_perplexity"], 4), "loss": round(results["eval_loss"], 4)}
    # the card's how-to-use code runs against the folder as it would against the Hub repository
    code = card.text.split("```python\n", 1)[1].split("```", 1)[0].replace("someone/tiny-electra", str(folder))
    exec(compile(code, "model-card", "exec"), {})
