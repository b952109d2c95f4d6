"""Selection phase: run the recipe's filter pipeline over verified samples; write verdicts and the kept set."""
from __future__ import annotations

import pandas as pd

from rest.data.grown import judged_set, with_origin
from rest.filters.pipeline import describe, run_pipeline
from rest.filters.registry import build_filter
from rest.phases.stats import SelectStats
from rest.recipe.schema import Recipe
from rest.recipe.seeds import seed_for
from rest.run.faults import kill_point
from rest.run.rundir import RunDir, atomic_write_parquet


def select_iteration(recipe: Recipe, run: RunDir, iteration: int) -> SelectStats:
    """Filter iteration ``iteration``; every row stays in verdicts.parquet, kept rows go to kept.parquet."""
    # With a PRM the samples carry its scores too (prm_score's output), for the implicit_prm filter.
    verified = pd.read_parquet(run.scored(iteration)) if recipe.prm is not None else judged_set(recipe, run, iteration)
    if recipe.pav is not None:  # and the pav phase's step values, for the process_advantage filter
        from rest.pav.phase import with_values

        verified = with_values(run, iteration, verified)
    filters = [(f.column, build_filter(f.name, f.options)) for f in recipe.filters]
    table, filter_stats = run_pipeline(verified, filters, seed=seed_for(recipe, iteration, "select"))
    atomic_write_parquet(table, run.verdicts(iteration))
    kill_point("select:after_verdicts")  # half-done: verdicts written, kept set not yet
    kept = table[table["kept"]].reset_index(drop=True)
    atomic_write_parquet(kept, run.kept(iteration))
    stats = {
        "samples": len(table),
        "kept": len(kept),
        "kept_fraction": len(kept) / len(table) if len(table) else 0.0,
        "prompts_with_kept": int(kept["prompt_id"].nunique()),
        "kept_by_origin": {str(k): int(v) for k, v in with_origin(kept)["origin"].value_counts().items()},
        "filters": describe(filter_stats),
        "filter_metrics": {k: v for s in filter_stats for k, v in s.as_metrics().items()},
    }
    if recipe.prm is not None:  # score histograms of implicit_prm filters, logged as the iteration's artifacts
        from rest.prm.histograms import plot_prm_filters

        stats["plots"] = [p.name for p in plot_prm_filters(table, filters, run.iteration(iteration) / "plots")]
    run.write_stats(iteration, "select", stats)
    return stats
