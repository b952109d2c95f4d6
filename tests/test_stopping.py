"""Early stopping and the best iteration, from evaluation results on disk."""
from __future__ import annotations

import pytest

from rest.recipe.schema import RecipeError, validate_recipe
from rest.run.rundir import RunDir
from rest.run.stopping import Best, best_iteration, early_stop_reason, metric_values


def test_best_is_the_earliest_strict_improvement():
    assert best_iteration({0: 0.1, 1: 0.3, 2: 0.3, 3: 0.2}, "pass@1") == Best(1, "pass@1", 0.3)
    assert best_iteration({0: 0.5, 1: 0.52}, "pass@1", min_delta=0.05) == Best(0, "pass@1", 0.5)
    assert best_iteration({}, "pass@1") is None


@pytest.mark.parametrize("values, patience, stops", [
    ({0: 0.1, 1: 0.2, 2: 0.3}, 1, False),
    ({0: 0.1, 1: 0.3, 2: 0.25}, 1, True),
    ({0: 0.1, 1: 0.3, 2: 0.25}, 2, False),
    ({0: 0.1, 1: 0.3, 2: 0.25, 3: 0.3}, 2, True),  # a tie is not an improvement
    ({0: 0.1, 1: 0.0, 2: 0.0}, None, False),  # no patience: never early
])
def test_patience(values, patience, stops):
    reason = early_stop_reason(values, "pass@1", patience)
    assert (reason is not None) == stops
    if stops:
        assert "has not improved on iteration 1's 0.3000" in reason


def test_metric_values_come_from_finished_evaluations(tmp_path):
    run = RunDir(tmp_path)
    for k, value in ((0, 0.25), (1, 0.5)):
        run.write_stats(k, "eval", {"pass@1": value, "maj@4": value / 2})
        run.mark_done(k, "eval", 1.0)
    run.write_stats(2, "eval", {"pass@1": 0.9})  # written but not marked done: a cut-off phase
    assert metric_values(run, "pass@1", upto=2) == {0: 0.25, 1: 0.5}
    with pytest.raises(RecipeError, match="'pass@8' is not in the evaluation results of iteration 0; available: maj@4"):
        metric_values(run, "pass@8", upto=1)


def test_recipe_refuses_a_metric_it_does_not_evaluate():
    base = {"name": "x", "data": {"train_size": 4}}
    with pytest.raises(RecipeError, match="loop.metric 'maj@4' is not evaluated by this recipe; choose one of: pass@1"):
        validate_recipe({**base, "loop": {"metric": "maj@4"}})
    recipe = validate_recipe({**base, "eval": {"samples": 4, "k": 4}, "loop": {"metric": "maj@4", "patience": 2}})
    assert recipe.loop.patience == 2


def test_rest_mode_needs_the_policy_to_continue():
    base = {"name": "x", "data": {"train_size": 4}, "loop": {"mode": "rest"}}
    with pytest.raises(RecipeError, match="set train.init: previous"):
        validate_recipe(base)
    assert validate_recipe({**base, "train": {"init": "previous"}}).loop.improve_steps == 3


def evaluation_results(correct: list[list[bool]], k: int, prm: bool) -> dict:
    """The numbers the evaluation code writes to stats/eval.json for these verdicts (greedy answer first)."""
    import pandas as pd

    from rest.phases.evaluate import greedy_metrics, sampled_metrics
    from rest.prm.quality import prm_eval_metrics

    rows = [{"prompt_id": f"p{i}", "mode": "greedy" if j == 0 else "sampled", "sample_index": j - 1,
             "correct": ok, "answer": "1" if ok else "2", "truncated": False, "prm__min": 0.5 if ok else -0.5}
            for i, verdicts in enumerate(correct) for j, ok in enumerate(verdicts)]
    judged = pd.DataFrame(rows)
    results = greedy_metrics(judged[judged["mode"] == "greedy"])
    results.update(sampled_metrics(judged[judged["mode"] == "sampled"], k))
    if prm:
        results.update(prm_eval_metrics(judged[judged["mode"] == "sampled"], "prm__min"))
    return results


@pytest.mark.parametrize("k, prm", [(4, True), (4, False), (1, False)])
def test_every_metric_the_recipe_accepts_is_one_the_evaluation_writes(tmp_path, k, prm):
    """Early stopping runs on each accepted name, reading what the real metric code produced."""
    from rest.metrics import evaluated_metrics

    base = {"name": "x", "data": {"train_size": 4}, "eval": {"samples": 4, "k": k}}
    if prm:
        base["prm"] = {}
    run = RunDir(tmp_path)
    # iteration 0: 1 of 2 problems right greedily, 1 of 8 samples; iteration 1: everything right; 2: nothing.
    verdicts = {0: [[True, True, False, False, False], [False, False, False, False, False]],
                1: [[True] * 5, [True] * 5], 2: [[False, True, False, False, False], [False] * 5]}
    for it, correct in verdicts.items():
        run.write_stats(it, "eval", evaluation_results(correct, k, prm))
        run.mark_done(it, "eval", 1.0)
    names = evaluated_metrics(4, k, prm)
    assert len(names) == len(set(names)) and ("pass@1_sampled" in names) and (("prm_auroc" in names) == prm)
    for name in names:
        recipe = validate_recipe({**base, "loop": {"metric": name, "patience": 1}})
        values = metric_values(run, recipe.loop.metric, upto=2)
        if name in ("prm_auroc", "prm_auroc_within_prompt"):  # undefined (None) at iteration 1: every sample right
            assert set(values) == {0, 2} and values[0] == 1.0, values
        else:
            assert set(values) == {0, 1, 2} and values[1] > values[0] and values[1] > values[2], (name, values)
        assert early_stop_reason(values, name, recipe.loop.patience) is not None, name
    with pytest.raises(RecipeError, match="loop.metric 'pass@1 \\(sampled\\)' is not evaluated"):
        validate_recipe({**base, "loop": {"metric": "pass@1 (sampled)"}})
