"""PAV-guided search at evaluation (rest/pav/heldout.search_heldout) on a fake engine and a fake head."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rest.filters.registry import build_verifier

import rest.engines.generation
import rest.pav.heldout
from rest.engines.generation import Completion
from rest.metrics import PAV_SEARCH_METRICS
from rest.pav.heldout import search_heldout
from rest.recipe.schema import PavSearchConfig, SamplingConfig, validate_recipe

# A toy problem with gold 5. Step 1 is "2+3=5" (tokens 1, 2) or "2+2=4" (tokens 3, 4); step 2 writes the
# answer its first step reached. The head values any prefix holding token 1 at 0.9, others 0.2. Best-of-N's
# samples are long (7 tokens): the wrong one comes first, and only it fits the search's 8 tokens.
RIGHT, WRONG = ("2+3=5\n", [1, 2]), ("2+2=4\n", [3, 4])


def fake_generate(llm, requests, params, lora_request=None, bar=None):
    outputs = []
    for request in requests:
        if params["stop"]:  # an expansion: the next step of the beam
            if len(request) == 1:  # the prompt alone: first steps
                steps = [(*RIGHT, True), (*WRONG, True)][:params["n"]]
            else:
                steps = [("#### 5" if 1 in request else "#### 4", [9], False)] * params["n"]
            outputs.append([Completion(i, text, ids, "stop" if at else "length", None)
                            for i, (text, ids, at) in enumerate(steps)])
        else:  # best-of-N's whole answers
            outputs.append([Completion(0, "2+2=4\n#### 4", [3, 4, 8, 8, 8, 8, 8], "stop", None),
                            Completion(1, "2+3=5\n#### 5", [1, 2, 9, 9, 9, 9, 9], "stop", None)])
    return outputs


class FakeHead:
    features_model = "fake"

    def predict(self, features):
        return np.array([0.9 if 1 in features else 0.2])


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(rest.engines.generation, "generate", fake_generate)
    monkeypatch.setattr(rest.engines.generation, "sampling_params",
                        lambda cfg, n=None, stop=None, **_: {"n": n, "stop": stop})
    monkeypatch.setattr(rest.pav.heldout.ValueHead, "load", staticmethod(lambda path: FakeHead()))
    monkeypatch.setattr(rest.pav.heldout, "load_feature_model", lambda path: None)
    # One feature row per sequence: the sequence itself, so the fake head can look for token 1.
    monkeypatch.setattr(rest.pav.heldout, "hidden_features",
                        lambda model, sequences, positions, prompt_lens: [list(s) for s in sequences])


def test_search_finds_the_right_answer_that_best_of_n_cannot_afford(fakes, tmp_path):
    problems = pd.DataFrame({"prompt_id": ["p"], "prompt_token_ids": [[0]], "gold": ["5"]})
    cfg = PavSearchConfig(width=2, expansions=2, max_steps=3, samples=2)
    table, metrics = search_heldout(None, cfg, SamplingConfig(), "\n", tmp_path, problems, build_verifier("gsm8k", {}))
    row = table.iloc[0]
    assert row["search_answer"] == "2+3=5\n#### 5" and row["search_correct"]
    assert row["search_tokens"] == 2 * 2 + 2 * 2 * 1  # round 1: 2 steps x 2 tokens; round 2: 2 beams x 2 x 1
    assert row["best_of_n_answer"] == "2+2=4\n#### 4" and not row["best_of_n_correct"]
    assert (row["best_of_n_tokens"], row["best_of_n_samples"]) == (7, 1)
    assert [metrics[m] for m in PAV_SEARCH_METRICS] == [1.0, 0.0, 1.0]
    assert metrics["pav_search_tokens_per_problem"] == 8.0


def test_search_needs_a_head_and_a_literal_delimiter():
    base = {"name": "x", "data": {"train_size": 4}}
    with pytest.raises(Exception, match="pav.search ranks with the trained head"):
        validate_recipe({**base, "pav": {"search": {}}})
    with pytest.raises(Exception, match="needs step_regex: false"):
        validate_recipe({**base, "pav": {"head": True, "step_regex": True, "step_delimiter": "Step \\\\d",
                                         "search": {}}})
    recipe = validate_recipe({**base, "pav": {"head": True, "search": {"width": 2}}, "loop": {"metric": "pav_search"}})
    assert recipe.pav.search.width == 2
