"""The PRM's training data: usable rows, the seeded class-balanced cap, DPO pairs and skip reasons."""
from __future__ import annotations

import pandas as pd
import pytest

from rest.prm.trainset import balanced_cap, build_train_set, dpo_pairs, usable_rows


def verified(rows: list[tuple[str, bool | None, int]]) -> pd.DataFrame:
    """(prompt_id, correct, completion length) -> a verified frame with 3-token prompts."""
    return pd.DataFrame([
        {"prompt_id": pid, "prompt_token_ids": [5, 6, 7], "completion_token_ids": list(range(10, 10 + n)),
         "correct": ok}
        for pid, ok, n in rows
    ])


def labelled(correct: int, incorrect: int, prompts: int = 1) -> pd.DataFrame:
    rows = [(f"p{i % prompts}", True, 2) for i in range(correct)] + [(f"p{i % prompts}", False, 2)
                                                                     for i in range(incorrect)]
    return usable_rows(verified(rows), 100)[0]


def test_usable_rows_leaves_out_unjudged_empty_and_too_long_and_counts_them():
    frame, counts = usable_rows(verified([("a", True, 2), ("a", None, 2), ("a", False, 0), ("b", False, 8),
                                          ("b", False, 7)]), max_length=10)
    assert counts == {"rows": 5, "unjudged": 1, "empty_completion": 1, "too_long": 1, "usable": 2}
    assert frame["input_ids"].tolist() == [[5, 6, 7, 10, 11], [5, 6, 7, 10, 11, 12, 13, 14, 15, 16]]
    assert frame["prompt_len"].tolist() == [3, 3]
    assert frame["label"].tolist() == [1.0, 0.0]
    assert frame["prompt_id"].tolist() == ["a", "b"]


def test_cap_takes_half_from_each_class_when_both_have_enough():
    capped = balanced_cap(labelled(30, 50), max_samples=20, seed=1)
    assert len(capped) == 20
    assert capped["label"].sum() == 10


def test_cap_keeps_the_smaller_class_whole_and_fills_with_the_larger():
    capped = balanced_cap(labelled(3, 50), max_samples=20, seed=1)
    assert (len(capped), capped["label"].sum()) == (20, 3)
    capped = balanced_cap(labelled(50, 4), max_samples=20, seed=1)
    assert (len(capped), capped["label"].sum()) == (20, 16)


def test_cap_is_seeded():
    frame = labelled(40, 40)
    frame["row"] = range(len(frame))
    first, again = balanced_cap(frame, 10, seed=7), balanced_cap(frame, 10, seed=7)
    other = balanced_cap(frame, 10, seed=8)
    assert first["row"].tolist() == again["row"].tolist()
    assert first["row"].tolist() != other["row"].tolist()
    assert first["row"].is_monotonic_increasing


def test_no_cap_or_a_cap_above_the_size_keeps_everything():
    frame = labelled(3, 4)
    assert len(balanced_cap(frame, None, 0)) == len(balanced_cap(frame, 7, 0)) == 7


def test_dpo_pairs_stay_within_a_prompt_and_use_every_sample():
    frame = usable_rows(verified([("a", True, 2), ("a", False, 2), ("a", False, 3), ("a", False, 4),
                                  ("b", True, 2), ("b", True, 3), ("c", False, 2)]), 100)[0]
    pairs = dpo_pairs(frame, None, seed=0)
    assert len(pairs) == 3  # prompt a: max(1 correct, 3 wrong); b all correct and c all wrong give none
    assert {w for w, _ in pairs} == {0}
    assert sorted(lo for _, lo in pairs) == [1, 2, 3]
    assert len(dpo_pairs(frame, 2, seed=0)) == 2


def test_ce_set_is_capped_and_counted():
    rows = [("a", True, 2)] * 2 + [("a", False, 2)] * 6 + [("b", True, 2)] * 3 + [("c", False, 2)] * 4
    train = build_train_set(verified(rows), "ce", max_samples=6, max_length=100, seed=0)
    assert train.skip_reason is None
    assert train.counts["samples_correct"] == 3 and train.counts["samples_incorrect"] == 3
    assert train.counts["prompts_all_correct"] == 1 and train.counts["prompts_all_wrong"] == 1
    assert train.counts["prompts_without_pairs"] == 2 and train.counts["pairs"] == 0


def test_dpo_set_keeps_only_paired_samples_and_renumbers_pairs():
    rows = [("a", True, 2), ("a", False, 3), ("b", True, 4), ("c", False, 5)]
    train = build_train_set(verified(rows), "dpo", max_samples=None, max_length=100, seed=0)
    assert train.pairs == [(0, 1)]
    assert train.frame["input_ids"].map(len).tolist() == [5, 6]
    assert (train.counts["pairs"], train.counts["prompts_without_pairs"]) == (1, 2)


@pytest.mark.parametrize("loss, rows, reason", [
    ("ce", [("a", True, 2), ("b", True, 2)], "all 2 usable samples are correct: CE needs both classes"),
    ("ce", [("a", False, 2)], "all 1 usable samples are incorrect: CE needs both classes"),
    ("ce", [("a", None, 2), ("a", None, 3)],
     "no usable sample among 2 (2 unjudged, 0 with an empty completion, 0 over prm.max_length)"),
    ("dpo", [("a", True, 2), ("b", False, 2)],
     "no prompt has both a correct and an incorrect sample (1 all correct, 1 all wrong): DPO needs pairs"),
])
def test_nothing_usable_gives_a_skip_reason(loss, rows, reason):
    assert build_train_set(verified(rows), loss, max_samples=8, max_length=100, seed=0).skip_reason == reason
