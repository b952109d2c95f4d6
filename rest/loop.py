"""The EM loop, top to bottom: evaluate the base model, then per iteration sample -> verify -> select -> train
-> evaluate, each phase logged; a rerun continues after the last finished phase."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rest.phases import active_phases, execute_phase
from rest.recipe import Recipe
from rest.rundir import RunDir, file_lock


@dataclass
class LoopResult:
    """What a ``rest run`` did: the summary rows and why it stopped."""

    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    stopped_because: str = "finished all iterations"


def run_loop(recipe: Recipe, run_dir: str | Path | None = None, allow_recipe_change: bool = False) -> LoopResult:
    """Run (or resume) the whole experiment the recipe describes."""
    run = RunDir(run_dir or recipe.run_dir())
    run.root.mkdir(parents=True, exist_ok=True)
    with file_lock(run.root / "lock", blocking=False):
        run.initialise(recipe, allow_recipe_change=allow_recipe_change)
        tracker = _tracker(recipe, run)
        result = LoopResult(run_dir=run.root)
        try:
            if not run.is_done(0, "eval"):
                execute_phase(recipe, run, 0, "eval", tracker)
            for k in range(1, recipe.loop.iterations + 1):
                stop = _iteration(recipe, run, k, tracker)
                if stop:
                    result.stopped_because = stop
                    break
        except BaseException:
            if tracker:
                tracker.finish("FAILED")
            raise
        result.rows = summary_rows(run, recipe.loop.iterations)
        if tracker:
            tracker.log_summary(result.rows)
            tracker.finish("FINISHED")
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


def _tracker(recipe: Recipe, run: RunDir) -> Any:
    if not recipe.tracking.enabled:
        return None
    from rest.tracking import Tracker

    return Tracker(recipe, run)


def summary_rows(run: RunDir, iterations: int) -> list[dict[str, Any]]:
    """One row per iteration from the run directory alone: generated, kept, train loss, pass@1."""
    rows = []
    for k in range(0, iterations + 1):
        if not run.iteration(k).exists():
            continue
        sample, select = run.read_stats(k, "sample"), run.read_stats(k, "select")
        train, evaluation = run.read_stats(k, "train"), run.read_stats(k, "eval")
        rows.append({
            "iteration": k,
            "generated": sample.get("samples"),
            "kept": select.get("kept"),
            "kept_fraction": select.get("kept_fraction"),
            "train_loss": train.get("train_loss"),
            "pass@1": evaluation.get("pass@1"),
            "pass@1_stderr": evaluation.get("pass@1_stderr"),
            **{key: value for key, value in evaluation.items()
               if key.startswith(("pass@", "maj@")) and key not in ("pass@1", "pass@1_stderr")},
            "wall_s": sum(p.get("wall_s", 0.0) for p in run.manifest()["iterations"].get(str(k), {}).values()),
        })
    return rows


def run_single_phase(recipe: Recipe, phase: str, k: int, run_dir: str | Path | None = None) -> dict:
    """Run one phase of one iteration on its own (``rest sample|verify|filter|train|eval``), same code as the loop."""
    run = RunDir(run_dir or recipe.run_dir())
    run.root.mkdir(parents=True, exist_ok=True)
    with file_lock(run.root / "lock", blocking=False):
        run.initialise(recipe)
        if run.is_done(k, phase):
            return {**run.read_stats(k, phase), "note": "already done"}
        tracker = _tracker(recipe, run)
        stats = execute_phase(recipe, run, k, phase, tracker)
        if tracker:
            tracker.finish("FINISHED")
        return stats
