"""Faults during a run, as users meet them: a run killed with SIGKILL (also while saving, also with two processes
under DDP, FSDP2 or DeepSpeed, also on two machines) resumes to the same result, and a NaN loss stops the run before
anything is saved from the diverged model. docs/reliability.md lists every case with its test."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

import lmrecipes
from conftest import (
    BERT_PRETRAIN,
    ELECTRA_PRETRAIN,
    FT_FULL,
    FT_LORA,
    LAUNCHES,
    LLAMA_PRETRAIN,
    REPO,
    TINY_BERT,
    TINY_ELECTRA,
    TINY_LLAMA,
    StopAtFinalEvaluation,
    accelerate_launch,
    kill_while_saving,
    launch_env,
    plant_half_written_checkpoint,
    read_json,
    run_ddp_probe,
    run_launch,
    run_script,
    write_recipe,
)
from lmrecipes.ownership import check_deletable
from lmrecipes.run_folder import is_complete_checkpoint, run_owns

# fused_loss false: the launches are compared with one loss (fused_loss auto stays off under FSDP and DeepSpeed;
# DDP with the fused loss: tests/test_pretrain.py)
SCALE_OUT = {**TINY_LLAMA, "validation_fraction": 0.15, "max_steps": 12, "save_steps": 3, "save_total_limit": 2,
             "seed": 7, "fused_loss": "false"}


# ZeRO-3: transformers builds the model under deepspeed.zero.Init (each layer initialised partitioned), so its
# initial weights differ from the other runs' (first loss 6.241 vs 6.254): it is compared to DDP loosely (after 12
# steps: 5e-4 apart without document masking, 2.7e-3 and 3.0e-3 in two runs with it)
EVAL_LOSS_VS_DDP = {"fsdp2": 1e-5, "zero2": 1e-5, "zero3": 6e-3}


# srun for a test: runs the job step's `bash -c COMMAND` once per node, at the same time, each node with its own
# SLURM_PROCID and its own caches (machines that share no filesystem but output_dir); logs each node's command.
# Given as exported bash functions, not files on PATH: a freshly written executable can fail with "Text file busy"
# while another process forked with it open.
FAKE_SRUN = """() { while [ "$1" != bash ]; do shift; done
    for node in $(seq 0 $((SLURM_NNODES - 1))); do
        SLURM_PROCID=$node LMRECIPES_CACHE=$NODES_DIR/node$node/cache HF_HOME=$NODES_DIR/node$node/hf \\
            bash -xc "$3" > "$NODES_DIR/node$node.log" 2>&1 &
    done
    local failed=0 job
    for job in $(jobs -p); do wait $job || failed=1; done
    return $failed
}"""
FAKE_SCONTROL = "() { printf '127.0.0.1\\nnode-b\\n'; }"


def resume_and_check(script, recipe, out, reference_loss, key, resumable=(6, 9)):
    process = run_script(script, recipe)
    log = process.communicate(timeout=300)[0]
    assert process.returncode == 0, log[-3000:]
    resumed_from = [line for line in log.splitlines() if "Resuming from" in line]
    assert resumed_from, log[-2000:]
    assert int(resumed_from[0].rsplit("checkpoint-", 1)[1]) in resumable  # the last complete one at the kill
    # the planted half-written one was skipped and removed
    assert "trainer_state.json missing, cut short or of another step (written last: the run stopped while" in log
    results = read_json(out / "all_results.json")
    assert abs(results[key] - reference_loss) < 1e-4, (results[key], reference_loss)
    return results


@pytest.mark.parametrize("base, tiny", [(LLAMA_PRETRAIN, TINY_LLAMA), (BERT_PRETRAIN, TINY_BERT),
                                        (ELECTRA_PRETRAIN, TINY_ELECTRA)], ids=["causal", "masked", "electra"])
def test_pretraining_killed_while_saving_resumes_to_the_same_result(tmp_path, small_corpus, base, tiny):
    """Masked and ELECTRA runs too: their masks are seeded by the batch (objectives.masked_lm.BatchSeededMasking),
    dropout and the generator's samples come from the random state the checkpoint restores."""
    settings = {**tiny, "train_file": [small_corpus], "validation_fraction": 0.15, "max_steps": 12,
                "save_steps": 3, "save_total_limit": 2, "logging_steps": 1, "seed": 7}
    reference = lmrecipes.pretrain(base, **settings, output_dir=str(tmp_path / "uninterrupted"))

    out = tmp_path / "killed"
    recipe = write_recipe(tmp_path / "pretrain.yaml", base, **settings, output_dir=str(out))
    kill_while_saving(run_script("pretrain.py", recipe), out, complete_step=6, next_step=9)
    assert not (out / "all_results.json").exists()
    plant_half_written_checkpoint(out, 11)
    resumable = (6, 9)
    if base == LLAMA_PRETRAIN:  # and a power loss cut the newest complete checkpoint's optimizer state short
        newest = max(step for step in (6, 9) if is_complete_checkpoint(out / f"checkpoint-{step}"))
        optimizer = out / f"checkpoint-{newest}" / "optimizer.pt"
        optimizer.write_bytes(optimizer.read_bytes()[:1000])
        resumable = (newest - 3,)
    results = resume_and_check("pretrain.py", recipe, out, reference["eval_loss"], "eval_loss", resumable)
    assert not (out / "checkpoint-11").exists(), "the half-written checkpoint was removed"
    assert read_json(out / "trainer_state.json")["global_step"] == 12
    assert results["train_tokens"] == reference["train_tokens"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, small_corpus):
    """Uninterrupted 2-process runs of one recipe, per launch (each made once, on first use): (folder, the probe's
    per-rank records)."""
    runs = {}

    def run(launch: str):
        if launch not in runs:
            out = tmp_path_factory.mktemp(launch) / "run"
            runs[launch] = out, run_ddp_probe(LLAMA_PRETRAIN, small_corpus, out, SCALE_OUT, launch)
        return runs[launch]

    return run


def whole_model_digest(folder: Path) -> str:
    """from_pretrained finds every weight in the folder; the digest of its tensors (as the probe takes them)."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("launch", ["ddp", "fsdp2", "zero3"])
def test_two_process_pretraining_killed_resumes_to_the_same_result(tmp_path, small_corpus, uninterrupted, launch):
    """DDP, FSDP2 and DeepSpeed ZeRO-3 on 2 CPU processes over gloo, launched as a user would: the whole
    `accelerate launch` process group killed with SIGKILL mid-run, the same command again resumes and ends at the
    eval loss of an uninterrupted run of the same launch. The sharded runs really shard (each rank holds half the
    parameters), train like DDP, and write a whole final model."""
    reference, ranks = uninterrupted(launch)
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["params"] == ranks[1]["params"]
    expected = read_json(reference / "all_results.json")
    if launch != "ddp":
        held = [r["local_parameters"] / r["parameters"] for r in ranks]
        assert sum(r["local_parameters"] for r in ranks) == ranks[0]["parameters"] and all(
            0.45 < share < 0.55 for share in held), held
        ddp, ddp_ranks = uninterrupted("ddp")
        assert all(r["local_parameters"] == r["parameters"] for r in ddp_ranks)  # DDP: every rank holds all
        assert abs(expected["eval_loss"] - read_json(ddp / "all_results.json")["eval_loss"]) < EVAL_LOSS_VS_DDP[launch]
        # the final model is whole: every weight, and the values training ended with
        assert whole_model_digest(reference) == ranks[0]["params"]
    if launch == "fsdp2":  # checkpoints stay sharded
        shards = reference / "checkpoint-12" / "pytorch_model_fsdp_0"
        assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert not (reference / "checkpoint-12" / "model.safetensors").exists()

    out = tmp_path / "killed"
    recipe = write_recipe(tmp_path / "b.yaml", LLAMA_PRETRAIN, **SCALE_OUT, train_file=[small_corpus],
                          output_dir=str(out))

    def start(log):  # the log goes to a file: a full pipe would block the run
        return subprocess.Popen(accelerate_launch(launch, REPO / "scripts" / "pretrain.py", recipe),
                                stdout=open(log, "w"), stderr=subprocess.STDOUT, env=launch_env())

    process = start(tmp_path / "b.log")
    import psutil

    def kill_all():  # SIGKILL to both training processes and the launcher (torch elastic: not one group)
        processes = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
        for each in processes:
            each.kill()
        process.wait()
        psutil.wait_procs(processes, timeout=30)

    try:
        deadline = time.monotonic() + 240
        while not (is_complete_checkpoint(out / "checkpoint-6") and (out / "checkpoint-9").exists()):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.005)
    finally:
        kill_all()
    assert not (out / "all_results.json").exists()
    again = start(tmp_path / "c.log")
    again.wait(timeout=300)
    log = (tmp_path / "c.log").read_text()
    assert again.returncode == 0, log[-3000:]
    assert "Resuming from" in log and LAUNCHES[launch][1] in log
    assert read_json(out / "trainer_state.json")["global_step"] == 12
    results = read_json(out / "all_results.json")
    assert abs(results["eval_loss"] - expected["eval_loss"]) < 1e-4, (results["eval_loss"], expected["eval_loss"])
    assert results["train_tokens"] == expected["train_tokens"] == 12 * 2 * 8 * 64


def test_slurm_script_on_two_nodes_over_loopback_trains_one_model(tmp_path, small_corpus, uninterrupted):
    """accelerate_configs/slurm_multi_node.sbatch run as SLURM would on 2 nodes of 1 CPU process each (srun and
    scontrol faked, the nodes on 127.0.0.1, no shared cache): the rendered launches name each node's rank and the
    first node's address; the two `accelerate launch` processes train one model with world size 2 (the loss of a
    2-process run on one machine), and the recipe's tokenizer is trained once, by process 0, and sent to the other
    node (which used to find none and crash)."""
    import socket

    config = yaml.safe_load((REPO / "accelerate_configs" / "multi_node.yaml").read_text())
    (tmp_path / "cpu.yaml").write_text(yaml.safe_dump({**config, "mixed_precision": "no"}))  # bf16: GPU nodes
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", LLAMA_PRETRAIN, **SCALE_OUT, train_file=[small_corpus],
                          output_dir=str(out))
    env = {**launch_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "BASH_FUNC_srun%%": FAKE_SRUN, "BASH_FUNC_scontrol%%": FAKE_SCONTROL,
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "GPUS_PER_NODE": "1", "MASTER_PORT": str(port),
           "ACCELERATE_CONFIG": str(tmp_path / "cpu.yaml"), "NODES_DIR": str(tmp_path)}
    done = run_launch(["bash", str(REPO / "accelerate_configs" / "slurm_multi_node.sbatch"), str(recipe)],
                      cwd=REPO, env=env, timeout=300)
    logs = [(tmp_path / f"node{node}.log").read_text() if (tmp_path / f"node{node}.log").exists() else ""
            for node in (0, 1)]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + logs[0][-2000:] + logs[1][-2000:]
    for node, log in enumerate(logs):
        launch = next(line for line in log.splitlines() if line.startswith("+ accelerate launch"))
        assert f"--num_machines 2 --num_processes 2 --machine_rank {node} --main_process_ip 127.0.0.1 " \
               f"--main_process_port {port} scripts/pretrain.py {recipe}" in launch, launch
    assert "Parallelism: DDP: parameters replicated, gradients averaged; 2 processes on 2 machines, backend gloo" \
        in logs[0]
    assert (tmp_path / "node0" / "cache" / "tokenizers").is_dir()
    assert not (tmp_path / "node1" / "cache" / "tokenizers").exists(), "the second node trained no tokenizer"
    results, single_machine = read_json(out / "all_results.json"), read_json(uninterrupted("ddp")[0] / "all_results.json")
    assert results["train_tokens"] == single_machine["train_tokens"] == 12 * 2 * 8 * 64
    assert abs(results["eval_loss"] - single_machine["eval_loss"]) < 1e-6


def test_deepspeed_zero2_on_two_cpu_processes_trains_like_ddp(uninterrupted):
    ranks = uninterrupted("zero2")[1]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["params"] == uninterrupted("ddp")[1][0]["params"]  # the same weights as DDP, bit for bit
    assert whole_model_digest(uninterrupted("zero2")[0]) == ranks[0]["params"]


def test_lora_finetuning_killed_resumes_to_the_same_result(tmp_path, causal_run, learnable_csv):
    settings = {"model_name_or_path": str(causal_run[0]), "train_file": [learnable_csv], "text_column": "review",
                "label_column": "verdict", "max_length": 32, "per_device_train_batch_size": 16, "max_steps": 12,
                "eval_strategy": "no", "save_strategy": "steps", "save_steps": 3, "save_total_limit": 2,
                "load_best_model_at_end": False, "logging_steps": 1, "disable_tqdm": True, "report_to": "none",
                "learning_rate": 3e-3, "lora_dropout": 0.1, "merge_lora": False, "seed": 7}
    reference = lmrecipes.finetune(FT_LORA, **settings, output_dir=str(tmp_path / "uninterrupted"))

    out = tmp_path / "killed"
    recipe = write_recipe(tmp_path / "lora.yaml", FT_LORA, **settings, output_dir=str(out))
    kill_while_saving(run_script("finetune.py", recipe), out, complete_step=6, next_step=9)
    plant_half_written_checkpoint(out, 10)
    results = resume_and_check("finetune.py", recipe, out, reference["test_loss"], "test_loss")
    assert abs(results["eval_loss"] - reference["eval_loss"]) < 1e-4
    assert results["test_accuracy"] == reference["test_accuracy"]


class PoisonWeightsAt(TrainerCallback):
    """A fault injected into the model: after `step`, one entry of every weight tensor becomes NaN."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.view(-1)[0] = float("nan")


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, small_corpus):
    out = tmp_path / "nan"
    with pytest.raises(lmrecipes.RecipeError, match=r"training loss became nan by step 6: run stopped.*"
                                                   r"last good checkpoint: .*checkpoint-4"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **{**TINY_LLAMA, "save_steps": 2, "logging_steps": 3},
                           train_file=[small_corpus], validation_fraction=0.15, max_steps=10, output_dir=str(out),
                           callbacks=[PoisonWeightsAt(4)])
    assert is_complete_checkpoint(out / "checkpoint-4")
    assert not (out / "checkpoint-6").exists(), "no checkpoint of the diverged model"
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()


def test_nan_at_the_last_step_without_checkpoints_saves_no_final_model(tmp_path, small_corpus):
    """save_strategy: no, logging every 5 steps, NaN after step 6 of 8: the last step is checked before the final
    save (it used to be saved as the run's model)."""
    out = tmp_path / "nan-last"
    with pytest.raises(lmrecipes.RecipeError, match=r"training loss became nan by step 8: .*last good checkpoint: "
                                                   r"none"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **{**TINY_LLAMA, "save_strategy": "no", "logging_steps": 5},
                           train_file=[small_corpus], validation_fraction=0.15, max_steps=8, output_dir=str(out),
                           callbacks=[PoisonWeightsAt(6)])
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()


class StopAfterStep(TrainerCallback):
    """A stop after `step` (its checkpoint saved), as a SIGTERM there leaves the run."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_checkpoint_without_optimizer_state_is_resumed_only_when_asked(tmp_path, small_corpus):
    """save_only_model checkpoints (or a deleted optimizer.pt) hold the weights only: resuming them restarts the
    optimizer and the learning-rate schedule, so the rerun refuses, naming the key that resumes them anyway."""
    settings = {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15, "max_steps": 6,
                "save_steps": 2, "save_only_model": True, "eval_strategy": "no"}
    out = tmp_path / "weights-only"
    with pytest.raises(KeyboardInterrupt):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out), callbacks=[StopAfterStep(4)])
    with pytest.raises(lmrecipes.RecipeError, match=r"checkpoint-4 has no optimizer state, scheduler.pt, "
                       r"rng_state.pth \(save_only_model: true, or deleted\): resuming it would restart the "
                       r"optimizer and the learning-rate schedule; to do so anyway, pass --resume_from_checkpoint"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    results = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out),
                                 resume_from_checkpoint=str(out / "checkpoint-4"))
    assert read_json(out / "trainer_state.json")["global_step"] == 6 and "eval_loss" in results


def test_a_run_stopped_during_its_final_evaluation_finishes_from_its_last_checkpoint(tmp_path, small_corpus):
    """The last checkpoint is the run's last step (save_steps divides max_steps, as in every shipped recipe): the
    rerun finishes from it, without a step past the schedule, with the uninterrupted run's eval loss."""
    settings = {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15, "max_steps": 8,
                "save_steps": 4}
    reference = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(tmp_path / "uninterrupted"))
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out), callbacks=[StopAtFinalEvaluation()])
    results = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    assert abs(results["eval_loss"] - reference["eval_loss"]) < 1e-4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"], "no step past the end"
    assert read_json(out / "trainer_state.json")["global_step"] == 8 and results["mfu"] is None
    assert read_json(out / ".lmrecipes-run.json")["finished"] is True
    assert lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))["eval_loss"] == results["eval_loss"]


def test_an_accelerator_without_a_known_peak_finishes_with_mfu_unknown(tmp_path, small_corpus, monkeypatch):
    """MFU needs the device's peak (a table for GPUs): a device not in it (MPS, a new GPU) trains and reports MFU as
    unknown (null) instead of failing when the train metrics are printed."""
    from lmrecipes import throughput

    monkeypatch.setattr(throughput, "peak_flops_per_device", lambda device, dtype: (None, "unknown accelerator 'X1'"))
    results = lmrecipes.pretrain(LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus], validation_fraction=0.15,
                                 max_steps=2, output_dir=str(tmp_path / "x1"))
    assert results["mfu"] is None and results["train_tokens_per_second"] > 0
    assert read_json(tmp_path / "x1" / "train_results.json")["mfu"] is None


def test_a_fine_tuning_run_stopped_during_its_final_evaluation_finishes(tmp_path, causal_run, learnable_csv):
    """The same for an epoch-based run (save_strategy: epoch, as every fine-tuning recipe): the rerun finishes
    from the last epoch's checkpoint with the uninterrupted run's results; no train loss of zero steps is reported."""
    settings = {"model_name_or_path": str(causal_run[0]), "train_file": [learnable_csv], "text_column": "review",
                "label_column": "verdict", "max_length": 32, "max_train_samples": 120, "num_train_epochs": 2,
                "eval_strategy": "no", "save_strategy": "epoch", "load_best_model_at_end": False,
                "report_to": "none", "disable_tqdm": True}
    reference = lmrecipes.finetune(FT_FULL, **settings, output_dir=str(tmp_path / "uninterrupted"))
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        lmrecipes.finetune(FT_FULL, **settings, output_dir=str(out), callbacks=[StopAtFinalEvaluation()])
    results = lmrecipes.finetune(FT_FULL, **settings, output_dir=str(out))
    for key in ("eval_loss", "test_loss", "test_accuracy"):
        assert abs(results[key] - reference[key]) < 1e-4, key
    assert "train_loss" not in results and read_json(out / ".lmrecipes-run.json")["finished"] is True


def test_a_run_selecting_its_best_checkpoint_stopped_at_the_end_finishes_with_the_best(tmp_path, causal_run,
                                                                                       learnable_csv):
    """As the label curve's runs: evaluations and saves every 3 steps, the best checkpoint kept (save_total_limit 1)
    and loaded at the end. Stopped right after the last step's checkpoint is saved, the rerun finishes from it with
    the Trainer's own end of training: the best checkpoint loaded, the others deleted, the uninterrupted results."""
    settings = {"model_name_or_path": str(causal_run[0]), "train_file": [learnable_csv], "text_column": "review",
                "label_column": "verdict", "max_length": 32, "max_train_samples": 120, "max_steps": 6,
                "eval_strategy": "steps", "eval_steps": 3, "save_strategy": "steps", "save_steps": 3,
                "save_total_limit": 1, "load_best_model_at_end": True, "report_to": "none", "disable_tqdm": True}
    reference = lmrecipes.finetune(FT_FULL, **settings, output_dir=str(tmp_path / "uninterrupted"))

    class StopAfterTheLastSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps:
                raise KeyboardInterrupt

    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        lmrecipes.finetune(FT_FULL, **settings, output_dir=str(out), callbacks=[StopAfterTheLastSave()])
    assert (out / "checkpoint-6").is_dir() and not (out / "model.safetensors").exists()
    results = lmrecipes.finetune(FT_FULL, **settings, output_dir=str(out))
    for key in ("eval_loss", "test_loss", "test_accuracy"):
        assert abs(results[key] - reference[key]) < 1e-4, key
    assert sorted(p.name for p in out.glob("checkpoint-*")) == sorted(
        p.name for p in (tmp_path / "uninterrupted").glob("checkpoint-*"))


# The fault-injection matrix: a point where the run stops itself (tests/fault_probe.py) and the signal. SIGKILL
# ends the process where it is; SIGTERM unwinds it (temporary files and locks let go) to one line and exit 143.
FAULT_POINTS = [("tokenizer-cache", "KILL"), ("data-cache", "TERM"), ("checkpoint-weights", "KILL"),
                ("checkpoint-optimizer", "TERM"), ("checkpoint-scheduler", "KILL"), ("checkpoint-rng", "KILL"),
                ("checkpoint-state", "TERM"), ("checkpoint-manifest", "KILL"), ("marker-write", "KILL"),
                ("final-evaluation", "TERM"), ("final-save", "KILL"), ("results-write", "KILL")]


def run_two_at_a_time(commands: dict, env_of) -> dict:
    """Run {name: argv} two at a time (one thread each: 2 cores); {name: (returncode, output)}."""
    done, waiting, running = {}, list(commands), {}
    while waiting or running:
        while waiting and len(running) < 2:
            name = waiting.pop(0)
            running[name] = subprocess.Popen(commands[name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             text=True, env=env_of(name))
        for name, process in list(running.items()):
            if process.poll() is not None:
                done[name] = (process.returncode, process.stdout.read())
                del running[name]
        time.sleep(0.05)
    return done


def test_a_run_stopped_at_any_point_finishes_when_rerun(tmp_path, small_corpus):
    """Each point of FAULT_POINTS: the run stops itself there (files cut short where the stop comes mid-write),
    then the same command again finishes with the uninterrupted run's eval loss; a publish stopped midway leaves
    nothing that blocks publishing again or overwriting the run."""
    settings = {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15, "max_steps": 6,
                "save_steps": 2, "seed": 7}
    reference = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(tmp_path / "reference"))
    for point, _ in FAULT_POINTS:
        (tmp_path / point).mkdir()
    recipes = {point: write_recipe(tmp_path / point / "r.yaml", LLAMA_PRETRAIN, **settings,
                                   output_dir=str(tmp_path / point / "run")) for point, _ in FAULT_POINTS}

    def env_of(name):  # the cache points start from an empty cache: they are reached
        point = name.split(":")[0]
        own_cache = {"LMRECIPES_CACHE": str(tmp_path / point / "cache")} if point.endswith("cache") else {}
        return {**os.environ, "OMP_NUM_THREADS": "1", **own_cache}

    stopped = run_two_at_a_time({point: [sys.executable, str(REPO / "tests" / "fault_probe.py"), point, signal_name,
                                         "pretrain.py", str(recipes[point])] for point, signal_name in FAULT_POINTS},
                                env_of)
    for point, signal_name in FAULT_POINTS:
        code, log = stopped[point]
        if signal_name == "KILL":
            assert code == -signal.SIGKILL, f"{point}: not stopped there ({code})\n{log[-2000:]}"
        else:
            assert code == 128 + signal.SIGTERM and "Traceback" not in log, f"{point}: ({code})\n{log[-2000:]}"
            assert log.rstrip().endswith("error: stopped (SIGTERM); the same command goes on from where the run "
                                         "stopped (its last complete checkpoint)"), f"{point}\n{log[-2000:]}"
        marker = tmp_path / point / "run" / ".lmrecipes-run.json"
        assert not marker.exists() or read_json(marker).get("finished") is not True, point
    reruns = run_two_at_a_time({point: [sys.executable, str(REPO / "scripts" / "pretrain.py"), str(recipes[point])]
                                for point, _ in FAULT_POINTS}, env_of)
    for point, _ in FAULT_POINTS:
        code, log = reruns[point]
        assert code == 0 and "Traceback" not in log, f"{point}: rerun failed\n{log[-3000:]}"
        results = read_json(tmp_path / point / "run" / "all_results.json")
        assert abs(results["eval_loss"] - reference["eval_loss"]) < 1e-4, (point, results["eval_loss"])
        run = tmp_path / point / "run"
        check_deletable(run, run_owns(run), "overwrite_output_dir", "this lmrecipes run")  # nothing left behind

    run = tmp_path / "reference"
    code, log = run_two_at_a_time({"publish": [sys.executable, str(REPO / "tests" / "fault_probe.py"),
                                               "publish-build", "KILL", "publish.py", str(run), "--dry_run", "true"]},
                                  env_of)["publish"]
    assert code == -signal.SIGKILL and list(run.glob(".tmp-hub-*")), log[-2000:]
    lmrecipes.publish(run, "someone/tiny", dry_run=True)
    check_deletable(run, run_owns(run), "overwrite_output_dir", "this lmrecipes run")  # overwriting would proceed


def test_a_full_disk_while_saving_is_one_line_and_the_rerun_finishes(tmp_path, small_corpus, monkeypatch):
    """A full disk while saving (torch.save's `basic_ios::clear: iostream error`, safetensors' `I/O error: No space
    left on device`: tracebacks, before) stops the run in one line saying to free space; the same command then
    resumes from the last complete checkpoint. An output_dir that cannot be written (a disk remounted read-only) is
    one line too."""
    from transformers import modeling_utils

    settings = {**TINY_LLAMA, "train_file": [small_corpus], "validation_fraction": 0.15, "max_steps": 6,
                "save_steps": 2}
    out = tmp_path / "full-disk"
    save, save_weights = torch.save, modeling_utils.safe_save_file

    def full_disk(obj, path, *args, **kwargs):
        if str(path).endswith("checkpoint-4/optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1088 vs 1024\n"
                               "basic_ios::clear: iostream error")
        return save(obj, path, *args, **kwargs)

    def full_disk_for_weights(tensors, path, *args, **kwargs):
        if str(path).endswith("checkpoint-6/model.safetensors"):
            raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")
        return save_weights(tensors, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(lmrecipes.RecipeError, match=rf"writing into {out} failed \(\[enforce fail at inline_container"
                                                   r".*\): free some space \(the disk or quota is full\), then run "
                                                   r"the same command again"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk_for_weights)
    with pytest.raises(lmrecipes.RecipeError, match=r"failed \(Error while serializing: I/O error: No space left"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    monkeypatch.setattr(modeling_utils, "safe_save_file", save_weights)

    import errno

    from lmrecipes import run_folder

    def read_only(out, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(out))

    with monkeypatch.context() as patched:
        patched.setattr(run_folder, "record_run", read_only)
        with pytest.raises(lmrecipes.RecipeError, match=rf"key 'output_dir': cannot write into {out} \(Read-only"):
            lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    assert "eval_loss" in lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(out))
    assert read_json(out / "trainer_state.json")["global_step"] == 6


def test_what_counts_as_a_full_disk():
    """The errors out_of_space turns into the one-line message, and those it leaves alone."""
    import errno

    from lmrecipes.errors import out_of_space

    assert out_of_space(OSError(errno.ENOSPC, "No space left on device", "x"))
    assert out_of_space(OSError(errno.EFBIG, "File too large", "x"))  # ulimit -f, a filesystem's file size limit
    assert out_of_space(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert out_of_space(RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1088 vs 1024"))
    assert not out_of_space(RuntimeError("unable to write to file </torch_1234_5678_0>: No space left on device (28)"))
    assert not out_of_space(OSError(errno.EACCES, "Permission denied", "x"))
    assert not out_of_space(RuntimeError("expected scalar type Float but found BFloat16"))
