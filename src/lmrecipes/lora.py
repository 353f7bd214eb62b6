"""LoRA adapters (peft): wrap a classifier for training, load a fine-tuned classifier folder (plain or adapter), merge
an adapter into a plain checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .arguments import FinetuneArguments
from .cache import atomic_directory, path_fingerprint
from .errors import RecipeError, first_line
from .ownership import give_umask_modes
from .run_folder import recorded_local_model
from .values import read_json_file

logger = logging.getLogger("lmrecipes")

ADAPTER_CONFIG = "adapter_config.json"


def apply_lora(model, finetune_args: FinetuneArguments, new_modules: list[str]):
    """The model wrapped with the recipe's LoRA adapters; `new_modules` (weights not from the checkpoint: the head)
    are trained whole."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=finetune_args.lora_r, lora_alpha=finetune_args.lora_alpha,
                      lora_dropout=finetune_args.lora_dropout, use_rslora=finetune_args.lora_use_rslora,
                      modules_to_save=new_modules or None,
                      target_modules=(finetune_args.lora_target_modules[0]
                                      if finetune_args.lora_target_modules == ["all-linear"]
                                      else finetune_args.lora_target_modules))
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:
        raise RecipeError(f"key 'lora_target_modules': {str(err).strip().splitlines()[0]}") from None
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA on %s: %s trainable parameters of %s (%.2f%%)",
                sorted(model.peft_config["default"].target_modules), f"{trainable:,}", f"{total:,}",
                100 * trainable / total)
    return model


def is_adapter_dir(path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_classifier(model_dir):
    """(model, tokenizer) from a fine-tuning output folder: a plain checkpoint, or a LoRA adapter on its base.

    An adapter folder's base is rebuilt with the run's labels (labels.json) before the adapter is applied.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise RecipeError(f"model folder not found: {model_dir}")
    if not is_adapter_dir(model_dir):
        architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or [] \
            if (model_dir / "config.json").is_file() else []
        if not (model_dir / "labels.json").is_file() and \
                not any(name.endswith("ForSequenceClassification") for name in architectures):
            raise RecipeError(f"{model_dir} holds no classifier (its model: {', '.join(architectures) or 'none'}): "
                              "fine-tune it first (scripts/finetune.py) and give that run's folder")
        try:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
        except Exception as err:  # noqa: BLE001 - also SafetensorError (a plain Exception): weights cut short
            raise RecipeError(f"cannot load the classifier in {model_dir} ({first_line(err)}): its weights are "
                              "missing or damaged") from None
        return model, load_tokenizer(model_dir)
    tokenizer = load_tokenizer(model_dir)
    from peft import PeftModel

    base_path = json.loads((model_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    check_base_as_trained(model_dir, base_path)
    labels_file = model_dir / "labels.json"
    if not labels_file.is_file():
        raise RecipeError(f"{labels_file} is missing: cannot rebuild the classification head of the adapter")
    info = read_json_file(labels_file)
    labels = info["labels"]
    try:
        base = AutoModelForSequenceClassification.from_pretrained(
            base_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, pad_token_id=tokenizer.pad_token_id,
            use_safetensors=True, problem_type=info.get("problem_type", "single_label_classification"))
    except OSError as err:  # a base that is neither a folder here nor reachable on the Hub
        raise RecipeError(f"cannot load {base_path}, the base model of the adapter in {model_dir} "
                          f"({first_line(err)}); put it back, or use a merged checkpoint of the run") from None
    return PeftModel.from_pretrained(base, model_dir), tokenizer


def load_tokenizer(model_dir: Path):
    """The tokenizer saved beside a model; missing or damaged files are a one-line error naming the folder."""
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # noqa: BLE001 - tokenizers raises ValueError, Exception, OSError alike
        raise RecipeError(f"cannot load the tokenizer in {model_dir} ({first_line(err)}): its tokenizer files are "
                          "missing or damaged") from None


def check_base_as_trained(model_dir: Path, base_path: str) -> None:
    """A LoRA run's base model is the local folder it trained on, unchanged (its fingerprint in the run's marker):
    another model at the same path would give other predictions and merged weights without a word."""
    recorded = recorded_local_model(model_dir)
    if recorded is None:
        return
    if not Path(base_path).exists():
        raise RecipeError(f"{base_path}, the base model this LoRA run trained on, is gone: put it back (or use the "
                          f"run's merged/ folder, a full model)")
    if path_fingerprint(base_path) != recorded:
        raise RecipeError(f"the base model at {base_path} changed since this LoRA run trained on it: put the run's "
                          "base back (or use the run's merged/ folder, a full model)")


def export_classifier(model_dir, output_dir, replace: bool = False) -> Path:
    """A plain checkpoint (model.safetensors, config, tokenizer, labels, recipe) from a fine-tuning folder; LoRA
    weights are folded into the base, so no peft is needed to load it. Written whole or not at all, into a new or
    empty folder; `replace`: a folder there is replaced (the run's own merged/ folder)."""
    output_dir = Path(output_dir)
    if output_dir.is_symlink() or output_dir.exists() and not output_dir.is_dir():
        raise RecipeError(f"{output_dir} is a file or a link; give a new folder for the checkpoint")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not replace:
        raise RecipeError(f"{output_dir} is not empty; give a new or empty folder for the checkpoint")
    if output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()  # atomic_directory puts the finished folder in its place
    with atomic_directory(output_dir, replace=lambda aside: shutil.rmtree(aside, ignore_errors=True)) as tmp:
        write_classifier(model_dir, tmp)
    logger.info("Exported %s to %s", model_dir, output_dir)
    return output_dir


def write_classifier(model_dir, folder: Path) -> None:
    """The plain checkpoint of export_classifier, written into the existing folder `folder`."""
    model, tokenizer = load_classifier(model_dir)
    if is_adapter_dir(model_dir):
        model = model.merge_and_unload()
    model.save_pretrained(folder, safe_serialization=True)
    give_umask_modes(folder, "*.safetensors")  # safetensors writes its files 0600, whatever the umask
    tokenizer.save_pretrained(folder)
    for extra in ("labels.json", "recipe.yaml", "all_results.json"):
        if (Path(model_dir) / extra).is_file():
            (folder / extra).write_text((Path(model_dir) / extra).read_text())


def merge_adapter(adapter_dir, output_dir, replace: bool = False) -> Path:
    """Fold a LoRA adapter into its base model and save a plain safetensors checkpoint (export_classifier)."""
    if not is_adapter_dir(adapter_dir):
        raise RecipeError(f"{adapter_dir} holds no LoRA adapter ({ADAPTER_CONFIG} missing)")
    return export_classifier(adapter_dir, output_dir, replace)
