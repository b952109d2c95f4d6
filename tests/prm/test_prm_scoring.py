"""Implicit-PRM scoring: rewards against a direct computation, aggregates, KV reuse, the prm_score phase."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import direct_logprobs, make_tiny_lm

from rest.prm.score import COLUMNS, ScoringError, aggregate, prm_score_iteration, score_frame
from rest.recipe.schema import PrmConfig, validate_recipe
from rest.run.rundir import RunDir


def tiny_samples(per_prompt: int = 3) -> pd.DataFrame:
    """Two prompts, completions of different lengths with step delimiter word t9 (tiny word-level model)."""
    rng = np.random.default_rng(0)
    rows = []
    for p, prompt in enumerate([[0, 5, 6, 7], [0, 8, 3, 4, 5, 6]]):
        for s in range(per_prompt):
            body = [int(t) for t in rng.integers(10, 40, 3 + 4 * s)]
            body[2:2] = [9]  # "t9" ends a step
            rows.append({"prompt_id": f"p{p}", "sample_index": s, "prompt_token_ids": prompt,
                         "completion_token_ids": body + [1], "policy": "unused"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory, tiny_lm):
    """A second tiny model with the same tokenizer and different weights."""
    return str(make_tiny_lm(tmp_path_factory.mktemp("tiny_prm") / "model", seed=1))


def word_cfg(**kw) -> PrmConfig:
    return PrmConfig(step_delimiter=r"\bt9\b", step_regex=True, **kw)


def test_aggregate_literal_values():
    row = aggregate(np.array([0.1, -0.2, 0.3, 0.05]), [2, 4])
    assert row["prm__step_rewards"] == pytest.approx([-0.1, 0.35])
    assert row["prm__step_q"] == pytest.approx([-0.1, 0.25])
    assert row["prm__min"] == pytest.approx(-0.1)
    assert row["prm__mean"] == pytest.approx(0.125)
    assert row["prm__sum"] == pytest.approx(0.25) and row["prm__last_q"] == pytest.approx(0.25)
    assert row["prm__steps"] == 2
    empty = aggregate(np.zeros(0), [])
    assert empty["prm__steps"] == 0 and empty["prm__sum"] == 0.0 and empty["prm__last_q"] == 0.0
    assert math.isnan(empty["prm__min"]) and math.isnan(empty["prm__mean"])


def test_identical_models_score_exactly_zero_without_running(tiny_lm):
    frame, stats = score_frame(tiny_samples(), tiny_lm, tiny_lm, word_cfg())
    assert stats["identical_models"] and stats["models_run"] == 0
    for name in ("prm__min", "prm__mean", "prm__sum", "prm__last_q"):
        assert (frame[name] == 0.0).all()
    assert all(r == [0.0] * len(c) for r, c in zip(frame["prm__token_rewards"], frame["completion_token_ids"]))


def test_rewards_match_direct_computation(tiny_lm, tiny_prm):
    samples = tiny_samples()
    cfg = word_cfg(beta=0.5)
    frame, stats = score_frame(samples, tiny_prm, tiny_lm, cfg)
    assert stats["models_run"] == 2 and not stats["reference_from_sampler"]
    assert stats["completion_tokens"] == sum(map(len, samples["completion_token_ids"]))
    for row in frame.itertuples():
        p, c = list(row.prompt_token_ids), list(row.completion_token_ids)
        expected = 0.5 * (direct_logprobs(tiny_prm, p, c) - direct_logprobs(tiny_lm, p, c))
        assert np.abs(expected).max() > 1e-3  # the PRM really differs
        np.testing.assert_allclose(row.prm__token_rewards, expected, atol=1e-5)
        # step t9 is the 3rd token: two steps, and step sums are token sums
        assert row.prm__steps == 2
        assert row.prm__step_rewards[0] == pytest.approx(sum(row.prm__token_rewards[:3]), abs=1e-9)
        assert sum(row.prm__step_rewards) == pytest.approx(sum(row.prm__token_rewards), abs=1e-9)
        assert row.prm__last_q == pytest.approx(row.prm__step_q[-1]) == pytest.approx(row.prm__sum)
        assert row.prm__min == min(row.prm__step_rewards)


def test_kv_reuse_and_batching_do_not_change_results(tiny_lm, tiny_prm):
    samples = tiny_samples(per_prompt=5)
    shared, _ = score_frame(samples, tiny_prm, tiny_lm, word_cfg())
    plain, _ = score_frame(samples, tiny_prm, tiny_lm, word_cfg(), share_prompt=False)
    one_by_one, _ = score_frame(samples, tiny_prm, tiny_lm, word_cfg(batch_tokens=16))
    for other in (plain, one_by_one):
        for a, b in zip(shared["prm__token_rewards"], other["prm__token_rewards"]):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert list(shared.columns) == list(samples.columns) + list(COLUMNS)


def test_a_start_every_prompt_shares_runs_once_and_changes_nothing(tiny_lm, monkeypatch):
    """Few-shot prompts share a long start: it runs once for all prompts, each prompt continues its KV cache,
    and the log-probs equal one plain forward pass per sample."""
    import torch
    from transformers import AutoModelForCausalLM

    import rest.prm.logprobs as logprobs

    rng = np.random.default_rng(3)
    start = [0, *(int(t) for t in rng.integers(10, 40, logprobs._MIN_SHARED_START + 4))]
    questions = [[11, 12], [13], [14, 15, 16], [11, 12, 17]]  # the last continues the first's question
    prompts = [start + q for q in questions]
    requests = [(p, [int(t) for t in rng.integers(10, 40, n)] + [1]) for p in prompts for n in (2, 5)]
    model = AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval()
    fed: list[int] = []
    model.base_model.register_forward_pre_hook(lambda _, args, kwargs: fed.append(kwargs["input_ids"].numel()),
                                               with_kwargs=True)
    shared = logprobs.completion_logprobs(model, requests)
    assert fed[0] == len(start), "the shared start ran first, once"
    with_start = sum(fed)
    fed.clear()
    monkeypatch.setattr(logprobs, "_MIN_SHARED_START", 10_000)  # every prompt runs from its beginning
    alone = logprobs.completion_logprobs(model, requests)
    assert sum(fed) - with_start == (len(prompts) - 1) * len(start), "the start ran once instead of per prompt"
    for (prompt, completion), got, reference in zip(requests, shared, alone):
        np.testing.assert_allclose(got, direct_logprobs(tiny_lm, prompt, completion), atol=1e-5)
        np.testing.assert_allclose(got, reference, atol=1e-5)


def test_samples_over_max_length_are_left_unscored(tiny_lm, tiny_prm):
    samples = tiny_samples()  # lengths (prompt + completion): 9, 13, 17 and 11, 15, 19
    samples["policy"] = tiny_lm
    samples["logprobs"] = [direct_logprobs(tiny_lm, list(p), list(c)).tolist()
                           for p, c in zip(samples["prompt_token_ids"], samples["completion_token_ids"])]
    full, _ = score_frame(samples, tiny_prm, tiny_lm, word_cfg(), sampler_dtype="float32")
    capped, stats = score_frame(samples, tiny_prm, tiny_lm, word_cfg(max_length=16), sampler_dtype="float32")
    lengths = [len(p) + len(c) for p, c in zip(samples["prompt_token_ids"], samples["completion_token_ids"])]
    assert lengths == [9, 13, 17, 11, 15, 19]
    assert stats["too_long"] == 2 and stats["samples"] == 6 and stats["reference_from_sampler"]
    assert stats["completion_tokens"] == sum(n - len(p) for n, p in zip(lengths, samples["prompt_token_ids"]) if n <= 16)
    for fits, a, b in zip((n <= 16 for n in lengths), full.itertuples(), capped.itertuples()):
        if fits:  # the samples that fit score exactly as without the cap
            np.testing.assert_allclose(a.prm__token_rewards, b.prm__token_rewards, atol=1e-6)  # batching noise
            assert a.prm__min == pytest.approx(b.prm__min, abs=1e-6)
        else:
            assert list(b.prm__token_rewards) == [] and b.prm__steps == 0
            assert all(math.isnan(getattr(b, n)) for n in ("prm__min", "prm__mean", "prm__sum", "prm__last_q"))


def test_sampler_logprobs_replace_the_reference_only_when_exact(tiny_lm, tiny_prm):
    samples = tiny_samples()
    samples["policy"] = tiny_lm
    samples["logprobs"] = [direct_logprobs(tiny_lm, list(p), list(c)).tolist()
                           for p, c in zip(samples["prompt_token_ids"], samples["completion_token_ids"])]
    computed, _ = score_frame(samples, tiny_prm, tiny_lm, word_cfg())  # sampler dtype unknown: not reused
    reused, stats = score_frame(samples, tiny_prm, tiny_lm, word_cfg(), sampler_dtype="float32")
    assert stats["reference_from_sampler"] and stats["models_run"] == 1
    for a, b in zip(computed["prm__token_rewards"], reused["prm__token_rewards"]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    _, bf16 = score_frame(samples, tiny_prm, tiny_lm, word_cfg(), sampler_dtype="bfloat16")
    _, off = score_frame(samples, tiny_prm, tiny_lm, word_cfg(reuse_sampler_logprobs=False), sampler_dtype="float32")
    assert not bf16["reference_from_sampler"] and not off["reference_from_sampler"]


def test_missing_columns_are_named(tiny_lm):
    with pytest.raises(ScoringError, match="completion_token_ids"):
        score_frame(pd.DataFrame({"prompt_token_ids": [[0, 1]]}), tiny_lm, tiny_lm, word_cfg())


def test_prm_score_phase_writes_scores_and_stats(tmp_path, tiny_lm, tiny_prm):
    recipe = validate_recipe({"name": "t", "model": tiny_lm, "data": {"train_size": 4},
                              "prm": {"step_delimiter": r"\bt9\b", "step_regex": True}})
    run = RunDir(tmp_path / "run")
    samples = tiny_samples().assign(correct=True)
    run.verified(1).parent.mkdir(parents=True)
    samples.to_parquet(run.verified(1))
    stats = prm_score_iteration(recipe, run, 1)  # no update saved: the PRM is the base model, rewards 0
    assert stats["identical_models"] and stats["samples"] == len(samples)
    assert (pd.read_parquet(run.scored(1))["prm__sum"] == 0.0).all()
    run.prm(1).symlink_to(tiny_prm)  # an update saved a PRM
    stats = prm_score_iteration(recipe, run, 1)
    scored = pd.read_parquet(run.scored(1))
    assert stats["models_run"] == 2 and (scored["prm__sum"] != 0.0).all()
    assert run.read_stats(1, "prm_score")["completion_tokens"] == stats["completion_tokens"]
    assert scored["correct"].all() and len(scored) == len(samples)


def test_the_e_step_records_logprobs_exactly_when_the_prm_can_reuse_them(tmp_path):
    from rest.prm.score import reuses_sampler_logprobs, sampler_dtype_of

    base, other = tmp_path / "base", tmp_path / "other"
    for model in (base, other):
        model.mkdir()
        (model / "config.json").write_text("{}")

    def recipe(prm: dict | None = None, dtype: str = "float32"):
        return validate_recipe({"name": "t", "model": str(base), "data": {"train_size": 4}, "engine": {"dtype": dtype},
                                "tracking": {"enabled": False}, **({"prm": prm} if prm is not None else {})})

    assert reuses_sampler_logprobs(recipe({}), str(base))  # the base model samples: it is the reference
    assert not reuses_sampler_logprobs(recipe({}), str(other))  # a later policy is not the reference
    assert not reuses_sampler_logprobs(recipe(), str(base))  # no PRM
    assert not reuses_sampler_logprobs(recipe({"dtype": "bfloat16"}), str(base))
    assert not reuses_sampler_logprobs(recipe({}, dtype="bfloat16"), str(base))
    assert not reuses_sampler_logprobs(recipe({"reuse_sampler_logprobs": False}), str(base))

    run = RunDir(tmp_path / "run")
    assert sampler_dtype_of(recipe({}, dtype="float"), run, 1) == "float32"  # no stats: as the recipe resolves here
    run.write_stats(1, "sample", {"engine_dtype": "bfloat16"})
    assert sampler_dtype_of(recipe({}), run, 1) == "bfloat16"  # what the E-step recorded wins
