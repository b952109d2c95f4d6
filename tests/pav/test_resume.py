"""The pav phase's rollouts are written shard by shard: a killed phase resumes with the shards it finished,
and a changed plan starts over. A fake engine stands in for vLLM (the real one: tests/integration)."""
from __future__ import annotations

import pandas as pd
import pytest

import rest.pav.phase as pav_phase
from rest.engines.generation import Completion
from rest.recipe.schema import validate_recipe
from rest.run.rundir import RunDir, atomic_write_parquet
from tests.pav.test_plan import judged


@pytest.fixture(scope="module")
def tok(builtin_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model)


class FakeEngine:
    """Answers every prefix with '#### 84'; fails on call number ``fail_on`` (1-based), like a crash."""

    def __init__(self, fail_on: int | None = None):
        self.calls, self.prefixes, self.fail_on = 0, 0, fail_on

    def generate(self, llm, inputs, params, bar=None):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("engine died")
        self.prefixes += len(inputs)
        return [[Completion(i, "#### 84", [10, 11], "stop", None) for i in range(params.n)] for _ in inputs]


def run_pav(monkeypatch, run, engine, rollouts=2):
    monkeypatch.setattr(pav_phase, "PREFIXES_PER_SHARD", 2)
    monkeypatch.setattr(pav_phase, "sampling_prompts", lambda recipe, model: pd.Series({"p": [1, 2], "q": [3]}))
    monkeypatch.setattr(pav_phase, "start_engine", lambda *args: object())
    monkeypatch.setattr(pav_phase, "stop_engine", lambda llm: None)
    monkeypatch.setattr(pav_phase, "generate", engine.generate)
    recipe = validate_recipe({"name": "resume", "data": {"source": "synthetic", "train_size": 4, "eval_size": 2},
                              "verifier": {"name": "gsm8k"},
                              "pav": {"rollouts": rollouts, "samples": "all", "step_delimiter": "\n"}})
    return pav_phase.pav_iteration(recipe, run, 1)


def test_a_killed_phase_resumes_from_its_finished_shards(tok, tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    atomic_write_parquet(judged(tok), run.verified(1))  # 4 judged samples: 6 distinct prefixes, 3 shards of 2
    with pytest.raises(RuntimeError, match="engine died"):
        run_pav(monkeypatch, run, FakeEngine(fail_on=2))
    assert sorted(p.name for p in (run.pav_dir(1) / "rollouts").iterdir()) == ["shard-00000.parquet"]
    assert not run.pav_values(1).exists()
    engine = FakeEngine()
    stats = run_pav(monkeypatch, run, engine)
    assert (engine.calls, engine.prefixes) == (2, 4)  # only the two shards left
    assert (stats["shards"], stats["shards_resumed"], stats["rollouts"]) == (3, 1, 12)
    rollouts = pd.read_parquet(run.pav_dir(1) / "rollouts.parquet")
    assert sorted(rollouts["prefix"].unique()) == list(range(6)) and rollouts.groupby("prefix").size().eq(2).all()
    values = pd.read_parquet(run.pav_values(1))
    assert len(values) == 4 and values["pav__q"].map(lambda q: list(q[:-1]) == [1.0] * (len(q) - 1)).all()


def test_a_changed_plan_discards_the_shards_of_the_old_one(tok, tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    atomic_write_parquet(judged(tok), run.verified(1))
    run_pav(monkeypatch, run, FakeEngine())
    engine = FakeEngine()
    stats = run_pav(monkeypatch, run, engine, rollouts=3)
    assert (engine.calls, stats["shards_resumed"], stats["rollouts"]) == (3, 0, 18)
