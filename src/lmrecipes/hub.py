"""Publish a run to the Hugging Face Hub: a Hub-ready folder with a model card, then `create_repo` + `upload_folder`.

The folder holds only what a user of the model needs and nothing pickled: safetensors weights (or a LoRA adapter),
config, tokenizer, the resolved recipe, the results and `README.md`, a `huggingface_hub.ModelCard` whose metadata
carries a `model-index` with the run's evaluation metrics. The token comes from `HF_TOKEN` or the saved login
(`huggingface_hub.get_token`) and is never written anywhere.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse


from .arguments import REPO_ROOT
from .cache import atomic_directory
from .errors import RecipeError, first_line
from .modeling import PACKAGE_PREFIX, looks_like_local_path
from .objectives import OBJECTIVES
from .objectives.base import pipeline_snippet
from .ownership import check_deletable, delete_checked, files_in, sha256_of, write_json_atomically
from .recipe import RUN_RECIPE, read_run_recipe, write_recipe
from .tasks import task_class

logger = logging.getLogger("lmrecipes")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")
RUN_FILES = (RUN_RECIPE, "all_results.json", "labels.json")
# Written last into every publish folder: the files publish wrote there. A folder is only ever emptied for a rebuild
# when it holds this manifest and nothing that the manifest does not list; it is never uploaded.
PUBLISH_MANIFEST = ".lmrecipes-publish.json"
LOCAL = "<local>"
MODEL_FILES = ("config.json", "generation_config.json")
CONNECT_TIMEOUT_S = 10


@dataclass
class PublishArguments:
    """`scripts/publish.py MODEL_DIR --repo_id USER/NAME`: what to publish and where."""

    model_dir: str = field(metadata={"help": "A pretraining or fine-tuning output folder (plain or LoRA adapter)."})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repository USER/NAME (or ORG/NAME)."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repository private."})
    dry_run: bool = field(default=False, metadata={"help": "Write the folder and list what would be uploaded; "
                                                           "no network, no token needed."})
    publish_dir: str | None = field(default=None, metadata={"help": "Where the Hub-ready folder is written "
                                                                    "(default: MODEL_DIR/hub)."})
    lora_as: Literal["auto", "adapter", "merged"] = field(
        default="auto", metadata={"help": "A LoRA run is published as its adapter (needs the base model's Hub id) or "
                                  "merged into a plain checkpoint; auto: adapter when the base is a Hub id."})
    base_model: str | None = field(default=None, metadata={"help": "Hub id (USER/NAME) of the model this one was "
                                                                   "fine-tuned from (default: the run's "
                                                                   "model_name_or_path when that is a Hub id). A local "
                                                                   "path is refused: the card and adapter_config.json "
                                                                   "name it for other people."})
    license: str = field(default="apache-2.0", metadata={"help": "Licence of the published weights (card metadata)."})
    language: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "Languages (card metadata)."})
    datasets: list[str] = field(default_factory=list, metadata={"help": "Hub dataset ids of the training data (default: "
                                                                        "the recipe's dataset_name, if any)."})
    commit_message: str = field(default="Upload model trained with lmrecipes", metadata={"help": "Hub commit message."})


# ---------------------------------------------------------------- what the run folder holds


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _is_hub_id(value: str | None) -> bool:
    return bool(value) and not value.startswith(PACKAGE_PREFIX) and not looks_like_local_path(value) \
        and not Path(value).exists()


def run_kind(model_dir: Path) -> str:
    """'adapter' (LoRA), 'classifier' (fine-tuned), or the pretraining objective's name (objectives.OBJECTIVES)."""
    if (model_dir / "adapter_config.json").is_file():
        return "adapter"
    architectures = " ".join(_read_json(model_dir / "config.json").get("architectures") or [])
    if "SequenceClassification" in architectures:
        return "classifier"
    for objective in OBJECTIVES.values():
        if any(marker in architectures for marker in objective.architecture_markers):
            return objective.name
    raise RecipeError(f"{model_dir}: not a model folder lmrecipes can publish (config.json architectures: "
                      f"{architectures or 'none'})")


# The keys of a run's recipe.yaml / labels.json whose values are local paths (strings or lists of strings).
PATH_KEYS = {"model_name_or_path", "tokenizer_name_or_path", "config_name", "train_file", "validation_file",
             "test_file", "output_dir", "logging_dir", "data_cache_dir", "resume_from_checkpoint", "base_model",
             "deepspeed", "fsdp_config", "accelerator_config", "dataset_name"}


def public_path(value: str) -> str:
    """What a published file may say of a local path: relative to the repository when inside it (data/...),
    else `<local>/NAME`; absolute paths of this machine (home folders, temp folders) are never published."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~user of an unknown user: not a path of this machine
        return value
    if not path.is_absolute():
        return value
    if path.is_relative_to(REPO_ROOT):
        return str(path.relative_to(REPO_ROOT))
    return f"{LOCAL}/{path.name}"


def public_values(record: dict) -> dict:
    """`public_path` applied to the values of PATH_KEYS (nothing else: a label such as '/r/science' stays)."""
    def public(value):
        if isinstance(value, str):
            return public_path(value)
        return [public(v) for v in value] if isinstance(value, list) else value

    return {key: public(value) if key in PATH_KEYS else value for key, value in record.items()}


def count_safetensors_parameters(paths) -> int:
    """Parameters stored in safetensors files, read from their headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def data_provenance(recipe: dict) -> list[str]:
    """Markdown lines describing the training data: the recipe's files with their rows of data/README.md."""
    if recipe.get("dataset_name") and looks_like_local_path(recipe["dataset_name"]):
        return [f"- a local dataset folder `{public_path(recipe['dataset_name'])}` (provenance and licence: not "
                "recorded by lmrecipes)"]
    if recipe.get("dataset_name"):
        config = f" (config {recipe['dataset_config_name']})" if recipe.get("dataset_config_name") else ""
        return [f"- Hub dataset [`{recipe['dataset_name']}`](https://huggingface.co/datasets/{recipe['dataset_name']})"
                f"{config}; see its card for licence and provenance."]
    table = (REPO_ROOT / "data" / "README.md")
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")] if table.is_file() else []
    lines = []
    for pattern in recipe.get("train_file") or []:
        path = Path(pattern)
        if path.is_absolute() and path.is_relative_to(REPO_ROOT):
            path = path.relative_to(REPO_ROOT)
        cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
        matches = [c for c in cells if len(c) >= 4 and fnmatch.fnmatch(f"data/{c[0]}", str(path))]
        lines += [f"- `data/{c[0]}`: {c[1]} ({c[2]}); licence / source: {c[3]}" for c in matches]
        if not matches:
            lines.append(f"- local file(s) `{public_path(pattern)}` (provenance and licence: not recorded by "
                         "lmrecipes)")
    return lines or ["- not recorded"]


# ---------------------------------------------------------------- the model card


# what a fine-tuned model's results hold as the score of a predictor that ignores the text (Task.baseline)
BASELINES = {"test_majority_accuracy": "majority-class accuracy", "test_majority_subset_accuracy":
             "most frequent label set, subset accuracy", "test_mean_predictor_mse": "training-mean predictor, MSE"}
PIPELINE_TAGS = {**{name: objective.pipeline_tag for name, objective in OBJECTIVES.items()},
                 "classifier": "text-classification", "adapter": "text-classification"}


def _eval_results(kind: str, results: dict, recipe: dict, model_name: str, problem_type: str | None = None):
    from huggingface_hub import EvalResult

    task = PIPELINE_TAGS[kind]
    if kind in OBJECTIVES:  # a pretrained language model
        dataset = recipe.get("dataset_name") or "lmrecipes-corpus"
        name = f"{dataset} (held-out {recipe.get('validation_fraction', '')} of documents)"
        metrics = [(key, key.removeprefix("eval_"), label[0].upper() + label[1:])
                   for key, label, _ in OBJECTIVES[kind].reported_metrics] + [
                       ("eval_loss", "loss", f"Held-out {OBJECTIVES[kind].loss_label}")]
        split = "validation"
    else:
        dataset = recipe.get("dataset_name") or Path((recipe.get("train_file") or ["local"])[0]).name.split(".")[0]
        name = dataset
        metrics = task_class(problem_type or "single_label_classification").card_metrics
        split = "test"
    return [EvalResult(task_type=task, dataset_type=dataset, dataset_name=name, dataset_split=split,
                       metric_type=metric, metric_name=label, metric_value=round(float(results[key]), 4))
            for key, metric, label in metrics if results.get(key) is not None]


def _usage(kind: str, repo_id: str, tokenizer_mask: str | None, labels: list[str],
           problem_type: str = "single_label_classification") -> str:
    """The card's how-to-use snippet; a classifier (plain or adapter) prints the run's own label names."""
    if kind in OBJECTIVES:
        return OBJECTIVES[kind].usage(repo_id, tokenizer_mask)
    if kind == "classifier":
        return pipeline_snippet("text-classification", "classify", repo_id, task_class(problem_type).card_call)
    # the base model's config has no labels: the head is rebuilt with the run's (labels.json), else LABEL_0/LABEL_1
    return (f'from peft import AutoPeftModelForSequenceClassification\n'
            f'from transformers import AutoTokenizer, pipeline\n'
            f'labels = {labels!r}\n'
            f'model = AutoPeftModelForSequenceClassification.from_pretrained(\n'
            f'    "{repo_id}", num_labels=len(labels), id2label=dict(enumerate(labels)),\n'
            f'    label2id={{name: i for i, name in enumerate(labels)}}, problem_type={problem_type!r})\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
            f'model.config.pad_token_id = tokenizer.pad_token_id\n'
            f'classify = pipeline("text-classification", model=model, tokenizer=tokenizer)\n'
            f'print({task_class(problem_type).card_call})')


def _fmt(value, spec):
    return "unknown" if value is None else format(value, spec)


def write_model_card(folder: Path, kind: str, repo_id: str, args: PublishArguments, base_model: str | None):
    """README.md with YAML metadata (incl. model-index) and a body: training, evaluation, usage, data, limits."""
    from huggingface_hub import ModelCard, ModelCardData

    recipe = read_run_recipe(folder)
    results = _read_json(folder / "all_results.json")
    run_labels = _read_json(folder / "labels.json")
    labels = run_labels.get("labels", [])
    # an adapter folder has no config.json: the architecture is the base model's, recorded at fine-tuning
    config = _read_json(folder / "config.json") or run_labels.get("base_config") or {}
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    weights = sorted(folder.glob("*.safetensors"))
    parameters = count_safetensors_parameters(weights)
    model_name = repo_id.split("/")[-1]
    fine_tuned = kind in ("classifier", "adapter")
    datasets = args.datasets or ([recipe["dataset_name"]] if recipe.get("dataset_name") else None)
    tags = ["lmrecipes", config.get("model_type") or "",
            OBJECTIVES[kind].card_tag if kind in OBJECTIVES else "text-classification"] + (
        ["lora", "peft"] if kind == "adapter" else [])
    data = ModelCardData(
        model_name=model_name, library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag=PIPELINE_TAGS[kind], license=args.license, language=args.language, datasets=datasets,
        tags=[t for t in tags if t], base_model=base_model if fine_tuned else None,
        eval_results=_eval_results(kind, results, recipe, model_name, run_labels.get("problem_type")) or None)

    task = task_class(run_labels.get("problem_type", "single_label_classification"))
    described = task.card_description.format(labels=", ".join(labels))
    what = {**{name: objective.description for name, objective in OBJECTIVES.items()},
            "classifier": described, "adapter": f"a LoRA adapter: {described}"}[kind]
    source = base_model or (f"a local checkpoint (`{public_path(recipe['model_name_or_path'])}`)"
                            if recipe.get("model_name_or_path") else "random initialisation")
    training = [
        f"- Architecture: `{config.get('model_type', 'unknown')}` "
        f"({', '.join(config.get('architectures') or ['unknown architecture'])}"
        f"{' + LoRA adapter' if kind == 'adapter' else ''}), hidden size {config.get('hidden_size', '?')}, "
        f"{config.get('num_hidden_layers', '?')} layers, vocabulary {config.get('vocab_size', '?')}",
        f"- Parameters in this repository: {parameters:,}",
        f"- Started from: {'random weights' if recipe.get('init_from') == 'scratch' else source}"
        if fine_tuned else "- Started from: random weights (config class, nothing downloaded)",
        f"- Tokens seen in training: {_fmt(results.get('train_tokens'), ',')}, "
        f"{_fmt(results.get('train_tokens_per_second'), ',.0f')} tokens/s, MFU "
        f"{_fmt(results.get('mfu') and 100 * results['mfu'], '.1f')}%",
        f"- Training time: {_fmt(results.get('train_runtime'), '.0f')} s on {results.get('hardware') or 'unrecorded hardware'}",
        "- The exact recipe is `recipe.yaml` in this repository: run it again with lmrecipes "
        f"(`scripts/{'finetune' if fine_tuned else 'pretrain'}.py recipe.yaml`).",
    ]
    evaluation = ["| metric | split | value |", "| --- | --- | --- |"] + [
        f"| {r.metric_name} | {r.dataset_split} | {r.metric_value} |" for r in (data.eval_results or [])]
    for key, baseline in BASELINES.items():
        if fine_tuned and results.get(key) is not None:
            evaluation.append(f"| {baseline} (baseline) | test | {results[key]:.4f} |")
    limitations = ("A small model trained in minutes for demonstration and research: it knows little, generates "
                   "unreliable text and inherits the biases of its training data (old literature and political "
                   "speeches; movie-review snippets for classifiers). Do not use it for decisions about people."
                   if parameters < 50_000_000 else
                   "Trained on the data listed above only; it inherits that data's biases and gaps. Evaluate it on "
                   "your own data before use.")
    body = "\n".join([
        f"# {model_name}", "", f"{model_name} is {what}, trained with lmrecipes "
        "(pretraining and fine-tuning recipes on the Hugging Face stack).", "",
        "## How to use", "", "```python", _usage(kind, repo_id, tokenizer_config.get("mask_token"), labels,
                                                    run_labels.get("problem_type", "single_label_classification")), "```", "",
        "## Training", "", *training, "", "## Evaluation", "", *evaluation, "",
        "## Training data", "", *data_provenance(recipe), "", "## Limitations", "", limitations, ""])
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    card.save(folder / "README.md")
    return card


# ---------------------------------------------------------------- the Hub-ready folder


def _copy_present(source: Path, target: Path, names) -> None:
    for name in names:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def _make_paths_public(folder: Path) -> None:
    """Rewrite the run files copied into the publish folder with local absolute paths shortened (public_values)."""
    for name in ("labels.json", "all_results.json"):
        if (folder / name).is_file():
            (folder / name).write_text(json.dumps(public_values(_read_json(folder / name)), indent=2))
    if (folder / RUN_RECIPE).is_file():
        write_recipe(folder / RUN_RECIPE, public_values(read_run_recipe(folder)),
                     f"# Resolved recipe of this run (lmrecipes); local paths shown as {LOCAL}/NAME")


def _write_manifest(folder: Path) -> None:
    files = {name: sha256_of(folder / name) for name in files_in(folder)}
    write_json_atomically(folder / PUBLISH_MANIFEST, {"written_by": "lmrecipes publish", "files": files})


def publish_folder_owns(folder: Path, key: str = "publish_dir"):
    """Whether publish wrote a file of `folder` (relative path -> bool): listed in the folder's manifest with the
    same content. A RecipeError when `folder` is no publish folder at all (no manifest, or a symbolic link)."""
    manifest = folder / PUBLISH_MANIFEST
    if folder.is_symlink() or not folder.is_dir() or not manifest.is_file():
        raise RecipeError(f"key '{key}': {folder} exists and was not written by lmrecipes publish (no "
                          f"{PUBLISH_MANIFEST}); pick a new folder")
    try:
        listed = json.loads(manifest.read_text())["files"]
        assert isinstance(listed, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise RecipeError(f"key '{key}': {manifest} is unreadable; pick a new folder") from None
    return lambda name: name == PUBLISH_MANIFEST or (name in listed and sha256_of(folder / name) == listed[name])


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


def build_publish_folder(args: PublishArguments) -> tuple[Path, str, str | None]:
    """Write the Hub-ready folder (atomically: a finished one or none); returns (folder, kind, base_model)."""
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise RecipeError(f"model folder not found: {model_dir}")
    repo_id = args.repo_id or model_dir.resolve().name
    kind = run_kind(model_dir)
    recipe = read_run_recipe(model_dir)
    check_base_model_id(args.base_model)
    base_model = args.base_model
    if base_model is None and kind in ("classifier", "adapter"):
        origin = recipe.get("model_name_or_path") or _read_json(model_dir / "labels.json").get("base_model")
        base_model = origin if _is_hub_id(origin) else None
    lora_as = args.lora_as if kind == "adapter" else None
    if lora_as == "auto":
        lora_as = "adapter" if base_model else "merged"
    if lora_as == "adapter" and not base_model:
        raise RecipeError("key 'base_model': publishing a LoRA adapter needs the Hub id of its base model "
                          "(--base_model USER/NAME), or publish it merged (--lora_as merged)")
    if kind != "adapter" and not list(model_dir.glob("*.safetensors")):
        raise RecipeError(f"{model_dir}: no safetensors weights (lmrecipes publishes safetensors only)")

    target = Path(args.publish_dir) if args.publish_dir else model_dir / "hub"
    if target.exists() or target.is_symlink():  # an earlier publish folder is rebuilt; nothing else is deleted
        earlier_publish_folder_files(target)  # refused before anything is built
    with atomic_directory(target, replace=_dispose_of_earlier_folder) as tmp:
        if lora_as == "merged":
            from .lora import export_classifier

            export_classifier(model_dir, tmp)
            kind = "classifier"
        else:
            names = ["adapter_model.safetensors"] if kind == "adapter" else [p.name for p in model_dir.glob("*.safetensors")]
            _copy_present(model_dir, tmp, [*names, "model.safetensors.index.json", *MODEL_FILES])
            if kind == "adapter":  # the Hub copy points at the base model's Hub id, not a local folder
                adapter = json.loads((model_dir / "adapter_config.json").read_text())
                adapter["base_model_name_or_path"] = base_model
                (tmp / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
            _copy_present(model_dir, tmp, [*TOKENIZER_FILES, *RUN_FILES])
            for folder in OBJECTIVES[kind].saved_folders if kind in OBJECTIVES else ():  # e.g. ELECTRA's generator/
                if (model_dir / folder).is_dir():
                    shutil.copytree(model_dir / folder, tmp / folder)
        _make_paths_public(tmp)
        write_model_card(tmp, kind, repo_id, args, base_model)
        _write_manifest(tmp)
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
