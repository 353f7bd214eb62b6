"""Publish a run to the Hugging Face Hub: a Hub-ready folder with a model card (model_card.py), then `create_repo` +
`upload_folder`.

The folder holds only what a user of the model needs and nothing pickled: safetensors weights (or a LoRA adapter),
config, tokenizer, the resolved recipe, the results and `README.md`, a `huggingface_hub.ModelCard` whose metadata
carries a `model-index` with the run's evaluation metrics. The token comes from `HF_TOKEN` or the saved login
(`huggingface_hub.get_token`) and is never written anywhere.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

from .arguments import PublishArguments
from .cache import atomic_directory
from .errors import RecipeError, first_line
from .lora import load_tokenizer, write_classifier
from .model_card import LOCAL, public_values, read_json, write_model_card
from .objectives import OBJECTIVES
from .ownership import (
    PUBLISH_MANIFEST,
    check_deletable,
    check_name_fits,
    delete_checked,
    files_in,
    give_umask_modes,
    publish_folder_owns,
    write_publish_manifest,
)
from .recipe import RUN_RECIPE, read_run_recipe, write_recipe
from .run_folder import check_recipe_unchanged, is_run_folder, record_run, recorded_local_model, run_owns, run_record
from .run_lock import folder_in_use
from .values import is_hub_id, looks_like_local_path

logger = logging.getLogger("lmrecipes")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")
RUN_FILES = (RUN_RECIPE, "all_results.json", "labels.json")
MODEL_FILES = ("config.json", "generation_config.json")
CONNECT_TIMEOUT_S = 10


# ---------------------------------------------------------------- the Hub-ready folder


def run_kind(model_dir: Path) -> str:
    """'adapter' (LoRA), 'classifier' (fine-tuned), or the pretraining objective's name (objectives.OBJECTIVES)."""
    if (model_dir / "adapter_config.json").is_file():
        return "adapter"
    architectures = " ".join(read_json(model_dir / "config.json").get("architectures") or [])
    if "SequenceClassification" in architectures:
        return "classifier"
    for objective in OBJECTIVES.values():
        if any(marker in architectures for marker in objective.architecture_markers):
            return objective.name
    raise RecipeError(f"{model_dir}: not a model folder lmrecipes can publish (config.json architectures: "
                      f"{architectures or 'none'})")


def refuse_links(model_dir: Path) -> None:
    """What publishing reads from a run folder must be the run's own regular files: a symbolic link among them
    (`vocab.txt` -> a private key) would put what it points at into the upload. Refused in one line, naming it."""
    names = [*TOKENIZER_FILES, *RUN_FILES, *MODEL_FILES, "adapter_config.json", "model.safetensors.index.json",
             *(p.name for p in model_dir.glob("*.safetensors")),
             *(folder for objective in OBJECTIVES.values() for folder in objective.saved_folders)]
    for name in names:
        path = model_dir / name
        linked = [path] if path.is_symlink() else \
            [path / inner for inner in files_in(path) if (path / inner).is_symlink()] if path.is_dir() else []
        if linked:
            raise RecipeError(f"{linked[0]} is a symbolic link: publish copies only the run's own files, inside its "
                              "folder; replace the link with the file it points to, or remove it")


def _copy_present(source: Path, target: Path, names) -> None:
    for name in names:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def _make_paths_public(folder: Path) -> None:
    """Rewrite the run files copied into the publish folder with local absolute paths shortened (public_values)."""
    for name in ("labels.json", "all_results.json"):
        if (folder / name).is_file():
            (folder / name).write_text(json.dumps(public_values(read_json(folder / name)), indent=2))
    if (folder / RUN_RECIPE).is_file():
        write_recipe(folder / RUN_RECIPE, public_values(read_run_recipe(folder)),
                     f"# Resolved recipe of this run (lmrecipes); local paths shown as {LOCAL}/NAME")


def earlier_publish_folder_files(target: Path) -> list[str]:
    """The files of an earlier publish folder, when it provably is one: its manifest (written by publish) lists
    every file with the same content. Anything else is refused and left untouched (a word in a README proves
    nothing: a copy of this project's README would pass)."""
    return check_deletable(target, publish_folder_owns(target), "publish_dir", "lmrecipes publish")


def _dispose_of_earlier_folder(aside: Path) -> None:
    """Delete the earlier publish folder, moved aside once the new one is in place; kept (warned) if that fails."""
    try:
        delete_checked(aside, earlier_publish_folder_files(aside), last=PUBLISH_MANIFEST)
    except (RecipeError, OSError) as err:
        logger.warning("The earlier publish folder was kept at %s: %s", aside, first_line(err))


def check_base_model_id(base_model: str | None) -> None:
    if base_model is None:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if looks_like_local_path(base_model):
        raise RecipeError(f"key 'base_model': {base_model!r} is a local path; the card and adapter_config.json "
                          "name the base model for other people: give its Hub id (USER/NAME)")
    try:
        validate_repo_id(base_model)
    except HFValidationError as err:
        raise RecipeError(f"key 'base_model': {base_model!r} is not a Hub id ({first_line(err)})") from None


def check_only_run_files(model_dir: Path, kind: str) -> None:
    """From a run folder, publish copies only what the run wrote (its marker's record) and the recipe it wrote:
    weights, tokenizer files or notes put there afterwards are not uploaded as the run's (refused, named)."""
    if not is_run_folder(model_dir):
        return
    check_recipe_unchanged(model_dir, "model_dir")
    names = [p.name for p in model_dir.glob("*.safetensors")] + [
        name for name in ("model.safetensors.index.json", *MODEL_FILES, *TOKENIZER_FILES, *RUN_FILES,
                          "adapter_config.json") if (model_dir / name).is_file()]
    for folder in OBJECTIVES[kind].saved_folders if kind in OBJECTIVES else ():
        names += [f"{folder}/{name}" for name in files_in(model_dir / folder)] if (model_dir / folder).is_dir() else []
    owns = run_owns(model_dir)
    foreign = sorted({name for name in names if not owns(name)})
    if foreign:
        raise RecipeError(f"{model_dir} holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, which "
                          "its run did not write: publish uploads only the run's own files; move them out of the "
                          "folder")


def publish_target(args: PublishArguments, model_dir: Path) -> Path:
    """The publish folder: `publish_dir`, or the run's `hub/`; refused before anything is built when it is inside
    another run, or holds what no earlier publish wrote (an earlier publish folder is rebuilt)."""
    target = Path(args.publish_dir) if args.publish_dir else model_dir / "hub"
    check_name_fits(target, "publish_dir")
    inside = next((p for p in target.resolve().parents if is_run_folder(p) and p != model_dir.resolve()), None)
    if inside is not None:
        raise RecipeError(f"key 'publish_dir': {target} is inside another run ({inside}), which owns what is there; "
                          "pick a folder outside it")
    if target.exists() or target.is_symlink():
        earlier_publish_folder_files(target)
    return target


def check_tokenizer_loads(folder: Path, model_dir: Path) -> None:
    """The Hub copy's tokenizer loads: a run missing `tokenizer.json` would upload a model nobody can use."""
    try:
        load_tokenizer(folder)
    except RecipeError as err:
        raise RecipeError(f"{model_dir}: its tokenizer cannot be loaded ({str(err).split('(', 1)[-1]}") from None


def _finish_publish_folder(folder: Path, model_dir: Path, kind: str, repo_id: str, args: PublishArguments,
                           base_model: str | None) -> None:
    """With the model's files copied into `folder`: local paths shortened, the tokenizer checked, the card written
    (from the run in `model_dir`), the umask's modes given, then the manifest."""
    _make_paths_public(folder)
    check_tokenizer_loads(folder, model_dir)
    write_model_card(folder, kind, repo_id, args, base_model, run_dir=model_dir)
    give_umask_modes(folder)  # copies keep their source's modes (safetensors writes 0600): the umask's instead
    write_publish_manifest(folder)


def build_publish_folder(args: PublishArguments) -> tuple[Path, str, str | None]:
    """Write the Hub-ready folder (atomically: a finished one or none); returns (folder, kind, base_model)."""
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise RecipeError(f"model folder not found: {model_dir}")
    refuse_links(model_dir)
    run = next((p for p in model_dir.resolve().parents if is_run_folder(p)), None)
    if run is not None:  # a checkpoint (or another folder) inside a run: none of the run's checks would hold
        raise RecipeError(f"{model_dir} is inside the run {run}, whose checks (finished, its own files, its recipe) "
                          "would not hold for it: publish the run itself (its final model)")
    if is_run_folder(model_dir) and folder_in_use(model_dir):
        raise RecipeError(f"{model_dir}: another process is training into it; publish once that run has finished")
    if is_run_folder(model_dir) and run_record(model_dir).get("finished") is not True:
        raise RecipeError(f"{model_dir} holds a run that has not finished (no final evaluation in its results): run "
                          "the same command again to finish it, then publish")
    repo_id = args.repo_id or model_dir.resolve().name
    kind = run_kind(model_dir)
    recipe = read_run_recipe(model_dir)
    check_base_model_id(args.base_model)
    base_model = args.base_model
    if base_model is None and kind in ("classifier", "adapter"):
        origin = recipe.get("model_name_or_path") or read_json(model_dir / "labels.json").get("base_model")
        base_model = origin if is_hub_id(origin) and recorded_local_model(model_dir) is None else None
    lora_as = args.lora_as if kind == "adapter" else None
    if lora_as == "auto":
        lora_as = "adapter" if base_model else "merged"
    if lora_as == "adapter" and not base_model:
        raise RecipeError("key 'base_model': publishing a LoRA adapter needs the Hub id of its base model "
                          "(--base_model USER/NAME), or publish it merged (--lora_as merged)")
    if kind != "adapter" and not list(model_dir.glob("*.safetensors")):
        raise RecipeError(f"{model_dir}: no safetensors weights (lmrecipes publishes safetensors only)")
    check_only_run_files(model_dir, kind)

    target = publish_target(args, model_dir)
    in_run = target.parent.resolve() == model_dir.resolve() and is_run_folder(model_dir)
    with atomic_directory(target, replace=_dispose_of_earlier_folder) as tmp:
        if in_run:  # the run owns what a publish killed midway leaves (overwrite_output_dir deletes it)
            record_run(model_dir, pending=[tmp.name])
        if lora_as == "merged":
            write_classifier(model_dir, tmp)
            kind = "classifier"
        else:
            names = ["adapter_model.safetensors"] if kind == "adapter" else \
                [p.name for p in model_dir.glob("*.safetensors")]
            _copy_present(model_dir, tmp, [*names, "model.safetensors.index.json", *MODEL_FILES])
            if kind == "adapter":  # the Hub copy points at the base model's Hub id, not a local folder
                adapter = json.loads((model_dir / "adapter_config.json").read_text())
                adapter["base_model_name_or_path"] = base_model
                (tmp / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
            _copy_present(model_dir, tmp, [*TOKENIZER_FILES, *RUN_FILES])
            for folder in OBJECTIVES[kind].saved_folders if kind in OBJECTIVES else ():  # e.g. ELECTRA's generator/
                if (model_dir / folder).is_dir():
                    shutil.copytree(model_dir / folder, tmp / folder)
        _finish_publish_folder(tmp, model_dir, kind, repo_id, args, base_model)
    if in_run:
        record_run(model_dir, done_pending=[tmp.name])
    return target, kind, base_model


def list_folder(folder: Path) -> list[tuple[str, int]]:
    """What is uploaded: every file but the manifest."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")
                  if p.is_file() and p.name != PUBLISH_MANIFEST)


def _check_no_token_in(folder: Path, token: str | None) -> None:
    """Refuse to upload a folder where the token's value appears in any file (a last guard; nothing should write it)."""
    if not token:
        return
    needle = token.encode()
    for path in folder.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            raise RecipeError(f"refusing to upload: {path.name} contains the Hugging Face token")


# ---------------------------------------------------------------- upload


def hub_token(explicit: str | None = None) -> str:
    """The token: explicit, else HF_TOKEN, else the saved login. One-line error when there is none."""
    from huggingface_hub import get_token

    token = explicit or get_token()
    if not token:
        raise RecipeError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry_run)")
    return token


def check_hub_reachable() -> str:
    """Fail in seconds, with the endpoint named, when the Hub cannot be reached (hand-written: huggingface_hub's
    own calls would retry or wait on long timeouts before failing)."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        raise RecipeError("HF_HUB_OFFLINE is set: unset it to publish to the Hub (or use --dry_run)")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise RecipeError(f"cannot reach the Hugging Face Hub at {endpoint} ({err.__class__.__name__}: "
                          f"{err.strerror or err}); check the network or HF_ENDPOINT") from None
    return endpoint


def upload_folder(folder: Path, repo_id: str, *, private: bool, token: str, commit_message: str) -> str:
    """create_repo (exist_ok) + upload_folder; Hub errors become one-line RecipeErrors. Returns the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = check_hub_reachable()
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                          ignore_patterns=[PUBLISH_MANIFEST])
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", "?")
        raise RecipeError(f"the Hub at {endpoint} refused the upload to {repo_id} (HTTP {status}): "
                          f"{first_line(err)}") from None
    except OSError as err:
        raise RecipeError(f"upload to {endpoint} failed: {err.__class__.__name__}: {err}") from None
    return str(url)


def publish(model_dir, repo_id: str | None = None, *, dry_run: bool = False, token: str | None = None,
            **options) -> dict:
    """Build the Hub-ready folder of a run and upload it (with dry_run: only write and list it).

    `options` are the other `PublishArguments` fields (private, publish_dir, lora_as, base_model, license, ...).
    Returns {"folder", "files": [(name, bytes)], "kind", "base_model", "url" (None on a dry run)}.
    """
    args = PublishArguments(model_dir=str(model_dir), repo_id=repo_id, dry_run=dry_run, **options)
    if not args.dry_run:
        if not args.repo_id:
            raise RecipeError("key 'repo_id': the Hub repository (USER/NAME) is required unless --dry_run")
        token = hub_token(token)  # before any work: no token, no folder
    folder, kind, base_model = build_publish_folder(args)
    result = {"folder": str(folder), "files": list_folder(folder), "kind": kind, "base_model": base_model,
              "url": None}
    if args.dry_run:
        return result
    _check_no_token_in(folder, token)
    result["url"] = upload_folder(folder, args.repo_id, private=args.private, token=token,
                                  commit_message=args.commit_message)
    logger.info("Published %s to %s", folder, result["url"])
    return result
