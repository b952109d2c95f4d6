"""Beam search guided by process values, on a fake generator and fake values (literal outcomes)."""
from __future__ import annotations

import pytest

from rest.pav.search import Candidate, beam_search, best_of_n

# A toy world: tokens are digits; a step is one token; "9" is a final answer. The value of a prefix is
# its digit sum / 10 (so search should prefer big digits), capped at 1.


def expand(requests, n):
    return [[(str(d), [d], d != 9) for d in (1, 5, 9)[:n]] for _ in requests]


def value(pairs):
    return [min(1.0, sum(ids) / 10) for _, ids in pairs]


def finished(text):
    return "9" in text


def test_the_beam_keeps_the_best_valued_candidates_and_answers_with_the_best_finished_one():
    (result,) = beam_search([[7]], expand, value, finished, width=2, expansions=3, max_steps=3)
    # Round 1: 1 (score .15), 5 (.75), 9 (1.35, finished): the best two are 9, which is done, and 5.
    # Round 2, from 5: 51 (.65), 55 (1.25), 59 (1.25, finished): 55 stays open, 59 is done.
    # Round 3, from 55: 551, 555, 559, all q 1: the first two stay open and end with the rounds.
    assert [c.text for c in result.finished] == ["9", "59", "551", "555"]
    assert result.answer.text == "59" and result.answer.q == 1.0  # highest q, the first of the ties
    assert result.sampled_tokens == 9  # one token per continuation, one open beam per round


def test_the_score_adds_alpha_times_the_advantage_over_the_parent():
    seen = []

    def spy_value(pairs):
        values = value(pairs)
        seen.append(values)
        return values

    (result,) = beam_search([[0]], expand, spy_value, lambda t: False, width=1, expansions=2, max_steps=1, alpha=0.5)
    # root q 0; candidates 1 (q .1, score .15) and 5 (q .5, score .75): the beam keeps 5
    assert seen == [[0.0], [0.1, 0.5]]
    assert [c.text for c in result.finished] == ["5"] and result.answer.score == pytest.approx(0.75)


def test_out_of_rounds_the_open_beams_are_the_answers():
    (result,) = beam_search([[0]], expand, value, lambda t: False, width=1, expansions=2, max_steps=2)
    assert result.answer.text == "55" and result.answer.q == 1.0


def test_best_of_n_takes_samples_while_they_fit_the_budget_and_picks_the_best_valued():
    samples = [[Candidate("a", [1, 2], 0.2), Candidate("b", [1, 2, 3], 0.9), Candidate("c", [1], 0.95)]]
    assert best_of_n(samples, [5]) == [(samples[0][1], 5)]
    assert best_of_n(samples, [1]) == [(samples[0][0], 2)]  # the first sample is always taken
    assert best_of_n(samples, [100]) == [(samples[0][2], 6)]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="width"):
        beam_search([[0]], expand, value, finished, width=0)
