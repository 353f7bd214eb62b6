"""The one-command pipeline at a tiny size: stages, summary, loss curves, exported model, and reuse on rerun."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import pipeline as hf_pipeline

from conftest import TINY_LLAMA, read_json
from lmrecipes import RecipeError, finetune, load_recipe
from lmrecipes.arguments import FINETUNE_ARGUMENTS, PipelineArguments
from lmrecipes.data.classification import load_classification_data
from lmrecipes.demonstrations import demonstrations_markdown
from lmrecipes.pipeline import run_pipeline
from lmrecipes.recipe import parse_recipe


def test_pipeline_runs_end_to_end_and_reuses_finished_stages(tmp_path, small_corpus, learnable_csv, capsys):
    recipe, reference = tmp_path / "pipeline.yaml", tmp_path / "reference.json"
    reference.write_text(json.dumps({"name": "a bigger model", "source": "measured elsewhere", "points": {
        "40": {"mean": 0.61, "ci95": [0.55, 0.67]}, "250": {"mean": 0.7, "ci95": [0.66, 0.74]},  # 250: not run
        "all": {"mean": 0.8, "ci95": [0.77, 0.83]}}}))
    recipe.write_text(yaml.safe_dump({
        "pretrain_recipe": "recipes/tiny-llama/pretrain.yaml",
        "finetune_recipe": "recipes/tiny-llama/finetune-sentiment.yaml",
        "output_dir": str(tmp_path / "run"),
        "pretrain_overrides": {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15,
                               "max_steps": 12, "eval_strategy": "steps", "eval_steps": 6},
        "finetune_overrides": {"train_file": [learnable_csv], "text_column": "review", "label_column": "verdict",
                               "max_steps": 12, "eval_strategy": "steps", "eval_steps": 6, "save_strategy": "no",
                               "load_best_model_at_end": False, "logging_steps": 2, "disable_tqdm": True,
                               "report_to": "none", "max_length": 32},
        "pretrain_on_task_text": True, "task_text_repeats": 2,
        "label_counts": [40, "all"], "seeds": 2, "curve_examples_per_run": 200,
        "scratch_arm_overrides": {"learning_rate": 0.004},
        "demonstration_prompts": ["the king", "It was"], "reference_curve": str(reference),
    }))
    args, _ = parse_recipe([PipelineArguments], [str(recipe)])
    summary = run_pipeline(args)
    run = tmp_path / "run"
    written = read_json(run / "summary.json")
    assert written == json.loads(json.dumps(summary))
    pre = written["pretraining"]
    assert pre["tokens"] == 12 * 8 * 64 and pre["tokens_per_second"] > 0 and pre["perplexity"] > 1
    assert 0 < pre["bits_per_byte"] < 10
    for key in ("finetuned_pretrained", "finetuned_scratch"):
        assert 0 <= written[key]["test_accuracy"] <= 1 and 0 <= written[key]["test_f1"] <= 1
    assert 0.3 < written["majority_class"]["test_accuracy"] < 0.7
    assert written["pretraining_gain_accuracy_points"] == round(
        100 * (written["finetuned_pretrained"]["test_accuracy"] - written["finetuned_scratch"]["test_accuracy"]), 2)
    assert "(b) same architecture from scratch" in (run / "summary.md").read_text()
    # the label curve: both arms on the same seeded 40-row samples (two seeds), then all train rows (one seed)
    curve = written["label_curve"]
    assert [(p["labels"], p["seeds"], p["full_split"]) for p in curve["points"]] == [(40, [42, 43], False),
                                                                                    (curve["train_rows"], [42], True)]
    assert curve["test_rows"] == read_json(run / "finetune" / "all_results.json")["test_samples"] and curve["majority_class_accuracy"] == written["majority_class"]["test_accuracy"]
    small = curve["points"][0]
    assert small["num_train_epochs"] == 6  # what ran: max_steps 12 at 2 batches per epoch caps the 5 asked
    for arm in ("pretrained", "scratch"):
        results = [read_json(folder + "/all_results.json") for folder in small["runs"][arm]]
        assert small[arm]["per_seed"] == [r["test_accuracy"] for r in results]
        assert small[arm]["mean"] == pytest.approx(sum(small[arm]["per_seed"]) / 2)
        assert small[arm]["ci95"][0] <= small[arm]["mean"] <= small[arm]["ci95"][1]
    difference = small["difference"]
    assert difference["mean"] == pytest.approx(small["pretrained"]["mean"] - small["scratch"]["mean"])
    assert difference["ci95"][0] <= difference["mean"] <= difference["ci95"][1]
    for seed, a, b in zip((42, 43), small["runs"]["pretrained"], small["runs"]["scratch"]):
        recipe_a, recipe_b = (yaml.safe_load(open(folder + "/recipe.yaml")) for folder in (a, b))
        assert recipe_a["max_train_samples"] == recipe_b["max_train_samples"] == 40
        assert recipe_a["num_train_epochs"] == 5  # ceil(200 / 40): fewer labels, more epochs
        assert recipe_a["seed"] == recipe_b["seed"] == seed and recipe_a["load_best_model_at_end"] is True
        assert recipe_a["learning_rate"] == 1e-3 and recipe_b["learning_rate"] == 0.004  # scratch_arm_overrides
    assert (run / "label_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 40 | 2 | 6 |" in (run / "summary.md").read_text()
    assert "Reference line (dashed in the plot): a bigger model, 40 labels 61.0 [55.0, 67.0], all labels 80.0 " \
        "[77.0, 83.0] (measured elsewhere)." in (run / "summary.md").read_text()  # no 250: the curve has none
    # what pretraining taught the model: the text-generation pipeline's greedy words, before and after
    shown = written["demonstrations"]
    assert shown["task"] == "text-generation" and [r["prompt"] for r in shown["rows"]] == ["the king", "It was"]
    generate = hf_pipeline("text-generation", model=str(run / "pretrain"))
    words = generate("the king", max_new_tokens=16, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert shown["rows"][0]["pretrained"] == " ".join(words.split()) != shown["rows"][0]["random_weights"]
    table = demonstrations_markdown(shown)
    assert "\n".join(table) in (run / "summary.md").read_text() and table[-2].startswith("| the king | ")
    # what the summary prints is what an independent fine-tuning of the same recipe gives, row for row
    repeated = finetune(small["runs"]["pretrained"][1] + "/recipe.yaml", output_dir=str(tmp_path / "again"))
    assert repeated["test_accuracy"] == small["pretrained"]["per_seed"][1]
    assert read_json(tmp_path / "again" / "test_predictions.json") == read_json(
        small["runs"]["pretrained"][1] + "/test_predictions.json")
    # the summary reports the stages' own results, and each stage started from what it says
    stage = {name: read_json(run / name / "all_results.json") for name in ("pretrain", "finetune", "finetune-scratch")}
    assert pre["tokens"] == stage["pretrain"]["train_tokens"] and pre["eval_loss"] == stage["pretrain"]["eval_loss"]
    assert written["finetuned_pretrained"]["test_accuracy"] == stage["finetune"]["test_accuracy"]
    assert written["finetuned_scratch"]["test_accuracy"] == stage["finetune-scratch"]["test_accuracy"]
    assert read_json(run / "finetune" / "labels.json")["base_model"] == str(run / "pretrain")
    assert read_json(run / "finetune" / "labels.json")["init_from"] == "pretrained"
    assert read_json(run / "finetune-scratch" / "labels.json")["init_from"] == "scratch"
    exported, finetuned = load_file(run / "model" / "model.safetensors"), load_file(run / "finetune" /
                                                                                     "model.safetensors")
    assert exported.keys() == finetuned.keys() and all(torch.equal(exported[k], finetuned[k]) for k in exported)
    assert (run / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (run / "model" / name).is_file(), name
    classify = hf_pipeline("text-classification", model=str(run / "model"))
    assert classify("the king spoke and it was good")[0]["label"] in ("neg", "pos")
    # domain-adaptive pretraining saw the fine-tuning train texts (twice), never a validation or test text
    _, _, task_data, *_ = load_recipe(args.finetune_recipe, FINETUNE_ARGUMENTS, **args.finetune_overrides)
    splits, _ = load_classification_data(task_data)
    task_texts = [json.loads(line)["text"] for line in (run / "task_text.jsonl").read_text().splitlines()]
    assert len(task_texts) == 2 * len(splits["train"]) and curve["train_rows"] == len(splits["train"])
    for folder in [run / "finetune", *map(Path, small["runs"]["scratch"])]:  # per-row, in the test split's order
        rows = read_json(folder / "test_predictions.json")
        assert rows["references"] == [rows["labels"].index(v) for v in splits["test"]["verdict"]]
    assert not set(task_texts) & (set(splits["test"]["review"]) | set(splits["validation"]["review"])) - set(
        splits["train"]["review"])
    assert str(run / "task_text.jsonl") in yaml.safe_load((run / "pretrain" / "recipe.yaml").read_text())["train_file"]
    first = capsys.readouterr().out
    assert "== [1/8] pretrain" in first
    assert "== [7/8] fine-tune the same architecture from scratch, all labels, seed 42" in first

    run_pipeline(args)  # the same command again: every training stage is reused
    again = capsys.readouterr().out
    assert again.count("holds a finished run of this recipe: nothing to do") == 7
    assert read_json(run / "summary.json") == written

    # a changed recipe never reuses a stage: refused, naming what changed, and pipeline.yaml still the old one
    before = (run / "pipeline.yaml").read_text()
    changed, _ = parse_recipe([PipelineArguments], [str(recipe), "--pretrain_overrides", '{"max_steps": 13}'])
    with pytest.raises(RecipeError, match=r"pretrain holds a finished run of another recipe \(differs in max_steps\)"):
        run_pipeline(changed)
    assert (run / "pipeline.yaml").read_text() == before
    changed, _ = parse_recipe([PipelineArguments], [str(recipe), "--task_text_repeats", "3"])
    with pytest.raises(RecipeError, match=r"differs in the contents of data"):  # same keys, other corpus
        run_pipeline(changed)
    capsys.readouterr()
    changed, _ = parse_recipe([PipelineArguments], [str(recipe), "--pretrained_arm_overrides",
                                                    '{"learning_rate": 0.002}', "--overwrite_output_dir", "true"])
    redone = run_pipeline(changed)  # only the changed stages (arm (a)) run again: pretraining and (b) are reused
    log = capsys.readouterr().out
    assert log.count("holds a finished run of this recipe: nothing to do") == 4 and log.count("running the stage "
                                                                                                "again") == 3
    assert redone["pretraining"] == written["pretraining"]
    assert yaml.safe_load((run / "pipeline.yaml").read_text())["pretrained_arm_overrides"]["learning_rate"] == 0.002
    assert redone["arm_overrides"]["pretrained"] == {"learning_rate": 0.002}
