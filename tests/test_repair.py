"""Repair of failed samples (rest/phases/repair.py) on literal tables: eligibility, prompts, the leakage rule, rows."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from rest.data.grown import judged_set, with_origin
from rest.engines.generation import Completion
from rest.filters.selection import PerPromptCap
from rest.phases.repair import (
    RepairError,
    copies_hint,
    eligible,
    feedback,
    in_tokens_of,
    reject_copies,
    repair_counts,
    repair_questions,
    repaired_rows,
)
from rest.phases.train import training_examples
from rest.recipe.schema import RepairConfig, validate_recipe
from rest.run.rundir import RunDir


def verified_rows() -> pd.DataFrame:
    """Prompt a: 0 of 3 right; b: 1 of 3 right; c: 3 of 3 right."""
    rows = []
    for prompt, verdicts in {"a": [False, False, None], "b": [False, True, False], "c": [True, True, True]}.items():
        for i, ok in enumerate(verdicts):
            rows.append({"prompt_id": prompt, "sample_index": i, "iteration": 1, "question": f"Q {prompt}?",
                         "gold": "504", "correct": ok, "answer": None if ok is None else ("504" if ok else "12"),
                         "verify__reason": "no_answer" if ok is None else ("correct" if ok else "wrong"),
                         "completion": f"attempt {prompt}{i}", "policy": "base"})
    return pd.DataFrame(rows)


def test_eligible_prompts_have_at_most_max_correct_right_samples_wrong_ones_first():
    assert sorted(eligible(verified_rows(), 0)["prompt_id"].unique()) == ["a"]
    rows = eligible(verified_rows(), 1)
    assert sorted(rows["prompt_id"].unique()) == ["a", "b"]
    assert rows[rows["prompt_id"] == "b"]["correct"].tolist() == [False, False, True]
    originals = verified_rows().assign(origin=["sampled"] * 8 + ["original"])  # a reference does not count
    assert sorted(eligible(originals, 0)["prompt_id"].unique()) == ["a"]


def test_rationalize_asks_each_eligible_prompt_once_with_the_gold_as_hint():
    cfg = RepairConfig(method="rationalize")
    requests = repair_questions(cfg, eligible(verified_rows(), 1))
    assert requests["repair_question"].tolist() == ["Q a? (Hint: the answer is 504.)", "Q b? (Hint: the answer is 504.)"]
    assert requests["repairs"].isna().all()
    code = eligible(verified_rows(), 0).assign(gold='{"entry_point": "f", "test": "..."}')
    with pytest.raises(RepairError, match="gold of prompt a is not a plain answer; use method: reflect"):
        repair_questions(cfg, code)


def test_reflect_shows_failed_attempts_with_the_verifiers_feedback():
    cfg = RepairConfig(method="reflect", attempts=2)
    requests = repair_questions(cfg, eligible(verified_rows(), 1))
    assert requests["repairs"].tolist() == ["1/a/0", "1/a/1", "1/b/0", "1/b/2"]
    assert requests["repair_question"].iloc[0] == (
        "Q a?\n\nA wrong solution:\nattempt a0\nThe final answer 12 is wrong.\nWrite a correct solution.")
    assert feedback(pd.Series({"answer": None, "verify__reason": "no_answer"})) == "It was rejected: no_answer."


def test_reflection_on_code_quotes_the_failing_test_and_its_error():
    from rest.filters.code_verifier import CodeVerifier
    from rest.phases.verify import judge_frame

    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 5"]
    sample = {"prompt_id": "p", "sample_index": 0, "iteration": 1, "question": "Write add(a, b).", "policy": "base",
              "completion": "def add(a, b):\n    return a + b\n", "gold": json.dumps(tests)}
    judged, _ = judge_frame(CodeVerifier(time_s=5.0), pd.DataFrame([sample]), workers=1)
    assert judged["verify__detail"].tolist() == ["this test failed with AssertionError:\nassert add(-1, 1) == 5"]
    question = repair_questions(RepairConfig(method="reflect"), eligible(judged, 0))["repair_question"].iloc[0]
    assert "It is wrong: this test failed with AssertionError:\nassert add(-1, 1) == 5" in question


@pytest.mark.parametrize("completion, reason", [
    ("56 * 9 = 504\n#### 504", None),
    ("He has 56 books on each of 9 shelves, so 56 * 9 = 504.\n#### 504", None),
    ("#### 504", "answer_without_working"),
    ("So it is 504.\n#### 504", "answer_without_working"),
    ("56 * 9 = 504. The answer is 504.\n#### 504", "quotes_hint"),
    ("504 = 504\n#### 504", "answer_without_working"),
    ("Using the hint, 56 * 9 = 504\n#### 504", "quotes_hint"),
    ("(the answer is 504.) 56 * 9 = 504\n#### 504", "quotes_hint"),
])
def test_a_rationalisation_must_work_the_answer_out(completion, reason):
    assert copies_hint(completion, "504", "{question} (Hint: the answer is {answer}.)") == reason


def repair_outputs() -> tuple[pd.DataFrame, list[str], list, pd.DataFrame]:
    cfg = RepairConfig(method="rationalize", samples=2)
    requests = repair_questions(cfg, eligible(verified_rows(), 0))
    shown = [f"Q: {q}\nA:" for q in requests["repair_question"]]
    outputs = [[Completion(0, " 56 * 9 = 504\n#### 504", [5, 6, 7], "stop", None),
                Completion(1, " #### 504", [8], "stop", None)]]
    training = pd.DataFrame({"prompt_id": ["a"], "question": ["Q a?"], "prompt_text": ["Q: Q a?\nA:"],
                             "prompt_token_ids": [[1, 2, 3]], "gold": ["504"]}).set_index("prompt_id", drop=False)
    return requests, shown, outputs, training


def test_repaired_rows_train_on_the_plain_prompt_and_keep_their_provenance():
    requests, shown, outputs, training = repair_outputs()
    rows = repaired_rows(requests, shown, outputs, training, iteration=1, policy="base",
                         cfg=RepairConfig(method="rationalize", samples=2), first_index=3)
    assert rows["origin"].tolist() == ["rationalized"] * 2
    assert rows["sample_index"].tolist() == [3, 4]  # after the policy's own 3 samples of the prompt
    assert rows["prompt_text"].tolist() == ["Q: Q a?\nA:"] * 2 and rows["prompt_token_ids"].tolist() == [[1, 2, 3]] * 2
    assert rows["repair_prompt"].tolist() == ["Q: Q a? (Hint: the answer is 504.)\nA:"] * 2
    judged = rows.assign(correct=True, reward=1.0, verify__reason="correct", answer="504")
    checked = reject_copies(judged, RepairConfig(method="rationalize"))
    assert checked["correct"].tolist() == [True, False]
    assert repair_counts(checked) == {"attempts": 2, "verified": 1, "prompts_repaired": 1, "rejected_copies": 1,
                                      "generated_tokens": 4}
    assert repair_counts(pd.DataFrame()) == dict.fromkeys(repair_counts(checked), 0)
    assert checked["verify__reason"].tolist() == ["correct", "answer_without_working"]
    examples, _ = training_examples(checked[checked["correct"]], eos_token_id=0, max_length=64)
    assert examples[0]["input_ids"] == [1, 2, 3, 5, 6, 7, 0]  # plain prompt + repair + EOS, nothing else


def test_the_judged_set_adds_verified_repairs_only_with_a_repair_section(tmp_path):
    run = RunDir(tmp_path)
    verified = verified_rows().drop(columns="question")
    run.verified(1).parent.mkdir(parents=True)
    verified.to_parquet(run.verified(1))
    repaired = verified.head(2).assign(origin="rationalized", sample_index=[3, 4])
    run.repaired(1).parent.mkdir(parents=True)
    repaired.to_parquet(run.repaired(1))
    base = {"name": "x", "data": {"train_size": 4}}
    assert judged_set(validate_recipe(base), run, 1)["origin"].tolist() == ["sampled"] * 9
    both = judged_set(validate_recipe({**base, "repair": {}}), run, 1)
    assert both["origin"].value_counts().to_dict() == {"sampled": 9, "rationalized": 2}
    assert with_origin(verified.assign(policy="original"))["origin"].eq("original").all()


def test_repair_templates_must_name_their_fields():
    with pytest.raises(ValueError, match="repair.hint_template must contain {answer}"):
        RepairConfig(hint_template="{question} (think hard)")
    with pytest.raises(ValueError, match="repair.reflect_template must contain {attempt}"):
        RepairConfig(reflect_template="{question}")


def test_per_prompt_cap_can_limit_repaired_rows_apart_from_sampled_ones():
    samples = pd.DataFrame({"prompt_id": ["a"] * 5, "reward": [1.0] * 5,
                            "origin": ["sampled", "sampled", "rationalized", "rationalized", "rationalized"]})
    keep = pd.Series([True] * 5)
    result = PerPromptCap(max_per_prompt=1, origins=["rationalized"]).apply(samples, keep, seed=0)
    assert result.keep.tolist()[:2] == [True, True] and sum(result.keep.tolist()[2:]) == 1
    assert result.reason.tolist()[:2] == ["not_capped", "not_capped"]
    with pytest.raises(KeyError, match="needs the samples' 'origin' column"):
        PerPromptCap(origins=["reflected"]).apply(samples.drop(columns="origin"), keep, seed=0)
    with pytest.raises(ValueError, match="origins must be a non-empty list"):
        PerPromptCap(origins="rationalized")


def test_a_repair_by_another_model_is_trained_in_the_policys_tokens():
    frame = pd.DataFrame({"completion": [" 56 * 9 = 504"], "completion_token_ids": [[901, 902]], "completion_tokens": [2]})
    words = in_tokens_of(lambda text, add_special_tokens=False: {"input_ids": [len(w) for w in text.split()]}, frame)
    assert words["completion_token_ids"].tolist() == [[2, 1, 1, 1, 3]] and words["completion_tokens"].tolist() == [5]
