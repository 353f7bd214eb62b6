"""A checkpoint's integrity: whether the Trainer can resume from it as the run was, checked before it is used, and
the manifest lmrecipes writes into it once its files are on disk.

Hand-written: the Trainer writes trainer_state.json last but flushes nothing to disk, so a power loss can leave a
checkpoint whose files are cut short or empty; it loads a checkpoint without checking it (a truncated optimizer.pt
is a traceback on every rerun, and the earlier intact checkpoint is never tried); and it resumes a checkpoint that
has no optimizer or scheduler state with a fresh optimizer and a restarted learning-rate schedule, without a word.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from .cache import flushed_sizes
from .ownership import files_in, give_umask_modes, write_json_atomically

# Written by lmrecipes into a checkpoint after every file of it is on disk (fsync): the size of each file then.
MANIFEST = ".lmrecipes-checkpoint.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
           "pytorch_model_fsdp_0/.metadata",  # FSDP's sharded weights: the metadata is written last
           "latest")  # DeepSpeed's: names its global_stepN folder once that is written
# What the Trainer needs besides the weights to go on as the run was: the optimizer's state (one file, FSDP's
# sharded folder, or DeepSpeed's optimizer shards), the learning-rate schedule's position and the random states.
OPTIMIZER_STATES = ("optimizer.pt", "optimizer.bin", "optimizer_0/.metadata")
SCHEDULER_STATE = "scheduler.pt"
TORCH_ARCHIVES = (".pt", ".pth", ".bin")  # torch.save's zip archives (training_args.bin, DeepSpeed's states too)


def folder_step(folder: Path) -> int | None:
    """N of a folder named checkpoint-N; None for any other name."""
    number = folder.name.rpartition("-")[2]
    return int(number) if folder.name.startswith("checkpoint-") and number.isdigit() else None


def checkpoint_step(checkpoint) -> int:
    """The optimizer step a (complete) checkpoint was saved at, from its trainer_state.json."""
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]


def written_whole(folder: Path) -> bool:
    """The Trainer finished writing `folder` (a checkpoint-N): its trainer_state.json, written last, names step N.
    A folder that fails this was being written when the run stopped."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and folder_step(folder) is not None and state.get("global_step") == \
        folder_step(folder)


def checkpoint_problem(folder: Path) -> str | None:
    """Why the Trainer could not load `folder` (a checkpoint-N), in a few words; None when it can. Checked: the
    trainer state names step N, the weights are there, every file still has the size the manifest recorded, and
    the files the manifest does not vouch for are whole by their format (safetensors headers against their sizes,
    torch archives' directories, JSON files). Missing optimizer, scheduler or random states are not a problem
    here: see `missing_training_state`."""
    if not written_whole(folder):
        return "trainer_state.json missing, cut short or of another step (written last: the run stopped while " \
            "saving it)"
    if not any((folder / name).is_file() for name in WEIGHTS):
        return "no weights"
    recorded = _manifest(folder) or {}
    try:
        for name in files_in(folder):
            path = folder / name
            if name in recorded:
                if path.stat().st_size != recorded[name]:
                    return f"{name} is {path.stat().st_size} bytes, {recorded[name]} bytes when saved"
            elif problem := _file_problem(path):
                return f"{name} {problem}"
    except OSError as err:  # removed meanwhile (another process found it bad first), or unreadable
        return f"unreadable ({err.strerror}: {err.filename})"
    return None


def missing_training_state(folder: Path) -> list[str]:
    """What `folder` lacks of the optimizer, scheduler and random states (save_only_model, or deleted files)."""
    missing = []
    deepspeed = _deepspeed_states(folder)  # its model states hold the optimizer at stage 0 and its own scheduler
    if not (any((folder / name).is_file() for name in OPTIMIZER_STATES) or deepspeed):
        missing.append("optimizer state")
    if not ((folder / SCHEDULER_STATE).is_file() or deepspeed):
        missing.append(SCHEDULER_STATE)
    if not any(folder.glob("rng_state*.pth")):
        missing.append("rng_state.pth")
    return missing


def write_manifest(folder: Path, run_id: str | None = None) -> None:
    """Flush every file of the checkpoint to disk, then record their sizes in the manifest (itself flushed): a
    checkpoint with a manifest survived a power loss as it was saved. `run_id`: the run that wrote it (a copy of
    another run's checkpoint put in its place is told apart). Its safetensors files get the umask's mode
    (ownership.give_umask_modes: safetensors writes them 0600)."""
    give_umask_modes(folder, "*.safetensors")
    write_json_atomically(folder / MANIFEST, {"written_by": "lmrecipes", "run_id": run_id,
                                              "sizes": flushed_sizes(folder, MANIFEST)})
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def manifest_run(folder: Path) -> str | None:
    """The run id the checkpoint's manifest names (None: no manifest, or one without it)."""
    try:
        run_id = json.loads((folder / MANIFEST).read_text()).get("run_id")
        return run_id if isinstance(run_id, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def _manifest(folder: Path) -> dict | None:
    try:
        sizes = json.loads((folder / MANIFEST).read_text())["sizes"]
        return sizes if isinstance(sizes, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _deepspeed_states(folder: Path) -> bool:
    """DeepSpeed's optimizer (and model) states are in the folder its `latest` file names."""
    try:
        tag = (folder / "latest").read_text().strip()
    except OSError:
        return False
    return bool(tag) and any((folder / tag).glob("*_states.pt"))


def _file_problem(path: Path) -> str | None:
    """What is wrong with one file the Trainer will read, judged from its format; None if it looks whole."""
    if path.is_symlink():
        return None
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            try:  # safetensors itself refuses headers over 100 MB
                header = json.loads(handle.read(length)) if 0 < length <= min(size - 8, 100_000_000) else None
            except ValueError:
                header = None
        try:
            end = max([entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"],
                      default=0)
        except (AttributeError, KeyError, TypeError, IndexError):
            return "is cut short or not safetensors (no readable header)"
        return None if size == 8 + length + end else f"is {size} bytes, its header says {8 + length + end}"
    if path.suffix in TORCH_ARCHIVES:
        with open(path, "rb") as handle:
            legacy = handle.read(1) == b"\x80"  # torch.save's older pickle format (DeepSpeed can choose it)
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None if legacy else "is cut short or not a torch archive"
    if path.suffix == ".json" and path.name != MANIFEST:
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return "is cut short or not JSON"
    return None
