"""The implicit_prm filter on literal samples: threshold, top-k per prompt, quantile (of the iteration or of each
prompt), and its errors."""
from __future__ import annotations

import pandas as pd
import pytest

from rest.filters.pipeline import run_pipeline
from rest.filters.prm_filter import ImplicitPRMFilter
from rest.filters.registry import build_filter
from rest.filters.selection import KeepCorrect


def samples() -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": ["a", "a", "a", "a", "b", "b", "b"],
        "correct": [True, True, True, False, True, True, None],
        "reward": [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, None],
        "prm__min": [-0.5, 0.2, 0.1, 0.9, -0.1, None, 0.3],
        "prm__mean": [0.4, 0.0, 0.3, -1.0, 0.2, 0.1, 0.0],
    })


def verdict(flt: ImplicitPRMFilter, keep: list[bool] | None = None, seed: int = 0):
    frame = samples()
    mask = pd.Series(keep if keep is not None else [True] * len(frame), index=frame.index)
    result = flt.apply(frame, mask, seed)
    return result.keep.tolist(), result.reason.tolist(), result.score.tolist()


def test_threshold_on_the_min_aggregate():
    keep, reason, score = verdict(ImplicitPRMFilter(threshold=0.0))
    assert keep == [False, True, True, True, False, False, True]
    assert reason == ["below_threshold", "above_threshold", "above_threshold", "not_considered",
                      "below_threshold", "unscored", "not_considered"]
    assert score[:5] == [-0.5, 0.2, 0.1, 0.9, -0.1]


def test_threshold_on_another_aggregate():
    keep, reason, _ = verdict(ImplicitPRMFilter(aggregate="mean", threshold=0.25))
    assert keep == [True, False, True, True, False, False, True]


def test_top_k_per_prompt_among_still_kept_correct_samples():
    keep, reason, _ = verdict(ImplicitPRMFilter(mode="top_k", top_k=1), keep=[True, False, True, True, True, True, True])
    # a: row 1 was dropped earlier, so rows 0 and 2 compete and 2 (0.1) wins; b: row 5 has no score
    assert keep == [False, True, True, True, True, False, True]
    assert reason == ["outside_top_k", "not_considered", "within_top_k", "not_considered", "within_top_k",
                      "unscored", "not_considered"]


def test_top_k_ties_break_by_seed():
    frame = pd.DataFrame({"prompt_id": ["a"] * 6, "correct": [True] * 6, "prm__min": [0.0] * 6})
    flt, mask = ImplicitPRMFilter(mode="top_k", top_k=2), pd.Series([True] * 6)
    picks = {seed: tuple(flt.apply(frame, mask, seed).keep) for seed in range(6)}
    assert all(sum(p) == 2 for p in picks.values())
    assert picks[0] == tuple(flt.apply(frame, mask, 0).keep)
    assert len(set(picks.values())) > 1


def test_quantile_keeps_scores_at_or_above_it():
    # considered scores: -0.5, 0.2, 0.1, -0.1; their 0.5-quantile is 0.0
    keep, reason, _ = verdict(ImplicitPRMFilter(mode="quantile", quantile=0.5))
    assert keep == [False, True, True, True, False, False, True]
    assert reason[:2] == ["below_quantile", "above_quantile"]
    keep, _, _ = verdict(ImplicitPRMFilter(mode="quantile", quantile=0.0))
    assert keep == [True, True, True, True, True, False, True]


def test_prompt_quantile_cuts_within_each_prompt_and_never_empties_one():
    # a: considered -0.5, 0.2, 0.1 (0.5-quantile 0.1); b: only -0.1 is scored, so it is its own quantile
    keep, reason, _ = verdict(ImplicitPRMFilter(mode="prompt_quantile", quantile=0.5))
    assert keep == [False, True, True, True, True, False, True]
    assert reason == ["below_prompt_quantile", "above_prompt_quantile", "above_prompt_quantile", "not_considered",
                      "above_prompt_quantile", "unscored", "not_considered"]
    # the iteration-wide quantile (0.0 here) drops prompt b's only correct sample with it
    assert verdict(ImplicitPRMFilter(mode="quantile", quantile=0.5))[0][4] is False


def test_in_a_pipeline_after_keep_correct():
    table, stats = run_pipeline(samples(), [("keep_correct", KeepCorrect()),
                                            ("implicit_prm", ImplicitPRMFilter(threshold=0.0))], seed=0)
    assert table["kept"].tolist() == [False, True, True, False, False, False, False]
    assert stats[1].incoming == 5 and stats[1].kept == 2
    assert stats[1].dropped_by_reason == {"below_threshold": 2, "unscored": 1}
    assert table["implicit_prm__score"].tolist()[:2] == [-0.5, 0.2]


def test_missing_prm_columns_say_the_recipe_needs_a_prm_section():
    with pytest.raises(KeyError, match="implicit_prm: the samples have no 'prm__last_q' column; the recipe needs a prm"):
        ImplicitPRMFilter(aggregate="last_q").apply(samples(), pd.Series([True] * 7), 0)


@pytest.mark.parametrize("options, message", [
    ({"mode": "best"}, "mode must be one of threshold, top_k, quantile, prompt_quantile, got 'best'"),
    ({"aggregate": "max"}, "aggregate must be one of min, mean, sum, last_q, got 'max'"),
    ({"top_k": 0}, "top_k must be an integer >= 1, got 0"),
    ({"quantile": 1.5}, r"quantile must be in \[0, 1\], got 1.5"),
    ({"threshold": "high"}, "threshold must be a finite number, got 'high'"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        build_filter("implicit_prm", options)


def test_a_recipe_with_the_filter_but_no_prm_section_is_invalid():
    from rest.recipe.schema import RecipeError, validate_recipe

    with pytest.raises(RecipeError, match="the implicit_prm filter reads the PRM's scores: the recipe needs a prm"):
        validate_recipe({"name": "x", "data": {"train_size": 4}, "filters": [{"name": "implicit_prm"}]})
    assert validate_recipe({"name": "x", "data": {"train_size": 4}, "prm": {},
                            "filters": [{"name": "implicit_prm", "options": {"mode": "top_k", "top_k": 2}}]})
