"""A run's folder (run_folder.py): claiming output_dir for a recipe case by case (new, resumed, finished, another
recipe, other inputs, overwritten, not a run), checkpoint completeness, and the same protection in whole runs: a
finished run is never overwritten without consent, and overwrite deletes only what the run wrote."""

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import lmrecipes
from conftest import (
    FT_FULL,
    LLAMA_PRETRAIN,
    TINY_LLAMA,
    StopAtFinalEvaluation,
    plant_half_written_checkpoint,
    read_json,
)
from lmrecipes import RecipeError
from lmrecipes.recipe import RUN_RECIPE, read_run_recipe
from lmrecipes.run_folder import (
    RUN_MARKER,
    claim_output_dir,
    find_last_complete_checkpoint,
    is_run_folder,
    record_run,
    run_record,
)
from lmrecipes.run_lock import RUN_LOCK

# ---------------------------------------------------------------- claiming a run folder, case by case


class Arguments(SimpleNamespace):
    """The TrainingArguments that claim_output_dir reads, for one process that saves."""

    def main_process_first(self, local=True, desc=""):
        return contextlib.nullcontext()


def claim(out: Path, recipe: dict, inputs: dict | None = None, overwrite: bool = False):
    args = Arguments(output_dir=str(out), overwrite_output_dir=overwrite, should_save=True, process_index=0,
                     world_size=1, per_device_train_batch_size=8, gradient_accumulation_steps=1)
    return claim_output_dir(args, recipe, "# a test run", inputs if inputs is not None else {"data": "d1"})


def finish(out: Path, results: dict) -> None:
    """What a run writes when it ends: its results, recorded, and the marker saying finished."""
    (out / "all_results.json").write_text(json.dumps(results))
    record_run(out, files=["all_results.json"], finished=True)


RECIPE = {"learning_rate": 0.001, "max_steps": 10, "output_dir": "x"}


def test_a_new_or_empty_folder_is_claimed_with_the_recipe_and_a_marker(tmp_path):
    for out in (tmp_path / "new" / "run", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert claim(out, RECIPE) is None
        assert read_run_recipe(out) == RECIPE and is_run_folder(out)
        record = run_record(out)
        assert record["files"] == [RUN_MARKER, RUN_RECIPE] and record["inputs"] == {"data": "d1"}
        assert "finished" not in record and record["session_start"] > 0


def test_results_md_and_its_figures_and_their_cut_short_writes_are_the_runs(tmp_path):
    """A finished run's results.md and figures are recorded as it writes them (run_report, tasks/); a stop during
    their atomic write leaves a temporary file that overwrite_output_dir may delete, and nothing else of that form."""
    from lmrecipes.run_folder import record_saved_files, remove_run_folder, run_owns

    out = tmp_path / "run"
    claim(out, RECIPE)
    for name in ("results.md", "loss_curve.png", "confusion_matrix.png", "predicted_vs_true.png",
                 ".results.md.k2j4x9.tmp"):
        (out / name).write_text("written")
    record_saved_files(out, finished=True)
    owns = run_owns(out)
    assert all(owns(name) for name in ("results.md", "loss_curve.png", "confusion_matrix.png",
                                       "predicted_vs_true.png", ".results.md.k2j4x9.tmp"))
    assert not owns(".notes.md.k2j4x9.tmp") and not owns("my_plot.png")
    remove_run_folder(out)
    assert [p.name for p in out.iterdir()] == [RUN_LOCK]  # everything else was the run's


def test_a_started_run_of_the_same_recipe_is_claimed_again_to_resume(tmp_path):
    out = tmp_path / "run"
    claim(out, RECIPE)
    first = run_record(out)["session_start"]
    cosmetic = {**RECIPE, "logging_steps": 5, "report_to": "none", "output_dir": "elsewhere",
                "save_total_limit": 1}  # watched, not trained
    assert claim(out, cosmetic) is None
    assert read_run_recipe(out) == RECIPE, "the recipe the run started with stays"
    assert run_record(out)["session_start"] >= first


def test_a_file_put_in_the_folder_before_a_session_is_never_recorded_as_the_runs(tmp_path):
    """Recorded are the files a session writes, not those it found: a user's file dated in the future (clock
    skew, an archive from another machine) was recorded as the run's and published."""
    from lmrecipes.run_folder import record_saved_files

    out = tmp_path / "run"
    claim(out, RECIPE)
    mine = out / "chat_template.jinja"
    mine.write_text("PRIVATE")
    os.utime(mine, (time.time() + 86400, time.time() + 86400))
    claim(out, RECIPE)  # the rerun: a new session
    (out / "tokenizer.json").write_text("{}")  # what this session writes
    record_saved_files(out)
    files = run_record(out)["files"]
    assert "tokenizer.json" in files and "chat_template.jinja" not in files, files


def test_a_finished_run_whose_results_cannot_be_read_says_so(tmp_path):
    out = tmp_path / "run"
    claim(out, RECIPE)
    finish(out, {"eval_loss": 1.0})
    (out / "all_results.json").write_text("")  # emptied (was: a JSONDecodeError traceback on every rerun)
    with pytest.raises(RecipeError, match=r"the results of the finished run in .* \(all_results.json\) cannot be "
                                          r"read: restore the file, or pass --overwrite_output_dir true"):
        claim(out, RECIPE)


def test_a_finished_run_of_the_same_recipe_returns_its_results_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    claim(out, RECIPE)
    finish(out, {"eval_loss": 4.2})
    assert claim(out, RECIPE) == {"eval_loss": 4.2}
    assert "holds a finished run of this recipe: nothing to do" in capsys.readouterr().out


def test_a_run_of_another_recipe_is_refused_naming_the_keys(tmp_path):
    out = tmp_path / "run"
    claim(out, RECIPE)
    with pytest.raises(RecipeError, match=r"holds a started run of another recipe \(differs in learning_rate\)"):
        claim(out, {**RECIPE, "learning_rate": 0.01})
    save_checkpoint_files(out / "checkpoint-10", 10)  # a finished run asked to train longer: told how to go on
    record_run(out, files=["checkpoint-10/trainer_state.json"])
    finish(out, {"eval_loss": 4.2})
    with pytest.raises(RecipeError, match=r"holds a finished run of another recipe \(differs in max_steps\).*"
                                          r"--resume_from_checkpoint .*checkpoint-10 --output_dir NEW_FOLDER"):
        claim(out, {**RECIPE, "max_steps": 20})
    assert read_run_recipe(out) == RECIPE


def test_the_same_recipe_on_other_inputs_is_refused(tmp_path):
    out = tmp_path / "run"
    claim(out, RECIPE, {"data": "d1", "tokenizer": "t1"})
    with pytest.raises(RecipeError, match=r"differs in the contents of data\)"):
        claim(out, RECIPE, {"data": "d2", "tokenizer": "t1"})


def test_overwrite_deletes_a_run_of_another_recipe_and_starts_over(tmp_path):
    out = tmp_path / "run"
    claim(out, RECIPE)
    (out / "config.json").write_text("{}")
    record_run(out, files=["config.json"])
    finish(out, {"eval_loss": 4.2})
    assert claim(out, {**RECIPE, "learning_rate": 0.01}, overwrite=True) is None
    assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK, RUN_MARKER, RUN_RECIPE]
    assert read_run_recipe(out)["learning_rate"] == 0.01 and "finished" not in run_record(out)
    (out / "notes.txt").write_text("mine")  # a file the run did not write: overwrite refuses, touches nothing
    with pytest.raises(RecipeError, match=r"holds files this lmrecipes run did not write.*\(notes.txt\)"):
        claim(out, RECIPE, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and read_run_recipe(out)["learning_rate"] == 0.01


def test_a_folder_without_the_marker_or_a_file_is_never_claimed(tmp_path):
    foreign = tmp_path / "downloaded-model"
    foreign.mkdir()
    (foreign / RUN_RECIPE).write_text("learning_rate: 0.001\n")  # a recipe.yaml proves nothing
    for overwrite in (False, True):
        with pytest.raises(RecipeError, match="holds files but no lmrecipes run"):
            claim(foreign, RECIPE, overwrite=overwrite)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RecipeError, match="is a file, not a folder"):
        claim(a_file, RECIPE)
    assert sorted(p.name for p in foreign.iterdir()) == [RUN_RECIPE] and a_file.read_text() == "x"


def save_checkpoint_files(folder: Path, step: int) -> Path:
    """The files a single-process Trainer checkpoint holds, small and real (safetensors, torch archives, JSON)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"weight": torch.ones(4, 4)}, folder / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({"state": torch.zeros(8)}, folder / name)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_a_checkpoint_is_used_only_when_every_file_the_trainer_reads_is_whole(tmp_path):
    """What a kill while saving and a power loss leave (files missing, cut short, emptied, sizes changed since the
    manifest): each is a problem named in a few words, and the last checkpoint without one is resumed."""
    from lmrecipes.checkpoints import MANIFEST, checkpoint_problem, missing_training_state, write_manifest

    good = save_checkpoint_files(tmp_path / "checkpoint-6", 6)
    assert checkpoint_problem(good) is None and missing_training_state(good) == []
    write_manifest(good)
    assert checkpoint_problem(good) is None and read_json(good / MANIFEST)["sizes"]["optimizer.pt"] > 0

    def broken(change, manifest=True) -> str | None:
        """The problem found in checkpoint-8 after `change`; without the manifest (a power loss before it was
        written), the files' formats are all there is to judge by."""
        folder = tmp_path / "checkpoint-8"
        if folder.exists():
            shutil.rmtree(folder)
        save_checkpoint_files(folder, 8)
        if manifest:
            write_manifest(folder)
        change(folder)
        return checkpoint_problem(folder)

    def cut(name, keep):
        return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:keep])

    def zeroed(name):  # the right size, nothing in it
        return lambda folder: (folder / name).write_bytes(bytes((folder / name).stat().st_size))

    assert "trainer_state.json missing, cut short" in broken(lambda f: (f / "trainer_state.json").unlink())
    assert "trainer_state.json missing, cut short" in broken(cut("trainer_state.json", 5))
    assert "trainer_state.json missing, cut short or of another step" in broken(
        lambda f: (f / "trainer_state.json").write_text('{"global_step": 4}'))
    assert broken(lambda f: (f / "model.safetensors").unlink()) == "no weights"
    assert "model.safetensors is 0 bytes" in broken(cut("model.safetensors", 0))
    assert "optimizer.pt is 100 bytes" in broken(cut("optimizer.pt", 100))
    assert broken(lambda f: (f / "rng_state.pth").unlink()) is None  # loadable, but not as the run was:
    assert missing_training_state(tmp_path / "checkpoint-8") == ["rng_state.pth"]  # find_checkpoint refuses it
    assert "model.safetensors is cut short" in broken(cut("model.safetensors", 40), manifest=False)
    assert "model.safetensors is cut short" in broken(zeroed("model.safetensors"), manifest=False)
    assert "scheduler.pt is cut short or not a torch archive" in broken(zeroed("scheduler.pt"), manifest=False)
    assert "optimizer.pt is cut short or not a torch archive" in broken(cut("optimizer.pt", 300), manifest=False)
    assert "config.json is cut short or not JSON" in broken(cut("config.json", 3), manifest=False)
    assert find_last_complete_checkpoint(tmp_path) == str(good), "the newest is bad: the one before it"

    sharded = tmp_path / "checkpoint-9"  # FSDP's sharded weights count once their metadata, written last, is there
    (sharded / "pytorch_model_fsdp_0").mkdir(parents=True)
    (sharded / "trainer_state.json").write_text(json.dumps({"global_step": 9}))
    assert checkpoint_problem(sharded) == "no weights"
    (sharded / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"m")
    assert checkpoint_problem(sharded) is None
    assert missing_training_state(sharded) == ["optimizer state", "scheduler.pt", "rng_state.pth"]
    assert find_last_complete_checkpoint(tmp_path) == str(sharded)


def test_a_run_started_from_another_runs_checkpoint_goes_on_from_its_own(tmp_path):
    """`resume_from_checkpoint: OLD/checkpoint-4` in a recipe is where the run started: once its own folder holds a
    later checkpoint, the same command resumes that (it went back to step 4 on every rerun); a checkpoint named
    inside output_dir is taken as asked (going back on purpose)."""
    from lmrecipes.resume import check_resume_request, find_checkpoint

    start = save_checkpoint_files(tmp_path / "first" / "checkpoint-4", 4)
    out = tmp_path / "longer"
    claim(out, RECIPE)
    args = SimpleNamespace(output_dir=str(out), resume_from_checkpoint=str(start), max_steps=8, should_save=True)
    assert find_checkpoint(args) == str(start)
    for step in (6, 7):
        save_checkpoint_files(out / f"checkpoint-{step}", step)
        record_run(out, files=[f"checkpoint-{step}/trainer_state.json"])
    assert find_checkpoint(args) == str(out / "checkpoint-7")
    shutil.rmtree(start)  # rotated away by the first run, or moved: the run still goes on from its own
    check_resume_request(args)
    assert find_checkpoint(args) == str(out / "checkpoint-7")
    args.resume_from_checkpoint = str(out / "checkpoint-6")
    assert find_checkpoint(args) == str(out / "checkpoint-6")


# ---------------------------------------------------------------- in whole runs


def test_a_finished_run_is_never_overwritten_without_consent(tmp_path, small_corpus, capsys):
    # TensorBoard on: its event file grows after training (the final evaluation) and must still count as the run's
    settings = {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15, "max_steps": 2,
                "report_to": "tensorboard"}
    out = tmp_path / "run"
    first = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    with pytest.raises(lmrecipes.RecipeError, match=r"holds a finished run of another recipe \(differs in "
                                                   r"learning_rate, max_steps\).*--overwrite_output_dir true"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **{**settings, "max_steps": 3, "learning_rate": 1e-3},
                           output_dir=str(out))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before, "nothing touched"

    capsys.readouterr()
    again = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))  # the same command: nothing to do
    assert "holds a finished run of this recipe: nothing to do" in capsys.readouterr().out
    assert again == first and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    redone = lmrecipes.pretrain(LLAMA_PRETRAIN, **{**settings, "max_steps": 3}, output_dir=str(out),
                                overwrite_output_dir=True)
    assert read_json(out / "trainer_state.json")["global_step"] == 3 and redone["train_tokens"] > first["train_tokens"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["max_steps"] == 3

    foreign = tmp_path / "my-notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(lmrecipes.RecipeError, match="holds files but no lmrecipes run"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(foreign), overwrite_output_dir=True)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    copied = tmp_path / "downloaded-model"  # a run's recipe.yaml copied into a user's folder proves nothing
    copied.mkdir()
    (copied / "recipe.yaml").write_text((out / "recipe.yaml").read_text())
    (copied / "notes.txt").write_text("mine")
    with pytest.raises(lmrecipes.RecipeError, match="holds files but no lmrecipes run"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(copied), overwrite_output_dir=True)
    assert sorted(p.name for p in copied.iterdir()) == ["notes.txt", "recipe.yaml"]

    # the user's own files inside a finished run folder, even under names runs use, are never deleted
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    for name, make in {"my-analysis.ipynb": lambda p: p.write_text("{}"), "README.md": lambda p: p.write_text("me"),
                       "runs/analysis.ipynb": lambda p: p.write_text("{}"),
                       "merged/precious.txt": lambda p: p.write_text("mine"),
                       "checkpoint-best/notes": lambda p: p.write_text("mine"),
                       "hub": lambda p: p.symlink_to(elsewhere)}.items():
        path = out / name
        path.parent.mkdir(exist_ok=True)
        make(path)
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        with pytest.raises(lmrecipes.RecipeError, match=r"key 'overwrite_output_dir': .* holds files this lmrecipes "
                                                       rf"run did not write, or that changed since \({name}\)"):
            lmrecipes.pretrain(LLAMA_PRETRAIN, **{**settings, "max_steps": 2}, output_dir=str(out),
                               overwrite_output_dir=True)
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before, f"{name}: something was touched"
        path.unlink()
    assert (elsewhere / "keep.txt").read_text() == "mine"
    link = tmp_path / "link-to-run"  # a symbolic link is refused up front, also to a run folder or a new one
    link.symlink_to(out)
    for target in (out, tmp_path / "not-yet"):
        link.unlink()
        link.symlink_to(target)
        with pytest.raises(lmrecipes.RecipeError, match=rf"key 'output_dir': {link} is a symbolic link \(to "
                                                       rf"{target}\); give the folder it points to, or a new folder"):
            lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(link), overwrite_output_dir=True)
    assert not (tmp_path / "not-yet").exists()
    too_long = tmp_path / ("é r" * 85)  # 340 bytes: over the filesystem's 255 (was: an OSError traceback)
    with pytest.raises(lmrecipes.RecipeError, match=r"^key 'output_dir': .*: File name too long$"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(too_long))
    assert (out / "model.safetensors").is_file()
    lmrecipes.pretrain(LLAMA_PRETRAIN, **{**settings, "max_steps": 2}, output_dir=str(out), overwrite_output_dir=True)
    assert read_json(out / "trainer_state.json")["global_step"] == 2  # what the run wrote was deleted and redone


def test_a_finished_run_is_extended_from_its_last_checkpoint_into_a_new_folder(tmp_path, small_corpus):
    """Raising max_steps of a finished run is refused (it stays as it is), naming how to train on; doing so
    continues from its last checkpoint to the new step count."""
    settings = {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15, "save_steps": 2}
    first = tmp_path / "first"
    lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, max_steps=4, output_dir=str(first))
    with pytest.raises(lmrecipes.RecipeError) as refused:
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, max_steps=6, output_dir=str(first))
    hint = f"to train on from where it stopped: --resume_from_checkpoint {first / 'checkpoint-4'} --output_dir"
    assert "differs in max_steps" in str(refused.value) and hint in str(refused.value)
    longer = tmp_path / "longer"
    results = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, max_steps=6, output_dir=str(longer),
                                 resume_from_checkpoint=str(first / "checkpoint-4"))
    assert read_json(longer / "trainer_state.json")["global_step"] == 6
    assert results["train_tokens"] == 6 * 8 * 64, "the 4 steps of the first run are counted, 2 more trained"
    assert read_json(first / "trainer_state.json")["global_step"] == 4, "the finished run is left as it was"
    other = {**settings, "config_overrides": {**TINY_LLAMA["config_overrides"], "num_hidden_layers": 1}}
    with pytest.raises(lmrecipes.RecipeError, match=r"key 'resume_from_checkpoint': .*checkpoint-4 holds another "
                                                   r"model \(.* weights there, .* here\); resume a checkpoint of this recipe"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **other, max_steps=6, output_dir=str(tmp_path / "shallower"),
                           resume_from_checkpoint=str(first / "checkpoint-4"))  # was: a traceback, folder claimed
    assert not (tmp_path / "shallower").exists()


def test_overwrite_deletes_what_the_run_recorded_and_nothing_else(tmp_path, small_corpus):
    settings = {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15, "max_steps": 2,
                "save_steps": 1}
    out = tmp_path / "run"
    lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    recorded = set(read_json(out / ".lmrecipes-run.json")["files"])
    assert {"model.safetensors", "config.json", "tokenizer.json", "all_results.json", "recipe.yaml",
            "checkpoint-2/model.safetensors", "checkpoint-2/trainer_state.json"} <= recorded
    for name in ("checkpoint-2/my-eval-notes.md", "checkpoint-123456/model.safetensors"):  # inside / beside
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("mine")
        with pytest.raises(lmrecipes.RecipeError, match=rf"did not write, or that changed since \({name}\)"):
            lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out), overwrite_output_dir=True)
        assert (out / name).read_text() == "mine"
        (out / name).unlink()
    (out / "checkpoint-123456").rmdir()

    killed = tmp_path / "killed-after-saving"  # stopped during the final evaluation, after the final save
    with pytest.raises(KeyboardInterrupt):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(killed), callbacks=[StopAtFinalEvaluation()])
    assert (killed / "model.safetensors").is_file() and not read_json(killed / ".lmrecipes-run.json").get("finished")
    results = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(killed), overwrite_output_dir=True)
    assert "eval_loss" in results and read_json(killed / ".lmrecipes-run.json")["finished"] is True


def test_only_a_half_written_checkpoint_of_the_run_is_removed(tmp_path):
    from lmrecipes.run_folder import find_last_complete_checkpoint

    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text("model_type: llama\n")
    record_run(out, files=["recipe.yaml"])
    plant_half_written_checkpoint(out, 6)  # the run's own, announced before the kill
    mine = out / "checkpoint-5"  # not the run's: the user's copy, say
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert find_last_complete_checkpoint(out, remove_incomplete=True) is None
    assert not (out / "checkpoint-6").exists() and (mine / "notes.txt").read_text() == "mine"


def test_a_run_on_changed_inputs_is_not_reused(tmp_path, causal_run, learnable_csv):
    """Same recipe text, but the base model at the same path was trained again: not "nothing to do"."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(causal_run[0], base, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    settings = {"model_name_or_path": str(base), "train_file": [learnable_csv], "text_column": "review",
                "label_column": "verdict", "max_length": 32, "max_steps": 2, "eval_strategy": "no",
                "save_strategy": "no", "load_best_model_at_end": False, "report_to": "none",
                "output_dir": str(tmp_path / "ft")}
    first = lmrecipes.finetune(FT_FULL, **settings)
    assert lmrecipes.finetune(FT_FULL, **settings) == first  # unchanged: nothing to do
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # what retraining at the same path does to the folder
    os.utime(weights, ns=(time.time_ns(), weights.stat().st_mtime_ns + 10**9))  # whatever the clock's resolution
    with pytest.raises(lmrecipes.RecipeError, match=r"differs in the contents of model_name_or_path"):
        lmrecipes.finetune(FT_FULL, **settings)


def test_resuming_a_checkpoint_past_max_steps_is_refused_up_front(tmp_path):
    """`--resume_from_checkpoint OLD/checkpoint-1000 --max_steps 500` would save the 1000-step model as a 500-step
    run: refused before anything is written, naming both numbers."""
    from lmrecipes.resume import check_resume_request

    folder = save_checkpoint_files(tmp_path / "checkpoint-8", 8)
    with pytest.raises(RecipeError, match=r"checkpoint-8 is at step 8, past max_steps 5; raise max_steps"):
        check_resume_request(SimpleNamespace(resume_from_checkpoint=str(folder), max_steps=5))
    for max_steps in (8, 12, -1):
        check_resume_request(SimpleNamespace(resume_from_checkpoint=str(folder), max_steps=max_steps))


def test_a_second_command_on_a_folder_in_use_is_refused(tmp_path, small_corpus):
    """Two identical commands started together used to train into one folder (both exit 0): the process training
    into output_dir holds its lock (fcntl, released when the process ends, however it ends); a run stopped between
    writing its marker and its recipe starts afresh."""
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; handle = open(sys.argv[1], 'a'); "
                               "fcntl.flock(handle, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(out / ".lmrecipes-lock")], stdout=subprocess.PIPE, text=True)
    settings = {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15, "max_steps": 2}
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RecipeError, match=rf"key 'output_dir': another process is training into {out}; wait"):
            lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    finally:
        holder.kill()
        holder.wait()
    record_run(out)  # what a stop between the marker and the recipe leaves
    results = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    assert "eval_loss" in results and read_run_recipe(out)["max_steps"] == 2
    assert lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out)) == results  # this process: again


def _lock_taken_soon(path: Path) -> bool:
    """Whether another holder can take the flock on `path` within 2 s (a forked worker closes its copy as it
    starts)."""
    import fcntl

    with open(path, "a") as rerun:
        for _ in range(20):
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(rerun, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            time.sleep(0.1)
    return False


def test_the_run_lock_ends_with_the_run_not_with_its_forked_workers(tmp_path):
    """Data-loader workers are forked with the lock's file open: they let go of it, so a rerun right after a
    SIGKILL is not refused while the orphaned workers wind down."""

    from lmrecipes.run_lock import lock_run_folder, unlock_run_folder

    lock_run_folder(tmp_path)
    worker = os.fork()
    if worker == 0:  # the worker lives on while its parent's run ends
        time.sleep(6)
        os._exit(0)
    try:
        unlock_run_folder(tmp_path)
        assert _lock_taken_soon(tmp_path / RUN_LOCK), "the lock is still held by the forked worker"
    finally:
        os.kill(worker, 9)
        os.waitpid(worker, 0)


def test_a_damaged_marker_a_missing_recipe_and_a_foreign_checkpoint_are_named(tmp_path):
    """An emptied marker (what the run wrote is unknown), a started run whose recipe.yaml was deleted or edited:
    each refused naming what is wrong (said "another recipe", or "nothing to do" for the edited recipe, before). A
    checkpoint copied in from another run (even under a name this run wrote, or as a symbolic link: it was resumed,
    silently, ending at another run's loss) or renamed by the user (the Trainer's rotation deleted it) is refused
    before training."""
    out = tmp_path / "run"
    claim(out, RECIPE)
    save_checkpoint_files(out / "checkpoint-4", 4)
    record_run(out, files=[f"checkpoint-4/{name}" for name in ("trainer_state.json", "model.safetensors")])
    from lmrecipes.resume import check_no_foreign_checkpoints

    check_no_foreign_checkpoints(out)
    save_checkpoint_files(out / "checkpoint-6", 6)  # copied from elsewhere: not in the marker
    with pytest.raises(RecipeError, match=r"holds checkpoint-6, which this run did not write: the Trainer would "
                                          r"resume it or delete it when it rotates checkpoints; move it out"):
        check_no_foreign_checkpoints(out)
    shutil.rmtree(out / "checkpoint-6")
    (out / "checkpoint-4").rename(out / "checkpoint-4.bak")  # the user's copy: rotation would have deleted it
    with pytest.raises(RecipeError, match=r"holds checkpoint-4.bak, which this run did not write"):
        check_no_foreign_checkpoints(out)
    (out / "checkpoint-4.bak").rename(out / "checkpoint-4")
    from lmrecipes.checkpoints import write_manifest

    other = save_checkpoint_files(tmp_path / "other" / "checkpoint-6", 6)  # another run's, under a recorded name
    write_manifest(other, "another-run")
    shutil.copytree(other, out / "checkpoint-6")
    record_run(out, files=["checkpoint-6/trainer_state.json"])
    with pytest.raises(RecipeError, match=r"holds checkpoint-6, which this run did not write"):
        check_no_foreign_checkpoints(out)
    shutil.rmtree(out / "checkpoint-6")
    (out / "checkpoint-6").symlink_to(other)  # a link to it (it was resumed, silently)
    with pytest.raises(RecipeError, match=r"checkpoint-6 is a symbolic link \(to .*\): a run resumes only "
                                          r"checkpoints it wrote"):
        check_no_foreign_checkpoints(out)
    assert find_last_complete_checkpoint(out) == str(out / "checkpoint-4"), "links are never resumed"
    (out / "checkpoint-6").unlink()
    write_manifest(out / "checkpoint-4", run_record(out)["run_id"])
    check_no_foreign_checkpoints(out)  # its own, manifest and all
    (out / RUN_RECIPE).write_text((out / RUN_RECIPE).read_text() + "max_steps: 400\n")  # edited since
    with pytest.raises(RecipeError, match=rf"{RUN_RECIPE} was changed after the run wrote it, so it no longer says "
                                          "how the run was trained"):
        claim(out, RECIPE)
    (out / RUN_RECIPE).unlink()
    with pytest.raises(RecipeError, match=rf"holds a started run whose {RUN_RECIPE} is missing: put it back"):
        claim(out, RECIPE)
    (out / RUN_MARKER).write_text("")
    with pytest.raises(RecipeError, match=r"the run marker .* cannot be read \(emptied or damaged\)"):
        claim(out, RECIPE, overwrite=True)
    with pytest.raises(RecipeError, match=r"the run marker .* cannot be read \(emptied, damaged or unreadable\)"):
        record_run(out, files=["checkpoint-4/trainer_state.json"])  # never written over with only the new files
    assert (out / RUN_MARKER).read_text() == ""


def test_a_started_run_resumed_with_another_global_batch_is_refused(tmp_path):
    """Killed on 1 process, rerun on 2: the resumed steps would train on twice the rows per step, ending at a loss
    neither launch gives. Refused, naming both; a finished run is still "nothing to do"."""
    out = tmp_path / "run"
    claim(out, RECIPE)
    args = Arguments(output_dir=str(out), overwrite_output_dir=False, should_save=True, process_index=0,
                     world_size=2, per_device_train_batch_size=8, gradient_accumulation_steps=1)
    with pytest.raises(RecipeError, match=r"trained on 8 rows per step \(processes x batch x gradient accumulation\), "
                                          r"this launch would train on 16 \(2 process\(es\)\): resume it with as many"):
        claim_output_dir(args, RECIPE, "# a test run", {"data": "d1"})
    finish(out, {"eval_loss": 4.2})
    assert claim_output_dir(args, RECIPE, "# a test run", {"data": "d1"}) == {"eval_loss": 4.2}


def test_a_started_streaming_run_resumed_with_another_number_of_processes_is_refused(tmp_path):
    """A stream is split between the processes of a launch: 2 processes of batch 4 and 1 of batch 8 train on as
    many rows per step, but on other shares of the stream, and each would skip another share. Refused for a
    streaming run; a run on in-memory data goes on (its sampler covers the same blocks)."""
    streaming = {**RECIPE, "streaming": True}
    for recipe in (streaming, RECIPE):
        out = tmp_path / f"run-{'streaming' if recipe is streaming else 'memory'}"
        claim_output_dir(Arguments(output_dir=str(out), overwrite_output_dir=False, should_save=True, process_index=0,
                                   world_size=2, per_device_train_batch_size=4, gradient_accumulation_steps=1),
                         recipe, "# a test run", {"data": "d1"})
        (out / "checkpoint-1").mkdir()
        one = Arguments(output_dir=str(out), overwrite_output_dir=False, should_save=True, process_index=0,
                        world_size=1, per_device_train_batch_size=8, gradient_accumulation_steps=1)
        if recipe is streaming:
            with pytest.raises(RecipeError, match=r"split its stream between 2 processes, this launch has 1: resume "
                                                  "it with as many processes as before"):
                claim_output_dir(one, recipe, "# a test run", {"data": "d1"})
        else:
            assert claim_output_dir(one, recipe, "# a test run", {"data": "d1"}) is None


def test_a_cache_build_lock_ends_with_its_process_not_with_its_forked_workers(tmp_path):
    """A build (token shards, tokenized data) forks data-loader workers while it holds its turn: they let go of
    the lock, so that the rerun of a killed build does not wait on its orphaned workers."""

    from lmrecipes.cache import _turn

    lock = tmp_path / ".entry.lock"
    with _turn(lock):
        worker = os.fork()
        if worker == 0:  # the orphan lives on after the build ended
            time.sleep(6)
            os._exit(0)
    try:
        assert _lock_taken_soon(lock), "the build's lock is still held by its forked worker"
    finally:
        os.kill(worker, 9)
        os.waitpid(worker, 0)
