"""Models from a config class (`AutoConfig.for_model` + overrides) or a checkpoint, never downloaded unless asked:
the language model an objective pretrains, and the sequence classifier a task fine-tunes."""

from __future__ import annotations

import contextlib
import logging

from huggingface_hub.errors import StrictDataclassError
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForSequenceClassification

from .arguments import FinetuneArguments, ModelArguments
from .errors import RecipeError, first_line
from .objectives import OBJECTIVES, Objective
from .tasks import Task
from .throughput import parameter_size
from .values import resolve_model_path, yaml_boolean

logger = logging.getLogger(__name__)


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


def infer_objective(config, requested: str | None) -> Objective:
    """The recipe's objective, checked against the model type's heads; else the first objective (in OBJECTIVES'
    order) whose head the model type has."""
    fits = [objective for objective in OBJECTIVES.values() if config.model_type in objective.model_type_names]
    objective = OBJECTIVES[requested] if requested else (fits[0] if fits else None)
    if objective is None:
        raise RecipeError(f"key 'model_type': {config.model_type!r} has no causal or masked language-model head")
    if config.model_type not in objective.model_type_names:
        raise RecipeError(f"key 'model_type': {config.model_type!r} has no {objective.heads} "
                          f"(objective {objective.name}: {', '.join(sorted(objective.model_type_names)[:6])}"
                          f"{', ...' if len(objective.model_type_names) > 6 else ''})")
    return objective


def check_objective_keys(model_args: ModelArguments, objective: Objective) -> None:
    """Keys that only another objective reads are an error, not silently ignored."""
    for other in OBJECTIVES.values():
        for key in other.recipe_keys if other is not objective else ():
            if getattr(model_args, key) is not None:
                raise RecipeError(f"key '{key}': only objective {other.name} uses it (this recipe trains "
                                  f"{objective.name})")


def check_model_arguments(config, objective: Objective, model_args: ModelArguments) -> None:
    """What can be checked of the model settings before any data is prepared: keys of other objectives, and the
    objective's own refusals (e.g. an ELECTRA generator wider than its discriminator)."""
    check_objective_keys(model_args, objective)
    objective.check_arguments(config, model_args)


def check_tokenizer_for(objective: Objective, tokenizer) -> None:
    """An objective that masks tokens needs a mask token (checked as soon as the tokenizer is known, before data
    preparation)."""
    if objective.needs_mask_token and tokenizer.mask_token_id is None:
        raise RecipeError(f"objective {objective.name} needs a tokenizer with a mask token (special_tokens.mask_token)")


def fit_config_to_tokenizer(config, tokenizer, objective: Objective, block_size: int, vocab_size_set: bool) -> None:
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


def build_language_model(config, objective: Objective, model_args: ModelArguments, masked_fraction: float = 0.15):
    """A randomly initialised LM from the config, or the weights of `model_name_or_path` (safetensors only), as the
    objective builds it (`masked_fraction`, the data's mlm_probability, is for that)."""
    source = resolve_model_path(model_args.model_name_or_path) if model_args.model_name_or_path else None
    try:
        model = objective.build_model(config, model_args, masked_fraction, source)
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


def config_and_objective(model_args: ModelArguments):
    """(the architecture's config, the objective that pretrains it), with the model keys checked against both."""
    config = build_config(model_args)
    objective = infer_objective(config, model_args.objective)
    check_model_arguments(config, objective, model_args)
    return config, objective


def pretraining_model(config, objective: Objective, model_args: ModelArguments, data_args, tokenizer=None):
    """The language model `objective` pretrains, its config sized to `tokenizer` (vocabulary, special-token ids; the
    block must fit the positions) when given. `data_args`: the PretrainDataArguments (block size, masked fraction)."""
    if tokenizer is not None:
        fit_config_to_tokenizer(config, tokenizer, objective, data_args.block_size,
                                vocab_size_set="vocab_size" in model_args.config_overrides)
    return build_language_model(config, objective, model_args, data_args.mlm_probability)


def _not_a_loading_table(record: logging.LogRecord) -> bool:
    """False for transformers' loading table when it lists only weights missing from or unused in the checkpoint;
    a table of mismatched shapes or conversion errors stays (the error raised after it points to it)."""
    message = record.getMessage()
    return record.funcName != "log_state_dict_report" or "MISMATCH" in message or "CONVERSION" in message


@contextlib.contextmanager
def loading_report_in_one_line():
    """transformers 5 logs a table (a warning) of the weights a checkpoint lacks or holds unused, e.g. those of a new
    classifier head; build_classifier says it in one line, so the table is left out unless transformers' own
    details are asked for (log_level: info or debug)."""
    from transformers.utils import logging as transformers_logging

    source = logging.getLogger("transformers.modeling_utils")
    if transformers_logging.get_verbosity() > logging.INFO:
        source.addFilter(_not_a_loading_table)
    try:
        yield
    finally:
        source.removeFilter(_not_a_loading_table)


def build_classifier(model_args: ModelArguments, finetune_args: FinetuneArguments, tokenizer,
                     task: Task) -> tuple[object, list[str]]:
    """(AutoModelForSequenceClassification with the task's head (labels from the data), the outermost modules whose
    weights are new): body loaded, or random (init_from: scratch, where nothing is new from a checkpoint)."""
    path = resolve_model_path(model_args.model_name_or_path)
    config = build_config(model_args)
    task.configure(config)
    config.pad_token_id = tokenizer.pad_token_id
    vocab = getattr(config.get_text_config(), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise RecipeError(f"the tokenizer ({len(tokenizer)} tokens) does not match the checkpoint (vocab_size {vocab})"
                          ": use the checkpoint's own tokenizer")
    kwargs = {"attn_implementation": model_args.attn_implementation, "trust_remote_code": model_args.trust_remote_code}
    if finetune_args.init_from == "scratch":
        logger.info("init_from: scratch: %s with random weights", config.model_type)
        return AutoModelForSequenceClassification.from_config(config, **kwargs), []
    try:  # safetensors only: a checkpoint holding nothing but pickled weights is refused
        with loading_report_in_one_line():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, use_safetensors=True, output_loading_info=True,
                revision=model_args.model_revision, **kwargs)
    except Exception as err:  # noqa: BLE001 - also safetensors' SafetensorError (a plain Exception): weights cut short
        raise RecipeError(f"key 'model_name_or_path': cannot load {model_args.model_name_or_path!r} (safetensors "
                          f"weights only): {first_line(err)}") from None
    logger.info("Loaded the body of %s; new (randomly initialised): %s; in the checkpoint but not used: %s",
                model_args.model_name_or_path, ", ".join(sorted(info["missing_keys"])) or "none",
                ", ".join(sorted(info["unexpected_keys"])) or "none")
    # Modules holding new weights (the head; BERT's pooler when the checkpoint had none) are trained in full by LoRA.
    return model, outermost_new_modules(model, info["missing_keys"])


def outermost_new_modules(model, missing_keys) -> list[str]:
    """The outermost modules all of whose weights are newly initialised: `classifier` for ELECTRA's two-layer head
    (classifier.dense, classifier.out_proj), as peft names the head it saves by itself; naming the inner layers too
    would wrap them twice and break loading the adapter."""
    missing, outermost = set(missing_keys), set()
    for key in missing:
        parts = key.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            names = {f"{prefix}.{name}" for name, _ in model.get_submodule(prefix).named_parameters()}
            if names and names <= missing:
                outermost.add(prefix)
                break
    return sorted(outermost)


def count_parameters(model, trainable_only: bool = False) -> int:
    """Parameters counted once even when shared (tied embeddings), whole under ZeRO-3."""
    seen, total = set(), 0
    for param in model.parameters():
        if (trainable_only and not param.requires_grad) or id(param) in seen:
            continue
        seen.add(id(param))
        total += parameter_size(param)
    return total
