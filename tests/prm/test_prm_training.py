"""PRM training: the CE and DPO losses, log-probs as sampled, and the update phase with its guard rails."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rest.prm.checkpoints import prm_after
from rest.prm.trainset import build_train_set
from rest.prm.update import (
    batch_logprobs,
    ce_loss,
    dpo_loss,
    load_causal_lm,
    prm_update_iteration,
    reward_margin,
    sequence_logprobs,
    train_prm,
)
from rest.recipe.schema import PrmConfig, validate_recipe
from rest.run.rundir import RunDir


def toy_samples(prompts: int = 4, per_prompt: int = 4, seed: int = 0) -> pd.DataFrame:
    """Correct completions open with tokens 2 2 2, incorrect ones with 3 3 3; the rest is random."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(prompts):
        prompt = [int(t) for t in rng.integers(10, 40, 5)]
        for s in range(per_prompt):
            ok = s % 2 == 0
            completion = [2 if ok else 3] * 3 + [int(t) for t in rng.integers(10, 40, 3)] + [1]
            rows.append({"prompt_id": f"p{p}", "sample_index": s, "prompt_token_ids": prompt,
                         "completion_token_ids": completion, "correct": ok, "reward": float(ok)})
    return pd.DataFrame(rows)


def test_ce_loss_literal_values():
    import torch

    zero = torch.tensor([0.0], dtype=torch.float64)
    assert float(ce_loss(zero, zero, torch.tensor([1.0], dtype=torch.float64), 0.05)) == pytest.approx(math.log(2))
    # beta * log-ratio = 0.05 * 20 = 1: BCE(sigmoid(1), 1) = log(1 + e^-1); against label 0: log(1 + e)
    twenty = torch.tensor([20.0, 20.0], dtype=torch.float64)
    loss = ce_loss(twenty, torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64), 0.05)
    assert float(loss) == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2)


def test_dpo_loss_literal_values():
    import torch

    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    assert float(dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), 0.05)) == pytest.approx(math.log(2))
    # chosen log-ratio +10, rejected -10: -log sigmoid(0.05 * 20) = log(1 + e^-1)
    assert float(dpo_loss(t(-5.0), t(-15.0), t(-20.0), t(-10.0), 0.05)) == pytest.approx(math.log1p(math.exp(-1)))


def test_batch_logprobs_and_their_gradient_match_one_pass_per_row(tiny_lm, monkeypatch):
    import torch

    from rest.prm import logprobs

    monkeypatch.setattr(logprobs, "_MIN_SHARED_START", 3)
    start = [4, 9, 17, 30]  # the start every prompt shares runs once for the batch
    rows = [(start + [5, 6] + [2, 2, 11, 1], 6), (start + [7] + [3, 1], 5), (start + [5, 6] + [12], 6),
            (start + [8, 8, 8] + [], 7)]  # different prompts and lengths, one empty completion
    model = load_causal_lm(tiny_lm, "float32")
    got = batch_logprobs(model, rows)
    direct = []
    for ids, n in rows:
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        direct.append(sum(logp[p - 1, ids[p]] for p in range(n, len(ids))) if len(ids) > n else logp.sum() * 0)
    assert [float(v.detach()) for v in got] == pytest.approx([float(v.detach()) for v in direct], abs=1e-4)
    assert float(got[3].detach()) == 0.0 and all(float(v.detach()) < 0 for v in got[:3])
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    grad_batched = torch.autograd.grad((got * weights).sum(), model.model.embed_tokens.weight)[0]
    grad_direct = torch.autograd.grad(sum(w * d for w, d in zip(weights, direct)), model.model.embed_tokens.weight)[0]
    assert float(grad_direct.abs().max()) > 1e-3
    assert torch.allclose(grad_batched.double(), grad_direct.double(), atol=1e-4)


def test_a_step_in_chunks_equals_the_step_in_one_batch(tiny_lm):
    """A step whose samples exceed prm.batch_tokens runs in chunks with accumulated gradients: same update."""
    import torch

    train = build_train_set(toy_samples(prompts=2), "ce", max_samples=None, max_length=100, seed=0)
    params = []
    for batch_tokens in (4096, 16):  # 16: one sample per chunk
        model = load_causal_lm(tiny_lm, "float32")
        ref = sequence_logprobs(model, train.frame)
        train_prm(model, train, ref, PrmConfig(learning_rate=1e-2, batch_size=8, batch_tokens=batch_tokens), seed=0)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert float((params[0] - params[1]).abs().max()) < 1e-5
    assert float((params[0] - torch.cat([p.detach().flatten() for p in load_causal_lm(tiny_lm, "float32")
                                         .parameters()])).abs().max()) > 1e-3, "the step moved the weights"


@pytest.mark.parametrize("loss", ["ce", "dpo"])
def test_training_lowers_the_loss_and_moves_rewards_the_right_way(tiny_lm, loss):
    cfg = PrmConfig(loss=loss, beta=0.5, learning_rate=1e-2, epochs=3, batch_size=4)
    train = build_train_set(toy_samples(), loss, max_samples=None, max_length=100, seed=0)
    model = load_causal_lm(tiny_lm, "float32")
    ref = sequence_logprobs(model, train.frame)
    history = train_prm(model, train, ref, cfg, seed=0)
    after = reward_margin((cfg.beta * (sequence_logprobs(model, train.frame) - ref)).numpy(), train.frame["label"])
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6), "an untrained PRM equals its reference"
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert [h["step"] for h in history] == list(range(1, len(history) + 1))
    assert after["reward_correct"] > 0 > after["reward_incorrect"]
    assert after["margin"] > 1.0


def test_epochs_and_batch_size_set_the_number_of_steps(tiny_lm):
    train = build_train_set(toy_samples(prompts=2), "ce", max_samples=None, max_length=100, seed=0)  # 8 samples
    model = load_causal_lm(tiny_lm, "float32")
    ref = sequence_logprobs(model, train.frame)
    history = train_prm(model, train, ref, PrmConfig(learning_rate=1e-4, epochs=1.5, batch_size=4), seed=0)
    assert len(history) == 3
    assert {h["learning_rate"] for h in history} == {1e-4}


def recipe_for(model: str, run_dir, **prm):
    return validate_recipe({"name": "prm-unit", "model": model, "data": {"train_size": 4},
                            "run": {"dir": str(run_dir)},
                            "prm": {"learning_rate": 1e-2, "beta": 0.5, "epochs": 2, "batch_size": 4, **prm}})


def write_verified(run: RunDir, k: int, frame: pd.DataFrame) -> None:
    run.verified(k).parent.mkdir(parents=True, exist_ok=True)
    frame.assign(iteration=k).to_parquet(run.verified(k))


def test_update_phase_saves_a_prm_that_rewards_correct_samples(tiny_lm, tmp_path):
    from safetensors.torch import load_file

    run = RunDir(tmp_path / "run")
    recipe = recipe_for(tiny_lm, run.root)
    write_verified(run, 1, toy_samples())
    stats = prm_update_iteration(recipe, run, 1)
    assert stats["skipped"] is False and stats["skip_reason"] is None
    assert stats["init"] == stats["reference"] == tiny_lm
    assert (stats["samples_correct"], stats["samples_incorrect"], stats["steps"]) == (8, 8, 8)
    assert stats["margin_before"] == 0.0, "at iteration 1 the PRM is its reference: reward 0"
    assert stats["margin_after"] > 1.0
    assert stats["first_loss"] == pytest.approx(math.log(2), abs=1e-6) and stats["last_loss"] < stats["first_loss"]
    assert len(stats["history"]) == 8 and stats["tokens_per_s"] > 0
    assert run.read_stats(1, "prm_update")["margin_after"] == pytest.approx(stats["margin_after"])
    assert prm_after(recipe, run, 1) == str(run.prm(1))
    assert (run.prm(1) / "tokenizer.json").is_file()
    saved, base = load_file(str(run.prm(1) / "model.safetensors")), load_file(f"{tiny_lm}/model.safetensors")
    assert any(float((saved[n] - base[n]).abs().max()) > 0 for n in base)

    # Iteration 2 has only correct samples: the update is skipped, nothing is saved, iteration 1's PRM stays.
    write_verified(run, 2, toy_samples().assign(correct=True))
    skipped = prm_update_iteration(recipe, run, 2)
    assert skipped["init"] == str(run.prm(1))
    assert skipped["skipped"] is True
    assert skipped["skip_reason"] == "all 16 usable samples are correct: CE needs both classes"
    assert not run.prm(2).exists()
    assert prm_after(recipe, run, 2) == str(run.prm(1))


def test_update_from_a_trained_prm_reports_the_margin_before(tiny_lm, tmp_path):
    run = RunDir(tmp_path / "run")
    recipe = recipe_for(tiny_lm, run.root, loss="dpo")
    write_verified(run, 1, toy_samples())
    first = prm_update_iteration(recipe, run, 1)
    write_verified(run, 2, toy_samples(seed=1))
    second = prm_update_iteration(recipe, run, 2)
    assert first["pairs"] == 8 and second["init"] == str(run.prm(1))
    assert second["margin_before"] > 0, "the PRM from iteration 1 already separates the classes"
    assert second["margin_after"] > second["margin_before"]


def test_update_is_skipped_with_a_reason(tiny_lm, tmp_path):
    run = RunDir(tmp_path / "run")
    write_verified(run, 1, toy_samples())
    off = prm_update_iteration(recipe_for(tiny_lm, run.root, update=False), run, 1)
    assert (off["skipped"], off["skip_reason"]) == (True, "prm.update is false")
    no_pairs = toy_samples().assign(correct=lambda f: f["prompt_id"].isin(["p0", "p1"]))
    write_verified(run, 1, no_pairs)
    dpo = prm_update_iteration(recipe_for(tiny_lm, run.root, loss="dpo"), run, 1)
    assert dpo["skip_reason"].startswith("no prompt has both a correct and an incorrect sample (2 all correct, 2 all")
    assert dpo["prompts_without_pairs"] == 4
    assert not run.prm(1).exists()
    assert run.read_stats(1, "prm_update")["skipped"] is True
