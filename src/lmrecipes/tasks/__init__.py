"""What a fine-tuning task is, one module per problem type: how its targets are read from the data, how the model's
head is configured, its loss, its metrics, what it saves with the model and what prediction returns.

Fine-tuning (finetuning.py), prediction (prediction.py) and the model card (model_card.py) ask the task and never test
the problem type themselves; a new head (e.g. token classification) is a new module registered here.
"""

from __future__ import annotations

from ..errors import RecipeError
from .base import Task
from .multi_label import MultiLabelClassification
from .regression import Regression
from .single_label import SingleLabelClassification

TASKS: dict[str, type[Task]] = {task.problem_type: task for task in
                                (SingleLabelClassification, MultiLabelClassification, Regression)}


def task_class(problem_type: str) -> type[Task]:
    if problem_type not in TASKS:
        raise RecipeError(f"key 'problem_type': {problem_type!r} is not one of {', '.join(TASKS)}")
    return TASKS[problem_type]


def saved_task(info: dict) -> Task:
    """The task of a fine-tuned model from its labels.json (runs older than problem types: single label)."""
    return task_class(info.get("problem_type", SingleLabelClassification.problem_type)).from_saved(info)
