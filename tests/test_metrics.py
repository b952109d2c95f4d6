"""Evaluation metrics on literal inputs."""
from __future__ import annotations

import math

import pytest

from rest.metrics import majority_correct, mean_stderr, pass_at_k


def test_pass_at_k_matches_the_closed_form():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(5, 3, 3) == 1.0  # fewer wrong samples than k
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_majority_vote_uses_extracted_answers():
    assert majority_correct(["12", "12", "7", None], [True, True, False, None]) is True
    assert majority_correct(["7", "12", "7"], [False, True, False]) is False
    assert majority_correct(["12", "7"], [True, False]) is True  # tie: first seen wins
    assert majority_correct([None, None], [None, None]) is False


def test_mean_and_standard_error():
    assert mean_stderr([]) == (0.0, 0.0)
    assert mean_stderr([1.0]) == (1.0, 0.0)
    mean, se = mean_stderr([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx(math.sqrt((4 * 0.25 / 3) / 4))
