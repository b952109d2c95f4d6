"""Benchmark: optimiser steps of the PRM update (``rest.prm.update.train_prm``) against one sequence per pass.

    .venv/bin/python experiments/bench_prm_update.py --samples RUN/iter_00K/verified.parquet [--steps 6]
                                                     [--batch-size 8] [--repeats 2]

Real E-step samples (a run's ``verified.parquet``), the PRM training set the phase builds from them (CE,
class-balanced), the built-in model as PRM and reference, float32, the phase's defaults (AdamW, lr 1e-4).

- ``per_sequence`` (baseline): each sample of a step runs prompt + completion through its own forward and
  backward pass, gradients accumulated (how the update ran before ``batch_logprobs``).
- ``ours``: ``train_prm`` as the phase calls it: one padded batch per step, the start every prompt shares
  run once for the batch, gradients flowing through its key-value cache.

Both start from the same weights and take the same steps on the same samples; the losses of every step
are compared (they must agree to float rounding). Passes alternate ``--repeats`` times; medians of
seconds per step are reported. The last line of output is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def per_sequence_steps(model, train, ref_logps, cfg, batches: list[list[int]]) -> list[float]:
    """The baseline: CE steps with one forward and backward pass per sample."""
    import torch

    from rest.prm.update import ce_loss

    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    labels = torch.tensor(train.frame["label"].to_numpy(), dtype=torch.float64)
    losses = []
    for batch in batches:
        optimiser.zero_grad(set_to_none=True)
        total = 0.0
        for row in batch:
            ids, n = list(train.frame["input_ids"].iloc[row]), int(train.frame["prompt_len"].iloc[row])
            logits = model(input_ids=torch.tensor([ids]), logits_to_keep=len(ids) - n + 1).logits[0, :-1].float()
            targets = torch.tensor(ids[n:])
            logp = (logits.gather(-1, targets[:, None])[:, 0] - logits.logsumexp(-1)).sum().double()
            loss = ce_loss(logp, ref_logps[row], labels[row], cfg.beta)
            (loss / len(batch)).backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        losses.append(total / len(batch))
    return losses


def ours_steps(model, train, ref_logps, cfg, batches: list[list[int]]) -> list[float]:
    """``train_prm`` on exactly the baseline's batches."""
    from rest.prm import update

    saved = update._epoch_order
    update._epoch_order = lambda count, epochs, seed: [i for batch in batches for i in batch]
    try:
        return [h["loss"] for h in update.train_prm(model, train, ref_logps, cfg, seed=0)]
    finally:
        update._epoch_order = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=Path, required=True, help="a run's iter_00K/verified.parquet")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()

    import torch

    from rest.engines.models import resolve_model
    from rest.prm.trainset import build_train_set
    from rest.prm.update import load_causal_lm, sequence_logprobs
    from rest.recipe.schema import PrmConfig

    verified = pd.read_parquet(args.samples)
    train = build_train_set(verified, "ce", max_samples=args.steps * args.batch_size, max_length=1024, seed=0)
    if train.skip_reason:
        raise SystemExit(f"no PRM training set in {args.samples}: {train.skip_reason}")
    cfg = PrmConfig(batch_size=args.batch_size)
    order = np.random.default_rng(0).permutation(len(train.frame))
    batches = [[int(i) for i in order[s * args.batch_size:(s + 1) * args.batch_size]] for s in range(args.steps)]
    batches = [b for b in batches if b]
    path = resolve_model(args.model)
    reference = load_causal_lm(path, "float32")
    ref_logps = sequence_logprobs(reference, train.frame)
    del reference
    lengths = (train.frame["input_ids"].map(len) - train.frame["prompt_len"]).to_numpy()
    result: dict = {"date": str(date.today()), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg_1min_before": os.getloadavg()[0], "samples": int(sum(map(len, batches))),
                    "steps": len(batches), "batch_size": args.batch_size,
                    "sequence_tokens_mean": float(train.frame["input_ids"].map(len).mean()),
                    "completion_tokens_mean": float(lengths.mean())}
    seconds: dict[str, list[float]] = {"per_sequence": [], "ours": []}
    losses: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, run in (("per_sequence", per_sequence_steps), ("ours", ours_steps)):
            model = load_causal_lm(path, "float32")
            started = time.perf_counter()
            losses[name] = run(model, train, ref_logps, cfg, batches)
            seconds[name].append((time.perf_counter() - started) / len(batches))
            del model
            print(f"{name}: {seconds[name][-1]:.2f} s per step", flush=True)
    for name, values in seconds.items():
        result[f"{name}_s_per_step"] = round(statistics.median(values), 3)
    result["max_abs_loss_diff"] = float(np.max(np.abs(np.array(losses["ours"]) - np.array(losses["per_sequence"]))))
    result["ratio_ours_vs_per_sequence"] = round(result["per_sequence_s_per_step"] / result["ours_s_per_step"], 3)
    result["loadavg_1min_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
