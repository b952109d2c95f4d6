"""When the loop stops: the best iteration so far by the recipe's metric, and early stopping by patience.

Both read only the evaluation results in the run directory, so a rerun of a stopped run reaches the
same decision and the same best iteration.
"""
from __future__ import annotations

from dataclasses import dataclass

from rest.recipe.schema import RecipeError
from rest.run.rundir import RunDir


@dataclass(frozen=True)
class Best:
    """The iteration whose policy scored best on the held-out split (0 = the base model)."""

    iteration: int
    metric: str
    value: float


def metric_values(run: RunDir, metric: str, upto: int) -> dict[int, float]:
    """``metric`` of every evaluated iteration 0..upto, from ``iter_K/stats/eval.json``.

    An iteration whose value is recorded as undefined (None: e.g. the PRM's AUROC when every sample is
    right) has no value and is left out; a metric missing from the results is an error.
    """
    values = {}
    finished = run.manifest()["iterations"]  # read once, not once per iteration
    for k in range(upto + 1):
        if "eval" not in finished.get(str(k), {}):
            continue
        results = run.read_stats(k, "eval")
        if metric not in results:
            raise RecipeError(
                f"loop.metric '{metric}' is not in the evaluation results of iteration {k}; "
                f"available: {', '.join(sorted(results))}"
            )
        if results[metric] is not None:
            values[k] = float(results[metric])
    return values


def best_iteration(values: dict[int, float], metric: str, min_delta: float = 0.0) -> Best | None:
    """The earliest iteration that beat every earlier one by more than ``min_delta`` and was not beaten since."""
    best: Best | None = None
    for k in sorted(values):
        if best is None or values[k] > best.value + min_delta:
            best = Best(k, metric, values[k])
    return best


def early_stop_reason(values: dict[int, float], metric: str, patience: int | None, min_delta: float = 0.0) -> str | None:
    """Why the loop should stop now: ``patience`` iterations have passed without a better ``metric``."""
    best = best_iteration(values, metric, min_delta)
    if patience is None or best is None:
        return None
    latest = max(values)
    if latest - best.iteration >= patience:
        return (
            f"early stop: {metric} has not improved on iteration {best.iteration}'s {best.value:.4f} "
            f"for {latest - best.iteration} iteration(s) (patience {patience})"
        )
    return None
