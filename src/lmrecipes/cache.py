"""Atomic folders, cache entries and content fingerprints: the preprocessing cache (tokenizers, tokenized data) and
what a run's marker records of its inputs (run_folder.run_inputs)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .errors import RecipeError, os_error_number

logger = logging.getLogger("lmrecipes")


@contextlib.contextmanager
def atomic_directory(target: Path, replace=None):
    """Yield a temporary folder beside `target`; rename it to `target` only if the block finishes.

    A killed process leaves a `.tmp-*` folder, never a half-written `target`. The folder has the mode the user's
    umask gives a new folder (its files keep the modes their writers give). When `target` exists at the end it is
    kept (another process finished first) unless `replace` is given: then the earlier folder is renamed aside, the
    new one takes its place, and `replace(aside)` disposes of the earlier one (the new folder is in place whatever
    it does).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    name = _short_name(target.name)
    tmp = _new_folder(target.parent, f".tmp-{name}-{_writer()}-")
    try:
        yield tmp
        if target.exists() and not target.is_symlink() and replace is not None:
            aside = Path(tempfile.mkdtemp(prefix=f".old-{name}-{_writer()}-", dir=target.parent))
            os.replace(target, aside)  # over the empty folder mkdtemp made: a name nobody else holds
            os.replace(tmp, target)
            replace(aside)
        elif target.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new folder `prefix` + a random tail in `parent`, with the mode the umask gives a new folder (0755 under
    022). Hand-written: tempfile.mkdtemp makes it 0700 whatever the umask, and an exported model, cache entry or
    publish folder renamed from it would stay unreadable to the teammates of a shared machine."""
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir(mode=0o777)  # less the umask
            return folder
        except FileExistsError:
            continue


# Written last into every cache entry: the size of each of its files. An entry without it, or whose files differ
# from it, is built again.
CACHE_MANIFEST = ".lmrecipes-cache.json"


def _short_name(name: str) -> str:
    """A folder's name as its temporary folders carry it: a name of over 64 bytes by its hash, so that with the
    writer and a random tail the temporary name stays within the filesystem's 255 bytes."""
    return name if len(name.encode()) <= 64 else hashlib.sha256(name.encode()).hexdigest()[:16]


def _writer() -> str:
    """Who writes a temporary folder, in its name: this machine and process (HOST-PID)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _abandoned(folder: Path, name: str, day_s: float = 86400.0) -> bool:
    """A temporary folder of atomic_directory for the folder `name` whose writer is gone: a process of this machine
    that has ended, or any writer a day ago (one on another machine sharing the folder cannot be asked)."""
    try:
        # .tmp-NAME-HOST-PID-RANDOM or .old-...: NAME and HOST may hold dashes, PID and the RANDOM tail do not
        host, pid, _ = folder.name[len(f".tmp-{_short_name(name)}-"):].rsplit("-", 2)
        if host == socket.gethostname():
            os.kill(int(pid), 0)
            return False
        return time.time() - folder.stat().st_mtime > day_s
    except ProcessLookupError:
        return True
    except (ValueError, IndexError, OSError):
        return False


def cached(folder: Path, build: Callable[[Path], None], what: str,
           remedy: str = "set LMRECIPES_CACHE or data_cache_dir to a writable folder with space") -> bool:
    """Make sure the cache entry `folder` is there whole: True if it was (reused), else `build(tmp)` fills a new
    one, which replaces a damaged one (warned), and False.

    Hand-written: neither `tokenizers` nor `datasets` keeps a cache keyed on the corpus that checks itself. The
    processes of a machine take turns on an entry through a lock file beside it (fcntl: it dies with its holder),
    so an entry is built once and a `.tmp-*` folder found while holding the lock is a killed build's (removed).
    """
    if cache_entry_problem(folder) is None:  # the manifest is written last: an entry that has one is whole
        return True
    try:
        return _build_entry(folder, build, what)
    except Exception as err:  # noqa: BLE001 - the tokenizers library reports OS errors as plain Exceptions
        code = os_error_number(err)
        if code not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                        errno.ENOTDIR, errno.EEXIST, errno.ENOENT):  # a file where a folder goes; /proc
            raise
        raise RecipeError(f"cannot write the {what} at {folder} ({os.strerror(code)}): {remedy} (or raise the "
                          "file-size limit)") from None


def _build_entry(folder: Path, build: Callable[[Path], None], what: str) -> bool:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _turn(folder.parent / f".{folder.name}.lock"):
        short = glob.escape(_short_name(folder.name))
        for left in [*folder.parent.glob(f".tmp-{short}-*"), *folder.parent.glob(f".old-{short}-*")]:
            if _abandoned(left, folder.name):
                shutil.rmtree(left, ignore_errors=True)
        problem = cache_entry_problem(folder)
        if problem is None:  # built by another process while this one waited
            return True
        if folder.exists():
            logger.warning("The %s at %s is built again: %s", what, folder, problem)
        with atomic_directory(folder, replace=lambda aside: shutil.rmtree(aside, ignore_errors=True)) as tmp:
            build(tmp)
            (tmp / CACHE_MANIFEST).write_text(json.dumps({"written_by": "lmrecipes", "sizes": flushed_sizes(tmp)}))
        return False


@contextlib.contextmanager
def _turn(path: Path):
    """This process's turn on a cache entry (fcntl lock). Where the file cannot be locked (a read-only or another
    user's cache, a filesystem without locks), the entry is built without one: atomic_directory still keeps the
    first one finished."""
    try:
        handle = open(path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError as err:
        logger.warning("Building %s without a lock (%s)", path.name.removesuffix(".lock").lstrip("."), err)
        yield
        return
    hold_lock(handle)
    try:
        yield
    finally:
        release_lock(handle)


_locks_held: set = set()  # this process's open, flock'd lock files (cache turns, run locks)


def hold_lock(handle) -> None:
    """Count `handle` (an open file this process flock'd) among the locks that forked processes let go of."""
    _locks_held.add(handle)


def release_lock(handle) -> None:
    _locks_held.discard(handle)
    handle.close()


def _let_go_in_child() -> None:
    """A forked process (a data-loader worker) shares its parent's flocks; it closes its copies, so that a lock
    ends with the process that took it and not with the last of its workers (which outlive a SIGKILL by a few
    seconds): a killed run or build's orphaned workers keep no rerun waiting or refused."""
    for handle in _locks_held:
        handle.close()
    _locks_held.clear()


os.register_at_fork(after_in_child=_let_go_in_child)


def flushed_sizes(folder: Path, leave_out: str = "") -> dict[str, int]:
    """Flush every file below `folder` (no symbolic links, not `leave_out`) to disk; their sizes by relative path:
    what a manifest written after them records (a cache entry's, a checkpoint's)."""
    sizes = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not path.is_symlink() and name != leave_out:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            sizes[name] = path.stat().st_size
    return sizes


def cache_entry_problem(folder: Path) -> str | None:
    """What is wrong with a cache entry (missing, no manifest: a killed or older build, a file missing or of
    another size); None when it is whole."""
    try:
        sizes = json.loads((folder / CACHE_MANIFEST).read_text())["sizes"]
    except (OSError, ValueError, KeyError, TypeError):
        return "not there" if not folder.exists() else \
            f"no {CACHE_MANIFEST} (a build that was stopped, or one by an earlier lmrecipes)"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is {'missing' if not path.is_file() else f'{path.stat().st_size} bytes, {size} when saved'}"
    return None


def files_fingerprint(paths: list[str]) -> str:
    """sha256 over the files' names and contents."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def path_fingerprint(path: str | Path) -> str:
    """What identifies the contents of a local file (its bytes) or folder (cheaply: its files' names, sizes and
    modification times; a retrained model at the same path changes it, a copy of the same weights may too, which
    only makes a rerun refuse to reuse results). A Hub id stands for itself (a new revision is not seen)."""
    path = Path(path)
    if path.is_file():
        return files_fingerprint([str(path)])
    if not path.is_dir():
        return str(path)
    digest = hashlib.sha256()
    # lmrecipes' own bookkeeping (a run's marker, lock, a publish's temporary files) is not the model: publishing
    # a base model's run must not make the runs built on it see another model
    for item in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".lmrecipes-", ".tmp-"))):
        stat = item.stat()
        digest.update(f"{item.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's vocabulary, model and pipeline, without the truncation / padding state that calling it sets."""
    if not hasattr(tokenizer, "backend_tokenizer"):
        return hashlib.sha256(repr(tokenizer).encode()).hexdigest()
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None), state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
