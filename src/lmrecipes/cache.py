"""Atomic folders and content fingerprints: the preprocessing cache (tokenizers, tokenized data) and what a run's
marker records of its inputs (run_folder.run_inputs)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(target: Path, replace=None):
    """Yield a temporary folder beside `target`; rename it to `target` only if the block finishes.

    A killed process leaves a `.tmp-*` folder, never a half-written `target`. When `target` exists at the end it is
    kept (another process finished first) unless `replace` is given: then the earlier folder is renamed aside, the
    new one takes its place, and `replace(aside)` disposes of the earlier one (the new folder is in place whatever
    it does).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists() and not target.is_symlink() and replace is not None:
            aside = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
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
    for item in sorted(p for p in path.iterdir() if p.is_file()):
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
