"""Prompt data: the built-in generator, GSM8K-style files, field mapping and the held-out split."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from rest.data.problems import DataError, gsm8k_gold, load_splits, question_id
from rest.data.synthetic import generate_problems
from rest.recipe.schema import RecipeError, validate_recipe


def test_generator_is_deterministic_and_difficulty_changes_problems():
    a = generate_problems(20, "easy", seed=3)
    assert a == generate_problems(20, "easy", seed=3)
    assert a != generate_problems(20, "easy", seed=4)
    assert len({p["question"] for p in a}) == 20
    hard = generate_problems(20, "hard", seed=3)
    for problem in a + hard + generate_problems(20, "medium", seed=3):
        assert problem["answer"].rsplit("####", 1)[1].strip().lstrip("-").isdigit()
    assert all(len(p["answer"].splitlines()) == 4 for p in hard), "hard problems take three steps"


def test_generated_answers_are_right():
    for p in generate_problems(50, "medium", seed=0):
        steps = p["answer"].splitlines()[:-1]
        for step in steps:
            left, right = step.split("=")
            assert eval(left) == int(right)  # the worked steps are real arithmetic


def test_gsm8k_gold_takes_the_text_after_the_last_marker():
    assert gsm8k_gold("He has 3 + 4 = 7 apples.\n#### 7") == "7"
    assert gsm8k_gold("#### 1,200 ") == "1,200"
    assert gsm8k_gold("no marker") == "no marker"


def test_synthetic_split_is_disjoint_and_sized():
    recipe = validate_recipe({"name": "x", "data": {"train_size": 30, "eval_size": 10}})
    splits = load_splits(recipe)
    assert (len(splits.train), len(splits.eval)) == (30, 10)
    assert not set(splits.train["prompt_id"]) & set(splits.eval["prompt_id"])
    assert load_splits(recipe).eval.equals(splits.eval)


def test_file_source_with_custom_fields(tmp_path):
    rows = [{"q": f"What is {i} + 1?", "sol": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(12)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    recipe = validate_recipe({"name": "x", "data": {
        "source": "file", "path": str(path), "question_field": "q", "answer_field": "sol", "eval_size": 4}})
    splits = load_splits(recipe)
    assert (len(splits.train), len(splits.eval)) == (8, 4)
    row = splits.train.iloc[0]
    assert row["gold"] == str(int(row["question"].split()[2]) + 1)
    assert row["prompt_id"] == question_id(row["question"])
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    from_parquet = load_splits(recipe.model_copy(update={"data": recipe.data.model_copy(
        update={"path": str(tmp_path / "d.parquet")})}))
    assert from_parquet.eval.equals(splits.eval)


def test_missing_field_and_missing_file_name_the_problem(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "a", "answer": "#### 1"}) + "\n")
    recipe = validate_recipe({"name": "x", "data": {"source": "file", "path": str(path), "answer_field": "sol"}})
    with pytest.raises(DataError, match="no field 'sol'; fields present: question, answer"):
        load_splits(recipe)
    missing = validate_recipe({"name": "x", "data": {"source": "file", "path": str(tmp_path / "none.jsonl")}})
    with pytest.raises(DataError, match="not found"):
        load_splits(missing)
    too_few = validate_recipe({"name": "x", "data": {"source": "file", "path": str(path), "eval_size": 5}})
    with pytest.raises(DataError, match="1 distinct problems, need at least 6"):
        load_splits(too_few)


def test_hub_source_goes_through_datasets_load_dataset(tmp_path):
    """A hub id is read with datasets.load_dataset; a local dataset folder exercises the same call offline."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [{"question": f"What is {i} + 2?", "answer": f"#### {i + 2}"} for i in range(10)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    recipe = validate_recipe({"name": "x", "data": {"source": "hub", "path": str(folder), "eval_size": 3}})
    splits = load_splits(recipe)
    assert (len(splits.train), len(splits.eval)) == (7, 3)
    assert sorted(splits.train["gold"].astype(int).tolist() + splits.eval["gold"].astype(int).tolist()) == list(
        range(2, 12))


def test_humaneval_golds_are_field_mappings_the_code_verifier_accepts(shared_data):
    from rest.filters.code_verifier import CodeVerifier
    from rest.phases.sample import stored_gold

    path = shared_data / "humaneval" / "HumanEval.jsonl"
    recipe = validate_recipe({"name": "x", "verifier": {"name": "code"}, "data": {
        "source": "file", "path": str(path), "id_field": "task_id", "question_field": "prompt",
        "answer_format": "fields", "answer_fields": ["entry_point", "test", "prompt"], "eval_size": 4}})
    splits = load_splits(recipe)
    assert len(splits.train) + len(splits.eval) == 164
    row = splits.eval.iloc[0]
    assert set(row["gold"]) == {"entry_point", "test", "prompt"} and row["prompt_id"].startswith("HumanEval/")
    body = "    return None\n"  # a broken solution: every HumanEval check fails on it
    assert CodeVerifier()(body, stored_gold(row["gold"]), {}) < 1
    with pytest.raises(RecipeError, match="data.answer_fields must list"):
        validate_recipe({"name": "x", "data": {"source": "file", "path": "p", "answer_format": "fields"}})
