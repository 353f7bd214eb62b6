"""Property-based bad input: hypothesis writes jsonl / csv / json / txt files with nulls, numbers, lists and
mappings where text belongs, empty and whitespace rows, missing and extra columns, byte order marks, CRLF line
endings, mixed label types, one class, unseen test labels, bad UTF-8 and truncated files, then drives the data
loaders and whole scripts (finetune.py, pretrain.py, predict.py). Each must succeed or fail with one line
(`RecipeError`; exit code 2 and `error: ...` from a script), never another exception, and never leave a partial
output folder. The cases are rows of docs/reliability.md. Bounded: about a minute in all."""

import csv
import io
import itertools
import json
import re
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import LLAMA_PRETRAIN, REPO, TINY_LLAMA, read_json  # noqa: E402

import lmrecipes  # noqa: E402
from lmrecipes import RecipeError, load_recipe  # noqa: E402
from lmrecipes.finetuning import FINETUNE_ARGUMENTS, load_classification_data  # noqa: E402
from lmrecipes.pretraining import PRETRAIN_ARGUMENTS, load_corpus_and_tokenizer  # noqa: E402
from lmrecipes.data import prepare_pretraining_data  # noqa: E402

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
        raw, fingerprint, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, "causal_lm")
        train, evaluation, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, "causal_lm", data_args)
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
                       max_length=16, output_dir=str(out))
    return out


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
    code, crash = run_script("predict", [classifier, path, "--output", output, *(["--skip_bad_rows"] if skip else [])])
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
    raw, fingerprint, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, "causal_lm")
    with pytest.raises(RecipeError, match="the training text is shorter than one block of block_size=64 tokens"):
        prepare_pretraining_data(raw, fingerprint, tokenizer, "causal_lm", data_args)
