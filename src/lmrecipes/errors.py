"""One exception type for every user mistake, reported in one line (exit code 2 from the scripts: launch.py)."""

from __future__ import annotations


class RecipeError(ValueError):
    """A problem with the user's input (recipe, flags, data, paths): reported in one line, exit code 2."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can span pages), for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
