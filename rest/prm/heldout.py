"""The PRM on the held-out split: score the evaluation's sampled solutions and measure AUROC and best-of-N."""
from __future__ import annotations

import pandas as pd

from rest.filters.prm_filter import AGGREGATES, prm_column
from rest.prm.quality import auroc, prm_eval_metrics
from rest.recipe.schema import Recipe
from rest.run.rundir import RunDir


def score_heldout(recipe: Recipe, run: RunDir, iteration: int, judged: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Score the ``sampled`` rows of an evaluation with the PRM in force after ``iteration``.

    Returns every row with the ``prm__*`` columns (None on greedy rows) and the metrics for results.json:
    ``prm_auroc`` (+ stderr) and ``best_of_n_prm`` / ``prm_weighted_vote`` / ``best_of_n_majority`` /
    ``best_of_n_random`` (+ stderrs)
    by ``prm.eval_aggregate``, the AUROC of every aggregate, and the scorer's numbers. Call it after the
    vLLM engine stopped: the scorer loads the PRM and the reference itself.
    """
    from rest.prm.checkpoints import prm_after, reference_model
    from rest.prm.score import score_frame

    sampled = judged[judged["mode"] == "sampled"]
    prm, reference = prm_after(recipe, run, iteration), reference_model(recipe)
    scored, stats = score_frame(sampled, prm, reference, recipe.prm, f"eval iter {iteration}",
                                engine=recipe.engine)
    merged = judged.copy()
    for column in [c for c in scored.columns if c.startswith("prm__")]:
        merged[column] = [scored.at[i, column] if i in scored.index else None for i in merged.index]
    metrics = prm_eval_metrics(scored, prm_column(recipe.prm.eval_aggregate))
    metrics["prm_auroc_by_aggregate"] = aurocs_by_aggregate(scored)
    metrics.update(prm_model=prm, prm_aggregate=recipe.prm.eval_aggregate,
                   prm_scoring_wall_s=stats.get("wall_s"), prm_scoring_tokens_per_s=stats.get("tokens_per_s"))
    return merged, metrics


def aurocs_by_aggregate(scored: pd.DataFrame) -> dict[str, float | None]:
    """AUROC of each PRM aggregate vs correctness over the judged, scored samples (None where undefined)."""
    out: dict[str, float | None] = {}
    judged = scored[scored["correct"].notna()]
    for name in AGGREGATES:
        score = pd.to_numeric(judged[prm_column(name)], errors="coerce")
        labels = judged["correct"][score.notna()].astype(bool)
        both = labels.any() and not labels.all()
        out[name] = auroc(score.dropna().tolist(), labels.tolist()) if both else None
    return out
