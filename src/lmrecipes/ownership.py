"""Deleting only what lmrecipes wrote. A folder is emptied only when every file in it is accounted for by a record
lmrecipes itself wrote there (a run's marker, a publish folder's manifest); otherwise it is refused untouched,
naming what is not accounted for. Symbolic links are never followed, and a folder holding the working directory is
never deleted. Hand-written: neither the Trainer nor huggingface_hub has a notion of who owns a folder. And the
modes of what lmrecipes writes: those the user's umask gives (`umask`, `give_umask_modes`)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

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


def delete_checked(folder: Path, files: list[str], last: str | None = None, keep_folder: bool = False) -> None:
    """Delete the files `check_deletable` accounted for (`last`, the record of ownership, at the end: a folder left
    half-deleted by a failure keeps its proof), then the folders they leave empty, then `folder` (unless
    `keep_folder`)."""
    for name in sorted(files, key=lambda name: name == last):
        (folder / name).unlink()
    for root, dirs, _ in os.walk(folder, topdown=False):
        for name in dirs:
            (Path(root) / name).rmdir()  # fails if anything unaccounted for appeared meanwhile
    if not keep_folder:
        folder.rmdir()


# ---------------------------------------------------------------- modes: what a plain open() or mkdir would give
# Files lmrecipes writes through a temporary name get the modes the user's umask gives new files, so that
# teammates on a shared machine read them as they read config.json: tempfile.mkstemp / mkdtemp make 0600 / 0700,
# and safetensors (0.8) writes its files through a temporary file of mode 0600 renamed into place, whatever the
# umask. Hand-written: neither tempfile nor safetensors offers a mode.


def umask() -> int:
    """This process's umask, read without changing it where Linux shows it (/proc/self/status), else by setting
    it and putting it back (a file another thread creates in between would get 022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new file under the user's umask (0644 under 022)."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode of a new folder under the user's umask (0755 under 022)."""
    return 0o777 & ~umask()


def give_umask_mode(path: Path) -> None:
    """`path` (a file or folder lmrecipes wrote) gets the mode a new one gets under the umask. Symbolic links are
    left alone (chmod would change what they point at); a filesystem that refuses chmod keeps the writer's mode
    (never a reason to fail a run or a publish)."""
    try:
        if not path.is_symlink():
            os.chmod(path, folder_mode() if path.is_dir() else file_mode())
    except OSError:
        pass


def give_umask_modes(folder: Path, pattern: str | None = None) -> None:
    """`give_umask_mode` to `folder`, its subfolders and files (a folder lmrecipes has just written whole); with
    `pattern` (e.g. '*.safetensors'), only to the files below `folder` whose name matches it."""
    if pattern is None:
        give_umask_mode(folder)
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in (dirs + names) if pattern is None else fnmatch.filter(names, pattern):
            give_umask_mode(Path(root) / name)


def write_text_atomically(path: Path, text: str, mode: int | None = None) -> None:
    """Written whole or not at all: a temporary file `.NAME.*.tmp` beside `path`, flushed to disk, then renamed
    into place (never an empty file after a crash). `mode`: the file's permissions; by default those of a new file
    under the umask (`file_mode`), never mkstemp's 0600."""
    write_bytes_atomically(path, text.encode("utf-8"), mode)


def write_bytes_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """`data` written as write_text_atomically writes text (e.g. a figure's PNG)."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, file_mode() if mode is None else mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, record: dict) -> None:
    write_text_atomically(path, json.dumps(record, indent=2))


# Written last into every publish folder (hub.py): the files publish wrote there, with their hashes. A folder is
# only ever emptied for a rebuild, or by overwrite_output_dir inside a run folder, when it holds this manifest and
# nothing that the manifest does not list; it is never uploaded.
PUBLISH_MANIFEST = ".lmrecipes-publish.json"


def write_publish_manifest(folder: Path) -> None:
    files = {name: sha256_of(folder / name) for name in files_in(folder)}
    write_json_atomically(folder / PUBLISH_MANIFEST, {"written_by": "lmrecipes publish", "files": files})


def publish_folder_owns(folder: Path, key: str = "publish_dir"):
    """Whether publish wrote a file of `folder` (relative path -> bool): listed in the folder's manifest with the
    same content. A RecipeError when `folder` is no publish folder at all (no manifest, or a symbolic link)."""
    manifest = folder / PUBLISH_MANIFEST
    if folder.is_symlink() or not folder.is_dir() or not manifest.is_file():
        raise RecipeError(f"key '{key}': {folder} exists and was not written by lmrecipes publish (no "
                          f"{PUBLISH_MANIFEST}); pick a new folder")
    try:
        listed = json.loads(manifest.read_text())["files"]
        assert isinstance(listed, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise RecipeError(f"key '{key}': {manifest} is unreadable; pick a new folder") from None
    return lambda name: name == PUBLISH_MANIFEST or (name in listed and sha256_of(folder / name) == listed[name])


def check_name_fits(path: Path, key: str) -> None:
    """A path the filesystem can name: one over its limit is a one-line error for `key` (os.lstat raises it on
    every Python; pathlib's exists() swallows it on newer ones)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise RecipeError(f"key '{key}': {path}: {err.strerror or err}") from None

