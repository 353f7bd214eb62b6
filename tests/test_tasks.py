"""Problem types and long texts, as a user runs them: multi-label classification (tuned threshold, predict.py's
label sets), regression (integer targets, correlation metrics, predict.py's scores), long texts cut into windows,
the head's own learning rate; each on a made task the tiny Llama (pretrained in the test session) can learn."""

import csv
import json
import random
import re

import numpy as np
import pytest
from transformers import TrainerCallback

import lmrecipes
from conftest import REPO, WORDS, pixels_of, png_pixels, read_json
from lmrecipes import load_recipe
from lmrecipes.arguments import FINETUNE_ARGUMENTS
from lmrecipes.data.classification import load_classification_data
from test_finetune import RECIPES, run_predict

TAGS = {"funny": "comedy", "scary": "horror", "tender": "romance"}  # a word in the text -> a label of the text
RUN = {"max_length": 32, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 64, "logging_steps": 20,
       "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False, "disable_tqdm": True,
       "report_to": "none", "warmup_steps": 0, "learning_rate": 2e-3}


def filler(rng, low, high):
    return [rng.choice(WORDS) for _ in range(rng.randint(low, high))]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def tagged_rows(count, seed):
    """Texts holding 0-3 of the tag words among filler words; labels: the tags' names (a list per row)."""
    rng, rows = random.Random(seed), []
    for _ in range(count):
        words = filler(rng, 4, 9)
        tags = [word for word in TAGS if rng.random() < 0.4]
        for word in tags:
            words.insert(rng.randint(0, len(words)), word)
        rows.append({"text": " ".join(words), "genres": [TAGS[word] for word in tags]})
    return rows


def result_of(result):
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def finetune(checkpoint, out, data, **settings):
    return lmrecipes.finetune(str(REPO / RECIPES[("causal", False)]), model_name_or_path=str(checkpoint),
                              train_file=[data], output_dir=str(out), **{**RUN, **settings})


def test_multi_label_classification_tunes_and_saves_a_threshold_and_predicts_label_sets(tmp_path, causal_run):
    data = write_jsonl(tmp_path / "tagged.jsonl", tagged_rows(500, seed=0))
    out = tmp_path / "multi"
    results = finetune(causal_run[0], out, data, problem_type="multi_label_classification", label_column="genres",
                       max_steps=120, validation_fraction=0.2, test_fraction=0.2)
    saved = read_json(out / "labels.json")
    assert saved["problem_type"] == "multi_label_classification" and saved["labels"] == ["comedy", "horror", "romance"]
    assert 0.05 <= saved["threshold"] <= 0.95 and results["test_threshold"] == saved["threshold"]
    # three independent tags at 40%: the most frequent label set (none) is right for ~22% of rows
    assert results["test_majority_subset_accuracy"] < 0.4
    assert results["test_f1_micro"] > 0.8 and results["test_f1"] > 0.75, results
    assert results["test_subset_accuracy"] > results["test_majority_subset_accuracy"] + 0.3, results
    assert len(results["test_f1_per_label"]) == 3
    predictions = read_json(out / "test_predictions.json")
    assert len(predictions["predictions"][0]) == 3 and set(np.ravel(predictions["references"])) <= {0, 1}

    texts = tmp_path / "texts.txt"
    texts.write_text("the king was funny and scary\nthe queen spoke of the night\n")
    result = run_predict(out, texts)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    for row in rows:  # every label whose probability reaches the threshold, and the probabilities
        assert sorted(row["scores"]) == ["comedy", "horror", "romance"]
        assert row["labels"] == [name for name, p in row["scores"].items() if p >= saved["threshold"]]
    assert rows[0]["labels"] == ["comedy", "horror"], rows

    # scored against a column of label lists, with the run's test metrics (at its threshold)
    held_out = tagged_rows(40, seed=5)
    scored = result_of(run_predict(out, write_jsonl(tmp_path / "held.jsonl", held_out), "--label_column", "genres",
                                   "--output", tmp_path / "held.csv"))
    metrics = read_json(tmp_path / "held.metrics.json")
    with open(tmp_path / "held.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    predicted = [set(json.loads(row["labels"])) for row in written]  # csv: label sets as JSON lists
    assert metrics["subset_accuracy"] == pytest.approx(np.mean([p == set(r["genres"]) for p, r in
                                                                zip(predicted, held_out)]))
    assert metrics["threshold"] == saved["threshold"] and len(metrics["f1_per_label"]) == 3
    assert f"subset_accuracy {metrics['subset_accuracy']:.4f}" in scored.stdout
    saved_rows = read_json(out / "test_predictions.json")
    assert all(set(names) <= set(TAGS.values()) for names in saved_rows["predicted_labels"])
    assert [sorted(names) for names in saved_rows["reference_labels"]] == [
        [name for name, v in zip(saved["labels"], row) if v] for row in saved_rows["references"]]

    # the same labels as one 0/1 column per label
    columns = [{"text": r["text"], **{name: int(name in r["genres"]) for name in TAGS.values()}}
               for r in tagged_rows(60, seed=1)]
    *_, data_args, finetune_args, _, _ = load_recipe(
        str(REPO / RECIPES[("causal", False)]), FINETUNE_ARGUMENTS, train_file=[write_jsonl(tmp_path / "c.jsonl", columns)],
        problem_type="multi_label_classification", label_columns=["romance", "comedy", "horror"])
    splits, task = load_classification_data(data_args, "multi_label_classification", finetune_args)
    assert task.labels == ["romance", "comedy", "horror"]
    row = splits["train"][0]
    assert task.targets({k: [v] for k, v in row.items()}) == [[float(row["romance"]), float(row["comedy"]),
                                                               float(row["horror"])]]

    # a list of named class ids (a Hub dataset's Sequence(ClassLabel), e.g. go_emotions): the names, in their order
    from datasets import ClassLabel, Dataset, Features, List, Value

    features = Features({"text": Value("string"), "genres": List(ClassLabel(names=["romance", "comedy", "horror"]))})
    ids = {"romance": 0, "comedy": 1, "horror": 2}
    Dataset.from_dict({"text": [r["text"] for r in tagged_rows(60, seed=1)],
                       "genres": [[ids[g] for g in r["genres"]] for r in tagged_rows(60, seed=1)]},
                      features=features).to_parquet(tmp_path / "named.parquet")
    *_, data_args, finetune_args, _, _ = load_recipe(
        str(REPO / RECIPES[("causal", False)]), FINETUNE_ARGUMENTS, train_file=[str(tmp_path / "named.parquet")],
        problem_type="multi_label_classification", label_column="genres")
    splits, task = load_classification_data(data_args, "multi_label_classification", finetune_args)
    assert task.labels == ["romance", "comedy", "horror"]
    assert task.targets({"genres": [[2, 0], []]}) == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_regression_learns_scores_from_integer_targets_and_predicts_them(tmp_path, causal_run):
    """rating = 2 x (number of "good") - 2 x (number of "poor"): integers (transformers 27707 crashed on them)."""
    rng, rows = random.Random(2), []
    for _ in range(500):
        words, goods, poors = filler(rng, 3, 8), rng.randint(0, 2), rng.randint(0, 2)
        for word in ["good"] * goods + ["poor"] * poors:
            words.insert(rng.randint(0, len(words)), word)
        rows.append({"text": " ".join(words), "rating": 2 * goods - 2 * poors})
    data = write_jsonl(tmp_path / "rated.jsonl", rows)
    out = tmp_path / "regression"
    results = finetune(causal_run[0], out, data, problem_type="regression", label_column="rating", max_steps=120,
                       validation_fraction=0.2, test_fraction=0.2)
    assert read_json(out / "labels.json")["labels"] == ["rating"]
    assert results["test_pearsonr"] > 0.8 and results["test_spearmanr"] > 0.75, results
    assert results["test_mse"] < 0.5 * results["test_mean_predictor_mse"], results
    scores = read_json(out / "test_predictions.json")
    references, predictions = np.array(scores["references"]), np.array(scores["predictions"])
    assert results["test_mse"] == pytest.approx(float(((predictions - references) ** 2).mean()), rel=1e-4)
    assert results["test_pearsonr"] == pytest.approx(float(np.corrcoef(predictions, references)[0, 1]), abs=1e-4)

    texts = tmp_path / "texts.txt"
    texts.write_text("it was good good and the king\nit was poor poor and the night\n")
    result = run_predict(out, texts, "--output", tmp_path / "scores.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines[0] == "line,text,score" and float(lines[1].split(",")[-1]) > float(lines[2].split(",")[-1]) + 2, lines
    rated = write_jsonl(tmp_path / "rated-again.jsonl", rows[:30])  # scored against the column of numbers
    scored = result_of(run_predict(out, rated, "--label_column", "rating", "--metrics_output", tmp_path / "m.json"))
    predicted = [json.loads(line)["score"] for line in scored.stdout.splitlines()]
    assert [json.loads(line)["rating"] for line in scored.stdout.splitlines()] == [r["rating"] for r in rows[:30]]
    mse = float(np.mean((np.array(predicted) - [r["rating"] for r in rows[:30]]) ** 2))
    assert read_json(tmp_path / "m.json")["mse"] == pytest.approx(mse, rel=1e-5)
    assert "scored 30 rows against 'rating': mse " in scored.stderr and "pearsonr" in scored.stderr, scored.stderr

    from huggingface_hub import ModelCard

    lmrecipes.publish(out, "someone/tiny-rating", dry_run=True, publish_dir=str(tmp_path / "card"))
    card = ModelCard.load(tmp_path / "card" / "README.md")
    metrics = {m.metric_type: m.metric_value for m in card.data.eval_results}
    assert metrics == {"pearsonr": round(results["test_pearsonr"], 4), "spearmanr": round(results["test_spearmanr"], 4),
                       "mse": round(results["test_mse"], 4), "mae": round(results["test_mae"], 4)}
    assert "training-mean predictor, MSE (baseline)" in card.text


def long_review(rng):
    """A label word at the very end of ~70 filler words: past the first 32 tokens."""
    label = rng.choice(["pos", "neg"])
    return {"text": " ".join(filler(rng, 60, 80)) + f" it was {'good' if label == 'pos' else 'poor'}", "label": label}


def test_long_texts_chunked_into_windows_find_a_label_at_the_end_that_truncation_misses(tmp_path, causal_run,
                                                                                         capsys):
    rng = random.Random(3)
    data = write_jsonl(tmp_path / "long.jsonl", [long_review(rng) for _ in range(300)])
    runs = {}
    for long_text in ("truncate", "chunk"):
        runs[long_text] = finetune(causal_run[0], tmp_path / long_text, data, long_text=long_text, stride=8,
                                   max_steps=150, validation_fraction=0.15, test_fraction=0.2)
        # the log says what the run did to long texts (it said "windows with long_text: chunk" when truncating)
        line = next(line for line in capsys.readouterr().out.splitlines() if "Classifier (" in line)
        if long_text == "truncate":
            assert line.endswith("train 200 rows, validation 44 rows, test 56 rows (long_text: truncate, longer "
                                 "texts cut at max_length tokens)"), line
        else:
            assert re.search(r"train 200 texts in [\d,]+ windows, validation 44 texts in \d+ windows, test 56 texts in "
                             r"\d+ windows \(long_text: chunk\)$", line), line
    truncated, chunked = runs["truncate"], runs["chunk"]
    windows = read_json(tmp_path / "chunk" / "test_results.json")
    assert truncated["test_samples"] == chunked["test_samples"] == windows["test_samples"] > 40  # texts, not windows
    assert truncated["test_accuracy"] < 0.65 and chunked["test_accuracy"] > 0.85, (truncated, chunked)
    saved = read_json(tmp_path / "chunk" / "labels.json")
    assert saved["long_text"] == "chunk" and saved["stride"] == 8

    texts = [long_review(random.Random(seed)) for seed in range(100, 112)]
    result = run_predict(tmp_path / "chunk", write_jsonl(tmp_path / "texts.jsonl", texts))
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert sum(p == t["label"] for p, t in zip(predicted, texts)) >= 10, (predicted, texts)
    result = run_predict(tmp_path / "chunk", tmp_path / "texts.jsonl", "--max_length", "16")
    assert result.returncode == 2 and result.stderr.strip() == \
        "error: --max_length 16 is too short for this model's windows, which overlap by 8 tokens: give at least 18"


class RecordLearningRates(TrainerCallback):
    def __init__(self):
        self.groups = None

    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.scalings = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)}
        names = {id(p): n for n, p in model.named_parameters()}
        self.groups = [(group["lr"], group["weight_decay"], sorted(names[id(p)] for p in group["params"]))
                       for group in optimizer.param_groups]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_head_trains_at_its_own_learning_rate_and_rslora_scales_by_the_root_of_the_rank(tmp_path, causal_run, learnable_csv, lora):
    record = RecordLearningRates()
    lmrecipes.finetune(str(REPO / RECIPES[("causal", lora)]), model_name_or_path=str(causal_run[0]),
                       train_file=[learnable_csv], text_column="review", label_column="verdict",
                       output_dir=str(tmp_path / "run"), max_steps=2, head_learning_rate=5e-2,
                       callbacks=[record], **{**RUN, "learning_rate": 1e-3},
                       **({"lora_use_rslora": True, "lora_r": 16, "lora_alpha": 32} if lora else {}))
    head = [group for group in record.groups if any(".score." in f".{n}" or n.startswith("score") for n in group[2])]
    body = [group for group in record.groups if group not in head]
    assert head and body and all(lr == 5e-2 for lr, _, _ in head) and all(lr == 1e-3 for lr, _, _ in body)
    assert all("score" in name for _, _, names in head for name in names)  # the head and nothing else
    assert {decay for _, decay, _ in head} == {0.0, 0.01} or {decay for _, decay, _ in head} == {0.01}
    if lora:
        assert all("lora_" in name for _, _, names in body for name in names)
        assert record.scalings == {32 / 16 ** 0.5}  # rank-stabilised: alpha / sqrt(r), not alpha / r


def test_task_losses_are_means_over_target_elements_with_or_without_windows():
    """The Trainer divides by num_items_in_batch (labels counted over the accumulated step): the task's loss is the
    mean over target elements, as the model's own loss, also when windows carry document numbers as labels."""
    import torch

    from lmrecipes.tasks import MultiLabelClassification, Regression, SingleLabelClassification
    from lmrecipes.tasks.base import Documents, task_loss

    torch.manual_seed(0)
    logits, targets = torch.randn(6, 3), (torch.rand(6, 3) > 0.5).float()
    multi = MultiLabelClassification(["a", "b", "c"], ["tags"], column_per_label=False)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert task_loss(multi)({"logits": logits}, targets, num_items_in_batch=torch.tensor(18)) == \
        pytest.approx(float(expected))
    # two accumulated batches of 6 rows: each half of the step's mean
    assert task_loss(multi)({"logits": logits}, targets, num_items_in_batch=torch.tensor(36)) == \
        pytest.approx(float(expected) / 2)
    documents = Documents({"train": targets.tolist()})
    numbers = torch.arange(6)
    assert task_loss(multi, documents)({"logits": logits}, numbers, num_items_in_batch=torch.tensor(6)) == \
        pytest.approx(float(expected))

    classes = torch.tensor([0, 2, 1, 1, 0, 2])
    single = SingleLabelClassification(["x", "y", "z"], "label")
    assert task_loss(single)({"logits": logits}, classes, num_items_in_batch=6) == \
        pytest.approx(float(torch.nn.functional.cross_entropy(logits, classes)))
    scores = torch.randn(6)
    assert task_loss(Regression("rating"))({"logits": logits[:, :1]}, scores, num_items_in_batch=6) == \
        pytest.approx(float(torch.nn.functional.mse_loss(logits[:, 0], scores)))
    averaged, per_text = Documents({"test": [1, 0]}).average(np.array([[1.0, 3.0], [5.0, 1.0], [3.0, 5.0]]),
                                                             np.array([1, 0, 1]))
    assert averaged.tolist() == [[5.0, 1.0], [2.0, 4.0]] and per_text.tolist() == [1, 0]


def test_regression_refuses_label_smoothing_and_the_no_label_value(tmp_path):
    rows = [{"text": f"review {i}", "rating": float(i % 5)} for i in range(40)]
    *_, data_args, finetune_args, _, _ = load_recipe(
        str(REPO / RECIPES[("causal", False)]), FINETUNE_ARGUMENTS, problem_type="regression", label_column="rating",
        train_file=[write_jsonl(tmp_path / "r.jsonl", rows)])
    with pytest.raises(lmrecipes.RecipeError, match="key 'label_smoothing_factor': smooths the classes"):
        load_classification_data(data_args, "regression", finetune_args, label_smoothing=0.1)
    rows[0]["rating"] = -100
    write_jsonl(tmp_path / "r.jsonl", rows)
    with pytest.raises(lmrecipes.RecipeError, match="holds -100, which transformers reads as 'no label'"):
        load_classification_data(data_args, "regression", finetune_args)


def test_per_class_results_are_bounded_for_many_classes():
    """1,200 classes wrote a 43 MB all_results.json (per-class lists, a 1,200 x 1,200 confusion matrix): above
    PER_CLASS_LIMIT classes the results keep the averages; the per-class lists and the matrix go to their own file."""
    from lmrecipes.tasks.single_label import PER_CLASS_LIMIT, SingleLabelClassification

    rng = np.random.default_rng(0)
    for classes in (3, PER_CLASS_LIMIT + 1):
        task = SingleLabelClassification([f"c{i}" for i in range(classes)], "label")
        targets = rng.integers(0, classes, 200)
        metrics = task.metrics(rng.normal(size=(200, classes)), targets)
        assert {"accuracy", "f1", "f1_weighted", "precision", "recall"} <= metrics.keys()
        few = classes <= PER_CLASS_LIMIT
        assert ("f1_per_class" in metrics) is few and ("confusion_matrix" in metrics) is few, classes
        assert len(json.dumps(metrics)) < 2000 + (classes * classes * 4 if few else 0)
        details = task.detailed_metrics(rng.normal(size=(200, classes)), targets)  # test_details.json, not uploaded
        assert (details == {}) is few
        if not few:
            assert len(details["f1_per_class"]) == classes and len(details["confusion_matrix"]) == classes


def test_each_task_draws_its_test_split_under_a_name_the_run_records(tmp_path):
    """results.md's pictures of the test split, from test_predictions.json's rows: single-label and multi-label
    confusion matrices, regression's predicted-against-true scatter; each name one a run records as its own."""
    import fnmatch

    from lmrecipes.figures import save_figure
    from lmrecipes.run_folder import SAVED_NAMES
    from lmrecipes.tasks import MultiLabelClassification, Regression, SingleLabelClassification

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    tags = rng.integers(0, 2, (300, 3)).astype(float)
    scores = rng.normal(size=300)
    drawn = {
        "single": SingleLabelClassification(["neg", "neutral", "pos"], "label").test_figures(
            np.where(rng.random(300) < 0.8, truth, 0).tolist(), truth.tolist()),
        "multi": MultiLabelClassification(["comedy", "horror", "romance"], ["genres"], False).test_figures(
            np.where(rng.random((300, 3)) < 0.8, tags, 1 - tags).tolist(), tags.tolist()),
        "regression": Regression("rating").test_figures((scores + rng.normal(0, 0.3, 300)).tolist(),
                                                        scores.tolist())}
    assert {kind: list(figures) for kind, figures in drawn.items()} == {
        "single": ["confusion_matrix.png"], "multi": ["confusion_matrix.png"], "regression": ["predicted_vs_true.png"]}
    for kind, figures in drawn.items():
        for name, figure in figures.items():
            assert any(fnmatch.fnmatch(name, pattern) for pattern in SAVED_NAMES), name
            save_figure(figure, tmp_path / f"{kind}-{name}")
            pixels = png_pixels(tmp_path / f"{kind}-{name}")
            # the fullest cell (darkest blue), or the scatter's points (matplotlib's first colour, half transparent)
            assert pixels_of(pixels, "#8fbbd9" if kind == "regression" else "#08306b") > 500, kind
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # written atomically: no temporary file left
        "multi-confusion_matrix.png", "regression-predicted_vs_true.png", "single-confusion_matrix.png"]
    assert SingleLabelClassification(["a", "b"], "label").test_figures([0, 1], [0, 1])  # drawn for any size
