"""Which models the implicit PRM phases use: the reference, and the PRM in force after each iteration."""
from __future__ import annotations

from rest.engines.models import resolve_model
from rest.recipe.schema import Recipe
from rest.run.rundir import RunDir


def reference_model(recipe: Recipe) -> str:
    """The frozen reference pi_ref: the recipe's ``prm.reference``, else the base model."""
    return resolve_model(recipe.prm.reference or recipe.model)


def initial_prm(recipe: Recipe) -> str:
    """The PRM before any update: ``prm.init``, else the base model (so it equals the reference: reward 0)."""
    return resolve_model(recipe.prm.init or recipe.model)


def prm_after(recipe: Recipe, run: RunDir, iteration: int) -> str:
    """The PRM in force after ``iteration``'s update: the latest iteration <= it that saved one, else the initial.

    An update that was skipped (no usable labels, or ``prm.update: false``) saves nothing, so the
    previous PRM stays in force.
    """
    for k in range(iteration, 0, -1):
        if (run.prm(k) / "config.json").is_file():
            return str(run.prm(k))
    return initial_prm(recipe)
