"""Launches (launch.py, parallelism.py): the checks that need only the arguments and the environment, case by case,
and whole launches as users type them: a launch asking for sharding that cannot run, one accelerate-launched
process on every core, ZeRO-3 that would save no weights, processes that would each train alone."""

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

import lmrecipes
from conftest import (
    LLAMA_PRETRAIN,
    REPO,
    TINY_LLAMA,
    TORCH_EXTENSIONS,
    accelerate_launch,
    launch_env,
    read_json,
    run_launch,
    write_recipe,
)
from lmrecipes import RecipeError, launch
from lmrecipes.launch import (
    check_launch,
    exit_on_recipe_error,
    fsdp_on_cpu,
    launched_on_cpu_without_use_cpu,
    made_once,
    sharding_asked_for,
)

# ---------------------------------------------------------------- launch checks, case by case


def test_one_process_driving_several_gpus_is_refused():
    """Plain `python scripts/pretrain.py` on a 4-GPU node: the Trainer would wrap the model in nn.DataParallel and
    the throughput callback would report one device's tokens/s and MFU for four (up to 4x too high)."""
    several_gpus = SimpleNamespace(world_size=1, n_gpu=4)
    for job in ("pretrain", "finetune"):
        with pytest.raises(RecipeError, match=rf"^{job} does not drive 4 GPUs from one process \(nn.DataParallel\): "
                                              f"launch one process per GPU, accelerate launch --num_processes 4 "
                                              f"scripts/{job}.py ..., or pick one GPU with CUDA_VISIBLE_DEVICES=0"):
            check_launch(several_gpus, job)
    check_launch(SimpleNamespace(world_size=1, n_gpu=1), "pretrain")
    check_launch(SimpleNamespace(world_size=4, n_gpu=1), "pretrain")  # a launch: one device per process


def test_the_sharding_a_launch_asked_for_is_read_from_accelerates_variables(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    assert sharding_asked_for() is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert sharding_asked_for() == "DeepSpeed"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "1")
    assert sharding_asked_for() == "FSDP"


def test_several_cpu_processes_without_use_cpu_become_one_cpu_run(monkeypatch):
    monkeypatch.setattr(launch, "has_accelerator", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_on_cpu_without_use_cpu(False) is True
    assert launched_on_cpu_without_use_cpu(True) is False  # asked for already
    monkeypatch.setattr(launch, "has_accelerator", lambda: True)
    assert launched_on_cpu_without_use_cpu(False) is False  # GPUs: each process takes one
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(launch, "has_accelerator", lambda: False)
    assert launched_on_cpu_without_use_cpu(False) is False  # one process


def test_fsdp_version_1_on_a_cpu_launch_is_refused_and_the_state_is_left_as_it_was(monkeypatch):
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(PartialState, "_shared_state", {"distributed_type": DistributedType.MULTI_CPU})
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(RecipeError, match="asks for FSDP version 1, which needs an accelerator"):
        with fsdp_on_cpu():
            pass
    monkeypatch.setenv("FSDP_VERSION", "2")
    with fsdp_on_cpu():  # shown as a multi-device run while the Accelerator is made, then as it was
        assert PartialState._shared_state["distributed_type"] == DistributedType.MULTI_GPU
    assert PartialState._shared_state["distributed_type"] == DistributedType.MULTI_CPU


def test_one_process_makes_it_for_itself(monkeypatch):
    made = []
    one = SimpleNamespace(world_size=1, process_index=0)
    assert made_once(lambda: made.append(1) or "tokenizer", one, repr, eval, "it") == "tokenizer" and made == [1]


def test_a_script_reports_a_recipe_error_in_one_line_with_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    @exit_on_recipe_error
    def main():
        raise RecipeError("key 'x': bad\n  value")

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: key 'x': bad value\n"
    assert exit_on_recipe_error(lambda: 7)() == 7

    @exit_on_recipe_error
    def interrupted():  # Ctrl-C: one line too (it was a KeyboardInterrupt traceback), the shell's code 130
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        interrupted()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.startswith("error: interrupted (Ctrl-C); the same command goes on from where")

    @exit_on_recipe_error
    def full_disk():  # anywhere a script writes (publish, merge_lora, the export after fine-tuning): tracebacks were
        raise OSError(27, "File too large", "runs/x/model.safetensors", None, "runs/x/.tmp-hub/model.safetensors")

    with pytest.raises(SystemExit) as exit_info:
        full_disk()
    assert exit_info.value.code == 2 and capsys.readouterr().err == (
        "error: writing runs/x/.tmp-hub/model.safetensors failed ([Errno 27] File too large: 'runs/x/model.safetensors'"
        " -> 'runs/x/.tmp-hub/model.safetensors'): free some space (the disk, quota or file-size limit is full), "
        "then run the same command again\n")

    @exit_on_recipe_error
    def terminated():  # SIGTERM (a preemption notice): it ended the process without a word, exit -15
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        terminated()
    assert exit_info.value.code == 143 and signal.getsignal(signal.SIGTERM) is before
    assert capsys.readouterr().err.startswith("error: stopped (SIGTERM); the same command goes on from where")

    @exit_on_recipe_error
    def terminated_with_its_workers():  # SIGTERM to the process group: a worker's death fails the unwinding
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            raise RuntimeError("DataLoader worker (pid 1234) is killed by signal: Terminated.")

    with pytest.raises(SystemExit) as exit_info:
        terminated_with_its_workers()
    assert exit_info.value.code == 143
    assert capsys.readouterr().err.startswith("error: stopped (SIGTERM); the same command goes on from where")


# ---------------------------------------------------------------- whole launches


def test_a_launch_asking_for_fsdp_that_cannot_run_stops_in_one_line(tmp_path, small_corpus):
    """accelerate 1.15 drops FSDP on CPU and trains DDP; lmrecipes runs FSDP2 there, but FSDP version 1 needs an
    accelerator: the run says so and stops (exit 2) before writing."""
    out = tmp_path / "fsdp"
    recipe = write_recipe(tmp_path / "pretrain.yaml", LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus],
                          validation_fraction=0.15, max_steps=2, output_dir=str(out))
    result = run_launch(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "accelerate_configs" / "fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
         "--fsdp_version", "1",
         "--main_process_port", "0", str(REPO / "scripts" / "pretrain.py"), str(recipe)],
        timeout=300, env=launch_env())
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], result.stderr[-2000:]  # one line per process
    assert "the launch config asks for FSDP version 1, which needs an accelerator; on CPU lmrecipes runs FSDP2" \
        in errors[0]
    assert "Traceback" not in result.stderr.split("error: ", 1)[0]
    assert not out.exists(), "nothing written"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_one_process_started_by_accelerate_launch_trains_on_every_core(tmp_path, small_corpus):
    """accelerate launch sets OMP_NUM_THREADS=1 for the one process it starts (half the speed of a 2-core machine):
    lmrecipes trains on every physical core unless the user chose a thread count."""
    import psutil

    cpus = len(os.sched_getaffinity(0))
    cores = min(psutil.cpu_count(logical=False) or cpus, cpus)
    for name, chosen in (("default", {}), ("chosen", {"OMP_NUM_THREADS": "1"})):
        recipe = write_recipe(tmp_path / f"{name}.yaml", LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus],
                              validation_fraction=0.15, max_steps=1, output_dir=str(tmp_path / name))
        env = {key: value for key, value in launch_env().items() if key != "OMP_NUM_THREADS"}
        done = run_launch([sys.executable, "-m", "accelerate.commands.launch", str(REPO / "scripts" / "pretrain.py"),
                           str(recipe)], timeout=300, env={**env, **chosen})
        assert done.returncode == 0, done.stderr[-3000:]
        threads = cores if name == "default" else 1
        assert f"CPU threads per process: {threads} of {cpus} CPUs" in done.stdout, done.stdout[-3000:]


def test_zero3_that_would_save_no_weights_is_refused_before_training(tmp_path, small_corpus):
    """DeepSpeed ZeRO-3 without gathering the weights on save writes a final model folder without weights (only
    DeepSpeed's shards and zero_to_fp32.py): refused in one line before anything is written. The launch meets the
    build lock of DeepSpeed's CPU collective op as a process killed while loading it leaves it, which would make it
    wait forever: the lock is removed, named in a warning."""
    out = tmp_path / "zero3"
    recipe = write_recipe(tmp_path / "r.yaml", LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus],
                          validation_fraction=0.15, max_steps=2, output_dir=str(out))
    orphan = TORCH_EXTENSIONS / "deepspeed_shm_comm" / "lock"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.touch()
    os.utime(orphan, (time.time() - 120, time.time() - 120))  # left by a kill two minutes ago
    done = run_launch(accelerate_launch("zero3", REPO / "scripts" / "pretrain.py", recipe,
                                        flags=["--zero3_save_16bit_model", "false"]), timeout=300, env=launch_env())
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "DeepSpeed ZeRO-3 without gathering the weights on save would leave the final " \
        "model without weights" in errors[0], done.stderr[-3000:]
    assert not out.exists()
    assert f"Removed {orphan}, a build lock left by a process that ended" in done.stdout + done.stderr
    assert not orphan.exists()


def test_processes_that_would_each_train_alone_are_refused(monkeypatch):
    from types import SimpleNamespace

    from lmrecipes.launch import check_launch

    monkeypatch.setenv("WORLD_SIZE", "2")  # launched as 2 processes, but each one's arguments see world size 1
    with pytest.raises(lmrecipes.RecipeError, match="2 processes were launched but training would run with world "
                                                    r"size 1: each process would train a duplicate model"):
        check_launch(SimpleNamespace(world_size=1, n_gpu=1))
    check_launch(SimpleNamespace(world_size=2, n_gpu=1))


def test_several_processes_on_a_cpu_machine_train_one_ddp_run_without_extra_variables(tmp_path, small_corpus):
    """`--multi_gpu` on a CPU machine without ACCELERATE_USE_CPU (accelerate does not pass use_cpu on): the
    processes used to train alone, each a duplicate; now they are one DDP run over gloo, and say so."""
    out = tmp_path / "multi"
    recipe = write_recipe(tmp_path / "r.yaml", LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus],
                          validation_fraction=0.15, max_steps=2, output_dir=str(out))
    done = run_launch([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--main_process_port", "0", str(REPO / "scripts" / "pretrain.py"), str(recipe)], timeout=300,
                      env=launch_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Parallelism: DDP: parameters replicated, gradients averaged; 2 processes on 1 machine, backend gloo" \
        in done.stdout
    assert read_json(out / "all_results.json")["train_tokens"] == 2 * 2 * 8 * 64, "tokens of both processes"


def test_a_build_lock_that_a_live_process_holds_is_kept(tmp_path):
    """Only a build lock no process holds is removed: one that a building process still has open stays, and is
    removed once that process has ended without deleting it."""
    lock = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", "import os, sys, time; os.open(sys.argv[1], os.O_CREAT | "
                               "os.O_EXCL); print('held', flush=True); time.sleep(60)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert not launch.remove_orphaned_build_lock(lock) and lock.exists()
    finally:
        holder.kill()
        holder.wait()
    started = time.monotonic()
    assert launch.remove_orphaned_build_lock(lock, young_s=2.0) and not lock.exists()
    assert time.monotonic() - started >= 1.0, "a young lock is given time to go away first"
    assert not launch.remove_orphaned_build_lock(lock)  # nothing left to remove


def test_an_error_raised_in_a_data_loader_worker_is_still_one_line():
    """A RecipeError raised in a data-loader worker reaches the script as torch re-raises it, with the worker's
    traceback as its text: the line printed is the error's own."""
    from lmrecipes.launch import _stop_message

    arrived = RecipeError("Caught RecipeError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                          "last):\n  File \"x.py\", line 1, in rows\nlmrecipes.errors.RecipeError: share 2 of the 2 the"
                          " training stream is split into holds no row\n")
    assert _stop_message(arrived) == ("share 2 of the 2 the training stream is split into holds no row", 2)


def test_transformers_logs_at_log_level_from_the_start_and_deepspeed_keeps_quiet_about_the_cpu(tmp_path):
    """log_level applies before the Trainer exists (model loading logs first); on a machine without an accelerator
    DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it." (its
    import by accelerate, in every run where it is installed) is left out."""
    import logging

    from transformers import TrainingArguments
    from transformers.utils import logging as transformers_logging

    from lmrecipes.launch import has_accelerator, setup_logging

    verbosity = transformers_logging.get_verbosity()
    try:
        setup_logging(TrainingArguments(output_dir=str(tmp_path), log_level="info"))
        assert transformers_logging.get_verbosity() == logging.INFO
        setup_logging(TrainingArguments(output_dir=str(tmp_path)))
        assert transformers_logging.get_verbosity() == logging.WARNING  # lmrecipes' default: transformers' warnings
    finally:
        transformers_logging.set_verbosity(verbosity)

    def shown(message: str) -> bool:
        return bool(logging.getLogger("DeepSpeed").filter(
            logging.LogRecord("DeepSpeed", logging.WARNING, "real_accelerator.py", 213, message, None, None)))

    assert shown("Some other DeepSpeed warning")
    assert shown("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.") \
        == has_accelerator()
