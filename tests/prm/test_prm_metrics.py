"""PRM evaluation metrics on literal inputs: AUROC, its Hanley-McNeil stderr, best-of-N picks."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from rest.prm.quality import (
    auroc,
    best_of_n_prm,
    best_of_n_random,
    hanley_mcneil_stderr,
    prm_eval_metrics,
    prm_weighted_vote,
    within_prompt_auroc,
)


def test_auroc_literal_values():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    # positives 0.8, 0.4; negatives 0.6, 0.2: pairs won 1 + 1 + 0 + 1 of 4
    assert auroc([0.8, 0.4, 0.6, 0.2], [True, True, False, False]) == 0.75


def test_auroc_counts_ties_as_one_half():
    assert auroc([0.0, 0.0, 0.0], [True, False, False]) == 0.5
    # positive 1.0 beats 0.5 and ties 1.0: (1 + 0.5) / 2
    assert auroc([1.0, 1.0, 0.5], [True, False, False]) == 0.75


def test_auroc_needs_both_classes_and_finite_scores():
    with pytest.raises(ValueError, match="auroc needs both classes, got 2 positive and 0 negative"):
        auroc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="finite"):
        auroc([float("nan"), 0.2], [True, False])


def test_hanley_mcneil_stderr_literal_values():
    assert hanley_mcneil_stderr(0.5, 1, 1) == pytest.approx(0.5)
    # q1 = 0.8/1.2, q2 = 1.28/1.8; var = (0.16 + 9 (q1 - 0.64) + 19 (q2 - 0.64)) / 200
    assert hanley_mcneil_stderr(0.8, 10, 20) == pytest.approx(math.sqrt(1.7511111 / 200), rel=1e-6)
    assert hanley_mcneil_stderr(1.0, 10, 20) == 0.0


def test_best_of_n_picks_by_score_with_ties_as_expected_value():
    assert best_of_n_prm([0.1, 0.9, 0.5], [False, True, False]) == 1.0
    assert best_of_n_prm([0.9, 0.9, 0.5], [False, True, True]) == 0.5
    assert best_of_n_prm([float("nan"), -3.0], [True, False]) == 0.0, "a missing score never wins"
    assert best_of_n_prm([0.2, 0.1], [None, True]) == 0.0, "an unjudged pick is not correct"
    assert best_of_n_random([True, False, None, True]) == 0.5


def test_weighted_vote_sums_sigmoid_scores_per_answer():
    # "7": 2 x sigmoid(-1) = 0.538 loses to "9": sigmoid(0.5) = 0.622, although "7" has the majority.
    assert prm_weighted_vote(["7", "7", "9"], [-1.0, -1.0, 0.5], [False, False, True]) == 1.0
    # Three weak votes beat one strong one: 3 x sigmoid(0) = 1.5 > sigmoid(3) = 0.95.
    assert prm_weighted_vote(["1", "1", "1", "2"], [0.0, 0.0, 0.0, 3.0], [True, True, True, False]) == 1.0
    assert prm_weighted_vote(["1", "2"], [0.0, 0.0], [True, False]) == 0.5, "a tie is a coin flip"
    assert prm_weighted_vote(["1", "2"], [float("nan"), -5.0], [True, False]) == 0.0, "a missing score weighs 0"
    assert prm_weighted_vote([None, "2"], [9.0, -9.0], [True, False]) == 0.0, "no answer, no vote"
    assert prm_weighted_vote([None, None], [1.0, 1.0], [None, None]) == 0.0


def test_prm_eval_metrics_on_a_literal_frame():
    frame = pd.DataFrame({
        "prompt_id": ["a"] * 4 + ["b"] * 4,
        "sample_index": [0, 1, 2, 3] * 2,
        "answer": ["7", "7", "9", "5", "3", "4", "4", None],
        "correct": [False, False, True, False, True, False, False, None],
        "prm__min": [-1.0, -1.0, 0.5, -2.0, -0.5, 0.1, -0.2, 0.0],
    })
    metrics = prm_eval_metrics(frame, "prm__min")
    # judged: positives 0.5, -0.5; negatives -1, -1, -2, 0.1, -0.2 -> wins 5 + 3 = 8 of 10
    assert metrics["prm_auroc"] == pytest.approx(0.8)
    assert metrics["prm_auroc_stderr"] == pytest.approx(hanley_mcneil_stderr(0.8, 2, 5))
    assert (metrics["prm_eval_samples"], metrics["prm_eval_correct"]) == (7, 2)
    assert metrics["best_of_n_prm"] == 0.5  # a: picks the correct 0.5; b: picks 0.1, wrong
    assert metrics["best_of_n_majority"] == 0.0  # a: "7" wins, wrong; b: "4" wins, wrong
    # a: "9" (0.62) outweighs "7" (2 x 0.27), correct; b: "4" (0.52 + 0.45) outweighs "3" (0.38), wrong
    assert metrics["prm_weighted_vote"] == 0.5 and metrics["prm_weighted_vote_stderr"] == pytest.approx(0.5)
    assert metrics["best_of_n_random"] == pytest.approx((1 / 4 + 1 / 4) / 2)
    assert metrics["best_of_n_prm_stderr"] == pytest.approx(0.5)
    # within a prompt: a's correct 0.5 beats its 3 wrong ones (3 of 3), b's -0.5 beats neither 0.1 nor -0.2 (0 of 2)
    assert metrics["prm_auroc_within_prompt"] == pytest.approx(3 / 5)
    assert metrics["prm_auroc_within_prompt_prompts"] == 2


def test_within_prompt_auroc_ignores_how_hard_each_problem_is():
    """Scores that only rank problems (every answer to an easy one above every answer to a hard one) separate
    correct from incorrect across problems, yet say nothing within one: 0.5 there, and 1.0 once they do."""
    prompts = ["easy"] * 4 + ["hard"] * 4
    correct = [True, True, True, False, True, False, False, False]
    difficulty = [1.0] * 4 + [0.0] * 4
    assert auroc(difficulty, correct) == pytest.approx(0.75)
    assert within_prompt_auroc(difficulty, correct, prompts) == (pytest.approx(0.5), pytest.approx(0.0), 2)
    informed = [d + 0.1 * c for d, c in zip(difficulty, correct)]
    assert within_prompt_auroc(informed, correct, prompts)[0] == pytest.approx(1.0)
    # pairs weigh: easy has 3 pairs (all won), hard 3 (all lost) -> 0.5, stderr from the spread between prompts
    mixed = [d + 0.1 * c if p == "easy" else d - 0.1 * c for d, c, p in zip(difficulty, correct, prompts)]
    value, stderr, count = within_prompt_auroc(mixed, correct, prompts)
    assert (value, count) == (pytest.approx(0.5), 2) and stderr == pytest.approx(0.5)
    assert within_prompt_auroc([0.1, 0.2], [True, True], ["a", "a"]) == (None, None, 0), "no prompt has both"
    assert within_prompt_auroc([float("nan"), 0.2, 0.1], [True, False, True], ["a"] * 3)[0] == 0.0, "NaN unscored"


def test_prm_eval_metrics_with_one_class_has_no_auroc():
    frame = pd.DataFrame({"prompt_id": ["a", "a"], "sample_index": [0, 1], "answer": ["1", "2"],
                          "correct": [False, False], "prm__min": [0.0, 1.0]})
    metrics = prm_eval_metrics(frame, "prm__min")
    assert metrics["prm_auroc"] is None and metrics["prm_auroc_stderr"] is None
    assert metrics["best_of_n_prm"] == 0.0


def test_heldout_scoring_adds_prm_columns_to_sampled_rows_and_measures_them(tiny_lm, tmp_path):
    from conftest import make_tiny_lm

    from rest.prm.heldout import score_heldout
    from rest.recipe.schema import validate_recipe
    from rest.run.rundir import RunDir

    run = RunDir(tmp_path / "run")
    make_tiny_lm(run.prm(1), seed=1)  # a PRM that differs from the reference (the base model)
    recipe = validate_recipe({"name": "heldout", "model": tiny_lm, "data": {"train_size": 4}, "prm": {}})
    rows = []
    for prompt in range(3):
        for mode, n in (("greedy", 1), ("sampled", 4)):
            for s in range(n):
                rows.append({"prompt_id": f"p{prompt}", "mode": mode, "sample_index": s,
                             "prompt_token_ids": [5, 6 + prompt], "completion_token_ids": [10 + s, 20 + prompt, 1],
                             "answer": str(s), "correct": s == prompt})
    judged = pd.DataFrame(rows)
    merged, metrics = score_heldout(recipe, run, 1, judged)
    assert metrics["prm_model"] == str(run.prm(1))
    assert merged.loc[merged["mode"] == "greedy", "prm__min"].isna().all()
    sampled = merged[merged["mode"] == "sampled"]
    assert sampled["prm__min"].notna().all() and sampled["prm__sum"].ne(0).all()
    assert metrics["prm_auroc"] == pytest.approx(auroc(sampled["prm__min"].tolist(), sampled["correct"].tolist()))
    assert metrics["prm_auroc_by_aggregate"]["min"] == pytest.approx(metrics["prm_auroc"])
    assert 0 < metrics["prm_auroc_stderr"] < 0.5
    assert metrics["best_of_n_random"] == pytest.approx(0.25)
    assert metrics["best_of_n_majority"] == pytest.approx(1 / 3)  # all answers tie: the first (index 0) wins
