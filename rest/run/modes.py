"""ReST-EM and ReST schedules: which iterations grow (sample anew), which Improve step an iteration is.

ReST-EM (Singh et al. 2023) grows every iteration and retrains from the base model. ReST (Gulcehre et
al. 2023) grows once, then runs several Improve steps on the grown set, each keeping samples above a
rising reward threshold and continuing the previous policy at a lower learning rate.
"""
from __future__ import annotations

from rest.recipe.schema import Recipe


def is_grow(recipe: Recipe, iteration: int) -> bool:
    """Whether ``iteration`` samples anew (always in ReST-EM; at the first of each Improve cycle in ReST)."""
    return recipe.loop.mode == "rest_em" or (iteration - 1) % recipe.loop.improve_steps == 0


def grow_iteration(recipe: Recipe, iteration: int) -> int:
    """The iteration whose E-step produced the samples ``iteration`` filters and trains on."""
    if recipe.loop.mode == "rest_em":
        return iteration
    return iteration - (iteration - 1) % recipe.loop.improve_steps


def improve_step(recipe: Recipe, iteration: int) -> int:
    """1-based index of ``iteration`` among the Improve steps of its Grow (always 1 in ReST-EM)."""
    return iteration - grow_iteration(recipe, iteration) + 1


def learning_rate(recipe: Recipe, iteration: int) -> float:
    """The M-step's peak learning rate: decayed by ``loop.improve_lr_decay`` per Improve step in ReST."""
    return recipe.train.learning_rate * recipe.loop.improve_lr_decay ** (improve_step(recipe, iteration) - 1)
