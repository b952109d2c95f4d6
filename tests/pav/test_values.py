"""PAV step values on literal rollout counts: Q per prefix, advantages, best-of-K provers."""
from __future__ import annotations

import math

import pytest

from rest.pav.values import prefix_q, step_values


def test_a_prefix_whose_rollouts_all_verify_has_q_one_and_none_q_zero():
    assert prefix_q(4, 4) == 1.0
    assert prefix_q(4, 0) == 0.0
    assert prefix_q(4, 1) == 0.25


def test_advantages_are_differences_of_consecutive_q_ending_at_the_verdict():
    # p_0: 1 of 4 verify, p_1: 3 of 4, p_2: 0 of 4; the completion itself is correct.
    values = step_values([(4, 1), (4, 3), (4, 0)], outcome=1.0)
    assert values.q == [0.25, 0.75, 0.0, 1.0]
    assert values.advantage == [0.5, -0.75, 1.0]
    assert values.min_advantage == -0.75


def test_a_one_step_completion_has_the_prompt_value_and_its_verdict():
    values = step_values([(8, 2)], outcome=0.0)
    assert values.q == [0.25, 0.0]
    assert values.advantage == [-0.25]


def test_progress_is_q_after_the_step_plus_alpha_times_its_advantage():
    values = step_values([(4, 1), (4, 3)], outcome=1.0)  # q = .25, .75, 1; a = .5, .25
    assert values.progress(0.5) == pytest.approx([0.75 + 0.25, 1.0 + 0.125])


def test_best_of_k_prover_succeeds_when_one_of_k_rollouts_would():
    # 4 rollouts, 1 verified: best-of-2 fails only when both picks are among the 3 failures: 1 - C(3,2)/C(4,2).
    assert prefix_q(4, 1, best_of=2) == pytest.approx(1 - 3 / 6)
    assert prefix_q(4, 0, best_of=4) == 0.0
    assert prefix_q(4, 1, best_of=4) == 1.0
    values = step_values([(4, 1)], outcome=1.0, best_of=2)
    assert values.advantage == pytest.approx([0.5])


def test_best_of_more_than_the_rollouts_is_an_error():
    with pytest.raises(ValueError, match="k <= n"):
        prefix_q(2, 1, best_of=3)


def test_a_completion_without_prefix_counts_is_an_error():
    with pytest.raises(ValueError, match="p_0"):
        step_values([], outcome=1.0)
    assert not math.isnan(step_values([(1, 1)], 1.0).min_advantage)
