"""One exception type for every user mistake, reported in one line (exit code 2 from the scripts: launch.py)."""

from __future__ import annotations

import errno
import re


class RecipeError(ValueError):
    """A problem with the user's input (recipe, flags, data, paths): reported in one line, exit code 2."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can span pages), for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def os_error_number(err: BaseException) -> int | None:
    """The OS error behind a failed write: an OSError's errno, or the `(os error N)` a Rust library (tokenizers,
    safetensors) puts in its message."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found else None


def out_of_space(err: BaseException) -> bool:
    """Whether a failed write means a full disk, quota or file-size limit: the OS error (its file named), a Rust
    library's `(os error N)`, or torch.save's report of a write its archive writer could not finish. Not a full
    shared memory (/dev/shm) under data-loader workers, which torch reports as `unable to write to file
    </torch_...>`: that is no disk of the run's."""
    if os_error_number(err) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(err)
    return not isinstance(err, OSError) and "</torch_" not in text and any(sign in text for sign in (
        "inline_container", "PytorchStreamWriter", "file write failed", "iostream error",  # torch.save
        "No space left on device", "Disk quota exceeded", "File too large"))  # safetensors: "I/O error: ..."
