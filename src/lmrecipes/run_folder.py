"""A run's folder: the marker that proves lmrecipes wrote it and records what it wrote, claiming the folder for a
recipe (new, resumed, finished, refused), the checkpoints it holds and which of them is complete, and deleting
only what the run wrote. Hand-written: the Trainer has no consent to overwrite (transformers 5 dropped
`overwrite_output_dir`) and never guards a finished run, and `get_last_checkpoint` takes the highest-numbered folder
even when a killed save left it half-written; this module stays until the Trainer does both."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import time
import uuid
from pathlib import Path

from .cache import path_fingerprint, tokenizer_fingerprint
from .checkpoints import (
    checkpoint_problem,
    folder_step,
    written_whole,
)
from .errors import RecipeError
from .ownership import (
    PUBLISH_MANIFEST,
    check_deletable,
    check_name_fits,
    delete_checked,
    files_in,
    give_umask_mode,
    publish_folder_owns,
    write_json_atomically,
)
from .recipe import RUN_RECIPE, read_run_recipe, write_recipe
from .run_lock import RUN_LOCK, lock_run_folder, unlock_run_folder
from .values import read_json_file, resolve_model_path

logger = logging.getLogger("lmrecipes")


def check_output_dir_is_a_folder(out: Path) -> None:
    """A folder, or nothing yet. Not a symbolic link: a run's marker proves what it wrote only in the folder itself
    (a link could be pointed at another folder between a stop and the rerun), so a linked folder could never be
    resumed or overwritten."""
    check_name_fits(out, "output_dir")
    try:
        if out.is_symlink():
            raise RecipeError(f"key 'output_dir': {out} is a symbolic link (to {out.readlink()}); give the folder it "
                              "points to, or a new folder")
        if out.exists() and not out.is_dir():
            raise RecipeError(f"key 'output_dir': {out} is a file, not a folder")
    except OSError as err:  # a name over the filesystem's limit, a loop of links above it
        raise RecipeError(f"key 'output_dir': {out}: {err.strerror or err}") from None


# Keys that change how a run is watched, fed or pruned, not what it trains: a rerun differing only in these is same.
COSMETIC_KEYS = {"overwrite_output_dir", "resume_from_checkpoint", "output_dir", "logging_steps", "logging_dir",
                 "disable_tqdm", "report_to", "push_to_hub", "hub_model_id", "hub_private_repo", "save_total_limit",
                 "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
                 "dataloader_prefetch_factor", "per_device_eval_batch_size", "preprocessing_num_workers"}


def is_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint the Trainer finished writing and can load (checkpoints.checkpoint_problem finds nothing)."""
    return folder.is_dir() and checkpoint_problem(folder) is None


def find_last_complete_checkpoint(out: Path, remove_incomplete: bool = False) -> str | None:
    """The highest-numbered checkpoint-N in `out` the Trainer can load; newer ones it cannot are skipped with a
    warning naming what is wrong: those the Trainer never finished writing (killed while saving) are removed if
    asked and the run wrote them; damaged ones (files cut short or emptied by a power loss) are left as they are
    (the Trainer writes that step's checkpoint again when it gets there)."""
    folders = [p for p in out.glob("checkpoint-*")
               if p.is_dir() and not p.is_symlink() and folder_step(p) is not None]
    for folder in sorted(folders, key=folder_step, reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        remove = remove_incomplete and not written_whole(folder)
        logger.warning("%s %s: %s; an earlier checkpoint is tried", "Removing" if remove else "Skipping", folder,
                       problem)
        if remove:
            _remove_incomplete_checkpoint(out, folder)
    return None


def _remove_incomplete_checkpoint(out: Path, folder: Path) -> None:
    """Only a checkpoint this run wrote (its files recorded, or the one being written when it stopped)."""
    try:
        owns = run_owns(out)
        delete_checked(folder, check_deletable(folder, lambda name: owns(f"{folder.name}/{name}"), "output_dir",
                                               "this lmrecipes run"))
    except (RecipeError, OSError) as err:
        logger.warning("Left %s in place: %s", folder, err)


# Written by claim_output_dir into every run folder it starts and kept up to date as the run writes: what proves
# that a folder is an lmrecipes run (a recipe.yaml alone proves nothing: the published copy of a run carries one),
# the files the run wrote, the checkpoint being written ("pending"), and whether the run finished.
# overwrite_output_dir deletes what it records and nothing else.
RUN_MARKER = ".lmrecipes-run.json"

# Written atomically by lmrecipes into a finished run: results.md and its figures (run_report, tasks/)
RESULT_FILES = ("results.md", "loss_curve.png", "confusion_matrix.png", "predicted_vs_true.png")


def _own_leftover(name: str) -> bool:
    """A top-level name only lmrecipes' own writes leave in a run folder: its lock, and the temporary file of a
    marker, recipe or result update a stop cut short (an atomic write's)."""
    return name == RUN_LOCK or any(fnmatch.fnmatch(name, f".{own}.*.tmp") for own in (RUN_MARKER, RUN_RECIPE,
                                                                                       *RESULT_FILES))


# Top-level names a run writes when it saves the model and its results (Trainer, tokenizer, peft, lmrecipes). Only
# files of these names written during this session of the run are recorded, never the user's older ones.
SAVED_NAMES = ("*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
               "adapter_config.json", "README.md", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja",
               "training_args.bin", "trainer_state.json", "train_results.json", "eval_results.json",
               "test_results.json", "all_results.json", "test_predictions.json", "test_details.json", "merged/*",
               "runs/*tfevents*", *RESULT_FILES)  # TensorBoard's files grow after training (the final evaluations')


def run_record(out: Path) -> dict:
    try:
        record = json.loads((out / RUN_MARKER).read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def recipe_digest(out: Path) -> str:
    return hashlib.sha256((out / RUN_RECIPE).read_bytes()).hexdigest()


def check_recipe_unchanged(out: Path, key: str) -> None:
    """The run's recipe.yaml is the one it wrote: an edited one would be taken for the recipe that trained the run
    (a finished run said "nothing to do" to the edited recipe, and publish uploaded it)."""
    recorded = run_record(out).get("recipe_sha256")
    if recorded and (out / RUN_RECIPE).is_file() and recipe_digest(out) != recorded:
        raise RecipeError(f"key '{key}': {out / RUN_RECIPE} was changed after the run wrote it, so it no longer says "
                          "how the run was trained: put the run's own back (or start a new run from the edited "
                          "copy in another output_dir)")


def is_run_folder(out: Path) -> bool:
    return (out / RUN_MARKER).is_file() and not out.is_symlink()


def record_run(out: Path, files=(), pending=(), done_pending=(), session_start: float | None = None,
               finished: bool | None = None, inputs: dict | None = None, global_batch: int | None = None,
               processes: int | None = None, found_at_start: dict | None = None) -> None:
    """Add files (relative paths) the run wrote, checkpoint folders being written, and state to the marker; files
    that no longer exist (rotated checkpoints) are dropped. A marker that is there but cannot be read is never
    written over (what the run wrote would be forgotten, its checkpoints taken for foreign ones)."""
    record = run_record(out)
    if not record and (out / RUN_MARKER).exists():
        raise RecipeError(f"the run marker {out / RUN_MARKER} cannot be read (emptied, damaged or unreadable), so "
                          "what the run wrote is not known: move the folder away, or pick another output_dir")
    known = {name for name in set(record.get("files", [])) | set(files) if (out / name).is_file()}
    record["files"] = sorted(known | {RUN_MARKER})
    record["pending"] = sorted((set(record.get("pending", [])) | set(pending)) - set(done_pending))
    record.setdefault("written_by", "lmrecipes")
    record.setdefault("run_id", uuid.uuid4().hex)  # its checkpoints' manifests carry it: copies from other runs show
    record["recipe"] = RUN_RECIPE
    if RUN_RECIPE in files and (out / RUN_RECIPE).is_file() and "recipe_sha256" not in record:
        record["recipe_sha256"] = recipe_digest(out)
    if session_start is not None:
        record["session_start"] = session_start
    if finished is not None:
        record["finished"] = finished
    if inputs is not None:
        record["inputs"] = inputs
    if global_batch is not None:
        record["global_batch"] = global_batch
    if processes is not None:
        record["processes"] = processes
    if found_at_start is not None:
        record["found_at_start"] = found_at_start
    write_json_atomically(out / RUN_MARKER, record)


def _stat(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    except OSError:
        return None


def files_as_found(out: Path, patterns=SAVED_NAMES) -> dict:
    """{name: [size, mtime_ns, inode]} of the top-level files of such names in `out` as a session of the run
    starts (checkpoints are recorded as they are saved)."""
    return {path.name: _stat(path) for path in out.iterdir() if path.is_file() and not path.is_symlink() and
            any(fnmatch.fnmatch(path.name, p) for p in patterns)}


def files_written_since(out: Path, since: float, patterns=SAVED_NAMES, found_before: dict | None = None) -> list[str]:
    """Files (no symbolic links) whose relative path matches `patterns` and that were modified since `since`; a
    file that is as it was found when the session started (`found_before`) was not written by it, whatever its
    modification time says (one dated in the future: clock skew, an archive from another machine)."""
    found, before = [], found_before or {}
    for name in files_in(out):
        path = out / name
        if any(fnmatch.fnmatch(name, p) for p in patterns) and not path.is_symlink():
            now = _stat(path)
            if now is not None and now[1] >= since * 1e9 and (name not in before or before[name] != now):
                found.append(name)
    return found


def record_saved_files(out: Path, finished: bool | None = None, folders: tuple[str, ...] = ()) -> None:
    """Record the model, tokenizer and results files this session of the run wrote (see SAVED_NAMES), and those
    in `folders` (subfolders that belong to the model: objectives.Objective.saved_folders). The safetensors files
    among them get the umask's mode (ownership.give_umask_mode: safetensors writes them 0600)."""
    record = run_record(out)
    since = record.get("session_start", float("inf"))
    patterns = SAVED_NAMES + tuple(f"{folder}/*" for folder in folders)
    written = files_written_since(out, since - 1.0, patterns, record.get("found_at_start"))
    for name in fnmatch.filter(written, "*.safetensors"):
        give_umask_mode(out / name)
    record_run(out, written, finished=finished)


def run_inputs(model_args, tokenizer, data_fingerprint: str) -> dict:
    """Fingerprints of what a run's recipe names by path (kept in its marker: a rerun of the same recipe on other
    inputs is not the same run): the data, the tokenizer, and the model / config folders or files."""
    inputs = {"data": data_fingerprint, "tokenizer": tokenizer_fingerprint(tokenizer)}
    for key in ("model_name_or_path", "config_name"):
        if getattr(model_args, key):
            inputs[key] = path_fingerprint(resolve_model_path(getattr(model_args, key), key))
    return inputs


def recorded_local_model(out: Path) -> str | None:
    """The fingerprint of the local folder the run's model_name_or_path named when it trained (None: a Hub id, or
    not recorded): what a LoRA run's base must still be, and why its name is no Hub id."""
    recorded = (run_record(out).get("inputs") or {}).get("model_name_or_path")
    return recorded if isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{64}", recorded) else None


def run_owns(out: Path):
    """Whether the run in `out` wrote a file (relative path -> bool): recorded, inside the checkpoint being written
    when the run stopped, or inside a publish folder whose own manifest accounts for it."""
    record = run_record(out)
    recorded, pending = set(record.get("files", [])), tuple(f"{p}/" for p in record.get("pending", []))
    published = {p.name: publish_folder_owns(p, "overwrite_output_dir") for p in out.iterdir()
                 if p.is_dir() and not p.is_symlink() and (p / PUBLISH_MANIFEST).is_file()}

    def owns(name: str) -> bool:
        top, _, rest = name.partition("/")
        if top in published:
            return published[top](rest)
        return name in recorded or name.startswith(pending) or (not rest and _own_leftover(top))

    return owns


def remove_run_folder(out: Path) -> None:
    """Delete a run folder (proven by its marker) when it holds only what the run wrote (run_owns); anything else
    is refused untouched, naming it. The marker goes last, so a folder left half-deleted is still a run."""
    files = check_deletable(out, run_owns(out), "overwrite_output_dir", "this lmrecipes run")
    delete_checked(out, [name for name in files if name != RUN_LOCK], last=RUN_MARKER, keep_folder=True)


STREAM_ORDER_KEYS = {"dataloader_num_workers", "preprocessing_num_workers"}  # a stream's order and blocks


def _changed_keys(previous: dict, recipe: dict, unused_keys) -> list[str]:
    """Keys whose values differ, but for cosmetic keys, `unused_keys`, and a key one recipe lacks and the other
    holds as null or false (a key added since, at its default)."""
    cosmetic = COSMETIC_KEYS - STREAM_ORDER_KEYS if recipe.get("streaming") is True else COSMETIC_KEYS
    one_sided = {k: previous.get(k, recipe.get(k)) for k in previous.keys() ^ recipe.keys()}
    added = {k for k, v in one_sided.items() if v is None or v is False}
    return sorted(k for k in (previous.keys() | recipe.keys()) - cosmetic - set(unused_keys) - added
                  if previous.get(k) != recipe.get(k))


def _train_on_hint(out: Path, changed: list[str]) -> str:
    """A finished run asked to train longer: how to go on from its last checkpoint into a new folder (the finished
    run stays as it is)."""
    checkpoint = find_last_complete_checkpoint(out) if set(changed) <= {"max_steps", "num_train_epochs"} else None
    return (f"; to train on from where it stopped: --resume_from_checkpoint {checkpoint} --output_dir NEW_FOLDER"
            if checkpoint else "")


def global_batch(training_args) -> int:
    """Rows per optimizer step over all processes: what a resumed run must keep to go on as it was."""
    return training_args.world_size * training_args.per_device_train_batch_size * \
        training_args.gradient_accumulation_steps


def _check_started_run(out: Path, training_args, finished: bool) -> bool:
    """What a run folder's marker and recipe allow; True if the run never started (stopped between writing its
    marker and its recipe, written in that order: it starts afresh)."""
    record = run_record(out)
    if not record:
        raise RecipeError(f"key 'output_dir': the run marker {out / RUN_MARKER} cannot be read (emptied or damaged),"
                          " so what the run wrote is not known: move the folder away, or pick another output_dir")
    nothing_else = set(record.get("files", [])) <= {RUN_MARKER} and not any(out.glob("checkpoint-*"))
    if nothing_else:  # stopped before its recipe was recorded (written or not): it starts afresh
        return True
    if not (out / RUN_RECIPE).is_file():
        if not training_args.overwrite_output_dir:
            raise RecipeError(f"key 'output_dir': {out} holds a started run whose {RUN_RECIPE} is missing: put it "
                              "back to resume, or pass --overwrite_output_dir true to delete the run and start over")
    started_with = record.get("global_batch")
    if started_with and started_with != global_batch(training_args) and not finished and \
            not training_args.overwrite_output_dir:
        raise RecipeError(f"key 'output_dir': the run in {out} trained on {started_with} rows per step (processes x "
                          f"batch x gradient accumulation), this launch would train on {global_batch(training_args)}"
                          f" ({training_args.world_size} process(es)): resume it with as many processes as before, "
                          "or pass --overwrite_output_dir true to start over")
    processes = record.get("processes")
    if processes and processes != training_args.world_size and not finished and \
            not training_args.overwrite_output_dir and _splits_a_stream(read_run_recipe(out)):
        raise RecipeError(f"key 'output_dir': the streaming run in {out} split its stream between {processes} "
                          f"processes, this launch has {training_args.world_size}: resume it with as many processes "
                          "as before, or pass --overwrite_output_dir true to start over")
    return False


def _splits_a_stream(recipe: dict) -> bool:
    """The run trains on a stream, split between its processes (token shards are read by index instead)."""
    return recipe.get("streaming") is True and not recipe.get("token_shards_dir")


def _finished_results(out: Path, results_file: Path) -> dict:
    """A finished run of the same recipe: its results, nothing to do."""
    try:
        results = read_json_file(results_file)
    except RecipeError:
        raise RecipeError(f"key 'output_dir': the results of the finished run in {out} ({results_file.name}) cannot "
                          "be read: restore the file, or pass --overwrite_output_dir true to train the run again"
                          ) from None
    print(f"{out} holds a finished run of this recipe: nothing to do (results in {results_file}; "
          "--overwrite_output_dir true trains it again)", flush=True)
    unlock_run_folder(out)
    return results


def claim_output_dir(training_args, recipe: dict, header: str, inputs: dict | None = None,
                     unused_keys=frozenset()) -> dict | None:
    """Make sure `output_dir` may be used for this recipe, then write the resolved recipe into it.

    - empty or new folder: used;
    - a started run of the same recipe: resumed (the caller finds its checkpoint);
    - a finished run of the same recipe: its results are returned and nothing is trained again;
    - a run (started or finished) of another recipe, or of the same recipe on other inputs (`inputs`: fingerprints of
      what the recipe names by path: data files, the model and tokenizer folders): refused, naming what differs;
    - with `overwrite_output_dir`, an lmrecipes run there is deleted first and the recipe starts over;
    - files that are not an lmrecipes run (no RUN_MARKER): always refused (nothing lmrecipes did not write is
      deleted).
    """
    out = Path(training_args.output_dir)
    previous_file, results_file = out / RUN_RECIPE, out / "all_results.json"
    with training_args.main_process_first(local=False, desc="output_dir check"):  # all machines: after process 0
        check_output_dir_is_a_folder(out)
        if out.is_dir() and any(not _own_leftover(p.name) for p in out.iterdir()) and not is_run_folder(out):
            raise RecipeError(f"key 'output_dir': {out} holds files but no lmrecipes run ({RUN_MARKER}); pick a new "
                              "or empty folder (runs of lmrecipes before the marker existed: move them away)")
        if training_args.process_index == 0:
            out.mkdir(parents=True, exist_ok=True)
            lock_run_folder(out)
        finished = results_file.is_file() and run_record(out).get("finished") is True
        never_started = is_run_folder(out) and _check_started_run(out, training_args, finished)
        if is_run_folder(out) and not never_started:
            if not training_args.overwrite_output_dir:
                check_recipe_unchanged(out, "output_dir")
            previous = read_run_recipe(out)
            changed = _changed_keys(previous, recipe, unused_keys)
            earlier_inputs = run_record(out).get("inputs") or {}
            changed += [f"the contents of {k}" for k in sorted((inputs or {}).keys() | earlier_inputs.keys())
                        if (inputs or {}).get(k) != earlier_inputs.get(k)]
            if not training_args.overwrite_output_dir:
                if changed:
                    state = "finished" if finished else "started"
                    raise RecipeError(f"key 'output_dir': {out} holds a {state} run of another recipe (differs in "
                                      f"{', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''}); pick another "
                                      "output_dir, or pass --overwrite_output_dir true to delete it and start over"
                                      f"{_train_on_hint(out, changed) if finished else ''}")
                if finished:
                    return _finished_results(out, results_file)
            elif training_args.should_save:
                logger.warning("overwrite_output_dir: deleting the run in %s and starting over", out)
                remove_run_folder(out)
        if training_args.should_save:
            out.mkdir(parents=True, exist_ok=True)
            if not is_run_folder(out) or never_started:
                # first: from here on the folder is this run's
                record_run(out, inputs=inputs or {}, global_batch=global_batch(training_args),
                           processes=training_args.world_size)
                write_recipe(previous_file, recipe, header)
                record_run(out, files=[RUN_RECIPE])
            record_run(out)  # the session starts at the marker's time on the disk's clock, to which the files the
            record_run(out, session_start=min(time.time(), (out / RUN_MARKER).stat().st_mtime),  # run writes compare
                       found_at_start=files_as_found(out))
    return None
