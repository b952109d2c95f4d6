"""E-step checks that need no engine."""
from __future__ import annotations

import pandas as pd
import pytest

from rest.engines.generation import EngineError, engine_options
from rest.phases.sample import SamplingError, build_prompts
from rest.recipe.schema import EngineConfig, validate_recipe


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
    from rest.phases.sample import stored_gold

    gold = {"entry_point": "add", "prompt": 'def add(a, b):\n    """Sum."""\n',
            "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    assert stored_gold("72") == "72"
    assert json.loads(stored_gold(gold)) == gold
    assert parse_code_gold(stored_gold(gold)).entry_point == "add"
    assert json.loads(stored_gold(["assert f(1) == 2", "assert f(2) == 3"])) == ["assert f(1) == 2", "assert f(2) == 3"]
    assert json.loads(stored_gold(np.array(["assert f(1) == 2"]))) == ["assert f(1) == 2"]


class FakeEngine:
    """vLLM's LLM surface that generate_stream uses: enqueue, then llm_engine.step() until done.

    Each step finishes one submitted request, the first of ``finish_order`` that is in flight (not
    submission order), to show shards complete out of order and rows still land in prompt order.
    Completions echo the prompt's first token. ``most_in_flight`` records the largest queue seen.
    """

    def __init__(self, finish_order: list[int], n: int = 2):
        self.finish_order, self.n, self.prompts, self.in_flight, self.most_in_flight = list(finish_order), n, [], set(), 0
        self.llm_engine = self

    def enqueue(self, prompts, params, lora_request=None, use_tqdm=False):
        first = len(self.prompts)
        self.prompts += [p["prompt_token_ids"] for p in prompts]
        self.in_flight |= set(range(first, len(self.prompts)))
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        return [f"req{i}-1a2b3c4d" for i in range(first, len(self.prompts))]  # vLLM's internal ids: '<id>-<random>'

    def has_unfinished_requests(self) -> bool:
        return bool(self.in_flight)

    def step(self):
        from types import SimpleNamespace as NS

        i = next((i for i in self.finish_order if i in self.in_flight), None)
        if i is None:  # what is in flight never finishes
            self.in_flight.clear()
            return []
        self.finish_order.remove(i)
        self.in_flight.discard(i)
        outs = [NS(text=f"s{s}", token_ids=[self.prompts[i][0], s], finish_reason="stop", logprobs=None)
                for s in range(self.n)]
        return [NS(request_id="other-unfinished", finished=False, outputs=[]), NS(request_id=f"req{i}",
                                                                                   finished=True, outputs=outs)]


def shards_of(first_tokens: list[list[int]]) -> dict[int, pd.DataFrame]:
    return {i: pd.DataFrame({"prompt_id": [f"p{t}" for t in tokens], "question": ["q"] * len(tokens),
                             "prompt_text": ["t"] * len(tokens), "prompt_token_ids": [[t, 0] for t in tokens],
                             "gold": ["1"] * len(tokens)}) for i, tokens in enumerate(first_tokens)}


def test_shards_are_yielded_when_complete_from_one_engine_batch():
    from rest.phases.sample import sample_shards

    shards = {3: shards_of([[10, 11]])[0], 5: shards_of([[20, 21, 22]])[0]}  # positions 0-1 and 2-4
    engine = FakeEngine(finish_order=[3, 1, 2, 4, 0])
    got = list(sample_shards(engine, None, shards, iteration=2, policy="m", bar=None))
    assert [i for i, _ in got] == [5, 3]  # shard 5's prompts all finish first
    assert engine.prompts == [[10, 0], [11, 0], [20, 0], [21, 0], [22, 0]]
    assert engine.most_in_flight == 5  # every prompt queued at once
    for i, frame in got:
        assert frame["prompt_id"].tolist() == [p for p in shards[i]["prompt_id"] for _ in range(2)]
        assert frame["sample_index"].tolist() == [0, 1] * len(shards[i])
        assert [ids[0] for ids in frame["completion_token_ids"]] == [t[0] for t in frame["prompt_token_ids"]]
        assert set(frame["iteration"]) == {2} and set(frame["policy"]) == {"m"}


def test_an_engine_that_stops_early_is_an_error():
    from rest.engines.generation import generate_stream

    engine = FakeEngine(finish_order=[1])  # prompt 0 never finishes
    with pytest.raises(EngineError, match="1 of 2 prompts unfinished"):
        list(generate_stream(engine, [[1], [2]], None))


def test_sampling_params_follow_the_recipe_and_its_overrides():
    from rest.engines.generation import sampling_params
    from rest.recipe.schema import SamplingConfig

    cfg = SamplingConfig(n=8, temperature=0.7, top_k=0, top_p=0.9, max_tokens=48, stop=["\nQ:"], logprobs=True)
    sampled = sampling_params(cfg, logprobs=cfg.logprobs)
    assert (sampled.n, sampled.temperature, sampled.top_k, sampled.top_p, sampled.max_tokens, sampled.stop,
            sampled.logprobs) == (8, 0.7, -1, 0.9, 48, ["\nQ:"], 0)  # the recipe's top_k 0 (off): vLLM's -1
    repair = sampling_params(cfg, n=4, temperature=None, max_tokens=None)
    assert (repair.n, repair.temperature, repair.max_tokens, repair.logprobs) == (4, 0.7, 48, None)
    greedy = sampling_params(cfg.model_copy(update={"top_k": 40}), n=1, temperature=0.0, max_tokens=96)
    assert (greedy.n, greedy.temperature, greedy.max_tokens, greedy.top_p) == (1, 0.0, 96, 1.0)
    assert not sampled.include_stop_str_in_output
    stepwise = sampling_params(cfg, n=2, stop=["\n"])  # one reasoning step at a time, its delimiter kept
    assert (stepwise.stop, stepwise.include_stop_str_in_output) == (["\n", "\nQ:"], True)
