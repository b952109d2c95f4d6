"""M-step pieces that need no trainer: where training starts, and the examples it sees."""
from __future__ import annotations

import pandas as pd
import pytest

from rest.recipe import validate_recipe
from rest.rundir import RunDir
from rest.sampling import SamplingError
from rest.training import init_model, training_examples


def recipe(init: str):
    return validate_recipe({"name": "x", "model": "base-model-id", "data": {"train_size": 4},
                            "train": {"init": init}})


def test_rest_em_starts_from_base_and_rest_continues_the_previous_policy(tmp_path):
    run = RunDir(tmp_path)
    assert init_model(recipe("base"), run, 3) == "base-model-id"
    assert init_model(recipe("previous"), run, 1) == "base-model-id"
    with pytest.raises(SamplingError, match="iteration 2 has no trained model"):
        init_model(recipe("previous"), run, 3)
    (run.model(2)).mkdir(parents=True)
    (run.model(2) / "config.json").write_text("{}")
    assert init_model(recipe("previous"), run, 3) == str(run.model(2))


def test_examples_are_the_sampled_token_ids_with_a_completion_mask():
    kept = pd.DataFrame([
        {"prompt_token_ids": [1, 2, 3], "completion_token_ids": [7, 8, 0], "finish_reason": "stop", "truncated": False},
        {"prompt_token_ids": [1, 2], "completion_token_ids": [9, 9], "finish_reason": "stop", "truncated": False},
        {"prompt_token_ids": [1], "completion_token_ids": [5, 5, 5], "finish_reason": "length", "truncated": True},
        {"prompt_token_ids": [1] * 8, "completion_token_ids": [4, 4], "finish_reason": "stop", "truncated": False},
    ])
    examples, too_long = training_examples(kept, eos_token_id=0, max_length=8)
    assert too_long == 1
    assert examples[0] == {"input_ids": [1, 2, 3, 7, 8, 0], "completion_mask": [0, 0, 0, 1, 1, 1]}
    assert examples[1] == {"input_ids": [1, 2, 9, 9, 0], "completion_mask": [0, 0, 1, 1, 1]}, "EOS appended"
    assert examples[2] == {"input_ids": [1, 5, 5, 5], "completion_mask": [0, 1, 1, 1]}, "no EOS after truncation"
