"""Shared fixtures: an offline environment, a small corpus, and tiny model sizes for fast runs."""

import csv
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TORCH_EXTENSIONS = REPO / ".cache" / "torch_extensions"  # where launched tests build DeepSpeed's ops
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # also transformers' "Loading weights" bars

from transformers import TrainerCallback  # noqa: E402 - after the variables above, which it reads at import

# Tiny sizes (hidden 32-64, 2 layers) laid over the shipped recipes.
TINY_LLAMA = {
    "config_overrides": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128},
    "vocab_size": 512, "block_size": 64, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
    "max_eval_samples": 32, "logging_steps": 1, "eval_strategy": "no", "save_steps": 1000,
    "warmup_steps": 0, "disable_tqdm": True, "report_to": "none", "learning_rate": 3e-3,
    "bf16": "false",  # the recipes' bf16: auto would differ between CPUs; exact comparisons in fp32 (bf16: test_precision)
}
TINY_BERT = {
    "config_overrides": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "max_position_embeddings": 128},
    "vocab_size": 512, "block_size": 64, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
    "max_eval_samples": 32, "logging_steps": 1, "eval_strategy": "no", "save_steps": 1000,
    "warmup_steps": 0, "disable_tqdm": True, "report_to": "none", "learning_rate": 2e-3, "bf16": "false",
}

# ELECTRA: the tiny BERT's sizes; generator 1/4 wide (hidden 12, 1 head), sharing embeddings of 48.
TINY_ELECTRA = {**TINY_BERT, "config_overrides": {**TINY_BERT["config_overrides"], "embedding_size": 48},
                "learning_rate": 3e-4}


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Tokenizers and tokenized data are cached per test session, not in the user's home."""
    os.environ["LMRECIPES_CACHE"] = str(tmp_path_factory.mktemp("lmrecipes-cache"))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> str:
    """~240 KB of the embedded corpus as 40 jsonl documents (a glob pattern), so tiny runs take seconds."""
    folder = tmp_path_factory.mktemp("corpus")
    docs = []
    for name in ("shakespeare", "austen"):
        with gzip.open(REPO / "data" / "corpus" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as handle:
            text = json.loads(handle.readline())["text"]
        docs += [text[i : i + 6000] for i in range(0, 120_000, 6000)]
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps({"text": doc}) + "\n")
    return str(folder / "*.jsonl")


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


LLAMA_PRETRAIN = str(REPO / "recipes" / "tiny-llama" / "pretrain.yaml")
BERT_PRETRAIN = str(REPO / "recipes" / "tiny-bert" / "pretrain.yaml")


@pytest.fixture(scope="session")
def causal_run(tmp_path_factory, small_corpus):
    """A tiny Llama pretrained for 30 steps through the API: (output folder, results)."""
    import lmrecipes

    out = tmp_path_factory.mktemp("causal") / "run"
    results = lmrecipes.pretrain(LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus], validation_fraction=0.15,
                                 max_steps=30, output_dir=str(out))
    return out, results


@pytest.fixture(scope="session")
def masked_run(tmp_path_factory, small_corpus):
    """A tiny BERT pretrained for 40 steps through the API: (output folder, results)."""
    import lmrecipes

    out = tmp_path_factory.mktemp("masked") / "run"
    results = lmrecipes.pretrain(BERT_PRETRAIN, **TINY_BERT, train_file=[small_corpus], validation_fraction=0.15,
                                 max_steps=40, output_dir=str(out))
    return out, results


ELECTRA_PRETRAIN = str(REPO / "recipes" / "tiny-electra" / "pretrain.yaml")
ALPHABET = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
            "quebec romeo sierra tango").split()


@pytest.fixture(scope="session")
def electra_run(tmp_path_factory):
    """A tiny ELECTRA pretrained for 300 steps, evaluated every 100, on documents that recite a 20-word cycle from
    a random start: a replaced word breaks the cycle, so its context gives it away. (output folder, results)"""
    import lmrecipes

    rng = random.Random(0)
    corpus = tmp_path_factory.mktemp("cycle") / "cycle.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(ALPHABET[(start + k) % 20] for k in range(80))}) + "\n"
                              for start in (rng.randrange(20) for _ in range(300))))
    out = tmp_path_factory.mktemp("electra") / "run"
    results = lmrecipes.pretrain(ELECTRA_PRETRAIN, **{**TINY_ELECTRA, "vocab_size": 100, "eval_strategy": "steps"},
                                 eval_steps=100, train_file=[str(corpus)], validation_fraction=0.1, max_steps=300,
                                 output_dir=str(out))
    return out, results


PARALLELISM = "Parallelism: {}; 2 processes on 1 machine, backend gloo"
# Two CPU processes launched as a user would (the config, then flags for this machine): the parallelism logged
LAUNCHES = {
    "ddp": (["cpu_ddp.yaml"], PARALLELISM.format("DDP: parameters replicated, gradients averaged")),
    "fsdp2": (["cpu_fsdp.yaml"], PARALLELISM.format("FSDP2: parameters, gradients, optimizer states sharded")),
    "zero2": (["deepspeed_zero2.yaml", "--num_processes", "2", "--mixed_precision", "no"],
              PARALLELISM.format("DeepSpeed ZeRO-2: optimizer states, gradients sharded")),
    "zero3": (["deepspeed_zero3.yaml", "--num_processes", "2", "--mixed_precision", "no"],
              PARALLELISM.format("DeepSpeed ZeRO-3: optimizer states, gradients, parameters sharded")),
}


def launch_env() -> dict:
    """The environment of a user's shell: no ACCELERATE_USE_CPU; one thread per process (2 processes, 2 cores)."""
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    env["OMP_NUM_THREADS"] = "1"
    env["TORCH_EXTENSIONS_DIR"] = str(TORCH_EXTENSIONS)  # this clone's ops, built once: not the user's cache
    return env


def accelerate_launch(launch: str, script, *arguments, flags=()) -> list[str]:
    """The command line of `accelerate launch --config_file accelerate_configs/CONFIG [flags] script ...` for one
    of LAUNCHES, with more launcher `flags` if given."""
    import sys

    config, *own_flags = LAUNCHES[launch][0]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" / config),
            *own_flags, *flags, "--main_process_port", "0", str(script), *map(str, arguments)]


def run_launch(command: list[str], timeout: float, env: dict | None = None, cwd=None):
    """`subprocess.run(command, capture_output=True, text=True, ...)` for a launcher: on a timeout its processes
    are killed with it (killing the launcher alone would leave its ranks running under the rest of the suite)."""
    import subprocess

    import psutil

    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=cwd) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for each in psutil.Process(process.pid).children(recursive=True):
                each.kill()
            process.kill()
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_ddp_probe(recipe: str, corpus: str, out, overrides: dict, launch: str = "ddp") -> list[dict]:
    """tests/ddp_probe.py under `accelerate launch` with 2 CPU processes (LAUNCHES; as a user types it, no
    ACCELERATE_USE_CPU): each rank's record, after checking the parallelism the run logged."""
    result = run_launch(accelerate_launch(launch, REPO / "tests" / "ddp_probe.py", recipe, corpus, out,
                                          json.dumps(overrides)), timeout=600, env=launch_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert LAUNCHES[launch][1] in result.stdout, result.stdout[-3000:]
    if launch == "ddp":  # the models of the tests use every weight: DDP's per-step search is off
        assert "DDP unused-parameter search: off" in result.stdout, result.stdout[-3000:]
    return [read_json(Path(out) / f"probe-rank{rank}.json") for rank in (0, 1)]


WORDS = ("the king and his lords went to the town with the queen of france where many men "
         "spoke of war and peace in the night while the lady sat by the fire").split()


def learnable_review(rng) -> tuple[str, str]:
    """A review whose label is one word inside it ("good" -> pos, "poor" -> neg), between 2-8 random filler words
    before and 3-8 after: a classifier must read the context, not the last token (which a frozen random body
    plus a trained head can read alone)."""
    label = rng.choice(["pos", "neg"])
    before = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
    after = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
    return f"{before} it was {'good' if label == 'pos' else 'poor'} {after}", label


@pytest.fixture(scope="session")
def learnable_csv(tmp_path_factory):
    """Bring-your-own data with other column names and string labels (learnable_review), so lengths and padding
    vary."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("byo") / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "verdict"])
        for _ in range(600):
            writer.writerow(learnable_review(rng))
    return str(path)


def write_csv(path, header, rows):
    """A user's own CSV file: a header row, then the rows."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- a user's scripts and recipes, killed runs


def write_recipe(path: Path, base: str, **settings) -> Path:
    """A user's own recipe: the shipped one with their keys laid over it."""
    recipe = yaml.safe_load(Path(base).read_text())
    for key, value in settings.items():  # mapping-valued keys merge, as they do from flags and keywords
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) and isinstance(recipe.get(key), dict) \
            else value
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_script(script: str, recipe: Path, *flags, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "scripts" / script), str(recipe), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def kill_while_saving(process, out: Path, complete_step: int, next_step: int, timeout=240):
    """SIGKILL the run as soon as checkpoint-`next_step` appears (mid-save, most often), once checkpoint-
    `complete_step` is complete."""
    from lmrecipes.run_folder import is_complete_checkpoint

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_complete_checkpoint(out / f"checkpoint-{complete_step}") and (out / f"checkpoint-{next_step}").exists():
            break
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def plant_half_written_checkpoint(out: Path, step: int):
    """What a kill in the middle of writing the weights leaves: a truncated file, no trainer_state.json, and the
    checkpoint announced in the run's marker (as the run does before the Trainer writes it)."""
    from lmrecipes.run_folder import record_run

    folder = out / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    record_run(out, pending=[folder.name])


FT_LORA = str(REPO / "recipes/tiny-llama/finetune-sentiment-lora.yaml")


FT_FULL = str(REPO / "recipes/tiny-llama/finetune-sentiment.yaml")


# ---------------------------------------------------------------- scripts called in-process


def run_script_main(capsys, *argv):
    from importlib import util

    spec = util.spec_from_file_location("pretrain_script", REPO / "scripts" / "pretrain.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(list(argv))
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err


def run_finetune_script(capsys, *argv):
    from importlib import util

    spec = util.spec_from_file_location("finetune_script", REPO / "scripts" / "finetune.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err.strip()


class StopAtFinalEvaluation(TrainerCallback):
    """A stop after the final save, during the final evaluation (what a SIGTERM or SIGKILL there leaves)."""

    def on_evaluate(self, args, state, control, **kwargs):
        raise KeyboardInterrupt


def png_pixels(path, min_bytes: int = 5000):
    """The RGB pixels (floats 0-1) of a PNG image, checked to be one (its signature) and more than an empty canvas
    (a blank 6 x 4 inch figure is about 2,000 bytes)."""
    from matplotlib.image import imread

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path}: only {len(data)} bytes"
    return imread(path)[..., :3]


def pixels_of(pixels, color: str, tolerance: float = 0.1) -> int:
    """How many pixels have about the colour `color` ("#rrggbb"): e.g. matplotlib's first lines, C0 #1f77b4."""
    import numpy as np

    rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(axis=-1) < tolerance).sum())
