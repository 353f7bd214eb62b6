"""Processes and launchers: what a run needs to know and decide about how it was started, before any model exists.

Logging per process, CPU threads under `accelerate launch`, the number of processes launched against the world
size training would have, the sharding a launch config asked for, FSDP2 on a CPU launch, something made by one
process and sent to the others, and the end of a launched process. `check_launch` is the one entry for the checks
that need only the arguments and the environment; what needs the built Trainer is in parallelism.py.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .errors import RecipeError, first_line, out_of_space

logger = logging.getLogger("lmrecipes")


def setup_logging(training_args) -> None:
    """Readable logs from the main process; warnings only from the others. transformers logs at `log_level` (its
    warnings by default) from the start, not only once the Trainer exists (model loading comes before it)."""
    import transformers

    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, level=level, force=True)
    logging.getLogger("lmrecipes").setLevel(level)
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    if not has_accelerator():
        logging.getLogger("DeepSpeed").addFilter(_not_deepspeed_on_cpu)


def _not_deepspeed_on_cpu(record: logging.LogRecord) -> bool:
    """False for DeepSpeed's warning, on a machine without an accelerator, that it uses the CPU "if you have GPU or
    other accelerator, we were unable to detect it": accelerate imports DeepSpeed wherever it is installed, also
    for runs that do not use it, and there is nothing to detect (lmrecipes logs the device it trains on)."""
    return not record.getMessage().startswith("Setting accelerator to CPU")


def launched_processes() -> int:
    """How many processes the launcher started (torchrun / accelerate launch set WORLD_SIZE); 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def has_accelerator() -> bool:
    import torch
    from transformers.utils import is_torch_xla_available

    return torch.accelerator.is_available() or is_torch_xla_available()


def launched_on_cpu_without_use_cpu(use_cpu: bool) -> bool:
    """Several processes launched on a machine without an accelerator, and use_cpu not set: they are one DDP run
    over gloo once use_cpu is set. accelerate launch does not pass a config's `use_cpu` to the processes it starts,
    and without it each process would train alone."""
    if launched_processes() > 1 and not use_cpu and not has_accelerator():
        logger.warning("No accelerator found: the %d processes train on CPU, one DDP run over gloo",
                       launched_processes())
        return True
    return False


def trains_on_cpu(use_cpu: bool) -> bool:
    """Whether training will run on the CPU: asked for (use_cpu, or ACCELERATE_USE_CPU from a launch config), or no
    accelerator."""
    return use_cpu or not has_accelerator() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")


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
    OMP_NUM_THREADS=1 for the process it starts unless told otherwise, which leaves every core but one idle.
    A thread count the user set (OMP_NUM_THREADS, --num_cpu_threads_per_process) is kept; several processes keep
    accelerate's share of the cores."""
    import torch

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


def check_launch(training_args, job: str = "training") -> None:
    """The launch checks that need only the arguments and the environment, before anything is read or written.

    - several processes launched but each training alone (e.g. `--multi_gpu` on CPU without use_cpu);
    - one process driving several GPUs through nn.DataParallel (what the Trainer does when plain `python` sees
      more than one): it would hand a task's loss the gathered batch, and tokens/s and MFU would be reported for
      one device while all of them trained. One process per device, through a launcher.
    """
    launched = launched_processes()
    if launched > 1 and training_args.world_size != launched:
        raise RecipeError(
            f"{launched} processes were launched but training would run with world size {training_args.world_size}:"
            " each process would train a duplicate model (launch with accelerate launch or torchrun, which set up the "
            "process group; on CPU e.g. --config_file accelerate_configs/cpu_ddp.yaml)")
    if training_args.n_gpu > 1:
        raise RecipeError(f"{job} does not drive {training_args.n_gpu} GPUs from one process (nn.DataParallel): "
                          f"launch one process per GPU, accelerate launch --num_processes {training_args.n_gpu} "
                          f"scripts/{job}.py ..., or pick one GPU with CUDA_VISIBLE_DEVICES=0")


def sharding_asked_for() -> str | None:
    """The sharded parallelism the launch asked for ("FSDP", "DeepSpeed" or None): accelerate launch passes a
    config's FSDP / DeepSpeed choice to its processes as these variables."""
    flags = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}
    return next((name for name, flag in flags.items() if os.environ.get(flag, "").lower() in ("1", "true")), None)


def load_deepspeed_comm_op(asked: bool = False) -> None:
    """Load the collective op DeepSpeed compiles on first use on a CPU (ShareMemCommBuilder), before DeepSpeed
    starts, so that a build lock left by a killed process cannot stop the run.

    Hand-written: torch builds such an op under a lock file `lock` in the op's build folder, which the building
    process deletes when done, and every process that loads the op takes that lock, even when nothing needs
    building. A process killed while holding it (a launch preempted or killed as it starts) leaves the file
    behind, and every later DeepSpeed launch on the machine then waits on it forever, printing nothing. Here the
    machine's lmrecipes processes take turns through an OS lock that dies with its holder; the turn's holder
    deletes a build lock that no live process holds (named in a warning), then loads the op, which DeepSpeed
    reuses instead of loading it again. `asked`: the recipe names a DeepSpeed config (`deepspeed` key, e.g. under
    torchrun, where no launch config says so).
    """
    if sharding_asked_for() != "DeepSpeed" and not asked:
        return
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import _get_build_directory  # torch's own rule for where the op is built

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return  # DeepSpeed does not build it either (an accelerator with its own collectives)
    folder = Path(_get_build_directory(builder.name, verbose=False))
    with open(folder / ".lmrecipes-turn", "a") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        remove_orphaned_build_lock(folder / "lock")
        builder.load(verbose=False)


def remove_orphaned_build_lock(lock: Path, young_s: float = 60.0, stale_after_s: float = 600.0) -> bool:
    """Delete torch's build lock file `lock` if no process holds it; True if deleted. A live holder keeps the
    file open, which /proc shows for the processes of this machine; a lock younger than `young_s` is given that
    long to go away first (a holder on another machine sharing the folder, or one between closing and deleting
    it). Without /proc, a lock older than `stale_after_s` (a build takes well under a minute) counts as orphaned."""
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        held = _held_open(lock)
        if held or (held is None and age < stale_after_s):
            return False
        if age >= young_s:
            break
        time.sleep(1.0)
    logger.warning("Removed %s, a build lock left by a process that ended while building or loading the op "
                   "(%.0f s old); without it DeepSpeed would wait forever", lock, age)
    lock.unlink(missing_ok=True)
    return True


def _held_open(path: Path) -> bool | None:
    """Whether a process of this machine has `path` open, from /proc/*/fd; None where /proc cannot tell."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = str(path.resolve())
    for pid in filter(str.isdigit, os.listdir(proc)):
        try:
            if any(os.readlink(fd) == target for fd in (proc / pid / "fd").iterdir()):
                return True
        except OSError:  # the process ended, or belongs to another user (who cannot hold our cache's lock)
            continue
    return False


@contextlib.contextmanager
def fsdp_on_cpu():
    """Let a multi-process CPU launch that asked for FSDP2 run FSDP2, while the Trainer creates its Accelerator.

    Hand-written: accelerate's AcceleratorState (1.16 and earlier; drop this once it does) turns a launch's FSDP
    request into FSDP only for accelerator device types (MULTI_GPU, MULTI_XPU, ...); on CPU (MULTI_CPU) it
    silently trains DDP. Yet torch's FSDP2 (`fully_shard`) shards parameters as DTensors and trains over gloo on CPU,
    and accelerate's FSDP2 code paths (preparing the model, sharded checkpoints, full state dict) are
    device-neutral. So such a run is shown as a multi-device one; AcceleratorState then records FSDP as the run's
    type. FSDP version 1 needs an accelerator: refused on CPU.
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


def made_once(make, training_args, pack, unpack, what: str):
    """`make()` on process 0 alone when several processes run; the others receive `pack(result)` (picklable)
    through the process group and rebuild it with `unpack`.

    Hand-written: `main_process_first` orders the processes of one machine only, so on several machines the first
    process of each would make its own at the same time, or find none without a shared filesystem. When process 0
    fails, the others are told instead of waiting in the broadcast: a RecipeError is raised by every process as it
    is, any other error on process 0 as its own traceback there and a one-line error elsewhere.
    """
    if training_args.world_size <= 1:
        return make()
    from accelerate.utils import broadcast_object_list

    message, failure, made = [None], None, None
    if training_args.process_index == 0:
        try:
            made = make()
            message = [pack(made)]
        except Exception as err:  # sent to the others, then raised here
            failure = err
            message = [err if isinstance(err, RecipeError) else
                       RecipeError(f"process 0 failed to make {what} ({type(err).__name__}: {err})")]
    broadcast_object_list(message, from_process=0)
    if failure is not None:
        raise failure
    if isinstance(message[0], RecipeError):
        raise message[0]
    return made if training_args.process_index == 0 else unpack(message[0])


def close_process_group() -> None:
    """Only after a normal end or a RecipeError (every rank stops there); never in the way of the error itself."""
    if "torch" not in sys.modules:  # nothing was started (e.g. --help)
        return
    import torch.distributed as dist

    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as err:  # noqa: BLE001 - closing is best effort
        print(f"warning: could not close the process group: {err}", file=sys.stderr, flush=True)


def end_launched_process(code: int) -> None:
    """End a process of a multi-process launch right away, once its work is done and its process group closed:
    Python's exit handlers run (loggers, trackers), then the process exits without the interpreter's teardown, where
    a gloo thread can abort a finished run (`terminate called without an active exception`, exit -6). A single
    process (and code calling a script's main in-process) returns normally."""
    if launched_processes() <= 1:
        return
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a preemption notice, `kill`, a launcher passing its own on): unwinds like Ctrl-C, so that locks and
    temporary files are let go and the run ends in one line."""


_terminated = threading.Event()


@contextlib.contextmanager
def _stop_on_sigterm():
    """Python's default for SIGTERM ends the process silently; while a script's main runs, its process raises
    `Terminated` instead. Processes forked from it (data-loader workers) inherit the handler and end the default
    way, silently. The previous handler is back afterwards (a script's main called from a notebook)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        _terminated.set()  # what fails while unwinding (a data-loader worker killed too) is part of this stop
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    _terminated.clear()
    try:
        yield
    except Exception as err:
        if _terminated.is_set():
            raise Terminated from err
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


RERUN_GOES_ON = "the same command goes on from where the run stopped (its last complete checkpoint)"


def _stop_message(err: BaseException, rerun: str = RERUN_GOES_ON) -> tuple[str, int]:
    """The one line and the exit code (the shell's 128 + signal number for a stop) for an error or a stop; `rerun`
    says what running the same command again does."""
    if isinstance(err, RecipeError):
        # raised in a data-loader worker, it arrives with the worker's traceback as its text: its own line is last
        raised = [line for line in str(err).splitlines() if line.startswith(f"{RecipeError.__module__}.RecipeError: ")]
        text = raised[-1].split(": ", 1)[1] if raised else str(err)
        return " ".join(text.split()), 2
    if not isinstance(err, KeyboardInterrupt):  # out of space (out_of_space), wherever the script was writing
        where = getattr(err, "filename2", None) or getattr(err, "filename", None)
        return (f"writing {where or 'a file'} failed ({first_line(err)}): free some space (the disk, quota or "
                "file-size limit is full), then run the same command again"), 2
    if isinstance(err, Terminated):
        return f"stopped (SIGTERM); {rerun}", 128 + signal.SIGTERM
    return f"interrupted (Ctrl-C); {rerun}", 128 + signal.SIGINT


def exit_on_recipe_error(main):
    """Decorate a script's `main` so that a `RecipeError` or a write that found no space prints `error: ...` on
    stderr and exits with 2, and Ctrl-C or SIGTERM prints one line (what a rerun does: `main.rerun` where the
    script says it) and exits with 130 or 143; a distributed process group the run opened is closed at the end
    (left open, a gloo process could abort at exit and fail a finished run)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            with _stop_on_sigterm():
                result = main(*args, **kwargs)
        except BaseException as err:
            if not isinstance(err, (RecipeError, KeyboardInterrupt)) and \
                    not (isinstance(err, Exception) and out_of_space(err)):
                raise
            close_process_group()
            message, code = _stop_message(err, getattr(main, "rerun", RERUN_GOES_ON))
            # one write, newline included: print's text and newline are two writes, and the lines of processes
            # failing together would interleave
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
            end_launched_process(code)
            raise SystemExit(code) from None
        close_process_group()
        end_launched_process(0)
        return result

    return wrapper
