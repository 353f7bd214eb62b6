"""What pretraining and fine-tuning runs share: logging, the launch check, resume, the Trainer run and results."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
import transformers
from transformers.trainer_utils import get_last_checkpoint

from .errors import RecipeError
from .recipe import write_recipe
from .throughput import ThroughputCallback, model_flops_per_token, peak_flops_per_device

logger = logging.getLogger("lmrecipes")


def setup_logging(training_args) -> None:
    """Readable logs from the main process; warnings only from the others."""
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, level=level, force=True)
    logging.getLogger("lmrecipes").setLevel(level)
    transformers.utils.logging.set_verbosity_warning()


def check_world_size(training_args) -> None:
    """Several processes launched but each training alone (e.g. `--multi_gpu` on CPU without use_cpu) is an error."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise RecipeError(
            f"{launched} processes were launched but training would run with world size {training_args.world_size}:"
            " each process would train a duplicate model. On CPU set ACCELERATE_USE_CPU=true for accelerate launch (or "
            "pass --use_cpu true)")


def find_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: `resume_from_checkpoint`, else the last one in `output_dir`."""
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not Path(explicit).is_dir():
            raise RecipeError(f"key 'resume_from_checkpoint': no checkpoint folder at {explicit}")
        checkpoint = explicit
    elif Path(training_args.output_dir).is_dir():
        checkpoint = get_last_checkpoint(training_args.output_dir)
    else:
        checkpoint = None
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    return checkpoint


def start_output_dir(training_args, recipe: dict, header: str) -> None:
    """Create output_dir and write the resolved recipe (main process)."""
    if training_args.should_save:
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        write_recipe(Path(training_args.output_dir) / "recipe.yaml", recipe, header)


def throughput_callback(model, training_args, seq_len: int) -> ThroughputCallback:
    """Counting tokens is switched on so that tokens/s and MFU can be reported."""
    if training_args.include_num_input_tokens_seen == "no":
        training_args.include_num_input_tokens_seen = "non_padding"
    dtype = "bf16" if (training_args.bf16 or training_args.fp16) else "fp32"
    peak, source = peak_flops_per_device(training_args.device, dtype)
    per_token = model_flops_per_token(model, seq_len)
    logger.info("MFU basis: %.3g FLOPs/token, peak %s per device (%s)", per_token,
                f"{peak:.3g} FLOP/s" if peak else "unknown", source)
    if training_args.device.type == "cpu":  # accelerate launch sets OMP_NUM_THREADS=1 unless told otherwise
        logger.info("CPU threads per process: %d of %d CPUs (--num_cpu_threads_per_process for accelerate launch)",
                    torch.get_num_threads(), os.cpu_count())
    return ThroughputCallback(per_token, peak, training_args.world_size)


def train_and_save(trainer, checkpoint: str | None, throughput: ThroughputCallback) -> dict:
    """Train (resuming if asked), save the final model, tokenizer and trainer_state.json, return train metrics."""
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.save_state()
    metrics = dict(result.metrics)
    metrics.update(throughput.metrics)
    metrics.setdefault("mfu", None)  # stated as unknown (null) rather than guessed
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    return metrics
