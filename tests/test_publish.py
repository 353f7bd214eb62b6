"""Publishing, as a user does it: dry-run folders of a tiny pretrained and a tiny fine-tuned run (card metadata,
model-index equal to the results, reload in a pipeline, no token anywhere), a LoRA adapter with its base, the
Hub unreachable (fast, one line), and `push_to_hub` in a recipe."""

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers import pipeline

import lmrecipes
from conftest import REPO, read_json
from lmrecipes.ownership import PUBLISH_MANIFEST

SECRET = "hf_lmrecipesTestSecretValue0123456789"
FAST_FT = {"train_file": None, "text_column": "review", "label_column": "verdict", "num_train_epochs": 1,
           "per_device_train_batch_size": 16, "eval_strategy": "no", "save_strategy": "no",
           "load_best_model_at_end": False, "disable_tqdm": True, "report_to": "none", "max_length": 32}


def metrics_of(card) -> dict:
    return {r.metric_type: r.metric_value for r in card.data.eval_results}


def assert_no_secret(folder):
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def assert_no_local_paths(folder):
    """Nothing uploaded names this machine's folders (temp folders, home, the checkout)."""
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".md", ".txt", ".jinja"):
            text = path.read_text()
            for local in ("/tmp/", str(Path.home()) + "/", str(REPO)):
                assert local not in text, (path.name, local)


def assert_hub_ready(folder, files):
    names = {name for name, _ in files}
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json", "recipe.yaml",
            "all_results.json"} <= names, names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth")) or n.startswith("checkpoint-")]


def test_dry_run_of_a_pretrained_model(tmp_path, causal_run, small_corpus):
    run_dir, results = causal_run
    env = {**os.environ, "HF_TOKEN": SECRET}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "publish.py"), str(run_dir), "--repo_id",
                          "someone/tiny-llama", "--dry-run", "--publish_dir", str(tmp_path / "hub")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "hub"
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(p.name for p in folder.iterdir() if p.name != PUBLISH_MANIFEST)
    assert (folder / PUBLISH_MANIFEST).is_file()  # the proof of a publish folder; never uploaded
    assert_hub_ready(folder, [(n, 0) for n in listed])

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.license and card.data.language == ["en"] and "lmrecipes" in card.data.tags
    assert card.data.base_model is None  # trained from scratch
    assert metrics_of(card) == {"perplexity": round(results["perplexity"], 4),
                                "bits_per_byte": round(results["bits_per_byte"], 4),
                                "loss": round(results["eval_loss"], 4)}
    for section in ("## How to use", "## Training", "## Training data", "## Limitations",
                    "- training: `<local>/*.jsonl`: 40 rows, ", f"{results['train_tokens']:,}"):
        assert section in card.text, section
    assert_no_local_paths(folder)
    text = pipeline("text-generation", model=str(folder))("The king", max_new_tokens=5, do_sample=False)
    assert text[0]["generated_text"].startswith("The king")
    assert_no_secret(folder)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, causal_run, learnable_csv):
    """A tiny LoRA classifier on the tiny Llama; the recipe even carries a hub_token (never to be written)."""
    out = tmp_path_factory.mktemp("lora") / "run"
    results = lmrecipes.finetune(str(REPO / "recipes/tiny-llama/finetune-sentiment-lora.yaml"),
                                 **{**FAST_FT, "train_file": [learnable_csv]}, model_name_or_path=str(causal_run[0]),
                                 output_dir=str(out), hub_token=SECRET, learning_rate=3e-3)
    return out, results


def test_dry_run_of_a_finetuned_lora_model_merged_and_as_adapter(tmp_path, lora_run, learnable_csv):
    run_dir, results = lora_run
    assert_no_secret(run_dir)  # training_args.bin, recipe.yaml, logs: the token was dropped before training

    merged = lmrecipes.publish(run_dir, "someone/tiny-sentiment", dry_run=True, publish_dir=str(tmp_path / "m"),
                               base_model="someone/tiny-llama", lora_as="merged")
    folder = tmp_path / "m"
    assert merged["kind"] == "classifier" and merged["url"] is None
    assert_hub_ready(folder, merged["files"])
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.base_model == "someone/tiny-llama"
    assert metrics_of(card) == {"accuracy": round(results["test_accuracy"], 4), "f1": round(results["test_f1"], 4)}
    predictions = pipeline("text-classification", model=str(folder))(["the king spoke and it was good"])
    assert predictions[0]["label"] in {"neg", "pos"}
    assert_no_secret(folder)

    with pytest.raises(lmrecipes.RecipeError, match=r"^key 'publish_dir': .*: File name too long$"):
        lmrecipes.publish(run_dir, "someone/x", dry_run=True, publish_dir=str(tmp_path / ("a" * 300)),
                          base_model="someone/tiny-llama")
    adapter_dir = tmp_path / ("a" * 240)  # a long name: its temporary folder's name stays within 255 bytes
    adapter = lmrecipes.publish(run_dir, "someone/tiny-sentiment-lora", dry_run=True,
                                publish_dir=str(adapter_dir), base_model="someone/tiny-llama")
    assert adapter["kind"] == "adapter"  # auto: a Hub base model is known, so the adapter is published
    names = {name for name, _ in adapter["files"]}
    assert {"adapter_model.safetensors", "adapter_config.json", "labels.json", "README.md"} <= names
    assert read_json(adapter_dir / "adapter_config.json")["base_model_name_or_path"] == "someone/tiny-llama"
    card = ModelCard.load(adapter_dir / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "someone/tiny-llama"
    with open(learnable_csv, newline="") as handle:  # the usage example: the first text of the run's own data
        first = next(csv.DictReader(handle))["review"]
    assert f"classify({first!r})" in card.text

    from lmrecipes.run_folder import recorded_local_model

    assert recorded_local_model(run_dir)  # its base was a local folder: never named as a Hub id, whatever its name
    with pytest.raises(lmrecipes.RecipeError, match="base_model"):  # a local base cannot be named on the Hub
        lmrecipes.publish(run_dir, "someone/x", dry_run=True, publish_dir=str(tmp_path / "b"), lora_as="adapter")
    assert not (tmp_path / "b").exists()

    mine = tmp_path / "my-folder"  # an existing folder that publish did not write is never emptied
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(lmrecipes.RecipeError, match="key 'publish_dir'"):
        lmrecipes.publish(run_dir, "someone/x", dry_run=True, publish_dir=str(mine), base_model="someone/tiny-llama")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    again = lmrecipes.publish(run_dir, "someone/tiny-sentiment-lora", dry_run=True, publish_dir=str(adapter_dir),
                              base_model="someone/tiny-llama")  # its own earlier folder is rebuilt
    assert again["files"] == adapter["files"]


def test_publish_deletes_only_a_folder_it_wrote(tmp_path, monkeypatch, lora_run):
    run_dir, _ = lora_run
    options = {"dry_run": True, "base_model": "someone/tiny-llama"}

    def snapshot(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    project = tmp_path / "my-project"  # a README that names lmrecipes proves nothing
    (project / "src").mkdir(parents=True)
    (project / "README.md").write_text((REPO / "README.md").read_text())
    (project / "notes.txt").write_text("mine")
    (project / "src" / "work.py").write_text("print('mine')\n")
    before = snapshot(project)
    with pytest.raises(lmrecipes.RecipeError, match="key 'publish_dir': .* was not written by lmrecipes publish"):
        lmrecipes.publish(run_dir, "someone/x", publish_dir=str(project), **options)
    monkeypatch.chdir(project)
    with pytest.raises(lmrecipes.RecipeError, match="key 'publish_dir'"):
        lmrecipes.publish(run_dir, "someone/x", publish_dir=".", **options)
    assert snapshot(project) == before

    folder = tmp_path / "published"
    lmrecipes.publish(run_dir, "someone/x", publish_dir=str(folder), **options)
    (folder / "my-notes.txt").write_text("added by hand")  # an earlier publish folder the user wrote into
    before = snapshot(folder)
    with pytest.raises(lmrecipes.RecipeError, match=r"did not write, or that changed since \(my-notes.txt\)"):
        lmrecipes.publish(run_dir, "someone/x", publish_dir=str(folder), **options)
    assert snapshot(folder) == before
    (folder / "my-notes.txt").unlink()
    card = (folder / "README.md").read_text()
    (folder / "README.md").write_text(card + "\nMy own notes on this model.\n")  # an edited card is the user's
    with pytest.raises(lmrecipes.RecipeError, match=r"did not write, or that changed since \(README.md\)"):
        lmrecipes.publish(run_dir, "someone/x", publish_dir=str(folder), **options)
    (folder / "README.md").write_text(card)

    link = tmp_path / "link"  # a symbolic link to a publish folder: refused, the folder behind it untouched
    link.symlink_to(folder)
    before = snapshot(folder)
    with pytest.raises(lmrecipes.RecipeError, match="key 'publish_dir'"):
        lmrecipes.publish(run_dir, "someone/x", publish_dir=str(link), **options)
    monkeypatch.chdir(folder)  # `--publish_dir .` inside an earlier publish folder
    with pytest.raises(lmrecipes.RecipeError, match="is the working folder or holds it"):
        lmrecipes.publish(run_dir, "someone/x", publish_dir=".", **options)
    monkeypatch.chdir(tmp_path)
    assert snapshot(folder) == before

    from lmrecipes import hub  # the earlier folder stays until the new one is complete
    monkeypatch.setattr(hub, "write_model_card", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        lmrecipes.publish(run_dir, "someone/x", publish_dir=str(folder), **options)
    assert snapshot(folder) == before and not list(tmp_path.glob(".tmp-*"))
    monkeypatch.undo()
    lmrecipes.publish(run_dir, "someone/x", publish_dir=str(folder), **options)  # its own folder: rebuilt


def test_adapter_card_names_the_base_architecture_the_labels_and_no_local_path(tmp_path, lora_run, causal_run):
    run_dir, _ = lora_run
    with pytest.raises(lmrecipes.RecipeError, match="key 'base_model': .* is a local path"):
        lmrecipes.publish(run_dir, "someone/x", dry_run=True, publish_dir=str(tmp_path / "b"),
                          base_model=str(causal_run[0]))
    assert not (tmp_path / "b").exists()
    folder = tmp_path / "a"
    lmrecipes.publish(run_dir, "someone/tiny-sentiment-lora", dry_run=True, publish_dir=str(folder),
                      base_model="someone/tiny-llama")
    card = ModelCard.load(folder / "README.md")
    assert "- Architecture: `llama` (LlamaForSequenceClassification + LoRA adapter), hidden size 48, 2 layers, " \
           "vocabulary 512" in card.text
    assert "- Started from: someone/tiny-llama" in card.text
    assert "['neg', 'pos']" in card.text and "LABEL_0" not in card.text
    assert_no_local_paths(folder)
    assert read_json(folder / "labels.json")["base_model"].startswith("<local>/")

    # the card's snippet runs as written, with the Hub replaced by local folders: it prints the run's labels
    local = tmp_path / "local-copy"
    shutil.copytree(folder, local)
    adapter = read_json(local / "adapter_config.json")
    (local / "adapter_config.json").write_text(json.dumps({**adapter, "base_model_name_or_path": str(causal_run[0])}))
    snippet = card.text.split("```python\n", 1)[1].split("```", 1)[0].replace("someone/tiny-sentiment-lora", str(local))
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"'label': '(neg|pos)'", result.stdout), result.stdout


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub_fails_fast_in_one_line(tmp_path, causal_run):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_TOKEN=SECRET, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "publish.py"), str(causal_run[0]), "--repo_id",
                          "someone/tiny-llama", "--publish_dir", str(tmp_path / "hub")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert time.monotonic() - start < 60
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: cannot reach the Hugging Face Hub at http://127.0.0.1:"), out.stderr
    assert "Traceback" not in out.stderr and SECRET not in out.stdout + out.stderr

    env.pop("HF_TOKEN")
    env["HF_HOME"] = str(tmp_path / "no-login")  # no saved login either
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "publish.py"), str(causal_run[0]), "--repo_id",
                          "someone/tiny-llama"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "error: no Hugging Face token: set HF_TOKEN" in out.stderr


def test_push_to_hub_in_a_recipe_publishes_the_finished_run(tmp_path, monkeypatch, causal_run, learnable_csv):
    """The upload itself is recorded (no Hub here): repository, privacy, the folder with its card, and the token."""
    from huggingface_hub import HfApi

    from lmrecipes import hub

    calls = {}
    monkeypatch.setattr(hub, "check_hub_reachable", lambda: "https://hub.example")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, private=None, exist_ok=False: calls.update(
        repo=repo_id, private=private, token=self.token) or f"https://hub.example/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, repo_id, folder_path, commit_message, ignore_patterns:
                        calls.update(files=sorted(p.name for p in folder_path.iterdir()), ignored=ignore_patterns))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    out = tmp_path / "ft"
    lmrecipes.finetune(str(REPO / "recipes/tiny-llama/finetune-sentiment.yaml"),
                       **{**FAST_FT, "train_file": [learnable_csv]}, model_name_or_path=str(causal_run[0]),
                       output_dir=str(out), max_steps=3, push_to_hub=True, hub_model_id="someone/pushed",
                       hub_private_repo=True)
    assert calls["repo"] == "someone/pushed" and calls["private"] is True and calls["token"] == SECRET
    assert {"README.md", "model.safetensors", "labels.json", "recipe.yaml"} <= set(calls["files"])
    assert calls["ignored"] == [PUBLISH_MANIFEST]  # the manifest stays local
    assert_no_secret(out)


def test_push_to_hub_checks_the_hub_before_training(tmp_path, monkeypatch, causal_run, learnable_csv):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    out = tmp_path / "ft"
    with pytest.raises(lmrecipes.RecipeError, match="cannot reach the Hugging Face Hub"):
        lmrecipes.finetune(str(REPO / "recipes/tiny-llama/finetune-sentiment.yaml"),
                           **{**FAST_FT, "train_file": [learnable_csv]}, model_name_or_path=str(causal_run[0]),
                           output_dir=str(out), push_to_hub=True, hub_model_id="someone/pushed")
    assert not out.exists()  # nothing trained, nothing written


def test_publish_refuses_symbolic_links_out_of_the_run_folder(tmp_path, causal_run):
    """A link in the run folder (`vocab.txt` -> a private file, linked weights, a link inside a model subfolder)
    would put what it points at into the upload: refused in one line naming it, nothing written."""
    import shutil

    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- not for the Hub")
    for name in ("vocab.txt", "model.safetensors", "generator/model.safetensors"):
        run = tmp_path / name.replace("/", "-") / "run"
        shutil.copytree(causal_run[0], run, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "hub"))
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(secret)
        with pytest.raises(lmrecipes.RecipeError, match=f"{run / name} is a symbolic link: publish copies only"):
            lmrecipes.publish(str(run), "someone/x", dry_run=True)
        assert not (run / "hub").exists()


def test_private_folder_names_in_relative_paths_are_not_published(tmp_path, causal_run):
    """A recipe that named its data `../home/alice/secret-project/corpus.jsonl` (or `secret-project/b.jsonl`, or
    a home path): the card and the published recipe.yaml say `<local>/corpus.jsonl`; a path inside the repository
    keeps its name."""
    run_dir = tmp_path / "run"
    shutil.copytree(causal_run[0], run_dir, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "hub"))
    recipe = (run_dir / "recipe.yaml").read_text()
    recipe = re.sub(r"(?m)^train_file:.*(\n- .*)*", "train_file:\n- ../home/alice/secret-project/corpus.jsonl\n"
                    "- secret-project/b.jsonl\n- data/*.jsonl\n- ~/secret-project/c.jsonl", recipe)
    (run_dir / "recipe.yaml").write_text(recipe)
    marker = run_dir / ".lmrecipes-run.json"  # as if the run had been started with this recipe
    marker.write_text(json.dumps({**read_json(marker), "recipe_sha256": hashlib.sha256(recipe.encode()).hexdigest()}))
    lmrecipes.publish(run_dir, "someone/tiny", dry_run=True, publish_dir=str(tmp_path / "hub"))
    for path in (tmp_path / "hub").rglob("*"):
        assert path.is_dir() or b"secret-project" not in path.read_bytes(), path.name
    published = (tmp_path / "hub" / "recipe.yaml").read_text()
    assert "- <local>/corpus.jsonl\n- <local>/b.jsonl\n- data/*.jsonl\n- <local>/c.jsonl" in published, published
    assert "`<local>/corpus.jsonl`" in (tmp_path / "hub" / "README.md").read_text()


def test_publish_uploads_only_what_the_run_wrote(tmp_path, causal_run):
    """Weights, tokenizer files or notes put into a run folder after the run, and a recipe.yaml edited since, were
    uploaded as the run's: refused, named, nothing built."""
    run_dir = tmp_path / "run"
    shutil.copytree(causal_run[0], run_dir, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "hub"))
    for name, text in [("my-backup.safetensors", "weights"), ("vocab.txt", "SECRET notes")]:
        (run_dir / name).write_text(text)
        with pytest.raises(lmrecipes.RecipeError, match=rf"holds {name}, which its run did not write: publish "
                                                       "uploads only the run's own files"):
            lmrecipes.publish(run_dir, "someone/tiny", dry_run=True, publish_dir=str(tmp_path / "hub"))
        (run_dir / name).unlink()
    (run_dir / "tokenizer.json").rename(tmp_path / "tokenizer.json")  # a model nobody could use (was uploaded)
    with pytest.raises(lmrecipes.RecipeError, match=rf"{run_dir}: its tokenizer cannot be loaded"):
        lmrecipes.publish(run_dir, "someone/tiny", dry_run=True, publish_dir=str(tmp_path / "hub"))
    (tmp_path / "tokenizer.json").rename(run_dir / "tokenizer.json")
    recipe = run_dir / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("max_steps:", "max_steps: 400\nold_max_steps:"))
    with pytest.raises(lmrecipes.RecipeError, match=r"recipe.yaml was changed after the run wrote it"):
        lmrecipes.publish(run_dir, "someone/tiny", dry_run=True, publish_dir=str(tmp_path / "hub"))
    assert not (tmp_path / "hub").exists()


def test_a_run_that_has_not_finished_is_not_published(tmp_path, causal_run):
    """A run stopped after its final save, before its final evaluation, has a model but no evaluation: publishing
    it is refused (it built a card without results, before), naming how to finish it."""
    run_dir = tmp_path / "stopped"
    shutil.copytree(causal_run[0], run_dir, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "hub"))
    marker = run_dir / ".lmrecipes-run.json"
    marker.write_text(json.dumps({**read_json(marker), "finished": False}))
    with pytest.raises(lmrecipes.RecipeError, match=r"holds a run that has not finished .*: run the same command "
                                                   r"again to finish it, then publish"):
        lmrecipes.publish(run_dir, "someone/tiny", dry_run=True, publish_dir=str(tmp_path / "hub"))
    assert not (tmp_path / "hub").exists()
    with pytest.raises(lmrecipes.RecipeError, match=r"key 'model_name_or_path': .* holds a run that has not finished "
                                                   r"\(no final model\): run its command again to finish it"):
        lmrecipes.finetune(str(REPO / "recipes" / "tiny-llama" / "finetune-sentiment.yaml"),
                           model_name_or_path=str(run_dir), output_dir=str(tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; handle = open(sys.argv[1], 'a'); "
                               "fcntl.flock(handle, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(run_dir / ".lmrecipes-lock")], stdout=subprocess.PIPE, text=True)
    try:  # a run still training: "run the same command again" was the wrong advice
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(lmrecipes.RecipeError, match=r"another process is training into it; publish once"):
            lmrecipes.publish(run_dir, "someone/tiny", dry_run=True, publish_dir=str(tmp_path / "hub"))
    finally:
        holder.kill()
        holder.wait()
    checkpoint = next(causal_run[0].glob("checkpoint-*"))  # inside a run: none of the run's checks would hold
    with pytest.raises(lmrecipes.RecipeError, match=r"is inside the run .*: publish the run itself"):
        lmrecipes.publish(checkpoint, "someone/tiny", dry_run=True, publish_dir=str(tmp_path / "hub"))
    with pytest.raises(lmrecipes.RecipeError, match=r"key 'lora_as': auto, adapter or merged, got 'bogus'"):
        lmrecipes.publish(causal_run[0], "someone/tiny", dry_run=True, lora_as="bogus")


def test_a_publish_dir_inside_another_run_is_refused(tmp_path, causal_run):
    """--publish_dir inside another run's folder replaced that run's own publish folder (or was deleted with it):
    refused, naming the run."""
    from lmrecipes.run_folder import record_run

    other = tmp_path / "other-run"
    other.mkdir()
    record_run(other)  # a run folder: its marker
    with pytest.raises(lmrecipes.RecipeError, match=rf"key 'publish_dir': .* is inside another run \({other}\)"):
        lmrecipes.publish(causal_run[0], "someone/tiny", dry_run=True, publish_dir=str(other / "hub"))
    assert sorted(p.name for p in other.iterdir()) == [".lmrecipes-run.json"]


# ---------------------------------------------------------------- a run on your own data: its card, its files' modes

SPAM = "win a free prize now claim your reward today limited offer click the link to collect cash bonus".split()
HAM = "meeting moved to thursday please find the agenda attached and send your notes before lunch".split()


def email(rng, kind: str) -> str:
    """A long e-mail body (about 90 words, past a 32-token window) of one kind's words, with line breaks."""
    words = SPAM if kind == "spam" else HAM
    return "\n".join(" ".join(rng.choice(words) for _ in range(15)) for _ in range(6))


@pytest.fixture(scope="module")
def email_run(tmp_path_factory, causal_run):
    """A user's e-mails (CSV `body,category`, spam vs ham, long texts cut into windows: long_text chunk), fine-tuned
    for 2 steps with a checkpoint at each, under umask 022: (run folder, results, the CSV)."""
    import random

    rng = random.Random(0)
    data = tmp_path_factory.mktemp("mail") / "emails.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["body", "category"])
        writer.writerow(['Hello team,\n"Quarterly" planning: ' + email(rng, "ham"), "ham"])  # quotes, a comma
        for number in range(59):
            kind = "spam" if number % 2 else "ham"
            writer.writerow([email(rng, kind), kind])
    out = tmp_path_factory.mktemp("mail-run") / "run"
    mask = os.umask(0o022)
    try:
        results = lmrecipes.finetune(str(REPO / "recipes/tiny-llama/finetune-sentiment.yaml"),
                                     **{**FAST_FT, "train_file": [str(data)], "text_column": "body",
                                        "label_column": "category", "save_strategy": "steps"},
                                     model_name_or_path=str(causal_run[0]), output_dir=str(out), long_text="chunk",
                                     stride=8, max_steps=2, save_steps=1)
    finally:
        os.umask(mask)
    return out, results, data


def test_the_card_of_a_run_on_your_own_data_speaks_of_that_data_and_its_windows(tmp_path, email_run):
    """A spam model's card: its usage example is the start of the run's own first e-mail, its data section the
    user's file with rows and bytes, its limitations not the embedded demo's; nothing of movie reviews. Trained on
    windows: the card says so, and its code averaging a text's windows runs and scores as lmrecipes predicts."""
    run_dir, results, data = email_run
    folder = tmp_path / "hub"
    lmrecipes.publish(run_dir, "someone/spam-filter", dry_run=True, publish_dir=str(folder))
    card = ModelCard.load(folder / "README.md").text
    for word in ("review", "movie", "film", "literature"):
        assert word not in card.lower(), word
    with open(data, newline="", encoding="utf-8") as handle:
        first = " ".join(next(csv.DictReader(handle))["body"].split())
    example = re.search(r"classify\('(.*?)'\)", card).group(1)
    assert first.startswith(example) and 150 < len(example) <= 200, example  # the first text, cut at a word
    assert f"- training: `<local>/emails.csv`: 60 rows, {data.stat().st_size:,} bytes" in card
    assert "- test: 10% of the training rows, held out by a hash of their text" in card
    assert "Trained on the data listed above only" in card
    assert "windows of 32 tokens overlapping by 8 (`long_text: chunk`)" in card
    assert ("MFU" in card) == (results.get("mfu") is not None and results["mfu"] < 1)
    assert_no_local_paths(folder)

    blocks = [block.split("```", 1)[0] for block in card.split("```python\n")[1:]]
    assert len(blocks) == 2 and "pipeline(" in blocks[0] and "classify_long" in blocks[1]
    code, space, printed = blocks[1].replace("someone/spam-filter", str(folder)), {}, io.StringIO()
    with contextlib.redirect_stdout(printed):  # runs as written: it prints the scores of the example
        exec(compile(code, "model-card", "exec"), space)
    assert re.fullmatch(r"\{'ham': [0-9.e-]+, 'spam': [0-9.e-]+\}\n", printed.getvalue()), printed.getvalue()
    text = email(__import__("random").Random(1), "spam")
    scores = space["classify_long"](text)
    assert set(scores) == {"ham", "spam"} and sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    predicted = lmrecipes.predict(folder, [text])[0]  # the windows' logits averaged, as lmrecipes does
    assert scores[predicted["label"]] == pytest.approx(predicted["score"], abs=1e-4)


def test_only_files_that_are_the_runs_are_described_or_quoted(tmp_path, email_run):
    """A file at the recipe's path whose content is not what the run trained on (changed since, or another file
    of that name where the card is built) is named only: neither its text nor its size is published."""
    from lmrecipes.card_data import first_text, proven_files
    from lmrecipes.recipe import read_run_recipe

    run_dir, _, data = email_run
    recipe = read_run_recipe(run_dir)
    files = proven_files(run_dir, recipe)
    assert files == {"train_file": [str(data)]} and first_text(files, recipe).startswith("Hello team, \"Quarterly\"")
    other = tmp_path / "emails.csv"
    other.write_text(data.read_text().replace("Hello team", "Hello all"))
    assert proven_files(run_dir, {**recipe, "train_file": [str(other)]}) == {}
    assert proven_files(tmp_path, recipe) == {}  # no run marker: nothing proves the files


def test_what_lmrecipes_writes_takes_the_modes_of_the_users_umask(tmp_path, email_run):
    """Under umask 022 a finished run's files (safetensors, written 0600 by safetensors itself, the run's marker and
    checkpoints' manifests, written through temporary files) are 0644 and its folders 0755; so are a publish
    folder and an exported model (renamed from temporary folders). Under 027: 0640 and 0750."""
    from lmrecipes.cache import atomic_directory
    from lmrecipes.ownership import give_umask_modes, umask, write_text_atomically

    def modes(folder):
        return {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in [folder, *folder.rglob("*")]}

    run_dir, _, _ = email_run
    written = modes(run_dir)
    assert {"model.safetensors", "checkpoint-2/model.safetensors", ".lmrecipes-run.json"} <= set(written)
    assert {name: mode for name, mode in written.items()
            if mode != (oct(0o755) if (run_dir / name).is_dir() else oct(0o644))} == {}
    mask = os.umask(0o022)
    try:
        lmrecipes.publish(run_dir, "someone/spam-filter", dry_run=True, publish_dir=str(tmp_path / "hub"))
        from lmrecipes.lora import export_classifier

        export_classifier(run_dir, tmp_path / "exported")
        for folder in (tmp_path / "hub", tmp_path / "exported"):
            assert {name: mode for name, mode in modes(folder).items()
                    if mode != (oct(0o755) if (folder / name).is_dir() else oct(0o644))} == {}, folder
        os.umask(0o027)
        assert umask() == 0o027
        with atomic_directory(tmp_path / "made") as made:
            (made / "inner").mkdir()
            (made / "inner" / "w.safetensors").write_bytes(b"x")
            (made / "inner" / "w.safetensors").chmod(0o600)  # as safetensors writes it
            write_text_atomically(made / "notes.json", "{}")
            give_umask_modes(made / "inner", "*.safetensors")
    finally:
        os.umask(mask)
    assert modes(tmp_path / "made") == {".": oct(0o750), "inner": oct(0o750), "inner/w.safetensors": oct(0o640),
                                        "notes.json": oct(0o640)}


def test_the_card_shows_a_trusted_mfu_only_and_the_demo_wording_for_embedded_data_only():
    from lmrecipes.arguments.data import EMBEDDED_CORPUS, EMBEDDED_SENTIMENT
    from lmrecipes.model_card import _limitations, _mfu_text, data_provenance

    assert _mfu_text({"mfu": 0.123}) == ", MFU 12.3%"
    for untrusted in ({"mfu": 1.0}, {"mfu": 0.4, "mfu_trusted": False}, {"mfu": None}, {}):
        assert _mfu_text(untrusted) == "", untrusted  # 1.0: what runs capped an MFU beyond their peak basis at
    demo = _limitations("classifier", 10_000, {"train_file": [EMBEDDED_SENTIMENT]})
    assert "embedded data (movie-review snippets)" in demo and "predictions are unreliable" in demo
    corpus = _limitations("causal_lm", 10_000, {"train_file": [str(REPO / "data/corpus/austen.jsonl.gz")]})
    assert "old literature and political speeches" in corpus and "generates unreliable text" in corpus
    for own in ({"train_file": ["/home/me/emails.csv"]}, {"train_file": [EMBEDDED_CORPUS, "mine.txt"]},
                {"dataset_name": "someone/mail"}):
        text = _limitations("classifier", 10_000, own)
        assert "Trained on the data listed above only" in text and "movie" not in text and "literature" not in text
    embedded = "\n".join(data_provenance({"train_file": [EMBEDDED_SENTIMENT], "validation_fraction": 0.1}))
    assert "- training: `data/sentiment/movie_reviews.jsonl.gz`: movie-review snippets" in embedded
    assert "- validation: 10% of the training rows" in embedded and "not recorded by lmrecipes" not in embedded


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification", "regression"])
def test_every_tasks_usage_code_quotes_the_example_as_python(problem_type):
    """The example (a text of the user's data: quotes, backslashes, a text pair) is a Python literal in the calls,
    for plain and LoRA classifiers, with and without windows."""
    from lmrecipes.model_card import PLACEHOLDER_TEXT, _usage, _windows_usage

    for example in ('It\'s "odd" \\ text', {"text": "a 'first'", "text_pair": 'a "second"'}, None):
        for kind in ("classifier", "adapter"):
            code = _usage(kind, "someone/x", None, ["a", "b"], problem_type, example)
            compile(code, "card", "exec")
            assert repr(example or PLACEHOLDER_TEXT) in code
            windows = "\n".join(_windows_usage(kind, "someone/x", ["a", "b"], problem_type, (64, 16), example))
            compile(windows.split("```python\n")[1].split("```")[0], "card", "exec")
