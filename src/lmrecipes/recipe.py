"""Recipes: a flat YAML file whose values are defaults, overridden by command-line flags.

`HfArgumentParser` does the typing and the help texts. What it does not do, and is written here: take a YAML
file as *defaults* that flags override (its own `parse_yaml_file` cannot mix the two), name the recipe key
in a one-line error instead of printing the argparse usage wall, and write the resolved recipe back out.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import re
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .arguments import find_file
from .errors import RecipeError


class _RecipeArgumentParser(HfArgumentParser):
    """argparse raises instead of printing usage and exiting."""

    def error(self, message):
        raise RecipeError(re.sub(r"argument --(\w+)(/--[\w-]+)?", r"key '\1'", message))


def _yaml_to_argv(recipe: dict) -> list[str]:
    argv = []
    for key, value in recipe.items():
        if value is None:
            continue  # null in YAML keeps the field's default
        if isinstance(value, list):
            argv += [f"--{key}", *(str(v) for v in value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        elif isinstance(value, bool):
            argv += [f"--{key}", "true" if value else "false"]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def read_recipe_file(path: str | Path) -> dict:
    """Read a recipe with the safe YAML loader; a malformed or non-mapping file is a RecipeError."""
    path = find_file(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{path}: malformed YAML{where}: {problem}") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of key: value, got {type(recipe).__name__}")
    return recipe


def split_recipe_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """`RECIPE.yaml --flags` or `--config RECIPE.yaml --flags` -> (recipe path, flags)."""
    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise RecipeError("--config needs a recipe path")
        return argv[i + 1], argv[:i] + argv[i + 2 :]
    return None, argv


def parse_recipe(dataclass_types, argv: list[str] | None = None, recipe: dict | None = None):
    """Parse a recipe (path in argv, or an in-memory `recipe` dict) plus flags into the given dataclasses.

    Returns the dataclass instances followed by the dict of keys the user set (YAML and flags), resolved.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    path, flags = split_recipe_path(argv)
    source = "recipe"
    if path is not None:
        recipe = {**read_recipe_file(path), **(recipe or {})}
        source = path
    recipe = dict(recipe or {})

    parser = _RecipeArgumentParser(dataclass_types)
    known = {action.dest for action in parser._actions} - {"help"}
    for key in recipe:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"{source}: unknown key '{key}'{hint}")

    yaml_argv = _yaml_to_argv(recipe)
    try:
        parser.parse_known_args(yaml_argv)  # type errors in the file are named as the file's
    except RecipeError as err:
        if "arguments are required" not in str(err):  # those may still come from the command line
            raise RecipeError(f"{source}: {err}") from None
    _, unknown = parser.parse_known_args(yaml_argv + flags)  # the file's keys are known: the rest are flags
    if unknown:
        raise RecipeError(f"unknown command-line argument(s): {' '.join(unknown)}")
    try:
        parsed = parser.parse_args_into_dataclasses(args=yaml_argv + flags, look_for_args_file=False)
    except RecipeError:
        raise
    except ValueError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(first) from None

    set_keys = list(recipe) + [a[2:].split("=")[0].replace("-", "_") for a in flags if a.startswith("--")]
    set_keys = [k[3:] if k.startswith("no_") and k[3:] in known else k for k in set_keys]
    explicit = {}
    for key in dict.fromkeys(set_keys):
        for obj in parsed:
            if hasattr(obj, key):
                explicit[key] = _plain(getattr(obj, key))
                break
    return (*parsed, explicit)


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


SECRET_KEYS = {"hub_token", "push_to_hub_token"}


def resolved_recipe(explicit: dict, *own_args) -> dict:
    """The recipe as it ran: every field of lmrecipes' own dataclasses plus the TrainingArguments keys the user set.

    Secrets (hub tokens) are never part of it.
    """
    out = {}
    for obj in own_args:
        for f in dataclasses.fields(obj):
            out[f.name] = _plain(getattr(obj, f.name))
    out.update(explicit)
    return {k: v for k, v in out.items() if k not in SECRET_KEYS}


def write_recipe(path: str | Path, recipe: dict, header: str = "") -> None:
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    Path(path).write_text((header + "\n" if header else "") + text, encoding="utf-8")


RUN_RECIPE = "recipe.yaml"


def read_run_recipe(run_dir) -> dict:
    """The resolved recipe a run wrote into its folder ({} when there is none)."""
    path = Path(run_dir) / RUN_RECIPE
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
