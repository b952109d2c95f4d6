"""E-step checks that need no engine."""
from __future__ import annotations

import pandas as pd
import pytest

from rest.generation import EngineError, engine_options
from rest.recipe import EngineConfig, validate_recipe
from rest.sampling import SamplingError, build_prompts


def test_empty_prompt_set_is_a_clear_error():
    recipe = validate_recipe({"name": "x", "data": {"train_size": 4}})
    with pytest.raises(SamplingError, match="prompt set is empty"):
        build_prompts(recipe, pd.DataFrame(columns=["prompt_id", "question", "gold"]), "unused")


def test_engine_options_map_recipe_fields_and_refuse_shadowing():
    cfg = EngineConfig(dtype="float32", max_model_len=256, tensor_parallel_size=2, max_num_seqs=64)
    options = engine_options(cfg, "m", seed=7)
    assert options["model"] == "m" and options["seed"] == 7
    assert (options["dtype"], options["max_model_len"], options["tensor_parallel_size"], options["max_num_seqs"]) == (
        "float32", 256, 2, 64)
    with pytest.raises(EngineError, match="use the engine.\\* fields"):
        engine_options(EngineConfig(engine_kwargs={"seed": 3}), "m", seed=0)


def test_structured_gold_is_stored_as_json_that_the_code_verifier_reads_back():
    import json

    import numpy as np

    from rest.filters.code_verifier import parse_code_gold
    from rest.sampling import gold_text

    gold = {"entry_point": "add", "prompt": 'def add(a, b):\n    """Sum."""\n',
            "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    assert gold_text("72") == "72"
    assert json.loads(gold_text(gold)) == gold
    assert parse_code_gold(gold_text(gold)).entry_point == "add"
    assert json.loads(gold_text(["assert f(1) == 2", "assert f(2) == 3"])) == ["assert f(1) == 2", "assert f(2) == 3"]
    assert json.loads(gold_text(np.array(["assert f(1) == 2"]))) == ["assert f(1) == 2"]
