"""Deleting only what lmrecipes wrote. A folder is emptied only when every file in it is accounted for by a record
lmrecipes itself wrote there (a run's marker, a publish folder's manifest); otherwise it is refused untouched,
naming what is not accounted for. Symbolic links are never followed, and a folder holding the working directory is
never deleted. Hand-written: neither the Trainer nor huggingface_hub has a notion of who owns a folder."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import RecipeError


def files_in(folder: Path) -> list[str]:
    """Every file below `folder` (relative, '/'-separated), symbolic links included as entries, never followed."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]]
    return sorted(found)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_deletable(folder: Path, owns: Callable[[str], bool], key: str, owner: str) -> list[str]:
    """The files of `folder` when every one is owned (`owns(relative path)`); a RecipeError naming the rest, else."""
    if folder.is_symlink():
        raise RecipeError(f"key '{key}': {folder} is a symbolic link; lmrecipes deletes only folders it wrote itself")
    if Path.cwd().resolve().is_relative_to(folder.resolve()):
        raise RecipeError(f"key '{key}': {folder} is the working folder or holds it; pick another folder")
    files = files_in(folder)
    foreign = [name for name in files if (folder / name).is_symlink() or not owns(name)]
    if foreign:
        raise RecipeError(f"key '{key}': {folder} holds files {owner} did not write, or that changed since "
                          f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); move them or pick "
                          "another folder")
    return files


def delete_checked(folder: Path, files: list[str], last: str | None = None) -> None:
    """Delete the files `check_deletable` accounted for (`last`, the record of ownership, at the end: a folder left
    half-deleted by a failure keeps its proof), then the folders they leave empty, then `folder`."""
    for name in sorted(files, key=lambda name: name == last):
        (folder / name).unlink()
    for root, dirs, _ in os.walk(folder, topdown=False):
        for name in dirs:
            (Path(root) / name).rmdir()  # fails if anything unaccounted for appeared meanwhile
    folder.rmdir()


def write_json_atomically(path: Path, record: dict) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(record, out, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
