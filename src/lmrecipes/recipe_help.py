"""`--help` for a script: its own keys grouped by what they configure, each with its documentation, the
TrainingArguments keys recipes use most, and the other tools' names it reads. argparse's help lists all ~150
TrainingArguments keys in one alphabet-less wall (and every key of every dataclass the script parses); written by
hand because HfArgumentParser has no grouping or selection. `--help_all` still prints argparse's full help."""

from __future__ import annotations

import dataclasses
import textwrap
import typing

COMMON_TRAINING_KEYS = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "eval_strategy", "eval_steps", "save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end",
    "metric_for_best_model", "logging_steps", "seed", "report_to", "train_sampling_strategy", "torch_compile",
    "use_cpu", "push_to_hub", "hub_model_id")
WIDTH = 110


def _first_sentence(text: str) -> str:
    text = " ".join((text or "").split())
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def _type_name(hint) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return "|".join(str(a) for a in args)
    if args and typing.get_origin(hint) is not list:
        return _type_name(args[0]) if len(args) == 1 else " or ".join(_type_name(a) for a in args)
    return getattr(hint, "__name__", str(hint)).replace("typing.", "")


def _key_lines(field: dataclasses.Field, hint, short: bool) -> list[str]:
    default = field.default if field.default is not dataclasses.MISSING else \
        (field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
    head = f"  --{field.name} {_type_name(hint)}" + ("" if default in (None, "", [], {}) else f" (default: {default})")
    text = field.metadata.get("help", "")
    text = _first_sentence(text) if short else " ".join(text.split())
    return [head, *textwrap.wrap(text, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)]


def _defining_class(cls, name: str):
    """The class (of cls's MRO) whose body declares the field: an objective's keys, the model's, the data's..."""
    for base in cls.__mro__:  # the most derived declaration: RunArguments' bf16, not TrainingArguments'
        if name in base.__dict__.get("__annotations__", {}):
            return base
    return cls


def help_text(prog: str, description: str, types, left_out=frozenset(), aliases=None) -> str:
    from transformers import TrainingArguments

    lines = [f"usage: {prog} [RECIPE.yaml | FOLDER] [--key value ...]   (as in the examples below)", ""]
    lines += [description.strip(), ""] if description else []
    for cls in types:
        hints = typing.get_type_hints(cls)
        groups: dict[type, list[str]] = {}
        training = issubclass(cls, TrainingArguments)
        for field in dataclasses.fields(cls):
            if not field.init or field.name in left_out:
                continue
            owner = _defining_class(cls, field.name)
            if training and owner is TrainingArguments and field.name not in COMMON_TRAINING_KEYS:
                continue
            groups.setdefault(owner, []).extend(_key_lines(field, hints[field.name], short=owner is TrainingArguments))
        for owner, key_lines in groups.items():
            title = _first_sentence(owner.__doc__ or owner.__name__)
            if owner is TrainingArguments:
                title = ("transformers.TrainingArguments: the keys recipes use most (every other TrainingArguments "
                         "key works too; --help_all lists them).")
            lines += [*textwrap.wrap(title, WIDTH), *key_lines, ""]
    if aliases:
        lines.append("Names from Hugging Face's example scripts, read as the keys above (recipe.yaml records "
                     "lmrecipes' key):")
        sources: dict[str, list[str]] = {}
        for name, alias in aliases.items():
            sources.setdefault(alias.source, []).append(name)
        for source, names in sources.items():
            lines += textwrap.wrap(f"{source}: {', '.join(names)}", WIDTH, initial_indent="  ",
                                   subsequent_indent="    ")
    return "\n".join(lines).rstrip() + "\n"
