"""What a run's parallelism really is, read from the Trainer's accelerator once it is built: the log line that names
it, the refusal of a launch that asked for other sharding, DDP's unused-parameter search, and a whole final model
under sharded FSDP. Launch checks that need no Trainer are in launch.py."""

from __future__ import annotations

import logging
import os

import torch

from .errors import RecipeError
from .launch import sharding_asked_for

logger = logging.getLogger("lmrecipes")


def describe_parallelism(trainer) -> str:
    """What a run really does, read from the Trainer's accelerator (not from the launcher's word)."""
    state = trainer.accelerator.state
    processes, device = state.num_processes, str(state.device)
    if trainer.is_deepspeed_enabled:
        stage = state.deepspeed_plugin.zero_stage
        sharded = ["optimizer states", "gradients", "parameters"][:stage]
        what = f"DeepSpeed ZeRO-{stage}: {', '.join(sharded) + ' sharded' if sharded else 'nothing sharded'}"
    elif trainer.is_fsdp_enabled:
        what = f"FSDP{getattr(state.fsdp_plugin, 'fsdp_version', 1)}: parameters, gradients, optimizer states sharded"
    elif processes > 1:
        what = "DDP: parameters replicated, gradients averaged"
    elif trainer.args.n_gpu > 1:
        what = f"one process, nn.DataParallel over {trainer.args.n_gpu} GPUs"
    else:
        what = "single process"
    local = os.environ.get("LOCAL_WORLD_SIZE", "")  # set by torchrun / accelerate launch; else machines unknown
    count = processes // int(local) if local.isdigit() and int(local) > 0 else None
    machines = f" on {count} machine{'s' if count > 1 else ''}" if count else ""
    backend = f", backend {state.backend}" if processes > 1 else ""
    return f"{what}; {processes} process{'es' if processes > 1 else ''}{machines}{backend}, device {device}"


def check_parallelism(trainer) -> str:
    """Log the run's effective parallelism. A launch that asked for FSDP or DeepSpeed and would run something else
    is an error: accelerate falls back to plain DDP without a word where it cannot apply them (FSDP version 1 or
    DeepSpeed on CPU)."""
    described, state = describe_parallelism(trainer), trainer.accelerator.state
    asked = sharding_asked_for()
    got = "FSDP" if trainer.is_fsdp_enabled else "DeepSpeed" if trainer.is_deepspeed_enabled else None
    if asked is not None and asked != got:
        on_cpu = " (accelerate_configs/cpu_ddp.yaml or cpu_fsdp.yaml on CPU)" if trainer.args.device.type == "cpu" \
            else ""
        raise RecipeError(f"the launch config asks for {asked}, but this run would be {described} (accelerate "
                          f"{accelerate_version()} does not apply {asked} here); use a config that runs here{on_cpu}")
    if trainer.is_deepspeed_enabled and state.deepspeed_plugin.zero_stage == 3 and \
            not hasattr(trainer.model, "peft_config"):  # adapters are gathered on save whatever the setting
        zero = state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        gathers = any(str(zero.get(key)).lower() in ("true", "1") for key in (  # DeepSpeed's spellings
            "stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save",
            "stage3_gather_fp16_weights_on_model_save"))
        if not gathers:
            raise RecipeError("DeepSpeed ZeRO-3 without gathering the weights on save would leave the final model "
                              "without weights (only DeepSpeed's shards): set zero3_save_16bit_model: true in the "
                              "accelerate config (stage3_gather_16bit_weights_on_model_save in a DeepSpeed json)")
    logger.info("Parallelism: %s", described)
    return described


def accelerate_version() -> str:
    import accelerate

    return accelerate.__version__


# config keys (at any depth: nested text / ffn configs too) under which a model can leave parameters without a
# gradient in some steps: a mixture of experts (the experts a batch reaches change), dropped layers (layerdrop)
VARYING_GRAPH_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "layerdrop",
                      "encoder_layerdrop", "decoder_layerdrop")


def _varying_graph(config) -> str | None:
    """The first VARYING_GRAPH_KEYS key set (non-zero) anywhere in a config, or None."""
    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in VARYING_GRAPH_KEYS and isinstance(item, (int, float)) and item:
                    return key
                found = walk(item)
                if found:
                    return found
        return None

    return walk(config.to_dict()) if hasattr(config, "to_dict") else None


def _unused_parameters(trainer) -> list[str] | None:
    """Trainable parameters that get no gradient in one forward and backward pass, in training mode, on the first
    training example (a stream's first held-out one: its first training block would fill the shuffle buffer);
    random state kept, gradients cleared. None when it cannot tell (no example, a model without a loss...)."""
    import inspect

    import datasets

    args, model = trainer.args, trainer.model
    source = trainer.eval_dataset if isinstance(trainer.train_dataset, datasets.IterableDataset) else \
        trainer.train_dataset
    was_training = model.training
    try:
        accepted = set(inspect.signature(getattr(model, "get_base_model", lambda: model)().forward).parameters)
        example = {key: value for key, value in next(iter(source)).items()
                   if key in accepted | {"label", "label_ids"}}
        batch = {key: value.to(args.device) for key, value in trainer.data_collator([example]).items()
                 if key in accepted}
        devices = [] if args.device.type == "cpu" else [args.device.index or 0]
        with torch.random.fork_rng(devices=devices, device_type=args.device.type):
            model.train()
            trainer.compute_loss(model, batch).backward()
        return [name for name, parameter in model.named_parameters()
                if parameter.requires_grad and parameter.grad is None]
    except Exception as err:  # a probe must never stop a run: the search stays on
        logger.info("DDP unused-parameter probe failed (%s: %s)", type(err).__name__, err)
        return None
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def choose_unused_parameter_search(trainer) -> None:
    """DDP's search for parameters without a gradient after every backward pass (`ddp_find_unused_parameters`,
    on by default in the Trainer) costs a graph traversal per step and a warning in every run of a model that uses
    all its weights. Unless the recipe sets it (or activation checkpointing turns it off), it is turned off when
    one forward and backward pass (_unused_parameters) gives every trainable parameter a gradient on every process,
    and kept for models whose graph can change from step to step (mixtures of experts, layerdrop). Hand-written:
    neither the Trainer nor accelerate looks."""
    args, handler = trainer.args, trainer.accelerator.ddp_handler
    if (args.world_size <= 1 or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled or handler is None
            or args.ddp_find_unused_parameters is not None or not handler.find_unused_parameters):
        return
    varying = _varying_graph(getattr(trainer.model, "config", None))
    unused = None if varying else _unused_parameters(trainer)
    keep = torch.tensor([0.0 if unused == [] else 1.0], device=args.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(keep, op=torch.distributed.ReduceOp.MAX)  # every process decides alike
    handler.find_unused_parameters = bool(keep.item())
    if varying:
        why = f"on (the config sets {varying}: the graph can change from step to step)"
    elif unused:
        why = f"on ({len(unused)} parameters get no gradient, e.g. {unused[0]})"
    else:
        why = "on" if handler.find_unused_parameters else "off (every trainable parameter gets a gradient)"
    logger.info("DDP unused-parameter search: %s", why)


def save_final_model(trainer) -> None:
    """The Trainer's final save, whole under every parallelism. Under FSDP with sharded checkpoints the Trainer's
    save_model writes no weights at all (only a full state dict is saved there); the final model is gathered into a
    full state dict instead (accelerate's documented "train sharded, save full"), so output_dir holds one
    safetensors model that from_pretrained loads. Checkpoints stay sharded (fast to write, resumable)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    sharded = plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type)
    if sharded:
        kept = plugin.state_dict_type
        plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model()
    finally:
        if sharded:
            plugin.set_state_dict_type(kept)
