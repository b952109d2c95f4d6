"""Every seed an iteration's phases use, derived in one place from the recipe.

A seed set in the phase's recipe section wins; otherwise it is the master seed plus the iteration, so
iterations draw differently and reproducibly. Evaluation always uses the master seed: every iteration's
policy is judged with the same draws. The repair phase samples with the E-step's seed.
"""
from __future__ import annotations

from typing import Any

REPLICA_SEED_STRIDE = 1_000_003


def iteration_seeds(recipe: Any, iteration: int) -> dict[str, int]:
    """The seeds of iteration ``iteration`` by use (``eval_engine``, ``sample_engine``, ``select``, ``train``,
    ``prm_update`` where a PRM is configured, ``pav`` with a pav section); iteration 0 only evaluates."""
    seeds = {"eval_engine": recipe.seed}
    if iteration < 1:
        return seeds
    derived = recipe.seed + iteration
    seeds["sample_engine"] = _given_or(recipe.sampling.seed, derived)
    seeds["select"] = derived
    seeds["train"] = _given_or(recipe.train.seed, derived)
    if recipe.prm is not None:
        seeds["prm_update"] = _given_or(recipe.prm.seed, derived)
    if recipe.pav is not None:
        seeds["pav"] = derived  # the rollout engine and the pick of samples per prompt
    return seeds


def seed_for(recipe: Any, iteration: int, use: str) -> int:
    """One seed of :func:`iteration_seeds`, by use."""
    return iteration_seeds(recipe, iteration)[use]


def replica_seed(seed: int, replica: int) -> int:
    """The engine seed of data-parallel replica ``replica``: replica 0 keeps the phase's seed (one replica samples
    as one engine does); the others are offset far beyond any iteration's ``seed + iteration``."""
    return seed + replica * REPLICA_SEED_STRIDE


def _given_or(given: int | None, derived: int) -> int:
    return given if given is not None else derived
