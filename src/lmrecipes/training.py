"""What pretraining and fine-tuning runs share: logging, the launch check, resume, the Trainer run and results."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import TrainerCallback

from .cache import path_fingerprint
from .data import tokenizer_fingerprint
from .errors import RecipeError
from .modeling import resolve_model_path
from .objectives import OBJECTIVES
from .ownership import check_deletable, delete_checked, files_in, write_json_atomically
from .recipe import RUN_RECIPE, read_run_recipe, write_recipe
from .throughput import ThroughputCallback, describe_hardware, model_flops_per_token, peak_flops_per_device

logger = logging.getLogger("lmrecipes")



def setup_logging(training_args) -> None:
    """Readable logs from the main process; warnings only from the others."""
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, level=level, force=True)
    logging.getLogger("lmrecipes").setLevel(level)
    transformers.utils.logging.set_verbosity_warning()


def _launcher_chose_threads() -> bool:
    """Whether OMP_NUM_THREADS comes from `accelerate launch`'s default rather than from the user: the launcher
    (this process's parent) was started with no OMP_NUM_THREADS and no --num_cpu_threads_per_process. Read from
    /proc (Linux); elsewhere the setting is kept."""
    try:
        parent = Path("/proc") / str(os.getppid())
        command = parent.joinpath("cmdline").read_bytes().split(b"\0")
        environment = parent.joinpath("environ").read_bytes().split(b"\0")
    except OSError:
        return False
    launched_by_accelerate = any(part.endswith(b"accelerate") for part in command[:2]) and b"launch" in command or \
        b"accelerate.commands.launch" in command
    return (launched_by_accelerate and not any(part.startswith(b"OMP_NUM_THREADS=") for part in environment)
            and not any(part.startswith(b"--num_cpu_threads_per_process") for part in command))


def use_the_cpus(training_args) -> None:
    """A single CPU process started by `accelerate launch` trains on every physical core: accelerate sets
    OMP_NUM_THREADS=1 for the process it starts unless told otherwise, which halved the speed of a 2-core machine.
    A thread count the user set (OMP_NUM_THREADS, --num_cpu_threads_per_process) is kept; several processes keep
    accelerate's share of the cores."""
    if training_args.device.type != "cpu" or training_args.world_size > 1 or "OMP_NUM_THREADS" not in os.environ:
        return
    import psutil  # an accelerate dependency

    # accelerate's own rule for CPU launches it is told about: the machine's physical cores, at most the CPUs this
    # process may use
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpus = min(psutil.cpu_count(logical=False) or available, available)
    if torch.get_num_threads() < cpus and _launcher_chose_threads():
        logger.info("accelerate launch set OMP_NUM_THREADS=%s by default: training on the machine's %d cores instead "
                    "(set OMP_NUM_THREADS or --num_cpu_threads_per_process to choose)", os.environ["OMP_NUM_THREADS"],
                    cpus)
        torch.set_num_threads(cpus)


def check_world_size(training_args) -> None:
    """Several processes launched but each training alone (e.g. `--multi_gpu` on CPU without use_cpu) is an error."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise RecipeError(
            f"{launched} processes were launched but training would run with world size {training_args.world_size}:"
            " each process would train a duplicate model (launch with accelerate launch or torchrun, which set up the "
            "process group; on CPU e.g. --config_file accelerate_configs/cpu_ddp.yaml)")


def sharding_asked_for() -> str | None:
    """The sharded parallelism the launch asked for ("FSDP", "DeepSpeed" or None): accelerate launch passes a
    config's FSDP / DeepSpeed choice to its processes as these variables."""
    flags = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}
    return next((name for name, flag in flags.items() if os.environ.get(flag, "").lower() in ("1", "true")), None)


def describe_parallelism(trainer) -> str:
    """What a run really does, read from the Trainer's accelerator (not from the launcher's word)."""
    state = trainer.accelerator.state
    processes, device = state.num_processes, str(state.device)
    if trainer.is_deepspeed_enabled:
        stage = state.deepspeed_plugin.zero_stage
        sharded = ["optimizer states", "gradients", "parameters"][:stage]
        what = f"DeepSpeed ZeRO-{stage}: {', '.join(sharded) + ' sharded' if sharded else 'nothing sharded'}"
    elif trainer.is_fsdp_enabled:
        what = f"FSDP{getattr(state.fsdp_plugin, 'fsdp_version', 1)}: parameters, gradients, optimizer states sharded"
    elif processes > 1:
        what = "DDP: parameters replicated, gradients averaged"
    elif trainer.args.n_gpu > 1:
        what = f"one process, nn.DataParallel over {trainer.args.n_gpu} GPUs"
    else:
        what = "single process"
    local = os.environ.get("LOCAL_WORLD_SIZE", "")  # set by torchrun / accelerate launch; else machines unknown
    count = processes // int(local) if local.isdigit() and int(local) > 0 else None
    machines = f" on {count} machine{'s' if count > 1 else ''}" if count else ""
    backend = f", backend {state.backend}" if processes > 1 else ""
    return f"{what}; {processes} process{'es' if processes > 1 else ''}{machines}{backend}, device {device}"


def check_parallelism(trainer) -> str:
    """Log the run's effective parallelism; a launch that asked for FSDP or DeepSpeed and would run something else
    (accelerate 1.15 trains plain DDP on CPU instead of FSDP version 1 or DeepSpeed) is an error."""
    described, state = describe_parallelism(trainer), trainer.accelerator.state
    asked = sharding_asked_for()
    got = "FSDP" if trainer.is_fsdp_enabled else "DeepSpeed" if trainer.is_deepspeed_enabled else None
    if asked is not None and asked != got:
        on_cpu = " (accelerate_configs/cpu_ddp.yaml or cpu_fsdp.yaml on CPU)" if trainer.args.device.type == "cpu" \
            else ""
        raise RecipeError(f"the launch config asks for {asked}, but this run would be {described} (accelerate "
                          f"{accelerate_version()} does not apply {asked} here); use a config that runs here{on_cpu}")
    if trainer.is_deepspeed_enabled and state.deepspeed_plugin.zero_stage == 3 and \
            not hasattr(trainer.model, "peft_config"):  # adapters are gathered on save whatever the setting
        zero = state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        gathers = any(str(zero.get(key)).lower() in ("true", "1") for key in (  # DeepSpeed's spellings
            "stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save",
            "stage3_gather_fp16_weights_on_model_save"))
        if not gathers:
            raise RecipeError("DeepSpeed ZeRO-3 without gathering the weights on save would leave the final model "
                              "without weights (only DeepSpeed's shards): set zero3_save_16bit_model: true in the "
                              "accelerate config (stage3_gather_16bit_weights_on_model_save in a DeepSpeed json)")
    logger.info("Parallelism: %s", described)
    return described


def build_trainer(training_args, build):
    """`build()`'s Trainer, made before output_dir is claimed so that a run whose parallelism is not the one
    asked for stops before anything is written (Trainer() creates output_dir: a folder it created is removed)."""
    out = Path(training_args.output_dir)
    check_output_dir_is_a_folder(out)
    existed = out.exists()
    with fsdp_on_cpu():
        trainer = build()
    try:
        check_parallelism(trainer)
        choose_unused_parameter_search(trainer)
    except RecipeError:
        if training_args.should_save and not existed:
            try:
                out.rmdir()  # only when empty
            except OSError:
                pass
        raise
    return trainer


@contextlib.contextmanager
def fsdp_on_cpu():
    """Let a multi-process CPU launch that asked for FSDP2 run FSDP2.

    Hand-written: accelerate 1.15's AcceleratorState turns a launch's FSDP request into FSDP only for accelerator
    device types (MULTI_GPU, MULTI_XPU, ...); on CPU (MULTI_CPU) it silently trains DDP. Yet torch's FSDP2
    (`fully_shard`) shards parameters as DTensors and trains over gloo on CPU, and accelerate's FSDP2 code paths
    (preparing the model, sharded checkpoints, full state dict) are device-neutral. So while the Trainer creates its
    Accelerator, such a run is shown as a multi-device one; AcceleratorState then records FSDP as the run's type.
    FSDP version 1 needs an accelerator: refused on CPU.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState._shared_state
    shown = sharding_asked_for() == "FSDP" and state.get("distributed_type") == DistributedType.MULTI_CPU
    version = os.environ.get("FSDP_VERSION", "1")
    if shown and version != "2":  # accelerate's FSDP1 plugin raises a RuntimeError without an accelerator
        raise RecipeError(f"the launch config asks for FSDP version {version}, which needs an accelerator; on CPU "
                          "lmrecipes runs FSDP2 (fsdp_version: 2, e.g. accelerate_configs/cpu_fsdp.yaml)")
    if shown:
        state["distributed_type"] = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        if shown and state.get("distributed_type") == DistributedType.MULTI_GPU:
            state["distributed_type"] = DistributedType.MULTI_CPU  # the Accelerator did not take FSDP: as it was


# config keys (at any depth: nested text / ffn configs too) under which a model can leave parameters without a
# gradient in some steps: a mixture of experts (the experts a batch reaches change), dropped layers (layerdrop)
VARYING_GRAPH_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "layerdrop",
                      "encoder_layerdrop", "decoder_layerdrop")


def _varying_graph(config) -> str | None:
    """The first VARYING_GRAPH_KEYS key set (non-zero) anywhere in a config, or None."""
    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in VARYING_GRAPH_KEYS and isinstance(item, (int, float)) and item:
                    return key
                found = walk(item)
                if found:
                    return found
        return None

    return walk(config.to_dict()) if hasattr(config, "to_dict") else None


def _unused_parameters(trainer) -> list[str] | None:
    """Trainable parameters that get no gradient in one forward and backward pass, in training mode, on the first
    training example (a stream's first held-out one: its first training block would fill the shuffle buffer);
    random state kept, gradients cleared. None when it cannot tell (no example, a model without a loss...)."""
    import inspect

    import datasets

    args, model = trainer.args, trainer.model
    source = trainer.eval_dataset if isinstance(trainer.train_dataset, datasets.IterableDataset) else \
        trainer.train_dataset
    was_training = model.training
    try:
        accepted = set(inspect.signature(getattr(model, "get_base_model", lambda: model)().forward).parameters)
        example = {key: value for key, value in next(iter(source)).items()
                   if key in accepted | {"label", "label_ids"}}
        batch = {key: value.to(args.device) for key, value in trainer.data_collator([example]).items()
                 if key in accepted}
        devices = [] if args.device.type == "cpu" else [args.device.index or 0]
        with torch.random.fork_rng(devices=devices, device_type=args.device.type):
            model.train()
            trainer.compute_loss(model, batch).backward()
        return [name for name, parameter in model.named_parameters()
                if parameter.requires_grad and parameter.grad is None]
    except Exception as err:  # a probe must never stop a run: the search stays on
        logger.info("DDP unused-parameter probe failed (%s: %s)", type(err).__name__, err)
        return None
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def choose_unused_parameter_search(trainer) -> None:
    """DDP's search for parameters without a gradient after every backward pass (`ddp_find_unused_parameters`,
    on by default in the Trainer) costs a graph traversal per step and a warning in every run of a model that uses
    all its weights. Unless the recipe sets it (or activation checkpointing turns it off), it is turned off when
    one forward and backward pass (_unused_parameters) gives every trainable parameter a gradient on every process,
    and kept for models whose graph can change from step to step (mixtures of experts, layerdrop). Hand-written:
    neither the Trainer nor accelerate looks."""
    args, handler = trainer.args, trainer.accelerator.ddp_handler
    if (args.world_size <= 1 or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled or handler is None
            or args.ddp_find_unused_parameters is not None or not handler.find_unused_parameters):
        return
    varying = _varying_graph(getattr(trainer.model, "config", None))
    unused = None if varying else _unused_parameters(trainer)
    keep = torch.tensor([0.0 if unused == [] else 1.0], device=args.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(keep, op=torch.distributed.ReduceOp.MAX)  # every process decides alike
    handler.find_unused_parameters = bool(keep.item())
    if varying:
        why = f"on (the config sets {varying}: the graph can change from step to step)"
    elif unused:
        why = f"on ({len(unused)} parameters get no gradient, e.g. {unused[0]})"
    else:
        why = "on" if handler.find_unused_parameters else "off (every trainable parameter gets a gradient)"
    logger.info("DDP unused-parameter search: %s", why)


def check_output_dir_is_a_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RecipeError(f"key 'output_dir': {out} is a file, not a folder")


def accelerate_version() -> str:
    import accelerate

    return accelerate.__version__


CHECKPOINT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                      "pytorch_model_fsdp_0/.metadata",  # FSDP's sharded weights: the metadata is written last
                      "latest")  # DeepSpeed's: names its global_stepN folder once that is written
# Keys that change how a run is watched, not what it trains: a rerun that differs only in these is the same run.
COSMETIC_KEYS = {"overwrite_output_dir", "resume_from_checkpoint", "output_dir", "logging_steps", "logging_dir",
                 "disable_tqdm", "report_to", "push_to_hub", "hub_model_id", "hub_private_repo",
                 "dataloader_num_workers", "per_device_eval_batch_size", "preprocessing_num_workers"}


def is_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint the Trainer finished writing: its trainer_state.json (written last) parses and names its step,
    and its weights are there. A run killed while saving leaves a folder that fails this."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
        step = int(folder.name.rsplit("-", 1)[1])
    except (OSError, ValueError, IndexError):
        return False
    return state.get("global_step") == step and any((folder / name).is_file() for name in CHECKPOINT_WEIGHTS)


def find_last_complete_checkpoint(out: Path, remove_incomplete: bool = False) -> str | None:
    """The highest-numbered complete checkpoint-N in `out`; newer incomplete ones are removed if asked (warned)."""
    folders = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for folder in sorted(folders, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if is_complete_checkpoint(folder):
            return str(folder)
        logger.warning("%s %s: incomplete (the run was killed while saving it)",
                       "Removing" if remove_incomplete else "Skipping", folder)
        if remove_incomplete:
            try:  # only a checkpoint this run wrote (its files recorded, or the one being written when it stopped)
                owns = run_owns(out)
                delete_checked(folder, check_deletable(folder, lambda name: owns(f"{folder.name}/{name}"),
                                                       "output_dir", "this lmrecipes run"))
            except (RecipeError, OSError) as err:
                logger.warning("Left %s in place: %s", folder, err)
    return None


def check_resume_request(training_args) -> None:
    """An explicit `resume_from_checkpoint` must be a complete checkpoint: checked before anything is written."""
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not Path(explicit).is_dir():
            raise RecipeError(f"key 'resume_from_checkpoint': no checkpoint folder at {explicit}")
        if not is_complete_checkpoint(Path(explicit)):
            raise RecipeError(f"key 'resume_from_checkpoint': {explicit} is incomplete (trainer_state.json or "
                              "weights missing: the run was killed while saving it)")


def find_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: `resume_from_checkpoint`, else the last complete one in `output_dir`.

    Hand-written beside `transformers.trainer_utils.get_last_checkpoint`, which takes the highest-numbered folder
    even when a killed save left it half-written. Such folders are removed (main process), with a warning.
    """
    explicit = training_args.resume_from_checkpoint
    if explicit:
        check_resume_request(training_args)
        checkpoint = explicit
    else:
        checkpoint = find_last_complete_checkpoint(Path(training_args.output_dir),
                                                   remove_incomplete=training_args.should_save)
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    return checkpoint


# Written by claim_output_dir into every run folder it starts and kept up to date as the run writes: what proves
# that a folder is an lmrecipes run (a recipe.yaml alone proves nothing: the published copy of a run carries one),
# the files the run wrote, the checkpoint being written ("pending"), and whether the run finished.
# overwrite_output_dir deletes what it records and nothing else.
RUN_MARKER = ".lmrecipes-run.json"
# Top-level names a run writes when it saves the model and its results (Trainer, tokenizer, peft, lmrecipes). Only
# files of these names written during this session of the run are recorded, never the user's older ones.
SAVED_NAMES = ("*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
               "adapter_config.json", "README.md", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja",
               "training_args.bin", "trainer_state.json", "train_results.json", "eval_results.json",
               "test_results.json", "all_results.json", "test_predictions.json", "merged/*",
               "runs/*tfevents*",  # TensorBoard's files grow after training too (the final evaluations' logs)
               *(f"{folder}/*" for objective in OBJECTIVES.values() for folder in objective.saved_folders))


def run_record(out: Path) -> dict:
    try:
        record = json.loads((out / RUN_MARKER).read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def is_run_folder(out: Path) -> bool:
    return (out / RUN_MARKER).is_file() and not out.is_symlink()


def record_run(out: Path, files=(), pending=(), done_pending=(), session_start: float | None = None,
               finished: bool | None = None, inputs: dict | None = None) -> None:
    """Add files (relative paths) the run wrote, checkpoint folders being written, and state to the marker; files
    that no longer exist (rotated checkpoints) are dropped."""
    record = run_record(out)
    known = {name for name in set(record.get("files", [])) | set(files) if (out / name).is_file()}
    record["files"] = sorted(known | {RUN_MARKER})
    record["pending"] = sorted((set(record.get("pending", [])) | set(pending)) - set(done_pending))
    record.setdefault("written_by", "lmrecipes")
    record["recipe"] = RUN_RECIPE
    if session_start is not None:
        record["session_start"] = session_start
    if finished is not None:
        record["finished"] = finished
    if inputs is not None:
        record["inputs"] = inputs
    write_json_atomically(out / RUN_MARKER, record)


def files_written_since(out: Path, since: float, patterns=SAVED_NAMES) -> list[str]:
    """Files (no symbolic links) whose relative path matches `patterns` and that were modified since `since`."""
    found = []
    for name in files_in(out):
        path = out / name
        if any(fnmatch.fnmatch(name, p) for p in patterns) and not path.is_symlink():
            try:
                if path.stat().st_mtime >= since:
                    found.append(name)
            except OSError:
                pass
    return found


def record_saved_files(out: Path, finished: bool | None = None) -> None:
    """Record the model, tokenizer and results files this session of the run wrote (see SAVED_NAMES)."""
    since = run_record(out).get("session_start", float("inf"))
    record_run(out, files_written_since(out, since - 1.0), finished=finished)


class RunFilesRecorder(TrainerCallback):
    """Keeps the run's marker up to date as the Trainer writes: the checkpoint it is about to write (pending), then
    that checkpoint's files and the TensorBoard event files. A failure to record only makes a later
    overwrite_output_dir refuse, so it is a warning, never the end of the run."""

    @staticmethod
    def _update(args, **changes):
        if not args.should_save:
            return
        try:
            record_run(Path(args.output_dir), **changes)
        except OSError as err:
            logger.warning("Could not update %s: %s", RUN_MARKER, err)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._update(args, pending=[f"checkpoint-{state.global_step}"])

    @staticmethod
    def _files_under(out: Path, folder: str, only: str = "") -> list[str]:
        return [f"{folder}/{name}" for name in files_in(out / folder) if only in name] if (out / folder).is_dir() \
            else []

    def on_save(self, args, state, control, **kwargs):
        out, folder = Path(args.output_dir), f"checkpoint-{state.global_step}"
        self._update(args, files=self._files_under(out, folder) + self._files_under(out, "runs", "tfevents"),
                     done_pending=[folder])

    def on_train_begin(self, args, state, control, **kwargs):
        self._update(args, files=self._files_under(Path(args.output_dir), "runs", "tfevents"))


def run_inputs(model_args, tokenizer, data_fingerprint: str) -> dict:
    """Fingerprints of what a run's recipe names by path (kept in its marker: a rerun of the same recipe on other
    inputs is not the same run): the data, the tokenizer, and the model / config folders or files."""
    inputs = {"data": data_fingerprint, "tokenizer": tokenizer_fingerprint(tokenizer)}
    for key in ("model_name_or_path", "config_name"):
        if getattr(model_args, key):
            inputs[key] = path_fingerprint(resolve_model_path(getattr(model_args, key), key))
    return inputs


def run_owns(out: Path):
    """Whether the run in `out` wrote a file (relative path -> bool): recorded, inside the checkpoint being written
    when the run stopped, or inside a publish folder whose own manifest accounts for it."""
    from .hub import PUBLISH_MANIFEST, publish_folder_owns

    record = run_record(out)
    recorded, pending = set(record.get("files", [])), tuple(f"{p}/" for p in record.get("pending", []))
    published = {p.name: publish_folder_owns(p, "overwrite_output_dir") for p in out.iterdir()
                 if p.is_dir() and not p.is_symlink() and (p / PUBLISH_MANIFEST).is_file()}

    def owns(name: str) -> bool:
        top, _, rest = name.partition("/")
        if top in published:
            return published[top](rest)
        return name in recorded or name.startswith(pending)

    return owns


def remove_run_folder(out: Path) -> None:
    """Delete a run folder (proven by its marker) when it holds only what the run wrote (run_owns); anything else
    is refused untouched, naming it. The marker goes last, so a folder left half-deleted is still a run."""
    files = check_deletable(out, run_owns(out), "overwrite_output_dir", "this lmrecipes run")
    delete_checked(out, files, last=RUN_MARKER)


def _comparable(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k not in COSMETIC_KEYS}


LENGTH_KEYS = {"max_steps", "num_train_epochs"}


def _train_on_hint(out: Path, changed: list[str]) -> str:
    """A finished run asked to train longer: how to go on from its last checkpoint into a new folder (the finished
    run stays as it is)."""
    checkpoint = find_last_complete_checkpoint(out) if set(changed) <= LENGTH_KEYS else None
    return (f"; to train on from where it stopped: --resume_from_checkpoint {checkpoint} --output_dir NEW_FOLDER"
            if checkpoint else "")


def claim_output_dir(training_args, recipe: dict, header: str, inputs: dict | None = None) -> dict | None:
    """Make sure `output_dir` may be used for this recipe, then write the resolved recipe into it.

    - empty or new folder: used;
    - a started run of the same recipe: resumed (the caller finds its checkpoint);
    - a finished run of the same recipe: its results are returned and nothing is trained again;
    - a run (started or finished) of another recipe, or of the same recipe on other inputs (`inputs`: fingerprints of
      what the recipe names by path: data files, the model and tokenizer folders): refused, naming what differs;
    - with `overwrite_output_dir`, an lmrecipes run there is deleted first and the recipe starts over;
    - files that are not an lmrecipes run (no RUN_MARKER): always refused (nothing lmrecipes did not write is
      deleted).
    Hand-written: transformers 5 dropped `overwrite_output_dir` and never guarded a finished run.
    """
    out = Path(training_args.output_dir)
    previous_file, results_file = out / RUN_RECIPE, out / "all_results.json"
    with training_args.main_process_first(local=False, desc="output_dir check"):  # all machines: after process 0
        check_output_dir_is_a_folder(out)
        if out.is_dir() and any(out.iterdir()) and not is_run_folder(out):
            raise RecipeError(f"key 'output_dir': {out} holds files but no lmrecipes run ({RUN_MARKER}); pick a new "
                              "or empty folder (runs of lmrecipes before the marker existed: move them away)")
        finished = results_file.is_file() and run_record(out).get("finished") is True
        if is_run_folder(out):
            previous = read_run_recipe(out)
            changed = sorted(k for k in set(_comparable(previous)) | set(_comparable(recipe))
                             if previous.get(k) != recipe.get(k))
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
                    print(f"{out} holds a finished run of this recipe: nothing to do (results in {results_file}; "
                          "--overwrite_output_dir true trains it again)", flush=True)
                    return json.loads(results_file.read_text())
            elif training_args.should_save:
                logger.warning("overwrite_output_dir: deleting the run in %s and starting over", out)
                remove_run_folder(out)
        if training_args.should_save:
            out.mkdir(parents=True, exist_ok=True)
            if not is_run_folder(out):
                write_recipe(previous_file, recipe, header)
                record_run(out, files=[RUN_RECIPE], inputs=inputs or {})
            record_run(out, session_start=time.time())
    return None


def throughput_callback(model, training_args, seq_len: int) -> ThroughputCallback:
    """Counting tokens is switched on so that tokens/s and MFU can be reported."""
    if training_args.include_num_input_tokens_seen == "no":
        training_args.include_num_input_tokens_seen = "non_padding"
    dtype = "bf16" if (training_args.bf16 or training_args.fp16) else "fp32"
    logger.info("Precision: %s (%s)", "fp16 autocast" if training_args.fp16 else
                "bf16 autocast" if training_args.bf16 else "fp32",
                getattr(training_args, "precision_choice", "TrainingArguments"))
    peak, source = peak_flops_per_device(training_args.device, dtype)
    per_token = model_flops_per_token(model, seq_len)
    logger.info("MFU basis: %.3g FLOPs/token, peak %s per device (%s)", per_token,
                f"{peak:.3g} FLOP/s" if peak else "unknown", source)
    if training_args.device.type == "cpu":  # accelerate launch sets OMP_NUM_THREADS=1 unless told otherwise
        logger.info("CPU threads per process: %d of %d CPUs (--num_cpu_threads_per_process for accelerate launch)",
                    torch.get_num_threads(), os.cpu_count())
    return ThroughputCallback(per_token, peak, training_args.world_size,
                              describe_hardware(training_args.device, training_args.world_size))


def hub_target(training_args) -> dict | None:
    """`push_to_hub: true` in a recipe: lmrecipes publishes the finished run itself (model card, safetensors only,
    no checkpoints or pickles), so the Trainer's own pushing is switched off. The token and the network are
    checked before training starts, and the token is dropped from the arguments (training_args.bin is pickled)."""
    token, training_args.hub_token = training_args.hub_token, None
    if not training_args.push_to_hub:
        return None
    from .hub import check_hub_reachable, hub_token

    target = {"repo_id": training_args.hub_model_id or Path(training_args.output_dir).resolve().name,
              "private": bool(training_args.hub_private_repo), "token": hub_token(token)}
    if training_args.should_save:
        check_hub_reachable()
    training_args.push_to_hub = False
    return target


def publish_if_asked(training_args, target: dict | None) -> str | None:
    """Upload the finished run (main process) when the recipe asked for it; returns the repository URL."""
    if target is None or not training_args.should_save:
        return None
    from .hub import publish

    result = publish(training_args.output_dir, target["repo_id"], private=target["private"], token=target["token"])
    print(f"Published to {result['url']}", flush=True)
    return result["url"]


class NonFiniteLossGuard(TrainerCallback):
    """Stops a run whose training loss became NaN or inf, naming the step, before it saves anything.

    The loss is logged (and so checked) at every checkpoint step and at the last step too, so neither a checkpoint
    nor the final model is written from a diverged model (also with save_strategy: no): the last good checkpoint
    stays the last one. Needs `logging_nan_inf_filter=False`, else the Trainer hides
    non-finite losses from the logs.
    """

    def on_step_end(self, args, state, control, **kwargs):
        # the last step is logged too: the final model is saved after it even when no checkpoint is
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            control.should_save, control.should_training_stop = False, True
            good = find_last_complete_checkpoint(Path(args.output_dir))
            raise RecipeError(f"training loss became {loss} by step {state.global_step}: run stopped, nothing saved "
                              f"from it; last good checkpoint: {good or 'none'} (lower learning_rate, check the data "
                              "or max_grad_norm)")


def save_final_model(trainer) -> None:
    """The Trainer's final save, whole under every parallelism. Under FSDP with sharded checkpoints the Trainer's
    save_model writes no weights at all (only a full state dict is saved there); the final model is gathered into a
    full state dict instead (accelerate's documented "train sharded, save full"), so output_dir holds one
    safetensors model that from_pretrained loads. Checkpoints stay sharded (fast to write, resumable)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    sharded = plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type)
    if sharded:
        kept = plugin.state_dict_type
        plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model()
    finally:
        if sharded:
            plugin.set_state_dict_type(kept)


class _StreamSkipProgress:
    """Batched `IterableDataset.filter` function that keeps every block and logs how far the Trainer's skip of the
    first `count` blocks has read (one process reading the stream: no data-loader workers)."""

    def __init__(self, count: int):
        self.count, self.every, self.seen = count, max(count // 10, 1), 0

    def __call__(self, blocks) -> list[bool]:
        size = len(next(iter(blocks.values())))
        if self.seen < self.count:
            before, self.seen = self.seen, self.seen + size
            if self.seen // self.every > before // self.every or self.seen >= self.count:
                logger.info("Resuming the stream: %d of %d blocks read again (%.0f%%)", min(self.seen, self.count),
                            self.count, 100 * min(self.seen, self.count) / self.count)
        return [True] * size


class _StreamSkipTimer(TrainerCallback):
    start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is not None:
            logger.info("Resuming the stream: skipped in %.1f s", time.monotonic() - self.start)
            self.start = None


def announce_stream_skip(trainer, checkpoint: str | None) -> None:
    """Resuming a streaming run, the Trainer skips the batches already trained on by reading the stream again from
    its start (process 0 reads, tokenizes and collates them; under DDP it also sends them to the others), and says
    so below the default log level. This says how many, with progress and the time it took.

    No resumable position is used: the Trainer (transformers 5.24) does not use accelerate's stateful data loader,
    and datasets' `IterableDataset.state_dict` does not keep a shuffle buffer (lmrecipes shuffles streams), so an
    exact resume has to read the stream again. Dropping the trained blocks inside the stream instead (before
    collation and sending) was measured: no faster on one process, 17% faster on two, and wrong with data-loader
    workers (each worker skips its own share) or a checkpoint past the stream's first pass; not kept.
    """
    import datasets

    if checkpoint is None or not isinstance(trainer.train_dataset, datasets.IterableDataset) or \
            trainer.args.ignore_data_skip:
        return
    args = trainer.args
    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    batches = step * args.gradient_accumulation_steps
    # process 0 reads every process's batch (or, split_batches, one batch split between them)
    count = batches * args.train_batch_size * (1 if args.accelerator_config.split_batches else args.world_size)
    if count == 0:
        return
    logger.info("Resuming a stream at step %d: skipping the %d batches (%d blocks) trained on, by reading the stream "
                "again from its start (a shuffled stream keeps no position)", step, batches, count)
    if args.dataloader_num_workers == 0:
        trainer.train_dataset = trainer.train_dataset.filter(_StreamSkipProgress(count), batched=True,
                                                             batch_size=256)
    trainer.add_callback(_StreamSkipTimer())


def train_and_save(trainer, checkpoint: str | None, throughput: ThroughputCallback) -> dict:
    """Train (resuming if asked), save the final model, tokenizer and trainer_state.json, return train metrics."""
    trainer.args.logging_nan_inf_filter = False  # a NaN loss must show, for NonFiniteLossGuard
    trainer.add_callback(NonFiniteLossGuard())
    trainer.add_callback(RunFilesRecorder())
    announce_stream_skip(trainer, checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    save_final_model(trainer)
    trainer.save_state()
    metrics = dict(result.metrics)
    metrics.update(throughput.metrics)
    metrics.setdefault("mfu", None)  # stated as unknown (null) rather than guessed
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    if trainer.args.should_save:
        record_saved_files(Path(trainer.args.output_dir))  # the final model, tokenizer, state and train results
    return metrics
