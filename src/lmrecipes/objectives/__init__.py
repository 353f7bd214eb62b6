"""Pretraining objectives, one module each: what a run builds, how blocks are laid out, which tokenizer it needs,
how batches are made and what evaluation adds. Pretraining, data and tokenizer code ask `get_objective(name)`
instead of testing the objective's name; a new objective (e.g. ELECTRA) is one more module registered here."""

from __future__ import annotations

from typing import Literal

from .base import Objective
from .causal_lm import CAUSAL_LM
from .masked_lm import MASKED_LM

# In the order a saved checkpoint is recognised by its architectures (objectives.base.Objective.architecture_markers)
OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (MASKED_LM, CAUSAL_LM)}
ObjectiveName = Literal[tuple(OBJECTIVES)]  # the recipe key's choices (arguments.ModelArguments.objective)
# The objective a model type gets when its recipe names none: the first of these whose head the type has.
DEFAULT_FOR_MODEL_TYPE = (MASKED_LM.name, CAUSAL_LM.name)


def get_objective(name: str) -> Objective:
    return OBJECTIVES[name]


__all__ = ["DEFAULT_FOR_MODEL_TYPE", "OBJECTIVES", "Objective", "ObjectiveName", "get_objective"]
