"""The EM loop, top to bottom: evaluate the base model, then per iteration sample -> verify -> select -> train
-> evaluate, each phase logged; a rerun continues after the last finished phase."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rest.recipe.schema import Recipe
from rest.run.best import record_best
from rest.run.execute import active_phases, execute_phase
from rest.run.rundir import RunDir, file_lock
from rest.run.stopping import best_iteration, early_stop_reason, metric_values


@dataclass
class LoopResult:
    """What a ``rest run`` did: the summary rows and why it stopped."""

    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    stopped_because: str = "finished all iterations"
    best: dict[str, Any] | None = None  # the best iteration by loop.metric (manifest "best")


def run_loop(recipe: Recipe, run_dir: str | Path | None = None, allow_recipe_change: bool = False) -> LoopResult:
    """Run (or resume) the whole experiment the recipe describes."""
    run = RunDir(run_dir or recipe.run_dir())
    run.root.mkdir(parents=True, exist_ok=True)
    with file_lock(run.root / "lock", blocking=False):
        run.initialise(recipe, allow_recipe_change=allow_recipe_change)
        tracker = _tracker(recipe, run)
        _print_header(recipe, run)
        result = LoopResult(run_dir=run.root)
        try:
            if not run.is_done(0, "eval"):
                execute_phase(recipe, run, 0, "eval", tracker)
            for k in range(1, recipe.loop.iterations + 1):
                # Decided from the evaluations on disk, so a rerun of a stopped run stops at the same place.
                stop = _early_stop(recipe, run, k - 1) or _iteration(recipe, run, k, tracker)
                if stop:
                    result.stopped_because = stop
                    break
            result.best = _best(recipe, run, tracker)
        except BaseException:
            if tracker:
                tracker.finish("FAILED")
            raise
        result.rows = summary_rows(run, recipe.loop.iterations)
        if tracker:
            tracker.log_summary(result.rows)
            tracker.finish("FINISHED", stopped_because=result.stopped_because)
        return result


def _iteration(recipe: Recipe, run: RunDir, k: int, tracker: Any) -> str | None:
    """Run the unfinished phases of iteration ``k``; returns a reason when the loop must stop."""
    for phase in active_phases(recipe):
        if run.is_done(k, phase):
            continue
        if phase == "train" and run.read_stats(k, "select").get("kept", 0) == 0:
            return f"iteration {k} kept no samples, so there is nothing to train on"
        execute_phase(recipe, run, k, phase, tracker)
    return None


def _early_stop(recipe: Recipe, run: RunDir, upto: int) -> str | None:
    cfg = recipe.loop
    return early_stop_reason(metric_values(run, cfg.metric, upto), cfg.metric, cfg.patience, cfg.min_delta)


def _best(recipe: Recipe, run: RunDir, tracker: Any) -> dict[str, Any] | None:
    """Record the best evaluated iteration (manifest, MLflow tags, registry) and return its record."""
    cfg = recipe.loop
    best = best_iteration(metric_values(run, cfg.metric, recipe.loop.iterations), cfg.metric, cfg.min_delta)
    return record_best(recipe, run, best, tracker) if best else None


def _print_header(recipe: Recipe, run: RunDir) -> None:
    from rest.report.progress import console
    from rest.report.summary import header

    for line in header(recipe, run):
        console().print(line, markup=False, highlight=False, soft_wrap=True)


def _tracker(recipe: Recipe, run: RunDir) -> Any:
    if not recipe.tracking.enabled:
        return None
    from rest.report.tracking import Tracker

    return Tracker(recipe, run)


def summary_rows(run: RunDir, iterations: int | None = None) -> list[dict[str, Any]]:
    """One row per iteration from the run directory alone (see :func:`rest.report.summary.iteration_rows`)."""
    from rest.report.summary import iteration_rows

    return iteration_rows(run, iterations)


def run_single_phase(recipe: Recipe, phase: str, k: int, run_dir: str | Path | None = None,
                     allow_recipe_change: bool = False) -> dict:
    """Run one phase of one iteration on its own (``rest sample|verify|filter|train|eval``), same code as the loop."""
    run = RunDir(run_dir or recipe.run_dir())
    run.root.mkdir(parents=True, exist_ok=True)
    with file_lock(run.root / "lock", blocking=False):
        run.initialise(recipe, allow_recipe_change)
        if run.is_done(k, phase):
            return {**run.read_stats(k, phase), "note": "already done"}
        tracker = _tracker(recipe, run)
        stats = execute_phase(recipe, run, k, phase, tracker)
        if tracker:
            tracker.finish("FINISHED")
        return stats
