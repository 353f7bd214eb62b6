"""The key names a script answers to: its dataclasses' fields, less the keys it leaves out (a pretraining key in
fine-tuning), plus other tools' names read as its own (aliases), and the one-line error that names every unknown key
at once with what was probably meant."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .errors import RecipeError

logger = logging.getLogger("lmrecipes")


@dataclass(frozen=True)
class Alias:
    """Another tool's name for what a recipe key does."""

    source: str  # whose name it is (run_classification.py, ...), for the log line and --help
    translate: Callable[[object], dict]  # its value -> {key: value} (may be empty); RecipeError for a value refused
    boolean: bool = False  # a flag that may stand alone, meaning true


class KeySet(tuple):
    """The dataclasses a script parses (a tuple of them, as HfArgumentParser takes), with the keys of theirs it
    leaves out (name -> why: refused when given, absent from --help and recipe.yaml), the aliases it reads, and
    other tools' keys it has no equivalent of (name -> what it does instead)."""

    def __new__(cls, types, left_out: dict[str, str] | None = None, aliases: dict[str, Alias] | None = None,
                not_taken: dict[str, str] | None = None):
        keys = super().__new__(cls, types)
        keys.left_out, keys.aliases, keys.not_taken = dict(left_out or {}), dict(aliases or {}), dict(not_taken or {})
        return keys


BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False,
                 "0": False}


def _translated(name: str, value, alias: Alias, known: set[str]) -> dict | None:
    """The alias's keys and values, or None when they are not this script's keys (then `name` stays unknown)."""
    if alias.boolean and not isinstance(value, bool):
        value = BOOLEAN_WORDS.get(str(value).lower())
        if value is None:
            raise RecipeError(f"key '{name}': expected true or false")
    keys = alias.translate(value)
    if not set(keys) <= known:
        return None
    logger.info("%s (%s's name) read as %s", name, alias.source, ", ".join(f"{k}: {v}" for k, v in keys.items())
                or "what lmrecipes does anyway")
    return keys


def translate_recipe(recipe: dict, aliases: dict[str, Alias], known: set[str]) -> dict:
    out = {}
    for key, value in recipe.items():
        keys = _translated(key, value, aliases[key], known) if key in aliases else None
        if keys is None:
            out[key] = value
        else:
            out.update(keys)
    return out


def _flag_value(flags: list[str], i: int, alias: Alias, name: str) -> tuple[object, int]:
    """The value of the alias flag at flags[i] and the index after it."""
    given, sep, value = flags[i].partition("=")
    if sep:
        return value, i + 1
    following = flags[i + 1] if i + 1 < len(flags) else None
    if alias.boolean:
        word = None if following is None else following.lower()
        if word in BOOLEAN_WORDS:
            return following, i + 2
        return True, i + 1
    if following is None or following.startswith("--"):
        raise RecipeError(f"key '{name}': expected one argument")
    return following, i + 2


def translate_flags(flags: list[str], aliases: dict[str, Alias], known: set[str]) -> list[str]:
    out, i = [], 0
    while i < len(flags):
        name = flags[i].partition("=")[0][2:].replace("-", "_") if flags[i].startswith("--") else None
        if name not in aliases:
            out.append(flags[i])
            i += 1
            continue
        value, after = _flag_value(flags, i, aliases[name], name)
        keys = _translated(name, value, aliases[name], known)
        if keys is None:
            out += flags[i:after]
        else:
            for key, new in keys.items():
                out += [f"--{key}", *(str(v) for v in new)] if isinstance(new, list) else [f"--{key}", str(new)]
        i = after
    return out


def did_you_mean(key: str, known, aliases: dict[str, Alias] | None = None) -> str:
    """' (did you mean 'x'?)': a key that the typed one abbreviates, else the closest spelling of a key or of an
    alias this script reads."""
    starting = sorted(k for k in known if k.startswith(key))
    close = starting[:1] or difflib.get_close_matches(key, [*known, *(aliases or {})], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_keys_error(unknown: list[str], source: str, known, keys: KeySet | tuple) -> RecipeError:
    """One error naming every unknown key: why a left-out key is not taken here, what lmrecipes does instead of
    another tool's key, else the closest name."""
    left_out, not_taken = getattr(keys, "left_out", {}), getattr(keys, "not_taken", {})
    aliases = getattr(keys, "aliases", {})
    parts = []
    for key in dict.fromkeys(unknown):
        name = key.lstrip("-")
        why = left_out.get(name) or not_taken.get(name)
        parts.append(f"'{key}' ({why})" if why else f"'{key}'{did_you_mean(name, known, aliases)}")
    noun = "unknown key" if len(parts) == 1 else f"{len(parts)} unknown keys"
    return RecipeError(f"{source}: {noun}: {'; '.join(parts)}")
