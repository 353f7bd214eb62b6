"""The key names a script answers to: its dataclasses' fields, less the keys it leaves out (a pretraining key in
fine-tuning), plus other tools' names read as its own (aliases), and the one-line error that names every unknown key
at once with what was probably meant."""

from __future__ import annotations

import dataclasses
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
    targets: tuple[str, ...]  # the keys a script must have to read it (those it may set)
    boolean: bool = False  # a flag that may stand alone, meaning true

    def applies(self, known) -> bool:
        return set(self.targets) <= set(known)


def applicable(aliases: dict[str, Alias], known) -> dict[str, Alias]:
    return {name: alias for name, alias in aliases.items() if alias.applies(known)}


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


def _translated(name: str, value, alias: Alias, given: set[str]) -> dict:
    """The alias's keys and values; a key also given under its own name is refused (which would win is unclear)."""
    if alias.boolean and not isinstance(value, bool):
        value = BOOLEAN_WORDS.get(str(value).lower())
        if value is None:
            raise RecipeError(f"key '{name}': expected true or false")
    keys = alias.translate(value)
    both = sorted(set(keys) & given)
    if both:
        raise RecipeError(f"key '{name}' (the name in {alias.source} for {both[0]}) and '{both[0]}' are both given; "
                          "give one")
    # a warning: the recipe is parsed before the run's logging is set up, and Python prints warnings regardless
    logger.warning("%s (the name in %s) read as %s", name, alias.source,
                   ", ".join(f"{k}: {v}" for k, v in keys.items()) or "what lmrecipes does anyway")
    return keys


def translate_recipe(recipe: dict, aliases: dict[str, Alias], known: set[str]) -> dict:
    aliases = applicable(aliases, known)
    given = {key for key in recipe if key not in aliases}
    out = {}
    for key, value in recipe.items():
        if key in aliases:
            new = _translated(key, value, aliases[key], given)
            given |= set(new)
            out.update(new)
        else:
            out[key] = value
    return out


def _flag_value(flags: list[str], i: int, alias: Alias, name: str) -> tuple[object, int]:
    """The value of the alias flag at flags[i] and the index after it."""
    _, sep, value = flag_parts(flags[i])
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


def flag_parts(token: str) -> tuple[str | None, bool, str]:
    """`--some-key=value` -> ('some_key', True, 'value'); `--key` -> ('key', False, ''); a value -> (None, ...)."""
    name, sep, value = token.partition("=")
    return (name[2:].replace("-", "_") if name.startswith("--") else None), bool(sep), value


def _flag_name(token: str) -> str | None:
    return flag_parts(token)[0]


def translate_flags(flags: list[str], aliases: dict[str, Alias], known: set[str]) -> list[str]:
    """Alias flags replaced by lmrecipes' flags. A key given both ways on the command line is refused; one the
    recipe file holds is overridden, as any flag overrides the file."""
    aliases = applicable(aliases, known)
    given = {name for name in map(_flag_name, flags) if name and name not in aliases}
    out, i, seen = [], 0, set()
    while i < len(flags):
        name = _flag_name(flags[i])
        if name not in aliases:
            out.append(flags[i])
            i += 1
            continue
        if name in seen:
            raise RecipeError(f"command-line key '--{name}' is given twice; give it once")
        seen.add(name)
        value, after = _flag_value(flags, i, aliases[name], name)
        keys = _translated(name, value, aliases[name], given)
        given |= set(keys)
        for key, new in keys.items():
            out += [f"--{key}", *(str(v) for v in new)] if isinstance(new, list) else [f"--{key}", str(new)]
        i = after
    return out


def did_you_mean(key: str, known, aliases: dict[str, Alias] | None = None) -> str:
    """' (did you mean 'x'?)': a key that the typed one abbreviates, else the closest spelling of a key or of an
    alias this script reads."""
    candidates = [name for name in [*known, *applicable(aliases or {}, known)] if name != key]
    starting = sorted(k for k in candidates if k.startswith(key))
    close = starting[:1] or difflib.get_close_matches(key, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_keys_error(unknown: list[str], source: str, known, keys: KeySet | tuple) -> RecipeError:
    """One error naming every unknown key: why a left-out key is not taken here, what lmrecipes does instead of
    another tool's key, else the closest name."""
    left_out, not_taken = getattr(keys, "left_out", {}), getattr(keys, "not_taken", {})
    aliases = getattr(keys, "aliases", {})
    parts = []
    for key in dict.fromkeys(unknown):
        name = key.lstrip("-")
        alias = aliases.get(name)
        elsewhere = f"a name in {alias.source}, for a key this script does not have" if alias else None
        why = left_out.get(name) or not_taken.get(name) or elsewhere
        parts.append(f"'{key}' ({why})" if why else f"'{key}'{did_you_mean(name, known, aliases)}")
    noun = "unknown key" if len(parts) == 1 else f"{len(parts)} unknown keys"
    return RecipeError(f"{source}: {noun}: {'; '.join(parts)}")


def drop_left_out_defaults(recipe: dict, left_out: dict[str, str], dataclass_types) -> dict:
    """A recipe without the left-out keys that hold their default (or null): what a fine-tuning run's recipe.yaml
    held before fine-tuning left pretraining keys out, so that such a file runs again. One set otherwise stays, and
    is named as unknown."""
    defaults = {f.name: f.default for t in dataclass_types for f in dataclasses.fields(t) if f.name in left_out}
    dropped = [key for key, value in recipe.items() if key in left_out and (value is None or value == defaults[key])]
    if dropped:
        logger.info("Left out (pretraining keys at their defaults): %s", ", ".join(dropped))
    return {key: value for key, value in recipe.items() if key not in dropped}


def take_out_flags(flags: list[str], names) -> tuple[list[str], list[str]]:
    """(flags without those of `names` and their values, the `--name`s taken out): a left-out key is named as
    unknown, never parsed (argparse would refuse its value first)."""
    kept, taken, i = [], [], 0
    while i < len(flags):
        name = _flag_name(flags[i])
        base = name[3:] if name and name.startswith("no_") and name[3:] in names else name
        if base not in names:
            kept.append(flags[i])
            i += 1
            continue
        taken.append(f"--{base}")
        i += 1
        while "=" not in flags[i - 1] and i < len(flags) and not flags[i].startswith("--"):
            i += 1
    return kept, taken
