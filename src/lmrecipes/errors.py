"""One exception type for every user mistake, and the wrapper that turns it into a one-line exit 2."""

from __future__ import annotations

import functools
import sys


class RecipeError(ValueError):
    """A problem with the user's input (recipe, flags, data, paths): reported in one line, exit code 2."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can span pages), for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def exit_on_recipe_error(main):
    """Decorate a script's `main` so that a `RecipeError` prints `error: ...` on stderr and exits with 2; a
    distributed process group the run opened is closed at the end (left open, a gloo process could abort at exit,
    "terminate called without an active exception", and fail a finished run)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
        except RecipeError as err:
            close_process_group()
            message = " ".join(str(err).split())  # always one line
            # one write, newline included: with PYTHONUNBUFFERED, print's text and newline are two writes, and the
            # lines of processes failing together interleaved
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
            end_launched_process(2)
            raise SystemExit(2) from None
        close_process_group()
        end_launched_process(0)
        return result

    return wrapper


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
    """End a process of a multi-process launch (torchrun / accelerate launch set WORLD_SIZE) right away, once its
    work is done and its process group closed: Python's exit handlers run (loggers, trackers), then the process
    exits without the interpreter's teardown, where a gloo thread now and then aborted a finished run
    (`terminate called without an active exception`, exit -6; seen once in ~100 two-process runs here).
    A single process (and code calling a script's main in-process) returns normally."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return
    import atexit
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
