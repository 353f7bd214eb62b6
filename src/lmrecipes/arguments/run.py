"""The training keys: `transformers.TrainingArguments`, plus what lmrecipes adds to it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .. import launch
from ..errors import RecipeError
from ..precision import bf16_choice
from ..values import auto_true_false


@dataclass
class RunArguments(TrainingArguments):
    """What lmrecipes adds to TrainingArguments: bf16 auto, and the consent to overwrite a run folder. (transformers 5
    dropped `overwrite_output_dir`; run_folder.claim_output_dir reads it.)"""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete what output_dir holds (a finished run, or a run of another recipe) and start over. "
                  "Without it such a folder is refused, and a finished run of the same recipe is reported, not "
                  "retrained."})

    bf16: str = field(
        default="false",
        metadata={"nargs": "?", "const": "true",
                  "help": "bf16 mixed precision (autocast): true, false, or auto: on where the device computes bf16 "
                  "natively (a GPU that supports it; a CPU with avx512_bf16 or AMX), fp32 elsewhere; the log names "
                  "the choice and why. On a machine without an accelerator, bf16 runs on the CPU (use_cpu is set)."})

    # not a recipe key (init=False: HfArgumentParser and TrainingArguments.to_dict leave it out): why bf16 is on or off
    precision_choice: str = field(init=False, default="", repr=False)

    def __post_init__(self):
        check_training_numbers(self)
        if launch.launched_on_cpu_without_use_cpu(self.use_cpu):
            self.use_cpu = True
        setting = auto_true_false(self.bf16, "bf16")
        if setting == "auto" and self.fp16:
            setting = "false"  # fp16 asked for: not both
        self.bf16, self.precision_choice = bf16_choice(setting, on_cpu=launch.trains_on_cpu(self.use_cpu))
        if self.bf16 and not launch.has_accelerator():  # else transformers stops: "Your setup doesn't support bf16/gpu"
            self.use_cpu = True
        launch.load_deepspeed_comm_op(bool(self.deepspeed))  # before the Trainer's arguments start DeepSpeed
        super().__post_init__()


def check_training_numbers(args) -> None:
    """Numbers the Trainer accepts and then fails on with a traceback (a batch of 0) or trains on silently wrong (a
    NaN or negative learning rate; max_steps 0 trains one step, -5 trains by epochs): refused as the recipe is read,
    before anything is written, naming the key."""
    if not (math.isfinite(args.learning_rate) and args.learning_rate >= 0):
        raise RecipeError(f"key 'learning_rate': must be a number of at least 0, got {args.learning_rate}")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, key) < 1:
            raise RecipeError(f"key '{key}': must be at least 1, got {getattr(args, key)}")
    if args.max_steps != -1 and args.max_steps < 1:
        raise RecipeError(f"key 'max_steps': must be at least 1 (or -1: train num_train_epochs), got {args.max_steps}")
    if args.max_steps == -1 and not (math.isfinite(args.num_train_epochs) and args.num_train_epochs > 0):
        raise RecipeError(f"key 'num_train_epochs': must be above 0 when max_steps is not set, got "
                          f"{args.num_train_epochs}")

