"""The Python API for notebooks and scripts: the same recipe system as the command line, keyword overrides.

    import lmrecipes
    results = lmrecipes.pretrain("recipes/tiny-llama/pretrain.yaml", max_steps=50, output_dir="runs/nb")
"""

from __future__ import annotations

from pathlib import Path

from .recipe import parse_recipe


def load_recipe(recipe: str | Path | dict | None, argument_types, **overrides):
    """Parse a recipe file (or dict) plus keyword overrides into the dataclasses; returns (*dataclasses, explicit)."""
    if isinstance(recipe, dict):
        return parse_recipe(argument_types, [], recipe={**recipe, **overrides})
    return parse_recipe(argument_types, [str(recipe)] if recipe is not None else [], recipe=overrides)


def pretrain(recipe: str | Path | dict | None = None, *, callbacks=(), **overrides) -> dict:
    """Pretrain from a recipe; keyword arguments override recipe keys. Returns the run's results."""
    from .pretraining import PRETRAIN_ARGUMENTS, run_pretraining

    *args, explicit = load_recipe(recipe, PRETRAIN_ARGUMENTS, **overrides)
    return run_pretraining(*args, explicit=explicit, callbacks=callbacks)


def finetune(recipe: str | Path | dict | None = None, *, callbacks=(), **overrides) -> dict:
    """Fine-tune a classifier from a recipe; keyword arguments override recipe keys. Returns the run's results."""
    from .finetuning import FINETUNE_ARGUMENTS, run_finetuning

    *args, explicit = load_recipe(recipe, FINETUNE_ARGUMENTS, **overrides)
    return run_finetuning(*args, explicit=explicit, callbacks=callbacks)
