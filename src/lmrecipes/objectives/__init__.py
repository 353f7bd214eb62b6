"""Pretraining objectives, one module each: what a run builds, how blocks are laid out, which tokenizer it needs,
how batches are made, what evaluation adds, what is saved and which recipe keys it reads. Pretraining, data,
tokenizer and hub code are handed an Objective instance and ask it; none tests an objective's name. A new objective
is one more module (a subclass of Objective, its ObjectiveKeys if it has keys) registered here."""

from __future__ import annotations

from typing import Literal

from .base import Objective, ObjectiveKeys
from .causal_lm import CAUSAL_LM
from .electra import ELECTRA
from .masked_lm import MASKED_LM

# In order of preference: a saved checkpoint is recognised by the first whose architecture_markers match, and a
# model type whose recipe names no objective gets the first whose head it has (electra for the ELECTRA types,
# masked_lm for the other encoders, causal_lm for decoders).
OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (ELECTRA, MASKED_LM, CAUSAL_LM)}
ObjectiveName = Literal[tuple(OBJECTIVES)]  # the recipe key's choices (arguments.ModelArguments.objective)
# The keys each objective declares (ModelArguments inherits them), in the order recipe.yaml lists them after the
# common model keys: the reverse of OBJECTIVES'
OBJECTIVE_KEYS: tuple[type[ObjectiveKeys], ...] = tuple(o.keys for o in reversed(OBJECTIVES.values()) if o.keys)


def get_objective(name: str) -> Objective:
    return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "OBJECTIVE_KEYS", "Objective", "ObjectiveKeys", "ObjectiveName", "get_objective"]
