"""PRM update phase: train the implicit PRM on one iteration's outcome labels (PRIME's online update).

Losses (Yuan et al. 2024), with r(y) = beta * (log pi_prm(y|x) - log pi_ref(y|x)) summed over the
completion tokens: CE ``BCE(sigmoid(r(y)), correct)``, or DPO ``-log sigmoid(r(y_w) - r(y_l))`` on
(correct, incorrect) pairs of one prompt. A plain AdamW loop; each step's samples run as one padded batch
whose common prompt start runs once (``batch_logprobs``).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import pandas as pd

from rest.data.grown import judged_set
from rest.phases.stats import PRMUpdateStats
from rest.prm.checkpoints import prm_after, reference_model
from rest.prm.score import same_model
from rest.prm.trainset import PrmTrainSet, build_train_set
from rest.recipe.schema import PrmConfig, Recipe
from rest.recipe.seeds import seed_for
from rest.report.progress import phase_progress
from rest.run.faults import kill_point
from rest.run.rundir import RunDir, atomic_directory


def ce_loss(policy_logps, ref_logps, labels, beta: float):
    """Mean BCE of sigmoid(beta * (log pi_prm - log pi_ref)) against the outcome labels (1 = correct)."""
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(beta * (policy_logps - ref_logps), labels)


def dpo_loss(policy_chosen, ref_chosen, policy_rejected, ref_rejected, beta: float):
    """Mean DPO loss of (correct, incorrect) pairs: -log sigmoid(beta * (log-ratio chosen - log-ratio rejected))."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))).mean()


def batch_logprobs(model, rows: list[tuple[list[int], int]]):
    """Sum of each row's completion log-probs, differentiable, in one forward pass of the batch.

    ``rows``: (input ids, prompt length). The start common to every row's prompt (few-shot examples, a system
    prompt) runs once and its key-value cache is repeated for each row; gradients flow back through that
    cache, so the result and its gradient are those of one pass per row. Rows are right-padded: with causal
    attention a real token never sees the padding after it. Returns a float64 tensor, one value per row.
    """
    import torch

    from rest.prm.logprobs import shared_start, token_logprobs

    device = model.device
    start = len(shared_start([ids[:n] for ids, n in rows]))
    past = None
    if start:
        head = torch.tensor([rows[0][0][:start]], device=device)
        past = model.base_model(input_ids=head, use_cache=True).past_key_values
        past.batch_repeat_interleave(len(rows))
    tails = [list(ids[start:]) for ids, _ in rows]
    inputs = torch.zeros((len(rows), max(map(len, tails))), dtype=torch.long, device=device)
    for r, tail in enumerate(tails):
        inputs[r, : len(tail)] = torch.tensor(tail, device=device)
    hidden = model.base_model(input_ids=inputs, past_key_values=past, use_cache=past is not None).last_hidden_state
    # Token p of a row (p >= its prompt length) is predicted at position p - 1, which is p - 1 - start in its tail.
    row_of, position, targets = [], [], []
    for r, (ids, n) in enumerate(rows):
        row_of += [r] * (len(ids) - n)
        position += range(n - 1 - start, len(ids) - 1 - start)
        targets += ids[n:]
    picked = hidden[torch.tensor(row_of, device=device), torch.tensor(position, device=device)]
    logps = token_logprobs(model, picked, torch.tensor(targets, device=device)).double()
    sums = torch.zeros(len(rows), dtype=torch.float64, device=device)
    return sums.index_add(0, torch.tensor(row_of, device=device), logps)


def sequence_logprobs(model, frame: pd.DataFrame, bar=None):
    """Sum of the completion log-probs of every row of ``frame`` (no gradient), as a float64 tensor.

    Uses the scorer's forward pass: a prompt shared by n samples runs once.
    """
    import torch

    from rest.prm.logprobs import completion_logprobs

    requests = [(list(ids[:n]), list(ids[n:])) for ids, n in zip(frame["input_ids"], frame["prompt_len"])]
    logprobs = completion_logprobs(model, requests, bar=bar)
    return torch.tensor([float(np.sum(lp, dtype=np.float64)) for lp in logprobs], dtype=torch.float64)


def reward_margin(rewards, labels) -> dict:
    """Mean reward of correct and incorrect samples, and their difference (the margin)."""
    rewards, labels = np.asarray(rewards, dtype=float), np.asarray(labels, dtype=float)
    correct, incorrect = float(rewards[labels == 1].mean()), float(rewards[labels == 0].mean())
    return {"reward_correct": correct, "reward_incorrect": incorrect, "margin": correct - incorrect}


def train_prm(model, train: PrmTrainSet, ref_logps, cfg: PrmConfig, seed: int, bar=None) -> list[dict]:
    """Optimise ``model`` in place with ``cfg.loss``; returns the loss history, one entry per step."""
    import torch

    torch.manual_seed(seed)
    items = train.pairs if cfg.loss == "dpo" else list(range(len(train.frame)))
    order = _epoch_order(len(items), cfg.epochs, seed)
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=0.0)
    labels = torch.tensor(train.frame["label"].to_numpy(), dtype=torch.float64, device=model.device)
    ref_logps = ref_logps.to(model.device)
    rows = [(list(ids), int(n)) for ids, n in zip(train.frame["input_ids"], train.frame["prompt_len"])]

    def loss_of(chunk: list) -> Any:  # summed over the chunk's items
        used = sorted({r for item in chunk for r in _rows_of(item, cfg.loss)})
        logp = dict(zip(used, batch_logprobs(model, [rows[r] for r in used])))
        if cfg.loss == "dpo":
            return sum(dpo_loss(logp[c], ref_logps[c], logp[r], ref_logps[r], cfg.beta) for c, r in chunk)
        return sum(ce_loss(logp[i], ref_logps[i], labels[i], cfg.beta) for i in chunk)

    history = []
    for step, batch in enumerate(batches, start=1):
        optimiser.zero_grad(set_to_none=True)
        members = [items[index] for index in batch]
        total = 0.0
        for chunk in _chunks(members, rows, cfg.loss, cfg.batch_tokens):  # gradient accumulation over chunks
            loss = loss_of(chunk)
            (loss / len(batch)).backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        history.append({"step": step, "loss": total / len(batch), "learning_rate": cfg.learning_rate})
        if bar is not None:
            bar.advance(1, tokens=sum(len(rows[r][0]) - rows[r][1] for m in members for r in _rows_of(m, cfg.loss)))
    return history


def _rows_of(item, loss: str) -> tuple[int, ...]:
    """The training rows of one item: a sample (ce) or a (correct, incorrect) pair (dpo)."""
    return tuple(item) if loss == "dpo" else (item,)


def _chunks(members: list, rows: list[tuple[list[int], int]], loss: str, batch_tokens: int) -> list[list]:
    """The items of one optimiser step in consecutive chunks whose padded area (rows x longest row, in tokens)
    stays within ``batch_tokens``; an item never straddles two chunks, and one too long forms its own."""
    chunks: list[list] = []
    width = count = 0
    for item in members:
        lengths = [len(rows[r][0]) for r in _rows_of(item, loss)]
        if chunks and max(width, *lengths) * (count + len(lengths)) <= batch_tokens:
            chunks[-1].append(item)
            width, count = max(width, *lengths), count + len(lengths)
        else:
            chunks.append([item])
            width, count = max(lengths), len(lengths)
    return chunks


def _epoch_order(count: int, epochs: float, seed: int) -> list[int]:
    """``epochs`` passes over ``count`` items, each pass in a fresh seeded order (a fraction: a partial pass)."""
    rng = np.random.default_rng(seed)
    passes = [rng.permutation(count) for _ in range(math.ceil(epochs))]
    order = np.concatenate(passes) if passes else np.array([], dtype=int)
    return [int(i) for i in order[: max(1, round(epochs * count))]]


def load_causal_lm(path: str, dtype: str):
    """A causal LM in ``dtype`` on the GPU when there is one, in eval mode (no dropout: an untrained PRM
    must give exactly the reference's log-probs, reward 0)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def prm_update_iteration(recipe: Recipe, run: RunDir, iteration: int) -> PRMUpdateStats:
    """Update the PRM in force after iteration K-1 on iteration K's labels; save it to ``iter_K/prm``.

    Skips (saving nothing, so the previous PRM stays in force) with a ``skip_reason`` in the stats when
    the recipe turns updates off or the labels give nothing to learn from.
    """
    started = time.perf_counter()
    cfg = recipe.prm
    seed = seed_for(recipe, iteration, "prm_update")
    start_from, reference = prm_after(recipe, run, iteration - 1), reference_model(recipe)
    stats: dict[str, Any] = {"init": start_from, "reference": reference, "loss_name": cfg.loss, "seed": seed}
    if not cfg.update:
        return _finish(run, iteration, stats, started, skip_reason="prm.update is false")
    train = build_train_set(judged_set(recipe, run, iteration), cfg.loss, cfg.max_samples,
                            cfg.max_length, seed)
    stats.update(train.counts)
    if train.skip_reason:
        return _finish(run, iteration, stats, started, skip_reason=train.skip_reason)
    stats.update(_update(recipe, run, iteration, train, start_from, reference, seed))
    return _finish(run, iteration, stats, started, skip_reason=None)


def _update(recipe: Recipe, run: RunDir, iteration: int, train: PrmTrainSet, start_from: str, reference: str,
            seed: int) -> dict:
    from transformers import AutoTokenizer

    cfg, frame = recipe.prm, train.frame
    label = f"PRM iter {iteration}"
    with phase_progress(f"{label}: reference log-probs", total=len(frame)) as bar:
        if same_model(start_from, reference):  # same weights: the PRM's log-probs are the reference's, rewards are 0
            model = load_causal_lm(start_from, cfg.dtype)
            ref_logps = prm_before = sequence_logprobs(model, frame, bar)
        else:  # the reference is freed before the PRM loads: one model in memory at a time
            ref_logps = _with_model(reference, cfg.dtype, lambda ref: sequence_logprobs(ref, frame, bar))
            model = load_causal_lm(start_from, cfg.dtype)
            prm_before = sequence_logprobs(model, frame)
    labels = frame["label"].to_numpy()
    before = reward_margin((cfg.beta * (prm_before - ref_logps)).numpy(), labels)
    items = len(train.pairs) if cfg.loss == "dpo" else len(frame)
    steps = math.ceil(max(1, round(cfg.epochs * items)) / cfg.batch_size)
    train_started = time.perf_counter()
    with phase_progress(f"{label}: {cfg.loss} update", total=steps) as bar:
        history = train_prm(model, train, ref_logps, cfg, seed, bar)
        train_wall = time.perf_counter() - train_started
        trained_tokens = bar.counters.get("tokens", 0)
    after = reward_margin((cfg.beta * (sequence_logprobs(model, frame) - ref_logps)).numpy(), labels)
    kill_point("prm_update:before_save")
    with atomic_directory(run.prm(iteration)) as staging:
        model.save_pretrained(str(staging))
        AutoTokenizer.from_pretrained(start_from).save_pretrained(str(staging))
    return {
        "steps": len(history), "history": history, "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"],
        **{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()},
        "learning_rate": cfg.learning_rate, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "beta": cfg.beta,
        "train_wall_s": train_wall, "trained_tokens": int(trained_tokens),
        "tokens_per_s": trained_tokens / max(train_wall, 1e-9), "saved_to": str(run.prm(iteration)),
    }


def _with_model(path: str, dtype: str, use: Callable[[Any], Any]) -> Any:
    """Load a model, use it, and free it before the next one is needed (two at once double the memory)."""
    model = load_causal_lm(path, dtype)
    try:
        return use(model)
    finally:
        del model


def _finish(run: RunDir, iteration: int, stats: dict, started: float, skip_reason: str | None) -> dict:
    stats.update(skipped=skip_reason is not None, skip_reason=skip_reason, wall_s=time.perf_counter() - started)
    if skip_reason:
        from rest.report.progress import console

        console().print(f"PRM update of iteration {iteration} skipped: {skip_reason}", highlight=False)
    run.write_stats(iteration, "prm_update", stats)
    return stats
