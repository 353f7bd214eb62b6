"""The label-efficiency curve's arithmetic on hand-made cases: intervals, means, run plan, label counts."""

import json
from pathlib import Path

import numpy as np
import pytest

from lmrecipes import RecipeError
from lmrecipes.arguments.pipeline import parse_label_counts
from lmrecipes.label_curve import arm_summary, difference_summary, interval, plan_runs, t_quantile


def test_t_quantiles_match_the_tables():
    for df, table in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (30, 2.0423), (1e6, 1.9600)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-4)
    assert t_quantile(0.95, 10) == pytest.approx(1.8125, abs=1e-4)


def test_the_interval_on_a_hand_made_table():
    # 3 seeds x 4 test rows of paired differences (a) - (b), worked by hand:
    #   per-seed means 0.5, 0.75, 0.25 -> mean 0.5, s2_seeds = (0 + 0.0625 + 0.0625) / 2 = 0.0625, / S -> 0.0208333
    #   row means over seeds 2/3, 1/3, 0, 1 -> s2_rows = (1/36 + 1/36 + 1/4 + 1/4) / 3 = 0.1851852, / n -> 0.0462963
    #   se = sqrt(0.0671296) = 0.2590939; df = 0.0671296^2 / (0.0462963^2 / 3 + 0.0208333^2 / 2) = 4.83797
    a = np.array([[1, 0, 0, 1], [1, 1, 0, 1], [0, 0, 0, 1]])
    b = np.zeros((3, 4))
    summary = difference_summary(a, b)
    assert summary["mean"] == 0.5 and summary["per_seed"] == [0.5, 0.75, 0.25]
    assert summary["se"] == pytest.approx(0.2590939, abs=1e-7) and summary["df"] == pytest.approx(4.83797, abs=1e-5)
    half = t_quantile(0.975, 4.83797) * 0.2590939
    assert summary["ci95"] == pytest.approx([0.5 - half, 0.5 + half], abs=1e-6)


def test_one_seed_is_the_paired_test_row_interval():
    # 400 rows: (a) right and (b) wrong on 100, the reverse on 20, equal on the rest. Mean 0.2; the per-row
    # differences' sample variance is (100 * 0.8^2 + 20 * 1.2^2 + 280 * 0.2^2) / 399 = 0.260652 -> se = 0.0255270
    a, b = np.zeros((1, 400)), np.zeros((1, 400))
    a[0, :100] = 1
    b[0, 100:120] = 1
    summary = difference_summary(a, b)
    assert summary["se"] == pytest.approx(0.0255270, abs=1e-7) and summary["df"] == pytest.approx(399)
    assert summary["ci95"] == pytest.approx([0.2 - 1.96593 * 0.025527, 0.2 + 1.96593 * 0.025527], abs=1e-5)


def test_seed_spread_widens_the_interval_and_a_constant_difference_has_none():
    rows = np.array([[1, 0] * 50])  # every seed right on the same 50 of 100 rows
    same = interval(np.repeat(rows, 3, axis=0))
    spread = interval(np.vstack([rows, np.ones((1, 100)), np.zeros((1, 100))]))  # seeds at 0.5, 1.0, 0.0
    assert same["mean"] == spread["mean"] == 0.5
    assert spread["ci95"][1] - spread["ci95"][0] > 10 * (same["ci95"][1] - same["ci95"][0])
    assert difference_summary(np.ones((3, 50)), np.zeros((3, 50)))["ci95"] == [1.0, 1.0]


def test_arm_summary_reports_mean_and_sample_std_over_seeds():
    correct = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])  # accuracies 0.5, 0.75, 1.0
    summary = arm_summary(correct)
    assert summary["per_seed"] == [0.5, 0.75, 1.0]
    assert summary["mean"] == pytest.approx(0.75) and summary["std"] == pytest.approx(0.25)  # ddof 1
    assert summary["ci95"][0] < 0.75 < summary["ci95"][1]
    assert arm_summary(np.array([[1, 0]]))["std"] is None  # one seed: no spread to report


def test_label_counts_are_checked_and_sorted():
    assert parse_label_counts([1000, "all", 250]) == [250, 1000, "all"]
    for bad in (["250"], [250, "some", "all"], [1, "all"], [-5, "all"]):
        with pytest.raises(RecipeError, match="key 'label_counts'"):
            parse_label_counts(bad)


def test_the_plan_pairs_both_arms_on_each_seed_and_trains_small_n_longer():
    runs = plan_runs(Path("out"), [250, 1000, "all"], ["pretrained", "scratch"], [42, 43, 44], [42], 4000, 4)
    assert len(runs) == 3 * 2 * 2 + 2
    first = runs[0], runs[1]
    assert [r.arm for r in first] == ["pretrained", "scratch"] and first[0].settings == first[1].settings
    assert first[0].settings["max_train_samples"] == 250 and first[0].settings["num_train_epochs"] == 16
    assert first[0].settings["seed"] == 42 and first[0].settings["load_best_model_at_end"] is True
    assert first[0].settings["eval_steps"] == first[0].settings["save_steps"] == 0.25
    assert next(r for r in runs if r.labels == 1000).settings["num_train_epochs"] == 4
    full = [r for r in runs if r.labels == "all"]
    assert [r.folder for r in full] == [Path("out/finetune"), Path("out/finetune-scratch")]
    assert all(r.settings == {"seed": 42} for r in full)
    assert len({r.folder for r in runs}) == len(runs)


def test_runs_that_scored_other_test_rows_are_not_compared(tmp_path):
    from lmrecipes.label_curve import CurveRun, summarize_curve

    runs = []
    for arm, rows_hash in (("pretrained", "aaa"), ("scratch", "bbb")):  # same labels, other token ids
        folder = tmp_path / arm
        folder.mkdir()
        (folder / "test_predictions.json").write_text(json.dumps(
            {"labels": ["neg", "pos"], "test_inputs_sha256": rows_hash, "predictions": [0, 1, 1],
             "references": [0, 1, 0]}))
        (folder / "trainer_state.json").write_text(json.dumps({"num_train_epochs": 1, "global_step": 3}))
        runs.append(CurveRun(arm, "all", 42, folder, {"seed": 42}))
    with pytest.raises(RecipeError, match="scratch: its test rows differ from the other runs'"):
        summarize_curve(runs, 10, 0.5)
    (tmp_path / "scratch" / "test_predictions.json").write_text(
        (tmp_path / "pretrained" / "test_predictions.json").read_text())
    point = summarize_curve(runs, 10, 0.5)["points"][0]
    assert point["pretrained"]["mean"] == pytest.approx(2 / 3) and point["difference"]["mean"] == 0


def test_the_keys_an_arm_may_not_override_are_those_the_curve_sets():
    from lmrecipes.arguments.pipeline import CURVE_RUN_KEYS
    from lmrecipes.label_curve import small_n_settings

    assert set(CURVE_RUN_KEYS) == set(small_n_settings(250, 42, 2500, 3)) | {"max_steps"}
