"""Which samples get step values, their distinct prefixes and the cost stated up front, and the labels
built from rollout verdicts; the built-in model's tokenizer, no engine."""
from __future__ import annotations

import pandas as pd
import pytest

from rest.pav.phase import PavError, label, pav_iteration, with_values
from rest.pav.plan import labelled_samples, make_plan
from rest.prm.steps import StepSplitter
from rest.recipe.schema import PavConfig, validate_recipe
from rest.run.rundir import RunDir, atomic_write_parquet


@pytest.fixture(scope="module")
def tok(builtin_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model)


def judged(tok) -> pd.DataFrame:
    texts = [("p", 0, "12 * 7 = 84\n#### 84", True), ("p", 1, "12 * 7 = 84\n#### 85", False),
             ("p", 2, "12 + 7 = 19\n19 * 4 = 76\n#### 76", True), ("q", 0, "3 - 1 = 2\n#### 2", True),
             ("q", 1, "", False), ("q", 2, "#### 9", None)]
    return pd.DataFrame([{"prompt_id": p, "sample_index": i, "question": f"question {p}", "gold": "84",
                          "completion": t, "completion_token_ids": tok(t, add_special_tokens=False)["input_ids"],
                          "correct": c} for p, i, t, c in texts])


def test_only_judged_samples_with_a_completion_are_labelled_the_correct_ones_by_default(tok):
    frame = judged(tok)
    assert labelled_samples(frame, PavConfig(), seed=0)[["prompt_id", "sample_index"]].values.tolist() == [
        ["p", 0], ["p", 2], ["q", 0]]
    assert len(labelled_samples(frame, PavConfig(samples="all"), seed=0)) == 4  # not the empty, not the unjudged
    capped = labelled_samples(frame, PavConfig(samples="all", max_per_prompt=1), seed=3)
    assert capped["prompt_id"].tolist() == ["p", "q"]
    assert capped.equals(labelled_samples(frame, PavConfig(samples="all", max_per_prompt=1), seed=3))


def test_equal_prefixes_of_a_prompt_are_rolled_out_once(tok):
    chosen = labelled_samples(judged(tok), PavConfig(samples="all"), seed=0)
    plan = make_plan(chosen, tok, StepSplitter("\n"), rollouts=4, max_tokens=32)
    texts = [(p.prompt_id, p.text) for p in plan.prefixes]
    assert texts == [("p", ""), ("p", "12 * 7 = 84\n"), ("p", "12 + 7 = 19\n"), ("p", "12 + 7 = 19\n19 * 4 = 76\n"),
                     ("q", ""), ("q", "3 - 1 = 2\n")]
    assert list(plan.sample_prefixes.values()) == [[0, 1], [0, 1], [0, 2, 3], [4, 5]]
    assert (plan.samples, plan.steps, plan.planned_rollouts, plan.max_new_tokens) == (4, 9, 24, 768)
    assert plan.describe(2) == ("pav iter 2: 4 samples, 9 steps -> 6 distinct prefixes x 4 rollouts = 24 rollouts, "
                                "at most 768 new tokens")
    # A prefix's tokens are the sample's own first tokens, and their text is what they decode to.
    second = plan.prefixes[1]
    assert tok.decode(list(second.completion_ids)) == second.text


def test_labels_come_from_the_verdicts_of_each_prefixs_rollouts(tok):
    chosen = labelled_samples(judged(tok), PavConfig(samples="all"), seed=0)
    plan = make_plan(chosen, tok, StepSplitter("\n"), rollouts=2, max_tokens=32)
    verdicts = {0: [True, False], 1: [True, True], 2: [False, False], 3: [True, False], 4: [False, False],
                5: [True, True]}
    rollouts = pd.DataFrame([{"prefix": p, "correct": ok} for p, oks in verdicts.items() for ok in oks])
    values = label(plan, chosen, rollouts, best_of=1).set_index(["prompt_id", "sample_index"])
    assert list(values.loc[("p", 0), "pav__q"]) == [0.5, 1.0, 1.0]
    assert list(values.loc[("p", 1), "pav__q"]) == [0.5, 1.0, 0.0]  # same prefixes, wrong in its last step
    assert list(values.loc[("p", 1), "pav__advantage"]) == [0.5, -1.0]
    assert list(values.loc[("p", 2), "pav__advantage"]) == [-0.5, 0.5, 0.5]
    assert list(values.loc[("p", 2), "pav__rollouts"]) == [2, 2, 2]
    assert list(values.loc[("p", 2), "pav__verified"]) == [1, 0, 1]
    assert values.loc[("p", 2), "pav__min_advantage"] == -0.5
    assert values.loc[("q", 0), "pav__steps"] == 2


def test_selection_sees_the_values_joined_on_the_sample_key(tok, tmp_path):
    run = RunDir(tmp_path)
    frame = judged(tok)
    chosen = labelled_samples(frame, PavConfig(), seed=0)
    plan = make_plan(chosen, tok, StepSplitter("\n"), rollouts=1, max_tokens=8)
    rollouts = pd.DataFrame({"prefix": range(len(plan.prefixes)), "correct": True})
    atomic_write_parquet(label(plan, chosen, rollouts, best_of=1), run.pav_values(1))
    joined = with_values(run, 1, frame)
    assert len(joined) == len(frame)
    assert joined["pav__steps"].fillna(0).astype(int).tolist() == [2, 0, 3, 2, 0, 0]  # the correct ones
    assert list(joined.loc[2, "pav__advantage"]) == [0.0, 0.0, 0.0]
    key = ["prompt_id", "sample_index", "completion"]
    assert joined[key].equals(frame[key])


def test_a_plan_over_the_rollout_cap_is_refused_before_any_engine_starts(tok, tmp_path):
    recipe = validate_recipe({"name": "cap", "data": {"source": "synthetic", "train_size": 4, "eval_size": 2},
                              "pav": {"rollouts": 4, "max_rollouts": 10, "step_delimiter": "\n"}})
    run = RunDir(tmp_path)
    atomic_write_parquet(judged(tok), run.verified(1))
    with pytest.raises(PavError) as err:  # 3 correct samples: 6 distinct prefixes x 4 = 24 rollouts
        pav_iteration(recipe, run, 1)
    assert str(err.value) == ("pav iter 1: 3 samples, 7 steps -> 6 distinct prefixes x 4 rollouts = 24 rollouts, at "
                              "most 6,144 new tokens: more than pav.max_rollouts (10); raise it, or label fewer "
                              "samples (pav.samples, pav.max_per_prompt) or roll out less (pav.rollouts)")
    assert not run.pav_values(1).exists() and not run.stats(1, "pav").exists()
