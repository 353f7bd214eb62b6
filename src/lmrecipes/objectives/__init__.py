"""Pretraining objectives, one module each: what a run builds, how blocks are laid out, which tokenizer it needs,
how batches are made, what evaluation adds and what is saved. Pretraining, data, tokenizer and hub code ask
`get_objective(name)` instead of testing the objective's name; a new objective is one more module registered here."""

from __future__ import annotations

from typing import Literal

from .base import Objective
from .causal_lm import CAUSAL_LM
from .electra import ELECTRA
from .masked_lm import MASKED_LM

# In the order a saved checkpoint is recognised by its architectures (objectives.base.Objective.architecture_markers)
OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (ELECTRA, MASKED_LM, CAUSAL_LM)}
ObjectiveName = Literal[tuple(OBJECTIVES)]  # the recipe key's choices (arguments.ModelArguments.objective)
# The objective a model type gets when its recipe names none: the first of these whose head the type has
# (electra for the ELECTRA types, masked_lm for the other encoders, causal_lm for decoders).
DEFAULT_FOR_MODEL_TYPE = (ELECTRA.name, MASKED_LM.name, CAUSAL_LM.name)


def get_objective(name: str) -> Objective:
    return OBJECTIVES[name]


__all__ = ["DEFAULT_FOR_MODEL_TYPE", "OBJECTIVES", "Objective", "ObjectiveName", "get_objective"]
