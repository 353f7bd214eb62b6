"""Fine-tuning keys: the problem type, where the body's weights come from, LoRA, the head's learning rate, class
weights and early stopping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import RecipeError
from ..tasks import TASKS, task_class


@dataclass
class FinetuneArguments:
    """What the model learns (problem_type) and how: from the checkpoint or from scratch, fully or with LoRA."""

    problem_type: Literal[tuple(TASKS)] = field(
        default="single_label_classification",
        metadata={"help": "single_label_classification: one class per text (softmax, cross-entropy). "
                  "multi_label_classification: any number of labels per text (a list in label_column, or 0/1 "
                  "label_columns; sigmoid per label, binary cross-entropy; decision threshold tuned on the "
                  "validation split and saved). regression: a number per text (label_column; one output, mean "
                  "squared error)."},
    )

    init_from: Literal["pretrained", "scratch"] = field(
        default="pretrained",
        metadata={"help": "pretrained: load the body's weights from model_name_or_path. scratch: the same architecture"
                  " with random weights, to measure what pretraining brings."},
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) plus the new head only."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt. Default: peft's choice for the architecture (attention projections"
                  ", e.g. q_proj/v_proj for Llama, query/value for BERT). 'all-linear' adapts every linear layer."},
    )
    lora_use_rslora: bool = field(
        default=False,
        metadata={"help": "rank-stabilised LoRA: scale the adapters by lora_alpha / sqrt(lora_r) instead of "
                  "lora_alpha / lora_r (peft use_rslora), so a higher rank still learns at the same learning rate."},
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the classification head (the model's modules outside its body: score, "
                  "classifier), full or LoRA fine-tuning; the rest trains at learning_rate with the same schedule. "
                  "Default: learning_rate for everything."},
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "After LoRA training, also write the merged plain checkpoint to output_dir/merged."},
    )
    class_weights: list[str] | None = field(
        default=None,
        metadata={"help": "Loss weight of each class, for imbalanced labels: none (default), balanced (rows / (classes "
                  "x rows of the class), as scikit-learn; the weights average 1 over the training rows), or one "
                  "positive number per class in the order of the labels (sorted), e.g. [1, 3]. The loss is the mean "
                  "over rows of weight(label) x cross-entropy, through the Trainer's compute_loss_func (training and "
                  "evaluation loss)."},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop when metric_for_best_model has not improved for this many evaluations "
                  "(transformers.EarlyStoppingCallback); the best checkpoint is loaded at the end. Needs eval_strategy "
                  "steps or epoch and load_best_model_at_end: true (checked before anything runs). Unless the recipe "
                  "sets metric_for_best_model, fine-tuning judges by the problem type's default: accuracy, or macro "
                  "F1 (f1) when one class holds more than 60 percent of the training rows; f1_micro for "
                  "multi_label_classification; mse for regression."},
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={"help": "How much metric_for_best_model must improve to count as better (early_stopping_patience)."},
    )

    def __post_init__(self):
        if self.use_lora and self.init_from == "scratch":
            raise RecipeError("key 'use_lora': LoRA on a randomly initialised body makes no sense; use init_from: "
                              "pretrained or full fine-tuning")
        if self.lora_r < 1:
            raise RecipeError(f"key 'lora_r': must be at least 1, got {self.lora_r}")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise RecipeError(f"key 'head_learning_rate': must be a positive number, got {self.head_learning_rate}")
        if self.class_weights is not None and [w.lower() for w in self.class_weights] not in (["none"], ["balanced"]):
            try:
                numbers = [float(w) for w in self.class_weights]
            except ValueError:
                raise RecipeError(f"key 'class_weights': none, balanced or one number per class, got "
                                  f"{' '.join(self.class_weights)}") from None
            if not all(np.isfinite(w) and w > 0 for w in numbers):
                raise RecipeError(f"key 'class_weights': weights must be positive numbers, got {numbers}")
        if self.class_weights is not None and [w.lower() for w in self.class_weights] != ["none"] and \
                not task_class(self.problem_type).weighs_classes:
            raise RecipeError(f"key 'class_weights': weighs classes of single_label_classification, not "
                              f"{self.problem_type}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise RecipeError(f"key 'early_stopping_patience': must be at least 1, got {self.early_stopping_patience}")
        if self.early_stopping_threshold < 0:
            raise RecipeError(f"key 'early_stopping_threshold': must be 0 or more, got {self.early_stopping_threshold}")
