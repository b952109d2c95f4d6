"""The process_advantage filter on literal step values: advantage and progress scores, and its errors."""
from __future__ import annotations

import pandas as pd
import pytest
from rest.filters.pav_filter import ProcessAdvantageFilter
from rest.filters.registry import build_filter


def samples() -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": ["a", "a", "a", "b", "b"],
        "correct": [True, True, False, True, True],
        # q: Q(p_0) .. Q(p_T); advantage: A_1 .. A_T (a correct sample ends at Q = 1)
        "pav__q": [[0.5, 0.75, 1.0], [0.5, 0.25, 1.0], [0.5, 0.0], [0.25, 1.0], None],
        "pav__advantage": [[0.25, 0.25], [-0.25, 0.75], [-0.5], [0.75], None],
    })


def verdict(flt, keep=None):
    frame = samples()
    result = flt.apply(frame, pd.Series(keep or [True] * len(frame)), seed=0)
    return result.keep.tolist(), result.reason.tolist(), result.score.tolist()


def test_default_keeps_correct_samples_whose_steps_never_lower_the_provers_chance():
    keep, reason, score = verdict(ProcessAdvantageFilter())
    assert score[:4] == [0.25, -0.25, -0.5, 0.75]
    assert keep == [True, False, True, True, False]
    assert reason == ["above_threshold", "below_threshold", "not_considered", "above_threshold", "unscored"]


def test_progress_scores_the_worst_step_by_q_plus_alpha_advantage():
    keep, _, score = verdict(ProcessAdvantageFilter(score="progress", alpha=0.5, threshold=0.9))
    # sample 0: min(0.75 + 0.125, 1.0 + 0.125) = 0.875; sample 1: min(0.25 - 0.125, 1 + 0.375) = 0.125
    assert score[:2] == pytest.approx([0.875, 0.125])
    assert score[3] == pytest.approx(1.375)
    assert keep == [False, False, True, True, False]


def test_top_k_keeps_the_best_sample_of_each_prompt():
    keep, reason, _ = verdict(ProcessAdvantageFilter(mode="top_k", top_k=1))
    assert keep == [True, False, True, True, False]
    assert reason[:2] == ["within_top_k", "outside_top_k"]


def test_without_step_values_the_message_names_the_missing_section():
    with pytest.raises(KeyError, match="needs a pav section"):
        ProcessAdvantageFilter().apply(samples().drop(columns=["pav__q"]), pd.Series([True] * 5), 0)


@pytest.mark.parametrize("options, message", [({"score": "max"}, "score must be one of"),
                                               ({"alpha": float("nan")}, "alpha must be a finite number"),
                                               ({"mode": "best"}, "mode must be one of")])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=f"process_advantage: {message}"):
        build_filter("process_advantage", options)
