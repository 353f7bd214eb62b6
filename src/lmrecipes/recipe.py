"""Recipes: a flat YAML file whose values are defaults, overridden by command-line flags.

`HfArgumentParser` does the typing and the help texts. Written here, as it does not: a YAML file as *defaults* that
flags override (`parse_yaml_file` cannot mix the two), mapping-valued keys merged key by key, YAML booleans only
`true`/`false`, one-line errors naming the key instead of the argparse usage wall, the resolved recipe written out.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import sys
import typing
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .errors import RecipeError, first_line
from .ownership import write_text_atomically
from .recipe_help import help_text
from .recipe_names import (
    applicable,
    drop_left_out_defaults,
    flag_parts,
    take_out_flags,
    translate_flags,
    translate_recipe,
    unknown_keys_error,
)
from .values import find_file, parse_mapping, yaml_boolean


class RecipeLoader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 booleans: only true/false (any case) are booleans. YAML 1.1 also reads
    yes/no/on/off as booleans, which turns `eval_strategy: no` (the transformers docs' value) into `false`.
    A boolean key still accepts yes/no: `HfArgumentParser` parses those strings as booleans."""


def _refuse_aliases(loader: RecipeLoader, parent, index):
    """A recipe is flat and small: an alias (`*name`) is refused, so that nested aliases cannot expand a few
    kilobytes of YAML into gigabytes (the "billion laughs")."""
    if loader.check_event(yaml.AliasEvent):
        event = loader.peek_event()
        raise yaml.composer.ComposerError(None, None, f"aliases (*{event.anchor}) are not allowed in a recipe; write "
                                          "the value out", event.start_mark)
    return yaml.SafeLoader.compose_node(loader, parent, index)


def _refuse_duplicate_keys(loader: RecipeLoader, node, deep=False):
    """A key given twice in one mapping: YAML keeps the last silently, so a recipe edited by appending would train
    with a value its reader did not see."""
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if isinstance(key, typing.Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice (lines {seen[key]} and "
                                                    f"{line}); keep one", key_node.start_mark)
        if isinstance(key, typing.Hashable):
            seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


RecipeLoader.compose_node = _refuse_aliases
RecipeLoader.construct_mapping = _refuse_duplicate_keys
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def boolean_keys(dataclass_types) -> set[str]:
    return {name for t in dataclass_types for name, hint in typing.get_type_hints(t).items()
            if hint is bool or set(typing.get_args(hint)) == {bool, type(None)}}


def load_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader


REPLACE = "__replace__"


def merge_mappings(base: dict, update: dict) -> dict:
    """`update` laid over `base` key by key (nested mappings too). An update holding `__replace__: true` replaces
    the mapping at its level instead of merging into it. `__replace__` never reaches the result."""
    update = dict(update)
    if update.pop(REPLACE, False) is True:
        base = {}
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge_mappings(merged[key] if isinstance(merged.get(key), dict) else {}, value) \
            if isinstance(value, dict) else value
    return merged


def _as_mapping(value, key: str, key_value_form: bool):
    """A mapping given as a dict or a JSON object string (or `k=v,k=v` for lmrecipes' own keys); else None."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and (value.strip().startswith("{") or (key_value_form and "=" in value)):
        return parse_mapping(value, key)
    return None


def mapping_keys(dataclass_types) -> dict[str, bool]:
    """Recipe keys whose value is a mapping (typed `dict | ...`): these merge instead of replacing. The value says
    whether the key also takes `k=v,k=v` (lmrecipes' own keys; TrainingArguments' dict keys take JSON only)."""
    from transformers import TrainingArguments

    # the annotations, not dataclasses.fields(): HfArgumentParser rewrites a field's .type (dict | str -> str)
    return {name: not issubclass(t, TrainingArguments) for t in dataclass_types
            for name, hint in typing.get_type_hints(t).items() if "dict" in str(hint)}


# TrainingArguments' mapping keys that also take a file path.
PATH_OR_MAPPING = {"deepspeed", "fsdp_config", "accelerator_config"}


def merge_recipe(base: dict, overrides: dict, dataclass_types) -> dict:
    """Recipe values laid over one another: plain keys are replaced, mapping-valued keys merged key by key."""
    merged = {key: merge_mappings({}, value) if isinstance(value, dict) else value for key, value in base.items()}
    mappings = mapping_keys(dataclass_types)
    for key, value in overrides.items():
        new = _as_mapping(value, key, mappings[key]) if key in mappings else None
        if new is None and key in mappings and isinstance(value, str) and key not in PATH_OR_MAPPING \
                and not mappings[key]:
            raise RecipeError(f"key '{key}': expected a JSON object such as '{{\"name\": 1}}', got {value!r}")
        if new is None:
            merged[key] = value
        else:
            old = _as_mapping(merged.get(key), key, mappings[key])
            merged[key] = merge_mappings(old or {}, new)
    return merged


def _split_mapping_flags(flags: list[str], keys) -> tuple[list[tuple[str, str]], list[str]]:
    """Take `--key value` / `--key=value` flags of mapping-valued keys out of argv, in order (they are merged into
    the recipe one after the other, not parsed by argparse)."""
    found, rest, i = [], [], 0
    while i < len(flags):
        key, sep, value = flag_parts(flags[i])
        if key in keys:
            if not sep:
                if i + 1 >= len(flags):
                    raise RecipeError(f"key '{key}': expected one argument")
                value, i = flags[i + 1], i + 1
            found.append((key, value))
        else:
            rest.append(flags[i])
        i += 1
    return found, rest


def _refuse_repeated_flags(flags: list[str]) -> None:
    """argparse keeps the last of a flag given twice, silently (mapping flags, merged in order, are taken out
    before)."""
    given = [key for key, _, _ in map(flag_parts, flags) if key]
    given = [key[3:] if key.startswith("no_") else key for key in given]
    twice = next((key for i, key in enumerate(given) if key in given[:i]), None)
    if twice is not None:
        raise RecipeError(f"command-line key '--{twice}' is given twice; give it once")


def _boolean_flags(flags: list[str], booleans: set[str]) -> list[str]:
    """`--key on` / `--key=off` for a boolean key as true / false, as in a recipe file (argparse knows yes/no only)."""
    out = list(flags)
    for i, flag in enumerate(out):
        key, sep, value = flag_parts(flag)
        if key in booleans:
            if sep and value.lower() in ("on", "off"):
                out[i] = f"{flag.partition('=')[0]}={str(yaml_boolean(value)).lower()}"
            elif not sep and i + 1 < len(out) and out[i + 1].lower() in ("on", "off"):
                out[i + 1] = str(yaml_boolean(out[i + 1])).lower()
    return out


class _RecipeArgumentParser(HfArgumentParser):
    """argparse raises instead of printing usage and exiting; no abbreviated flags (`--max_grad` for
    `--max_grad_norm` would train with a key the run's recipe.yaml never records)."""

    def __init__(self, dataclass_types):
        super().__init__(dataclass_types, allow_abbrev=False)
        for action in self._actions:  # a list key whose default is a list may be emptied: `key: []`, a bare --key
            if action.nargs == "+" and isinstance(action.default, list):
                action.nargs = "*"

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
        recipe = load_yaml(path.read_text(encoding="utf-8"))
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


def _print_help_and_exit(dataclass_types, flags: list[str]) -> None:
    main = sys.modules.get("__main__")
    if "--help_all" in flags:
        HfArgumentParser(dataclass_types).print_help()
    else:
        left_out = getattr(dataclass_types, "left_out", {})
        keys = {f.name for t in dataclass_types for f in dataclasses.fields(t)} - set(left_out)
        print(help_text(Path(sys.argv[0]).name, getattr(main, "__doc__", "") or "", dataclass_types, left_out,
                        applicable(getattr(dataclass_types, "aliases", {}), keys)), end="")
    raise SystemExit(0)


def parse_recipe(dataclass_types, argv: list[str] | None = None, recipe: dict | None = None,
                 base: dict | None = None):
    """Parse a recipe (path in argv, or an in-memory `base` dict) with the keys of `recipe` laid over it, plus flags,
    into the given dataclasses (a tuple, or a KeySet that also leaves keys out and reads aliases).

    Returns the dataclass instances followed by the dict of keys the user set (YAML and flags), resolved.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help", "--help_all"} & set(argv):
        _print_help_and_exit(dataclass_types, argv)
    path, flags = split_recipe_path(argv)
    parser = _RecipeArgumentParser(dataclass_types)
    left_out = getattr(dataclass_types, "left_out", {})  # the parser keeps them: HfArgumentParser reads every field
    known = {action.dest for action in parser._actions} - {"help"} - set(left_out)
    aliases = getattr(dataclass_types, "aliases", {})
    source = "recipe" if path is None else path
    # each layer's aliases read on their own: an override's (the API's, a pipeline's) replaces the file's key
    recipe = translate_recipe(dict(recipe or {}), aliases, known)
    if path is not None or base is not None:
        base = read_recipe_file(path) if path is not None else base
        recipe = merge_recipe(translate_recipe(dict(base), aliases, known), recipe, dataclass_types)
    recipe = drop_left_out_defaults(recipe, left_out, dataclass_types)
    flags, left_out_flags = take_out_flags(translate_flags(flags, aliases, known), left_out)
    mapping_flags, flags = _split_mapping_flags(flags, mapping_keys(dataclass_types))
    for key, value in mapping_flags:
        recipe = merge_recipe(recipe, {key: value}, dataclass_types)

    _refuse_repeated_flags(flags)
    booleans = boolean_keys(dataclass_types)
    recipe = {key: yaml_boolean(value) if key in booleans else value for key, value in recipe.items()}
    flags = _boolean_flags(flags, booleans)

    unknown_in_file = [str(key) for key in recipe if key not in known]
    recipe = {key: value for key, value in recipe.items() if key in known}
    yaml_argv = _yaml_to_argv(recipe)
    try:
        parser.parse_known_args(yaml_argv)  # type errors in the file are named as the file's
    except RecipeError as err:
        if "arguments are required" not in str(err):  # those may still come from the command line
            raise RecipeError(f"{source}: {err}") from None
    _, unknown = parser.parse_known_args(yaml_argv + flags)  # the file's keys are known: the rest are flags
    unknown_flags = [f"--{flag_parts(a)[0]}" for a in unknown if a.startswith("--")] + left_out_flags
    if unknown_in_file or unknown_flags:
        where = source if not unknown_flags else "command line" if not unknown_in_file else f"{source} and command line"
        raise unknown_keys_error(unknown_in_file + unknown_flags, where, known, dataclass_types)
    if unknown:
        raise RecipeError(f"unknown command-line argument(s): {' '.join(unknown)}")
    try:
        parsed = parser.parse_args_into_dataclasses(args=yaml_argv + flags, look_for_args_file=False)
    except RecipeError:
        raise
    except ValueError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(first) from None

    return (*parsed, _explicit(list(recipe) + [key for key, _, _ in map(flag_parts, flags) if key], known, parsed))


def _explicit(set_keys: list[str], known: set[str], parsed) -> dict:
    """The keys the user set (YAML and flags), with their parsed values."""
    set_keys = [k[3:] if k.startswith("no_") and k[3:] in known else k for k in set_keys]
    explicit = {}
    for key in dict.fromkeys(set_keys):
        for obj in parsed:
            if hasattr(obj, key):
                explicit[key] = _plain(getattr(obj, key))
                if key == "report_to" and explicit[key] == []:  # TrainingArguments turns "none" into []: keep the
                    explicit[key] = "none"  # recipe's word, so the run's recipe.yaml parses again
                break
    return explicit


def load_recipe(recipe: str | Path | dict | None, argument_types, **overrides):
    """Parse a recipe file (or dict) plus keyword overrides into the dataclasses; returns (*dataclasses, explicit).

    Overrides replace plain keys; mapping-valued keys (`config_overrides`, `special_tokens`, ...) are merged key by
    key into the recipe's mapping (`{"__replace__": True, ...}` replaces it instead)."""
    if isinstance(recipe, dict):
        return parse_recipe(argument_types, [], recipe=overrides, base=recipe)
    return parse_recipe(argument_types, [str(recipe)] if recipe is not None else [], recipe=overrides)


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. TrainingArguments.accelerator_config
        return _plain(dataclasses.asdict(value))
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


def resolved_recipe(explicit: dict, *own_args, left_out=()) -> dict:
    """The recipe as it ran: every field of lmrecipes' own dataclasses that the script uses (not those it leaves
    out) plus the TrainingArguments keys the user set.

    Secrets (hub tokens) are never part of it.
    """
    out = {}
    for obj in own_args:
        for f in dataclasses.fields(obj):
            if f.name not in left_out:
                out[f.name] = _plain(getattr(obj, f.name))
    out.update(explicit)
    return {k: v for k, v in out.items() if k not in SECRET_KEYS}


class _NoAliasDumper(yaml.SafeDumper):
    """Values written out in full, never as anchors and aliases (which recipes refuse)."""

    def ignore_aliases(self, data):
        return True


def write_recipe(path: str | Path, recipe: dict, header: str = "") -> None:
    """Written whole or not at all (a temporary file `.NAME.*.tmp` beside it, renamed into place)."""
    text = yaml.dump(recipe, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)
    write_text_atomically(Path(path), (header + "\n" if header else "") + text)  # the umask's mode


RUN_RECIPE = "recipe.yaml"


def read_run_recipe(run_dir) -> dict:
    """The resolved recipe a run wrote into its folder ({} when there is none)."""
    path = Path(run_dir) / RUN_RECIPE
    if not path.is_file():
        return {}
    try:
        return load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: unreadable ({first_line(err)}); a run's recipe.yaml is lmrecipes' own record: "
                          "restore it or pick another folder") from None
