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
    """Decorate a script's `main` so that a `RecipeError` prints `error: ...` on stderr and exits with 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except RecipeError as err:
            message = " ".join(str(err).split())  # always one line
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper
