"""ReST's grown set: the samples plus the dataset's reference solutions (loop.mix_original)."""
from __future__ import annotations

import pandas as pd
import pytest
from rest.filters.selection import DifficultyBand

from rest.data.grown import ORIGINAL_INDEX, ORIGINAL_POLICY, is_original, original_rows
from rest.data.problems import DataError, load_splits, to_problems
from rest.recipe.schema import DataConfig, RecipeError, validate_recipe


class CharTokenizer:
    """One token per character: enough to check which text was tokenised and that no special token was added."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}


def samples() -> pd.DataFrame:
    rows = []
    for prompt_id, question in (("a", "2+2?"), ("b", "3+3?")):
        for index in range(2):
            rows.append({"prompt_id": prompt_id, "sample_index": index, "iteration": 1, "policy": "/m/base",
                         "question": question, "prompt_text": f"<user>{question}", "prompt_token_ids": [5, 6],
                         "completion_token_ids": [7], "completion": "x", "finish_reason": "length",
                         "truncated": True, "logprobs": [-0.5], "completion_tokens": 1, "gold": "4"})
    return pd.DataFrame(rows)


def test_one_reference_row_per_sampled_prompt_with_the_sampled_prompt():
    problems = pd.DataFrame({"prompt_id": ["a", "b", "c"], "question": ["2+2?", "3+3?", "unused"],
                             "gold": ["4", "6", "1"], "reference": ["2+2=4\n#### 4", "#### 6", "#### 1"]})
    rows = original_rows(samples(), problems, CharTokenizer())
    assert rows["prompt_id"].tolist() == ["a", "b"]
    assert rows["completion"].tolist() == ["2+2=4\n#### 4", "#### 6"]
    assert rows["completion_token_ids"].tolist() == [[ord(c) for c in "2+2=4\n#### 4"], [ord(c) for c in "#### 6"]]
    assert rows["completion_tokens"].tolist() == [12, 6]
    assert rows["prompt_text"].tolist() == ["<user>2+2?", "<user>3+3?"]
    assert rows["prompt_token_ids"].map(list).tolist() == [[5, 6], [5, 6]]
    assert set(rows["sample_index"]) == {ORIGINAL_INDEX} and set(rows["policy"]) == {ORIGINAL_POLICY}
    assert rows["finish_reason"].eq("stop").all() and not rows["truncated"].any()
    assert rows["logprobs"].isna().all(), "the sampler never produced these tokens"
    assert is_original(pd.concat([samples(), rows])).tolist() == [False] * 4 + [True] * 2


def test_a_sampled_prompt_missing_from_the_problems_is_an_error():
    problems = pd.DataFrame({"prompt_id": ["a"], "question": ["2+2?"], "gold": ["4"], "reference": ["#### 4"]})
    with pytest.raises(ValueError, match="1 sampled prompts are not in the training split"):
        original_rows(samples(), problems, CharTokenizer())
    with pytest.raises(ValueError, match="data.reference_template"):
        original_rows(samples(), problems.drop(columns="reference"), CharTokenizer())


def test_answer_only_problems_get_no_reference_row():
    problems = pd.DataFrame({"prompt_id": ["a", "b"], "question": ["2+2?", "3+3?"], "gold": ["4", "6"],
                             "reference": ["#### 4", None]})
    assert original_rows(samples(), problems, CharTokenizer())["prompt_id"].tolist() == ["a"]


def test_reference_size_keeps_the_references_of_the_smaller_split(tmp_path):
    path = tmp_path / "data.jsonl"
    pd.DataFrame({"question": [f"{i}+1?" for i in range(40)], "answer": [f"#### {i + 1}" for i in range(40)],
                  "solution": [f"{i}+1={i + 1}\n#### {i + 1}" for i in range(40)]}).to_json(path, orient="records",
                                                                                              lines=True)
    data = {"source": "file", "path": str(path), "eval_size": 10, "reference_template": "{solution}"}
    small = load_splits(validate_recipe({"name": "r", "data": {**data, "train_size": 8}})).train
    large = load_splits(validate_recipe({"name": "r", "data": {**data, "train_size": 24,
                                                                 "reference_size": 8}})).train
    assert large["prompt_id"].head(8).tolist() == small["prompt_id"].tolist()
    assert large["reference"].head(8).tolist() == small["reference"].tolist()
    assert large["reference"].iloc[8:].isna().all() and large["reference"].head(8).notna().all()
    with pytest.raises(RecipeError, match="data.reference_size needs data.reference_template"):
        validate_recipe({"name": "r", "data": {**data, "reference_template": None, "reference_size": 8}})


def test_reference_template_fills_record_fields():
    frame = pd.DataFrame({"prompt": ["def f():\n"], "body": ["    return {}\n"], "entry": ["f"]})
    cfg = DataConfig(source="file", path="x.jsonl", question_field="prompt", answer_format="fields",
                     answer_fields=["entry"], reference_template="```python\n{prompt}{body}```")
    assert to_problems(frame, cfg)["reference"].tolist() == ["```python\ndef f():\n    return {}\n```"]
    with pytest.raises(DataError, match="names field 'solution'; fields present: prompt, body, entry"):
        to_problems(frame, cfg.model_copy(update={"reference_template": "{solution}"}))
    with pytest.raises(DataError, match="not a valid format string"):
        to_problems(frame, cfg.model_copy(update={"reference_template": "{prompt"}))
    assert "reference" not in to_problems(frame, cfg.model_copy(update={"reference_template": None})).columns


def test_mix_original_needs_a_reference_template():
    with pytest.raises(RecipeError, match="loop.mix_original needs data.reference_template"):
        validate_recipe({"name": "r", "data": {"train_size": 4}, "loop": {"mix_original": True}})
    recipe = validate_recipe({"name": "r", "data": {"train_size": 4, "reference_template": "{answer}"},
                              "loop": {"mix_original": True}})
    assert recipe.loop.mix_original


def test_difficulty_band_measures_the_policy_not_the_references():
    frame = pd.DataFrame({"prompt_id": ["a"] * 5, "policy": ["m"] * 4 + [ORIGINAL_POLICY],
                          "correct": [True, False, False, False, True]})
    result = DifficultyBand(lo=0.2, hi=0.8).apply(frame, pd.Series(True, index=frame.index), seed=0)
    assert result.score.tolist() == [0.25] * 5  # 1 of the 4 samples; the correct reference does not count
