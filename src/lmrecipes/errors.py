"""One exception type for every user mistake, and the wrapper that turns it into a one-line exit 2."""

from __future__ import annotations

import functools
import sys


class RecipeError(ValueError):
    """A problem with the user's input (recipe, flags, data, paths): reported in one line, exit code 2."""


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
