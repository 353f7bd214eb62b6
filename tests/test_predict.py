"""scripts/predict.py on a user's own file: the run's text column by default, a missing column named once with the
file's columns, a progress bar, the input's columns kept, predictions scored against a label column with the
run's own test metrics; test_predictions.json by label name. One small fine-tuning run (a csv with `body` and
`category`, as a user's) serves the script tests; the rest are unit tests without a model."""

import contextlib
import csv
import io
import json
import random
import re

import numpy as np
import pytest

from conftest import REPO, learnable_review, read_json, write_csv
from lmrecipes import RecipeError
from lmrecipes.finetuning import save_test_predictions
from lmrecipes.prediction import read_inputs
from lmrecipes.tasks import MultiLabelClassification, Regression, SingleLabelClassification
from test_finetune import run_predict


@pytest.fixture(scope="module")
def byo_run(tmp_path_factory, causal_run):
    """A classifier fine-tuned on csv files with columns id, body, category (its own test file): (run, test file)."""
    folder, rng = tmp_path_factory.mktemp("byo-predict"), random.Random(3)
    files = {}
    for split, count in (("train", 200), ("validation", 20), ("test", 48)):
        rows = [(f"{split}-{i}", *learnable_review(rng)) for i in range(count)]
        files[split] = str(write_csv(folder / f"{split}.csv", ["id", "body", "category"], rows))
    out = folder / "run"
    # as a user with run_classification.py habits types it: Hugging Face's flag names (README, "Bring your own data")
    finetune_script = load_script("finetune.py")
    finetune_script.main([str(REPO / "recipes/tiny-llama/finetune-sentiment.yaml"), "--model_name_or_path",
                          str(causal_run[0]), "--train_file", files["train"], "--validation_file", files["validation"],
                          "--test_file", files["test"], "--text_column_names", "body", "--label_column_name",
                          "category", "--max_seq_length", "32", "--do_train", "--do_eval", "--max_steps", "40",
                          "--per_device_train_batch_size", "16", "--evaluation_strategy", "no", "--save_strategy",
                          "no", "--load_best_model_at_end", "false", "--report_to", "none", "--disable_tqdm", "true",
                          "--warmup_ratio", "0", "--learning_rate", "2e-3", "--output_dir", str(out)])
    return out, files["test"]


def load_script(name: str):
    from importlib import util

    spec = util.spec_from_file_location(name.removesuffix(".py") + "_script", REPO / "scripts" / name)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predictions_keep_the_rows_and_score_against_the_label_column_as_the_run_scored_its_test_split(
        tmp_path, byo_run):
    run, test_file = byo_run
    output = tmp_path / "predictions.csv"
    result = run_predict(run, test_file, "--output", output, "--label_column", "category")  # no --text_column
    assert result.returncode == 0, result.stderr[-2000:]
    with open(output, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(test_file, newline="", encoding="utf-8") as handle:
        given = list(csv.DictReader(handle))
    assert list(rows[0]) == ["id", "body", "category", "label", "score"]  # the input's columns, then the prediction
    assert [(r["id"], r["body"], r["category"]) for r in rows] == [(g["id"], g["body"], g["category"]) for g in given]
    assert {r["label"] for r in rows} == {"neg", "pos"}, "a constant prediction would not test the rows' order"

    # the metrics are the run's own test metrics: same rows, same code (task.metrics)
    metrics, run_results = read_json(tmp_path / "predictions.metrics.json"), read_json(run / "all_results.json")
    for name in ("accuracy", "f1", "precision", "recall", "f1_weighted"):
        assert metrics[name] == pytest.approx(run_results[f"test_{name}"], abs=1e-6), name
    assert metrics["confusion_matrix"] == run_results["test_confusion_matrix"]
    assert metrics["accuracy"] == pytest.approx(np.mean([r["label"] == r["category"] for r in rows]))
    assert (metrics["rows_scored"], metrics["rows_without_label"], metrics["label_column"]) == (48, 0, "category")
    assert f"scored 48 rows against 'category': accuracy {metrics['accuracy']:.4f}, f1 " in result.stdout
    assert f"metrics written to {tmp_path / 'predictions.metrics.json'}" in result.stdout

    # test_predictions.json by name: the same labels as the test file and as predict.py
    saved = read_json(run / "test_predictions.json")
    assert saved["reference_labels"] == [g["category"] for g in given]
    assert saved["predicted_labels"] == [r["label"] for r in rows]
    assert saved["predictions"] == [saved["labels"].index(name) for name in saved["predicted_labels"]]  # ids kept


def test_the_readme_path_for_your_own_csv_records_lmrecipes_keys_and_publishes_a_card_of_your_data(tmp_path, byo_run,
                                                                                                     capsys):
    """Train (byo_run, with Hugging Face's flag names), predict (above), publish: the README's three commands."""
    import yaml

    run, _ = byo_run
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert {"text_column": "body", "label_column": "category", "max_length": 32, "warmup_steps": 0.0}.items() <= \
        recipe.items()
    assert not {"text_column_names", "label_column_name", "max_seq_length", "warmup_ratio", "evaluation_strategy",
                "do_train", "vocab_size", "tokenizer_type", "fused_loss"} & set(recipe)
    assert "accuracy" in (run / "results.md").read_text() and (run / "confusion_matrix.png").stat().st_size > 1000
    load_script("publish.py").main([str(run), "--repo_id", "you/email-classifier", "--dry-run", "--publish_dir",
                                    str(tmp_path / "hub")])
    card = (tmp_path / "hub" / "README.md").read_text()
    assert not re.search(r"\b(movie|review|film)s?\b", card, re.IGNORECASE), card
    assert "category" in card or "pos" in card


def test_a_missing_column_is_one_error_listing_the_files_columns(tmp_path, byo_run):
    run, test_file = byo_run
    reviews = write_csv(tmp_path / "reviews.csv", ["text", "category"], [("it was good", "pos")])
    for flags, expected in [
            ((), f"error: {reviews}: no column 'body' (--text_column); its columns: text, category"),
            (("--text_column", "review"), f"error: {reviews}: no column 'review' (--text_column); its columns: "
                                          "text, category"),
            (("--text_column", "text", "--label_column", "verdict"),
             f"error: {reviews}: no column 'verdict' (--label_column); its columns: text, category")]:
        result = run_predict(run, reviews, "--output", tmp_path / "p.jsonl", *flags)
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [expected], result.stderr[-2000:]
        assert not (tmp_path / "p.jsonl").exists()


def test_an_unknown_label_is_one_line_before_predicting_and_rows_without_one_are_not_scored(tmp_path, byo_run):
    run, _ = byo_run
    rows = [{"body": "it was good", "category": "pos"}, {"body": "it was poor", "category": "neutral"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_predict(run, bad, "--output", tmp_path / "p.jsonl", "--label_column", "category")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {bad} line 2: label 'neutral' in column 'category' (--label_column) is not one of the model's "
        "labels: neg, pos"], result.stderr[-2000:]
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "p.metrics.json").exists()

    # ids for names, a row without a label, a `label` column of the input kept beside the predicted one
    rows = [{"body": "it was good", "category": 1, "label": "x"}, {"body": "it was poor", "category": "neg"},
            {"body": "the king spoke"}]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_predict(run, mixed, "--label_column", "category", "--metrics_output", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = [json.loads(line) for line in result.stdout.splitlines()]  # stdout holds only the predictions
    assert [list(p) for p in predicted] == [["body", "category", "input_label", "label", "score"],
                                            ["body", "category", "label", "score"], ["body", "label", "score"]]
    metrics = read_json(tmp_path / "m.json")
    assert (metrics["rows_scored"], metrics["rows_without_label"]) == (2, 1)
    assert metrics["accuracy"] == np.mean([predicted[0]["label"] == "pos", predicted[1]["label"] == "neg"])
    assert "scored 2 rows against 'category' (1 without a label): accuracy" in result.stderr


def test_txt_rows_carry_their_line_number_and_a_progress_bar_shows_on_a_terminal(tmp_path, byo_run):
    run, _ = byo_run
    texts = tmp_path / "texts.txt"
    texts.write_text("it was good\n\nit was poor\nthe king spoke and it was good\n")
    result = run_predict(run, texts, "--batch_size", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(p["line"], p["text"]) for p in predicted] == [(1, "it was good"), (3, "it was poor"),
                                                          (4, "the king spoke and it was good")]
    assert "predicting" not in result.stderr  # stderr is no terminal here: no bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    from lmrecipes.prediction import predict_file

    err = Terminal()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert predict_file(run, texts, batch_size=1).count == 3
    assert "predicting" in err.getvalue() and "3/3" in err.getvalue(), err.getvalue()


def test_read_inputs_names_a_missing_column_once_and_skips_only_rows_without_a_text(tmp_path):
    """No model: the file's columns are checked once (the csv header, the json rows' keys); a row lacking the
    text among rows that have it is a bad row, skipped with skip_bad_rows."""
    reviews = write_csv(tmp_path / "reviews.csv", ["body", "category"], [("a film", "pos"), ("", "neg")])
    with pytest.raises(RecipeError) as error:
        read_inputs(reviews, "text")
    assert str(error.value) == f"{reviews}: no column 'text' (--text_column); its columns: body, category"
    inputs = read_inputs(reviews, "body", skip_bad_rows=True)
    assert (inputs.rows, inputs.texts, inputs.places) == ([{"body": "a film", "category": "pos"}], ["a film"],
                                                         [f"{reviews} line 2"])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"body": "a film", "id": 1}) + "\n" + json.dumps({"id": 2}) + "\n")
    with pytest.raises(RecipeError, match=r"no column 'text' \(--text_column\); its columns: body, id$"):
        read_inputs(rows, "text")
    with pytest.raises(RecipeError, match=r"rows.jsonl line 2: has no column 'body' \(--skip_bad_rows to skip"):
        read_inputs(rows, "body")
    assert read_inputs(rows, "body", skip_bad_rows=True).rows == [{"body": "a film", "id": 1}]
    with pytest.raises(RecipeError, match="a .txt file has no columns to score against"):
        read_inputs(write_csv(tmp_path / "t.txt", ["one text"], []), label_column="label")


def test_labels_from_a_file_are_read_by_name_or_id_by_the_task():
    single = SingleLabelClassification(["neg", "pos"], "label")
    assert single.file_targets(["pos", "neg", 1, "0", 1.0], ["f line 1"] * 5, "c") == [1, 0, 1, 0, 1]
    with pytest.raises(RecipeError, match=r"^f line 2: label 'meh' in column 'c' \(--label_column\) is not one of "
                                          r"the model's labels: neg, pos$"):
        single.file_targets(["pos", "meh"], ["f line 1", "f line 2"], "c")
    numbered = SingleLabelClassification(["1", "2", "3"], "label")  # names that are numbers: never read as ids
    assert numbered.file_targets([1, "3", 2.0], ["f"] * 3, "c") == [0, 2, 1]
    with pytest.raises(RecipeError, match="label 0 in column 'c'"):
        numbered.file_targets([0], ["f"], "c")
    multi = MultiLabelClassification(["comedy", "horror", "romance"], ["genres"], column_per_label=False)
    assert multi.file_targets([["horror", "comedy"], '["romance"]', "horror", []], ["f"] * 4, "g") == [
        [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    with pytest.raises(RecipeError, match="label 'drama' in column 'g'"):
        multi.file_targets([["drama"]], ["f"], "g")
    regression = Regression("rating")
    assert regression.file_targets([1, "2.5", 3.0], ["f"] * 3, "r") == [1.0, 2.5, 3.0]
    with pytest.raises(RecipeError, match=r"^f line 1: column 'r' \(--label_column\) holds 'good', not a number"):
        regression.file_targets(["good"], ["f line 1"], "r")


def test_test_predictions_name_the_labels_beside_the_ids(tmp_path):
    dataset = {"input_ids": [[1, 2], [3]]}
    single = SingleLabelClassification(["neg", "pos"], "label")
    save_test_predictions(tmp_path, single, np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]), dataset)
    saved = read_json(tmp_path / "test_predictions.json")
    assert (saved["predictions"], saved["references"]) == ([1, 0], [1, 1])
    assert (saved["predicted_labels"], saved["reference_labels"]) == (["pos", "neg"], ["pos", "pos"])
    multi = MultiLabelClassification(["comedy", "horror"], ["genres"], column_per_label=False, threshold=0.5)
    save_test_predictions(tmp_path, multi, np.array([[3.0, -3.0], [3.0, 3.0]]), np.array([[1.0, 0.0], [0.0, 0.0]]),
                          dataset)
    saved = read_json(tmp_path / "test_predictions.json")
    assert (saved["predicted_labels"], saved["reference_labels"]) == ([["comedy"], ["comedy", "horror"]],
                                                                      [["comedy"], []])
    save_test_predictions(tmp_path, Regression("rating"), np.array([[0.5], [2.0]]), np.array([1.0, 2.0]), dataset)
    saved = read_json(tmp_path / "test_predictions.json")
    assert saved["predictions"] == [0.5, 2.0] and "predicted_labels" not in saved
