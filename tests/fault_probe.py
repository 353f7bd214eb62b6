"""Run one of the scripts with a fault: the process stops itself with a signal at a named point, as a preempted
machine or a killed job stops it there, leaving what such a stop leaves (a file cut short where the stop comes in
the middle of writing it).

    python tests/fault_probe.py POINT SIGNAL SCRIPT [ARGS...]

POINT is a key of POINTS, SIGNAL is KILL or TERM. tests/test_faults.py runs the matrix of points and reruns the
plain command after each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STOP_AT = "checkpoint-4"  # the checkpoint the checkpoint points stop in (the runs save every 2 of 6 steps)


SIGNAL = getattr(signal, f"SIG{sys.argv[2]}") if __name__ == "__main__" else None


def stop() -> None:
    os.kill(os.getpid(), SIGNAL)
    time.sleep(60)  # a signal with a handler is delivered on the next bytecode


def cut_in_half(path) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def wrap(owner, name, before=None, after=None):
    """Replace owner.name with a function that calls `before(args)` and `after(args)` around the original."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after:
            after(*args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def stop_inside_cache_write(kind: str):
    """Stop once a cache entry of `kind` (tokenizers, data) is written, before it is renamed into place."""
    import lmrecipes.cache

    original = lmrecipes.cache.atomic_directory

    @contextlib.contextmanager
    def stopping(target, *args, **kwargs):
        with original(target, *args, **kwargs) as tmp:
            yield tmp
            if Path(target).parent.name == kind:
                stop()

    lmrecipes.cache.atomic_directory = stopping


def file_cut_short(owner, name, path_of, ending):
    """The writer `owner.name` stops halfway through the file whose path ends with `ending`."""
    def after(*args, **kwargs):
        path = str(path_of(*args, **kwargs))
        if path.endswith(ending):
            cut_in_half(path)
            stop()

    wrap(owner, name, after=after)


def install(point: str) -> None:
    import torch
    import transformers
    from transformers import modeling_utils

    import lmrecipes.checkpoints
    import lmrecipes.hub
    import lmrecipes.ownership
    import lmrecipes.run
    import lmrecipes.run_folder

    def torch_file(ending):
        return lambda: file_cut_short(torch, "save", lambda obj, f, *a, **k: f, f"{STOP_AT}/{ending}")

    def marker_write_cut_short():
        def before(path, record):
            if Path(path).name == lmrecipes.run_folder.RUN_MARKER and record.get("pending"):
                handle, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
                os.write(handle, b'{"files": [')
                stop()
        wrap(lmrecipes.run_folder, "write_json_atomically", before=before)

    def results_cut_short():  # the Trainer's save_metrics("train") adds to all_results.json: left empty
        def after(self, split, *args, **kwargs):
            if split == "train":
                (Path(self.args.output_dir) / "all_results.json").write_text("")
                stop()
        wrap(transformers.Trainer, "save_metrics", after=after)

    def final_evaluation():
        def before(self, *args, **kwargs):
            if self.state.global_step >= self.state.max_steps:
                stop()
        wrap(transformers.Trainer, "evaluate", before=before)

    points = {
        "tokenizer-cache": lambda: stop_inside_cache_write("tokenizers"),
        "data-cache": lambda: stop_inside_cache_write("data"),
        "checkpoint-weights": lambda: file_cut_short(modeling_utils, "safe_save_file", lambda t, f, *a, **k: f,
                                                     f"{STOP_AT}/model.safetensors"),
        "checkpoint-optimizer": torch_file("optimizer.pt"),
        "checkpoint-scheduler": torch_file("scheduler.pt"),
        "checkpoint-rng": torch_file("rng_state.pth"),
        "checkpoint-state": lambda: file_cut_short(transformers.TrainerState, "save_to_json",
                                                   lambda self, path: path, f"{STOP_AT}/trainer_state.json"),
        "checkpoint-manifest": lambda: wrap(lmrecipes.run, "write_manifest",
                                            before=lambda folder, *_: stop() if folder.name == STOP_AT else None),
        "marker-write": marker_write_cut_short,
        "final-evaluation": final_evaluation,
        "results-write": results_cut_short,
        "final-save": lambda: file_cut_short(modeling_utils, "safe_save_file", lambda t, f, *a, **k: f,
                                             "run/model.safetensors"),
        "publish-build": lambda: wrap(lmrecipes.hub, "write_publish_manifest", before=lambda folder: stop()),
    }
    points[point]()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "scripts"))
    install(sys.argv[1])
    script = REPO / "scripts" / sys.argv[3]
    sys.argv = [str(script), *sys.argv[4:]]
    import runpy

    runpy.run_path(str(script), run_name="__main__")
