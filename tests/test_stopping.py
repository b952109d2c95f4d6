"""Early stopping and the best iteration, from evaluation results on disk."""
from __future__ import annotations

import pytest

from rest.recipe import RecipeError, validate_recipe
from rest.rundir import RunDir
from rest.stopping import Best, best_iteration, early_stop_reason, metric_values


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
