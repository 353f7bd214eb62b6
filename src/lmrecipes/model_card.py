"""The model card of a published run (`huggingface_hub.ModelCard`): YAML metadata with a model-index of the run's
evaluation metrics, and a body on training, evaluation, usage, data and limits; what a published file may say of
a local path."""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

from .card_data import EMBEDDED, file_rows, first_text, proven_files, trained_on_embedded_data
from .data.sources import resolve_data_files
from .errors import RecipeError, first_line
from .objectives import OBJECTIVES
from .objectives.base import pipeline_snippet
from .recipe import read_run_recipe
from .tasks import task_class
from .values import REPO_ROOT, looks_like_local_path, read_json_file

LOCAL = "<local>"


def read_json(path: Path) -> dict:
    return read_json_file(path, missing={})


# The keys of a run's recipe.yaml / labels.json whose values are local paths (strings or lists of strings).
PATH_KEYS = {"model_name_or_path", "tokenizer_name_or_path", "config_name", "train_file", "validation_file",
             "test_file", "output_dir", "logging_dir", "data_cache_dir", "resume_from_checkpoint", "base_model",
             "deepspeed", "fsdp_config", "accelerator_config", "dataset_name", "token_shards_dir"}


# Of PATH_KEYS, those whose values are always local paths (never a Hub id).
LOCAL_ONLY_KEYS = PATH_KEYS - {"model_name_or_path", "tokenizer_name_or_path", "config_name", "base_model",
                               "dataset_name"}


def public_path(value: str, local: bool = False) -> str:
    """What a published file may say of a local path: relative to the repository when inside it (data/...),
    else `<local>/NAME`: folders of this machine (home folders, temp folders, a project's name in `../NAME/...`)
    are never published. `local`: the value is a path even when it reads like a Hub id (NAME or OWNER/NAME)."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~user of an unknown user: not a path of this machine
        return value
    if not path.is_absolute():
        if not (local or looks_like_local_path(value)):
            return value  # a Hub id
        path = (REPO_ROOT / path).resolve()  # relative paths in shipped recipes are relative to the repository
        if not path.parent.is_dir():  # not the repository's (its folder is not there): a folder of this machine
            return f"{LOCAL}/{path.name}"
    if path.is_relative_to(REPO_ROOT):
        return str(path.relative_to(REPO_ROOT))
    return f"{LOCAL}/{path.name}"


def public_values(record: dict) -> dict:
    """`public_path` applied to the values of PATH_KEYS (nothing else: a label such as '/r/science' stays)."""
    def public(value, local):
        if isinstance(value, str):
            return public_path(value, local)
        return [public(v, local) for v in value] if isinstance(value, list) else value

    return {key: public(value, key in LOCAL_ONLY_KEYS) if key in PATH_KEYS else value for key, value in record.items()}


def count_safetensors_parameters(paths) -> int:
    """Parameters stored in safetensors files, read from their headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as handle:
                total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
        except Exception as err:  # noqa: BLE001 - SafetensorError is a plain Exception
            raise RecipeError(f"{path} cannot be read ({first_line(err)}): its weights are damaged") from None
    return total


SPLITS = {"train_file": "training", "validation_file": "validation", "test_file": "test"}


def _files_size(names: list[str]) -> str:
    rows = [file_rows(name) for name in names]
    counted = f"{sum(rows):,} rows, " if rows and None not in rows else ""
    return f"{counted}{sum(Path(name).stat().st_size for name in names):,} bytes" + (
        f" in {len(names)} files" if len(names) > 1 else "")


def _held_out_lines(recipe: dict) -> list[str]:
    """The splits held out of the training files (classification: validation and test; pretraining: validation)."""
    fractions = {"validation": None if recipe.get("validation_file") else recipe.get("validation_fraction"),
                 "test": None if recipe.get("test_file") else recipe.get("test_fraction")}
    return [f"- {split}: {fraction:.0%} of the training rows, held out by a hash of their text"
            for split, fraction in fractions.items() if fraction]


def data_provenance(recipe: dict, files: dict | None = None) -> list[str]:
    """Markdown lines describing the data: a Hub dataset; lmrecipes' embedded data (its rows of data/README.md);
    or the run's own files with their rows and bytes (`files`: card_data.proven_files; files not proven to be the
    run's are named only); then the splits held out of the training files."""
    if recipe.get("dataset_name") and looks_like_local_path(recipe["dataset_name"]):
        return [f"- a local dataset folder `{public_path(recipe['dataset_name'])}` (provenance and licence: not "
                "recorded by lmrecipes)"]
    if recipe.get("dataset_name"):
        config = f" (config {recipe['dataset_config_name']})" if recipe.get("dataset_config_name") else ""
        return [f"- Hub dataset [`{recipe['dataset_name']}`](https://huggingface.co/datasets/{recipe['dataset_name']})"
                f"{config}; see its card for licence and provenance."]
    table = (REPO_ROOT / "data" / "README.md")
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")] if table.is_file() else []
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    lines, own = [], False
    for key, split in SPLITS.items():
        for pattern in recipe.get(key) or []:
            path = Path(pattern)
            if path.is_absolute() and path.is_relative_to(REPO_ROOT):
                path = path.relative_to(REPO_ROOT)
            matches = [c for c in cells if len(c) >= 4 and fnmatch.fnmatch(f"data/{c[0]}", str(path))]
            lines += [f"- {split}: `data/{c[0]}`: {c[1]} ({c[2]}); licence / source: {c[3]}" for c in matches]
            if matches:
                continue
            own = True
            try:
                names = resolve_data_files([pattern], key) if files and files.get(key) else []
            except RecipeError:
                names = []
            lines.append(f"- {split}: `{public_path(pattern, local=True)}`" + (
                f": {_files_size(names)}" if names else " (size not shown: moved or changed since the run read it)"))
    if own:
        lines.append("- provenance and licence of local files: not recorded by lmrecipes")
    return (lines + _held_out_lines(recipe)) if lines else ["- not recorded"]


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
        if not any(key in results for key, _, _ in metrics):  # test_fraction 0: the run scored validation only
            metrics = [(key.replace("test_", "eval_", 1), metric, label) for key, metric, label in metrics]
            split = "validation"
    return [EvalResult(task_type=task, dataset_type=dataset, dataset_name=name, dataset_split=split,
                       metric_type=metric, metric_name=label, metric_value=round(float(results[key]), 4))
            for key, metric, label in metrics if results.get(key) is not None]


# The usage example of a classifier whose run's text could not be read (a Hub dataset, files moved or changed).
PLACEHOLDER_TEXT = "Put a text like those the model was trained on here."


def _load_classifier_lines(kind: str, repo_id: str, labels: list[str], problem_type: str) -> list[str]:
    """Code that loads the classifier as `model` and its tokenizer as `tokenizer`."""
    if kind == "classifier":
        return ["from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                f'model = AutoModelForSequenceClassification.from_pretrained("{repo_id}", use_safetensors=True)',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    # the base model's config has no labels: the head is rebuilt with the run's (labels.json), else LABEL_0/LABEL_1
    return ["from peft import AutoPeftModelForSequenceClassification",
            "from transformers import AutoTokenizer",
            f"labels = {labels!r}",
            "model = AutoPeftModelForSequenceClassification.from_pretrained(",
            f'    "{repo_id}", num_labels=len(labels), id2label=dict(enumerate(labels)),',
            f"    label2id={{name: i for i, name in enumerate(labels)}}, problem_type={problem_type!r})",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            "model.config.pad_token_id = tokenizer.pad_token_id"]


def _usage(kind: str, repo_id: str, tokenizer_mask: str | None, labels: list[str],
           problem_type: str = "single_label_classification", example=None) -> str:
    """The card's how-to-use snippet; a classifier (plain or adapter) classifies `example` (a text of the run's
    data, card_data.first_text) and prints the run's own label names."""
    if kind in OBJECTIVES:
        return OBJECTIVES[kind].usage(repo_id, tokenizer_mask)
    call = task_class(problem_type).card_call.format(text=repr(example or PLACEHOLDER_TEXT))
    if kind == "classifier":
        return pipeline_snippet("text-classification", "classify", repo_id, call)
    return "\n".join([*_load_classifier_lines(kind, repo_id, labels, problem_type),
                      "from transformers import pipeline",
                      'classify = pipeline("text-classification", model=model, tokenizer=tokenizer)',
                      f"print({call})"])


def _windows_usage(kind: str, repo_id: str, labels: list[str], problem_type: str, windows: tuple[int, int],
                   example) -> list[str]:
    """Markdown: a model trained on windows of long texts (long_text: chunk), and code that scores a text as its
    evaluation did, averaging the logits of the text's windows (a transformers pipeline reads one window only)."""
    length, stride = windows
    text = example if isinstance(example, str) else PLACEHOLDER_TEXT
    code = ["import torch", *_load_classifier_lines(kind, repo_id, labels, problem_type), "", "",
            "def classify_long(text):",
            f'    """Scores per label of a whole text: its windows of {length} tokens (overlapping by {stride}), '
            'their logits averaged."""',
            f"    windows = tokenizer(text, truncation=True, max_length={length}, stride={stride}, "
            "return_overflowing_tokens=True,",
            '                        padding=True, return_tensors="pt")',
            '    windows.pop("overflow_to_sample_mapping")',
            "    with torch.no_grad():",
            "        logits = model(**windows).logits.mean(dim=0)",
            "    names = [model.config.id2label[i] for i in range(model.config.num_labels)]",
            f"    return dict(zip(names, ({task_class(problem_type).card_scores}).tolist()))", "", "",
            f"print(classify_long({text!r}))"]
    return ["", f"This model was trained on windows of {length} tokens cut from long texts (`long_text: chunk`, "
            f"{stride} tokens shared by consecutive windows), and evaluated on the mean of a text's windows' logits. "
            "A `pipeline()` scores a text in one piece (up to the model's length, cut there with `truncation=True`) "
            "and averages no windows. To score a whole text as the evaluation did:", "", "```python", *code, "```", "",
            f'With lmrecipes installed, `lmrecipes.predict(huggingface_hub.snapshot_download("{repo_id}"), texts)` '
            "averages the windows too."]


def _fmt(value, spec):
    return "unknown" if value is None else format(value, spec)


def _mfu_text(results: dict) -> str:
    """', MFU 12.3%' when the run's MFU is trusted; '' when unknown or not trusted: the run reached its peak basis
    (`mfu_trusted` false; runs before that key capped such an MFU at 100%)."""
    mfu = results.get("mfu")
    trusted = isinstance(mfu, (int, float)) and 0 < mfu < 1 and results.get("mfu_trusted") is not False
    return f", MFU {100 * mfu:.1f}%" if trusted else ""


def _training_lines(kind: str, config: dict, recipe: dict, results: dict, parameters: int,
                    base_model: str | None, windows: tuple[int, int] | None = None) -> list[str]:
    """The card's Training section: architecture, size, where the weights started, tokens, speed, time, recipe."""
    fine_tuned = kind in ("classifier", "adapter")
    source = base_model or (f"a local checkpoint (`{public_path(recipe['model_name_or_path'])}`)"
                            if recipe.get("model_name_or_path") else "random initialisation")
    return [
        f"- Architecture: `{config.get('model_type', 'unknown')}` "
        f"({', '.join(config.get('architectures') or ['unknown architecture'])}"
        f"{' + LoRA adapter' if kind == 'adapter' else ''}), hidden size {config.get('hidden_size', '?')}, "
        f"{config.get('num_hidden_layers', '?')} layers, vocabulary {config.get('vocab_size', '?')}",
        f"- Parameters in this repository: {parameters:,}",
        f"- Started from: {'random weights' if recipe.get('init_from') == 'scratch' else source}"
        if fine_tuned else "- Started from: random weights (config class, nothing downloaded)",
        f"- Tokens seen in training: {_fmt(results.get('train_tokens'), ',')}, "
        f"{_fmt(results.get('train_tokens_per_second'), ',.0f')} tokens/s{_mfu_text(results)}",
        f"- Training time: {_fmt(results.get('train_runtime'), '.0f')} s on "
        f"{results.get('hardware') or 'unrecorded hardware'}",
        *([f"- Long texts: cut into windows of {windows[0]} tokens overlapping by {windows[1]} (`long_text: "
             "chunk`), each window trained on with its text's label; evaluated on the mean of a text's windows' "
             "logits (see How to use)"] if windows else []),
        "- The exact recipe is `recipe.yaml` in this repository: run it again with lmrecipes "
        f"(`scripts/{'finetune' if fine_tuned else 'pretrain'}.py recipe.yaml`).",
    ]


def _evaluation_lines(kind: str, results: dict, eval_results) -> list[str]:
    """The card's Evaluation table: the model-index metrics, and for fine-tuned models the text-blind baseline."""
    lines = ["| metric | split | value |", "| --- | --- | --- |"] + [
        f"| {r.metric_name} | {r.dataset_split} | {r.metric_value} |" for r in (eval_results or [])]
    for key, baseline in BASELINES.items():
        if kind in ("classifier", "adapter") and results.get(key) is not None:
            lines.append(f"| {baseline} (baseline) | test | {results[key]:.4f} |")
    return lines


def _what_it_is(kind: str, problem_type: str, labels: list[str]) -> str:
    described = task_class(problem_type).card_description.format(labels=", ".join(labels))
    return {**{name: objective.description for name, objective in OBJECTIVES.items()},
            "classifier": described, "adapter": f"a LoRA adapter: {described}"}[kind]


def _limitations(kind: str, parameters: int, recipe: dict) -> str:
    """What the model is not good for. The demonstration wording only for a run on lmrecipes' embedded data;
    otherwise what follows from the run's own data, listed above."""
    embedded = trained_on_embedded_data(recipe)
    falls_short = "generates unreliable text" if kind in OBJECTIVES else "its predictions are unreliable"
    if embedded:
        size = "A small model trained in minutes" if parameters < 50_000_000 else "A model trained"
        return (f"{size} for demonstration and research on lmrecipes' embedded data "
                f"({' and '.join(EMBEDDED[name] for name in embedded)}): it knows little, {falls_short} and "
                "inherits the biases of that data. Do not use it for decisions about people.")
    return ("Trained on the data listed above only; it inherits that data's biases and gaps, and texts unlike it "
            "are outside what it has learnt. Evaluate it on your own data before use; do not use it alone for "
            "decisions about people.")


def _windows(recipe: dict, run_labels: dict) -> tuple[int, int] | None:
    """(window tokens, tokens shared by consecutive windows) of a classifier trained with long_text: chunk."""
    if run_labels.get("long_text") != "chunk":
        return None
    length = int(recipe.get("max_length") or 128)
    return length, int(run_labels.get("stride", length // 4))


def write_model_card(folder: Path, kind: str, repo_id: str, args, base_model: str | None,
                     run_dir: Path | None = None):
    """README.md with YAML metadata (incl. model-index) and a body: training, evaluation, usage, data, limits.
    `args`: the arguments.PublishArguments (licence, languages, datasets). `run_dir`: the run published, whose
    recipe names its data with local paths (the folder's copy shortens them): the data is described from its
    files and the usage example is a text of it (card_data), when they provably are the run's."""
    from huggingface_hub import ModelCard, ModelCardData

    recipe = read_run_recipe(folder)
    run_recipe = read_run_recipe(run_dir) if run_dir is not None else recipe
    files = proven_files(run_dir, run_recipe) if run_dir is not None else {}
    results = read_json(folder / "all_results.json")
    run_labels = read_json(folder / "labels.json")
    labels = run_labels.get("labels", [])
    problem_type = run_labels.get("problem_type", "single_label_classification")
    # an adapter folder has no config.json: the architecture is the base model's, recorded at fine-tuning
    config = read_json(folder / "config.json") or run_labels.get("base_config") or {}
    parameters = count_safetensors_parameters(sorted(folder.glob("*.safetensors")))
    model_name = repo_id.split("/")[-1]
    datasets = args.datasets or ([recipe["dataset_name"]] if recipe.get("dataset_name") else None)
    tags = ["lmrecipes", config.get("model_type") or "",
            OBJECTIVES[kind].card_tag if kind in OBJECTIVES else "text-classification"] + (
        ["lora", "peft"] if kind == "adapter" else [])
    data = ModelCardData(
        model_name=model_name, library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag=PIPELINE_TAGS[kind], license=args.license, language=args.language, datasets=datasets,
        tags=[t for t in tags if t], base_model=base_model if kind in ("classifier", "adapter") else None,
        eval_results=_eval_results(kind, results, recipe, model_name, run_labels.get("problem_type")) or None)
    example = first_text(files, run_recipe) if kind not in OBJECTIVES else None
    windows = _windows(recipe, run_labels) if kind not in OBJECTIVES else None
    usage = ["```python", _usage(kind, repo_id, read_json(folder / "tokenizer_config.json").get("mask_token"),
                                 labels, problem_type, example), "```"]
    if windows:
        usage += _windows_usage(kind, repo_id, labels, problem_type, windows, example)
    body = "\n".join([
        f"# {model_name}", "", f"{model_name} is {_what_it_is(kind, problem_type, labels)}, trained with lmrecipes "
        "(pretraining and fine-tuning recipes on the Hugging Face stack).", "", "## How to use", "", *usage, "",
        "## Training", "", *_training_lines(kind, config, recipe, results, parameters, base_model, windows), "",
        "## Evaluation", "", *_evaluation_lines(kind, results, data.eval_results), "",
        "## Training data", "", *data_provenance(run_recipe, files), "", "## Limitations", "",
        _limitations(kind, parameters, run_recipe), ""])
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    card.save(folder / "README.md")
    return card
