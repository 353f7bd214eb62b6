"""Which checkpoint a run resumes: the one named in `resume_from_checkpoint` (checked before anything is written),
or the last complete one the run wrote in `output_dir`; a checkpoint the run did not write (copied or linked in,
renamed) is refused, and one without the optimizer's, scheduler's or random states is resumed only when named."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from .checkpoints import MANIFEST, checkpoint_problem, checkpoint_step, manifest_run, missing_training_state
from .errors import RecipeError
from .run_folder import find_last_complete_checkpoint, is_run_folder, run_record

logger = logging.getLogger("lmrecipes")


def check_no_foreign_checkpoints(out: Path) -> None:
    """A run folder holds only the checkpoints its run wrote (recorded in the marker, or being written when it
    stopped): the Trainer would resume any other `checkpoint-N...` folder, or delete it when it rotates
    checkpoints (save_total_limit: its pattern also takes `checkpoint-4.bak`)."""
    if not is_run_folder(out):
        return
    record = run_record(out)
    written = {name.split("/", 1)[0] for name in record.get("files", [])} | set(record.get("pending", []))
    folders = [p for p in out.glob("checkpoint-*") if p.is_dir() and re.match(r"checkpoint-\d+", p.name)]
    links = sorted(p.name for p in folders if p.is_symlink())
    if links:
        raise RecipeError(f"key 'output_dir': {out / links[0]} is a symbolic link (to {(out / links[0]).readlink()})"
                          ": a run resumes only checkpoints it wrote; remove the link (to resume another run's "
                          "checkpoint, name it in resume_from_checkpoint)")
    files = set(record.get("files", []))
    foreign = sorted(p.name for p in folders if p.name not in written or  # a manifest the run recorded must name it
                     manifest_run(p) not in ({record.get("run_id")} if f"{p.name}/{MANIFEST}" in files else
                                             {None, record.get("run_id")}))
    if foreign:
        raise RecipeError(f"key 'output_dir': {out} holds {', '.join(foreign[:3])}, which this run did not write: "
                          "the Trainer would resume it or delete it when it rotates checkpoints; move it out of the "
                          "folder (to resume another run's checkpoint, name it in resume_from_checkpoint)")


def check_resume_request(training_args) -> None:
    """An explicit `resume_from_checkpoint` must be a checkpoint the Trainer can load, at most at max_steps:
    checked before anything is written."""
    explicit = training_args.resume_from_checkpoint
    if explicit and _goes_on_from_its_own(training_args):
        return
    if explicit:
        if not Path(explicit).is_dir():
            raise RecipeError(f"key 'resume_from_checkpoint': no checkpoint folder at {explicit}")
        problem = checkpoint_problem(Path(explicit))
        if problem:
            raise RecipeError(f"key 'resume_from_checkpoint': {explicit} cannot be resumed: {problem}")
        step = checkpoint_step(explicit)
        if 0 < training_args.max_steps < step:
            raise RecipeError(f"key 'resume_from_checkpoint': {explicit} is at step {step}, past max_steps "
                              f"{training_args.max_steps}; raise max_steps or resume an earlier checkpoint")


def _goes_on_from_its_own(training_args, own: str | None = None) -> bool:
    """A `resume_from_checkpoint` outside output_dir is where the run started: once the run holds a later
    checkpoint of its own (or the named one is gone, moved or rotated away), the run goes on from its own. `own`:
    the run's last complete checkpoint when the caller has found it already."""
    explicit, out = training_args.resume_from_checkpoint, getattr(training_args, "output_dir", None)
    if not explicit or not out:
        return False
    out = Path(out)
    if not is_run_folder(out) or out.resolve() in Path(explicit).resolve().parents:
        return False
    own = own or find_last_complete_checkpoint(out)
    return own is not None and (not Path(explicit).is_dir() or checkpoint_step(own) > checkpoint_step(explicit))


def find_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: `resume_from_checkpoint`, else the last complete one in `output_dir`.

    Hand-written beside `transformers.trainer_utils.get_last_checkpoint`, which takes the highest-numbered folder
    even when a killed save left it half-written. Such folders are removed (main process), with a warning. A
    checkpoint without optimizer, scheduler or random states (save_only_model, or deleted files) is resumed only
    when named in resume_from_checkpoint: the Trainer would restart the optimizer and the learning-rate schedule.
    A `resume_from_checkpoint` outside `output_dir` is where the run started: once the run has saved checkpoints of
    its own, the same command goes on from the newest of them.
    """
    out, explicit = Path(training_args.output_dir), training_args.resume_from_checkpoint
    check_no_foreign_checkpoints(out)
    own = find_last_complete_checkpoint(out, remove_incomplete=training_args.should_save)
    if explicit and _goes_on_from_its_own(training_args, own):
        logger.info("%s is where this run started (resume_from_checkpoint); it has saved %s since", explicit, own)
        explicit = None
    elif explicit:
        check_resume_request(training_args)
    checkpoint = explicit or own
    missing = missing_training_state(Path(checkpoint)) if checkpoint else []
    if missing and not explicit:
        raise RecipeError(f"{checkpoint} has no {', '.join(missing)} (save_only_model: true, or deleted): resuming "
                          "it would restart the optimizer and the learning-rate schedule; to do so anyway, pass "
                          f"--resume_from_checkpoint {checkpoint}, or start over with --overwrite_output_dir true")
    if missing:
        logger.warning("%s has no %s: the optimizer and the learning-rate schedule start afresh from its weights",
                       checkpoint, ", ".join(missing))
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    return checkpoint


def check_checkpoint_fits(checkpoint: str | None, model) -> None:
    """A checkpoint named in `resume_from_checkpoint` holds this recipe's model: the shapes in its weights' header
    are the model's (another architecture failed inside the Trainer, after output_dir was claimed). Sharded and
    adapter checkpoints are left to the Trainer."""
    path = Path(checkpoint or "") / "model.safetensors"
    if not checkpoint or model is None or not path.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as weights:
            saved = {name: list(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except Exception:  # noqa: BLE001 - a damaged file: checkpoint_problem names it
        return
    own = {name: list(getattr(param, "ds_shape", None) or param.shape) for name, param in model.named_parameters()}
    differing = [name for name in own if name in saved and saved[name] != own[name]]
    sizes = [sum(math.prod(shape) for shape in shapes.values()) for shapes in (saved, own)]  # shared weights once
    if differing or sizes[0] != sizes[1]:
        what = f"{differing[0]} is {saved[differing[0]]} there, {own[differing[0]]} here" if differing else \
            f"{sizes[0]:,} weights there, {sizes[1]:,} here"
        raise RecipeError(f"key 'resume_from_checkpoint': {checkpoint} holds another model ({what}); resume a "
                          "checkpoint of this recipe's model")

