"""The lock on a run folder: the process training into `output_dir` holds it from the claim to the end of the
run, so that a second command on the same folder is refused instead of training into the same files.
Hand-written: the Trainer has no notion of a folder in use."""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path

from .cache import hold_lock, release_lock
from .errors import RecipeError

logger = logging.getLogger("lmrecipes")

# The lock file, in the run folder (fcntl.flock: it dies with its holding process).
RUN_LOCK = ".lmrecipes-lock"
# output_dir -> the open lock file of this process's run there (forked data-loader workers close their copies:
# cache.hold_lock)
_held_locks: dict[Path, object] = {}


def lock_run_folder(out: Path) -> None:
    """Take `out`'s run lock for this process (a run before it in this process, e.g. in a notebook, gives its lock
    up); a RecipeError when another process holds it."""
    out = out.resolve()
    earlier = _held_locks.pop(out, None)
    if earlier is not None:
        release_lock(earlier)
    try:
        handle = open(out / RUN_LOCK, "a")
    except OSError as err:
        logger.warning("output_dir is not locked against a second command (%s)", err)
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RecipeError(f"key 'output_dir': another process is training into {out}; wait for it to end, or pick "
                          "another output_dir") from None
    except OSError as err:  # a filesystem without locks
        handle.close()
        logger.warning("output_dir is not locked against a second command (%s)", err)
        return
    _held_locks[out] = handle
    hold_lock(handle)


def unlock_run_folder(out: Path) -> None:
    """Give up this process's lock on `out` (the run there ended, or found nothing to do)."""
    handle = _held_locks.pop(Path(out).resolve(), None)
    if handle is not None:
        release_lock(handle)


def folder_in_use(out: Path) -> bool:
    """Whether another process holds `out`'s run lock (a run training into it now)."""
    if Path(out).resolve() in _held_locks or not (Path(out) / RUN_LOCK).is_file():
        return False
    try:
        with open(Path(out) / RUN_LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
    except BlockingIOError:
        return True
    except OSError:  # a filesystem without locks: nothing to tell
        return False
    return False

