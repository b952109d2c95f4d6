"""Selection rules and the pipeline, on literal tables."""
from __future__ import annotations

import pandas as pd
import pytest

from rest.filters.pipeline import FilterResult, run_pipeline
from rest.filters.selection import (
    Dedup,
    DifficultyBand,
    DropTruncated,
    KeepCorrect,
    KeepWhere,
    PerPromptCap,
    normalise_text,
)


def table(rows):
    return pd.DataFrame(rows, columns=["prompt_id", "sample_index", "reward"])


def test_keep_correct_drops_wrong_and_unjudged_with_reasons():
    samples = table([("a", 0, 1.0), ("a", 1, 0.0), ("b", 0, None), ("b", 1, 0.6)])
    result = KeepCorrect().apply(samples, pd.Series(True, index=samples.index), seed=0)
    assert result.keep.tolist() == [True, False, False, False]
    assert result.reason.tolist() == ["correct", "below_threshold", "unjudged", "below_threshold"]
    graded = KeepCorrect(threshold=0.5).apply(samples, pd.Series(True, index=samples.index), seed=0)
    assert graded.keep.tolist() == [True, False, False, True]


def test_per_prompt_cap_keeps_the_best_and_breaks_ties_by_seed():
    samples = table([("a", i, r) for i, r in enumerate([0.2, 0.9, 0.9, 0.5])] + [("b", 0, 1.0)])
    cap = PerPromptCap(max_per_prompt=2)
    result = cap.apply(samples, pd.Series(True, index=samples.index), seed=0)
    assert result.keep.tolist() == [False, True, True, False, True]
    assert result.reason.tolist() == ["over_cap", "within_cap", "within_cap", "over_cap", "within_cap"]
    ties = table([("a", i, 1.0) for i in range(10)])
    picks = {
        seed: tuple(PerPromptCap(max_per_prompt=3).apply(ties, pd.Series(True, index=ties.index), seed).keep)
        for seed in range(6)
    }
    assert all(sum(p) == 3 for p in picks.values())
    assert len(set(picks.values())) > 1, "ties must be broken by the seed, not by row order"
    again = PerPromptCap(max_per_prompt=3).apply(ties, pd.Series(True, index=ties.index), 4).keep
    assert tuple(again) == picks[4]


def test_per_prompt_cap_only_counts_samples_still_kept():
    samples = table([("a", 0, 1.0), ("a", 1, 1.0), ("a", 2, 1.0)])
    keep = pd.Series([False, True, True])
    result = PerPromptCap(max_per_prompt=1).apply(samples, keep, seed=0)
    assert result.keep.tolist()[0] is False and sum(result.keep) == 1
    assert result.reason[0] == "not_considered"


def test_per_prompt_cap_rejects_bad_options():
    with pytest.raises(ValueError, match="max_per_prompt"):
        PerPromptCap(max_per_prompt=0)
    samples = table([("a", 0, 1.0)])
    with pytest.raises(KeyError, match="nope"):
        PerPromptCap(by="nope").apply(samples, pd.Series(True, index=samples.index), seed=0)


def test_pipeline_keeps_every_row_marked_and_counts_per_filter():
    samples = table([("a", 0, 1.0), ("a", 1, 1.0), ("a", 2, 0.0), ("b", 0, 0.0), ("c", 0, 1.0)])
    out, stats = run_pipeline(samples, [("keep_correct", KeepCorrect()), ("cap", PerPromptCap(1))], seed=0)
    assert len(out) == 5, "dropped samples stay in the table"
    assert out["kept"].tolist() == [True, False, False, False, True] or out["kept"].tolist() == [
        False, True, False, False, True]
    assert out["keep_correct__keep"].tolist() == [True, True, False, False, True]
    assert set(out.columns) >= {"cap__score", "cap__keep", "cap__reason", "keep_correct__reason"}
    first, second = stats
    assert (first.incoming, first.kept, first.dropped_by_reason, first.prompts_with_kept) == (
        5, 3, {"below_threshold": 2}, 2)
    assert (second.incoming, second.kept, second.dropped_by_reason, second.prompts_with_kept) == (
        3, 2, {"over_cap": 1}, 2)
    assert second.as_metrics()["filter/cap/dropped/over_cap"] == 1


# ---------------------------------------------------------------- threshold schedule


def scheduled(rows):
    return pd.DataFrame(rows, columns=["prompt_id", "iteration", "reward"])


def test_keep_correct_threshold_schedule_follows_the_iteration():
    samples = scheduled([("a", 1, 0.0), ("a", 2, 0.75), ("a", 2, 0.6), ("b", 3, 0.85), ("b", 3, 0.95), ("b", 7, 0.9),
                         ("c", 1, None)])
    flt = KeepCorrect(threshold=[0.0, 0.7, 0.9])
    result = flt.apply(samples, pd.Series(True, index=samples.index), seed=0)
    assert result.keep.tolist() == [True, True, False, False, True, True, False]
    assert result.reason.tolist() == [
        "correct", "correct", "below_threshold", "below_threshold", "correct", "correct", "unjudged"]
    assert [flt.threshold_at(k) for k in (0, 1, 2, 3, 4, 10)] == [0.0, 0.0, 0.7, 0.9, 0.9, 0.9]
    strict = KeepCorrect(threshold=[0.0, 0.7, 0.9], strict=True)  # ReST: 1[R > tau]
    assert strict.apply(samples, pd.Series(True, index=samples.index), seed=0).keep.tolist() == [
        False, True, False, False, True, False, False]


def test_keep_correct_schedule_needs_the_iteration_and_numbers():
    with pytest.raises(KeyError, match="iteration"):
        KeepCorrect(threshold=[0.5, 0.9]).apply(table([("a", 0, 1.0)]), pd.Series([True]), seed=0)
    assert KeepCorrect(threshold=[0.5]).apply(table([("a", 0, 1.0)]), pd.Series([True]), seed=0).keep.tolist() == [True]
    for bad in ([], ["high"], True, float("nan"), [0.5, None]):
        with pytest.raises(ValueError, match="threshold"):
            KeepCorrect(threshold=bad)
    assert KeepCorrect(threshold=[0, 1]).threshold == (0.0, 1.0)


# ---------------------------------------------------------------- dedup


def texts(rows):
    return pd.DataFrame(rows, columns=["prompt_id", "completion", "reward"])


def test_dedup_keeps_the_best_copy_of_each_normalised_text_per_prompt():
    samples = texts([
        ("a", "The answer is 4", 0.5),
        ("a", "the  answer is 4 ", 1.0),
        ("a", "THE ANSWER\n\tIS 4", 0.8),
        ("a", "The answer is 5", 0.0),
        ("b", "The answer is 4", 1.0),  # same text, other prompt: not a duplicate
        ("b", "the answer is 4", 1.0),  # a duplicate, but already dropped by an earlier filter
        ("b", None, 0.0),
    ])
    keep = pd.Series([True, True, True, True, True, False, True])
    result = Dedup().apply(samples, keep, seed=0)
    assert result.keep.tolist() == [False, True, False, True, True, False, True]
    assert result.reason.tolist() == [
        "duplicate", "unique", "duplicate", "unique", "unique", "not_considered", "unique"]
    assert result.score.fillna(-1).tolist() == [2.0, 0.0, 1.0, 0.0, 0.0, -1.0, 0.0]


def test_dedup_breaks_ties_by_seed():
    ties = texts([("a", f"{' ' * i}same{' ' * i}", 1.0) for i in range(8)])
    picks = {seed: tuple(Dedup().apply(ties, pd.Series(True, index=ties.index), seed).keep) for seed in range(6)}
    assert all(sum(p) == 1 for p in picks.values())
    assert len(set(picks.values())) > 1, "ties must be broken by the seed, not by row order"
    assert tuple(Dedup().apply(ties, pd.Series(True, index=ties.index), 3).keep) == picks[3]


def test_normalise_text():
    assert normalise_text("  The\tAnswer\n\nIS  4 ") == "the answer is 4"
    assert normalise_text("Straße") == normalise_text("STRASSE")  # case folding, not just lower()
    assert normalise_text(None) == ""


# ---------------------------------------------------------------- drop_truncated and difficulty_band


def test_drop_truncated():
    samples = pd.DataFrame({"prompt_id": ["a", "a", "b"], "truncated": [False, True, False]})
    result = DropTruncated().apply(samples, pd.Series([True, False, True]), seed=0)
    assert result.keep.tolist() == [True, False, True]
    assert result.reason.tolist() == ["complete", "truncated", "complete"]
    assert result.score.isna().all()
    with pytest.raises(KeyError, match="truncated"):
        DropTruncated().apply(samples.drop(columns="truncated"), pd.Series([True] * 3), seed=0)


def test_keep_where_keeps_the_listed_values_of_a_column():
    samples = pd.DataFrame({"prompt_id": ["a", "a", "b"], "policy": ["original", "iter_0", "original"]})
    result = KeepWhere("policy", ["original"]).apply(samples, pd.Series([True, True, False]), seed=0)
    assert result.keep.tolist() == [True, False, True]
    assert result.reason.tolist() == ["listed", "policy_not_listed", "listed"]
    with pytest.raises(KeyError, match="keep_where: column 'origin' is not in the samples; columns: prompt_id, policy"):
        KeepWhere("origin", ["original"]).apply(samples, pd.Series([True] * 3), seed=0)
    for bad in ("original", []):
        with pytest.raises(ValueError, match="keep_where: values must be a non-empty list"):
            KeepWhere("policy", bad)


BAND_ROWS = (
    [("a", True), ("a", False), ("a", False), ("a", False)]  # 0.25: in the band
    + [("b", True)] * 4  # 1.0: too easy
    + [("c", False)] * 4  # 0.0: too hard
    + [("d", True), ("d", False), ("d", False), ("d", False), ("d", False)]  # 0.2: the edge is inside
    + [("e", True)] * 4 + [("e", False)]  # 0.8: the edge is inside
    + [("f", True), ("f", None), ("f", None)]  # unjudged rows do not count: 1/1, too easy
    + [("g", None), ("g", None)]  # nothing judged
)


def test_difficulty_band_uses_the_accuracy_over_all_rows_of_a_prompt():
    samples = pd.DataFrame(BAND_ROWS, columns=["prompt_id", "correct"])
    keep = pd.Series(samples["correct"].eq(True))  # earlier filters kept only correct rows: no matter
    result = DifficultyBand(lo=0.2, hi=0.8).apply(samples, keep, seed=0)
    per_prompt = {p: (r, s) for p, r, s in zip(samples["prompt_id"], result.reason, result.score.round(4))}
    assert {p: r for p, (r, _) in per_prompt.items()} == {
        "a": "in_band", "b": "too_easy", "c": "too_hard", "d": "in_band", "e": "in_band", "f": "too_easy",
        "g": "unjudged"}
    assert {p: s for p, (_, s) in per_prompt.items() if p != "g"} == {
        "a": 0.25, "b": 1.0, "c": 0.0, "d": 0.2, "e": 0.8, "f": 1.0}
    assert result.keep.tolist() == [r == "in_band" for r in result.reason]
    assert result.keep.sum() == 4 + 5 + 5


def test_difficulty_band_rejects_a_bad_band():
    for lo, hi in ((0.8, 0.2), (-0.1, 0.5), (0.5, 1.5)):
        with pytest.raises(ValueError, match="lo <= hi"):
            DifficultyBand(lo=lo, hi=hi)


# ---------------------------------------------------------------- the whole pipeline


def test_a_prime_style_pipeline_records_every_verdict_and_counts():
    rows = [  # prompt, index, completion, truncated, correct
        ("a", 0, "x = 1. The answer is 1", False, True),
        ("a", 1, "x = 1.  the answer is 1", False, True),  # a copy of row 0
        ("a", 2, "The answer is 2", False, False),
        ("a", 3, "The answer is 1 and then", True, True),  # cut off by the length limit
        ("b", 0, "The answer is 7", False, True),
        ("b", 1, "The answer is 7!", False, True),
        ("b", 2, "The answer is 7?", False, True),
        ("b", 3, "The answer is 7.", False, True),  # all correct: too easy
        ("c", 0, "The answer is 3", False, False),
        ("c", 1, "The answer is 4", False, True),
    ]
    samples = pd.DataFrame(rows, columns=["prompt_id", "sample_index", "completion", "truncated", "correct"])
    samples["reward"] = samples["correct"].astype(float)
    samples["iteration"] = 2
    pipeline = [
        ("drop_truncated", DropTruncated()),
        ("difficulty_band", DifficultyBand()),
        ("keep_correct", KeepCorrect(threshold=[0.0, 1.0])),
        ("dedup", Dedup()),
        ("cap", PerPromptCap(max_per_prompt=1)),
    ]
    out, stats = run_pipeline(samples, pipeline, seed=0)
    assert out["kept"].tolist() == [True, False, False, False, False, False, False, False, False, True]
    assert out["difficulty_band__reason"].tolist() == ["in_band"] * 4 + ["too_easy"] * 4 + ["in_band"] * 2
    assert out["dedup__reason"].tolist() == (
        ["unique", "duplicate", "not_considered", "not_considered"] + ["not_considered"] * 5 + ["unique"])
    counts = {s.name: (s.incoming, s.kept, s.dropped_by_reason, s.prompts_with_kept) for s in stats}
    assert counts == {
        "drop_truncated": (10, 9, {"truncated": 1}, 3),
        "difficulty_band": (9, 5, {"too_easy": 4}, 2),
        "keep_correct": (5, 3, {"below_threshold": 2}, 2),
        "dedup": (3, 2, {"duplicate": 1}, 2),
        "cap": (2, 2, {}, 2),
    }
    assert stats[1].as_metrics() == {
        "filter/difficulty_band/in": 9, "filter/difficulty_band/kept": 5,
        "filter/difficulty_band/prompts_with_kept": 2, "filter/difficulty_band/dropped/too_easy": 4}


class ForgetfulFilter:
    """Returns verdicts for only some rows: the pipeline must refuse it, not drop the rest silently."""

    def apply(self, samples, keep, seed):
        part = samples.index[:1]
        return FilterResult(pd.Series(1.0, index=part), pd.Series(True, index=part), pd.Series("ok", index=part))


def test_pipeline_refuses_a_verdict_that_misses_rows():
    with pytest.raises(ValueError, match="forgetful"):
        run_pipeline(table([("a", 0, 1.0), ("a", 1, 1.0)]), [("forgetful", ForgetfulFilter())], seed=0)
