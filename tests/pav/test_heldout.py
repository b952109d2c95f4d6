"""The PAV head on held-out answers: which head is in force, predictions on sampled rows, its metrics."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rest.pav.head import ValueHead, hidden_features, load_feature_model
from rest.pav.heldout import head_after, score_heldout
from rest.prm.quality import auroc
from rest.recipe.schema import validate_recipe
from rest.run.rundir import RunDir
from tests.prm.conftest import make_tiny_lm


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return str(make_tiny_lm(tmp_path_factory.mktemp("pav_lm") / "model"))


def test_the_head_in_force_is_the_latest_at_or_before_the_iteration(tmp_path):
    run = RunDir(tmp_path)
    head = ValueHead(np.zeros(2), np.ones(2), np.ones(2), 0.0, "m")
    head.save(run.pav_dir(1) / "head")
    head.save(run.pav_dir(3) / "head")
    assert head_after(run, 0) is None
    assert head_after(run, 2) == run.pav_dir(1) / "head"
    assert head_after(run, 3) == run.pav_dir(3) / "head"


def test_sampled_answers_get_predicted_values_and_the_metrics_follow_from_them(lm, tmp_path):
    run = RunDir(tmp_path)
    rng = np.random.default_rng(1)
    ValueHead(np.zeros(32), np.ones(32), rng.normal(size=32), 0.1, lm).save(run.pav_dir(1) / "head")
    recipe = validate_recipe({"name": "h", "data": {"train_size": 4},
                              "pav": {"head": True, "step_delimiter": "t9 "}, "eval": {"samples": 2, "k": 2}})
    rows = [("a", "greedy", [3, 9, 4], True), ("a", "sampled", [3, 9, 4], True), ("a", "sampled", [5, 6], False),
            ("b", "sampled", [7, 9, 8, 9, 2], False), ("b", "sampled", [2], True), ("b", "sampled", [], False)]
    judged = pd.DataFrame([{"prompt_id": p, "mode": m, "prompt_token_ids": [0, 11, 12], "completion_token_ids": c,
                            "correct": ok} for p, m, c, ok in rows])
    scored, metrics = score_heldout(recipe, run, 2, judged)
    predicted = scored["pav__predicted_q"]
    assert predicted[0] is None or predicted.isna()[0]  # greedy rows are not scored, nor empty answers
    assert predicted.isna()[5]
    assert [len(predicted[i]) for i in (1, 2, 3, 4)] == [3, 2, 4, 2]  # steps + 1: "t3 t9 | t4", "t7 t9 | t8 t9 | t2"
    # The prediction of a prefix is the head on the hidden state at its last token.
    head = ValueHead.load(run.pav_dir(1) / "head")
    (features,) = hidden_features(load_feature_model(lm), [[0, 11, 12, 3, 9, 4]], [[2, 4, 5]])
    np.testing.assert_allclose(predicted[1], head.predict(features), rtol=1e-6)
    worst = [min(np.diff(predicted[i])) for i in (1, 2, 3, 4)]
    np.testing.assert_allclose(scored["pav__predicted_min_advantage"][[1, 2, 3, 4]], worst, rtol=1e-9)
    assert metrics["pav_auroc"] == pytest.approx(auroc(worst, [True, False, False, True]))
    # within a prompt: a's correct answer against its wrong one, b's likewise (one pair each)
    def won(right, wrong):
        return 1.0 if right > wrong else 0.5 if right == wrong else 0.0

    assert metrics["pav_auroc_within_prompt"] == pytest.approx((won(worst[0], worst[1]) + won(worst[3], worst[2])) / 2)
    assert metrics["pav_eval_samples"] == 4 and metrics["pav_eval_correct"] == 2
    a = 1.0 if predicted[1][-1] > predicted[2][-1] else 0.0  # the answer with the higher Q of the whole is picked
    b = 1.0 if predicted[4][-1] > predicted[3][-1] else 0.0
    assert metrics["best_of_n_pav"] == pytest.approx((a + b) / 2)


def test_without_a_head_nothing_is_scored(tmp_path):
    recipe = validate_recipe({"name": "h", "data": {"train_size": 4}, "pav": {"head": True},
                              "eval": {"samples": 2, "k": 2}})
    judged = pd.DataFrame({"mode": ["sampled"], "correct": [True]})
    assert score_heldout(recipe, RunDir(tmp_path), 1, judged) == (judged, {})
