"""Benchmark: implicit-PRM scoring throughput of rest-em's scorer vs a naive baseline, on real E-step output.

    .venv/bin/python experiments/bench_prm.py [--data ../shared/data] [--prompts 24] [--n 4] [--max-tokens 192]
                                              [--samples FILE] [--repeats 2] [--vllm]

E-step-like samples: GSM8K questions (the shared data's train split) with ``--n`` completions each,
sampled by vLLM from the built-in model in float32 with the sampler's logprobs, as ``rest sample`` does
with ``sampling.logprobs: true`` (``--samples FILE`` reuses an earlier set, or a run's shard/verified
parquet). The PRM is the built-in model with its final norm scaled (a model that differs from the
reference); the reference is the built-in model, the sampling policy.

- ``naive``: one sample at a time, a transformers forward of prompt + completion through each model,
  full-vocabulary log-softmax, gather (float32, as the scorer).
- ``ours``: ``rest.prm.score.score_frame`` as the ``prm_score`` phase calls it (prompt KV reuse,
  length-sorted batches, gathered logprobs, the sampler's logprobs as the reference's).
- ``ours_no_reuse``: the same without the sampler's logprobs (both models run).
- ``ours_no_shared_start``: ``ours`` with the start every prompt shares run once per prompt, not once in all.
- ``ours_vllm`` (``--vllm``): the vLLM backend (prefill ``prompt_logprobs``, both models).

Throughput = completion tokens whose reward was computed, per second; loading models (start-up) is
timed apart. Passes are interleaved ``--repeats`` times and medians reported; every pass's rewards are
compared with the naive ones. The last line of output is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "Solve the math problem step by step. End your answer with a line of the form '#### <number>'."


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def sample_gsm8k(data: Path, prompts: int, n: int, max_tokens: int, seed: int) -> pd.DataFrame:
    """E-step-like output: ``n`` vLLM samples (float32, with logprobs) for each of ``prompts`` GSM8K questions."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from rest.data.prompts import encode_prompt, render_prompt
    from rest.engines.generation import generate, start_engine, stop_engine
    from rest.engines.models import resolve_model
    from rest.recipe.schema import EngineConfig, PromptConfig

    model = resolve_model("smollm2-135m-instruct")
    problems = [json.loads(line) for line in (data / "gsm8k" / "train.jsonl").read_text().splitlines()]
    questions = [p["question"] for p in random.Random(seed).sample(problems, prompts)]
    tok = AutoTokenizer.from_pretrained(model)
    texts = [render_prompt(tok, PromptConfig(system=SYSTEM), q) for q in questions]
    ids = [encode_prompt(tok, t) for t in texts]
    engine = EngineConfig(dtype="float32", enforce_eager=True, max_model_len=1024, cpu_kvcache_gib=2)
    llm = start_engine(engine, model, seed)
    try:
        params = SamplingParams(n=n, temperature=0.7, top_k=40, max_tokens=max_tokens, logprobs=0)
        outputs = generate(llm, ids, params)
    finally:
        stop_engine(llm)
    rows = [{"prompt_id": f"gsm8k-{p}", "sample_index": c.sample_index, "policy": model, "prompt_text": texts[p],
             "prompt_token_ids": ids[p], "completion_token_ids": c.token_ids, "completion": c.text,
             "logprobs": c.logprobs}
            for p, completions in enumerate(outputs) for c in completions]
    return pd.DataFrame(rows)


def perturbed_prm(reference: str, target: Path) -> str:
    """The reference with its final norm scaled by 1.3, saved as a model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)
    with torch.no_grad():
        model.base_model.norm.weight.mul_(1.3)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(reference).save_pretrained(target)
    return str(target)


def naive(samples: pd.DataFrame, prm: str, reference: str, beta: float) -> tuple[list[np.ndarray], dict]:
    """One sample at a time, both models, full log-softmax: the baseline."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    models = [AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32).eval() for m in (prm, reference)]
    loaded = time.perf_counter()
    rewards = []
    with torch.inference_mode():
        for p, c in zip(samples["prompt_token_ids"], samples["completion_token_ids"]):
            p, c = list(map(int, p)), list(map(int, c))
            ids, target = torch.tensor([p + c]), torch.tensor(c)[:, None]
            lp = [torch.log_softmax(m(ids).logits[0].float(), dim=-1)[len(p) - 1 : -1].gather(1, target)[:, 0]
                  for m in models]
            rewards.append((beta * (lp[0].double() - lp[1].double())).numpy())
    return rewards, {"startup_s": loaded - started, "scoring_s": time.perf_counter() - loaded}


def ours(samples: pd.DataFrame, prm: str, reference: str, beta: float, **cfg) -> tuple[list[np.ndarray], dict]:
    """rest-em's scorer, as the prm_score phase calls it."""
    from rest.prm.score import score_frame
    from rest.recipe.schema import EngineConfig, PrmConfig

    engine = EngineConfig(dtype="float32", enforce_eager=True, max_model_len=1024, cpu_kvcache_gib=2)
    frame, stats = score_frame(samples, prm, reference, PrmConfig(beta=beta, **cfg), "bench",
                               engine=engine, sampler_dtype="float32")
    return [np.asarray(r) for r in frame["prm__token_rewards"]], stats


def ours_no_shared_start(samples: pd.DataFrame, prm: str, reference: str, beta: float, **cfg):
    """rest-em's scorer with the start all prompts share (few-shot examples, a system prompt) run per prompt."""
    import rest.prm.logprobs as logprobs

    saved = logprobs._MIN_SHARED_START
    logprobs._MIN_SHARED_START = 10**9
    try:
        return ours(samples, prm, reference, beta, **cfg)
    finally:
        logprobs._MIN_SHARED_START = saved


def timed(name: str, fn, *args, **kwargs) -> tuple[list[np.ndarray], dict]:
    busy0, total0 = cpu_times()
    rewards, stats = fn(*args, **kwargs)
    busy1, total1 = cpu_times()
    stats["machine_busy_share"] = round((busy1 - busy0) / max(total1 - total0, 1), 3)
    print(f"{name}: scoring {stats['scoring_s']:.2f} s, start-up {stats['startup_s']:.2f} s, "
          f"machine busy {stats['machine_busy_share']:.0%}", file=sys.stderr, flush=True)
    return rewards, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--samples", type=Path, help="parquet of samples to reuse (written here after sampling)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vllm", action="store_true", help="also time the vLLM backend")
    args = parser.parse_args()
    import torch

    figures: dict = {"date": date.today().isoformat(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "loadavg_1min_before": os.getloadavg()[0]}
    if args.samples and args.samples.is_file():
        samples = pd.read_parquet(args.samples)
        figures["samples_source"] = "file"
    else:
        started = time.perf_counter()
        samples = sample_gsm8k(args.data, args.prompts, args.n, args.max_tokens, args.seed)
        figures.update(samples_source="vllm", sampling_s=round(time.perf_counter() - started, 1))
        if args.samples:
            samples.to_parquet(args.samples, index=False)
    from rest.engines.models import resolve_model

    reference = resolve_model("smollm2-135m-instruct")
    tokens = int(samples["completion_token_ids"].map(len).sum())
    figures.update(samples=len(samples), prompts=int(samples["prompt_id"].nunique()), completion_tokens=tokens,
                   prompt_tokens_mean=round(float(samples["prompt_token_ids"].map(len).mean()), 1),
                   completion_tokens_mean=round(tokens / len(samples), 1))
    passes = {"naive": (naive, {}), "ours": (ours, {}), "ours_no_reuse": (ours, {"reuse_sampler_logprobs": False}),
              "ours_no_shared_start": (ours_no_shared_start, {})}
    if args.vllm:
        passes["ours_vllm"] = (ours, {"backend": "vllm"})
    results: dict[str, list[dict]] = {name: [] for name in passes}
    with tempfile.TemporaryDirectory() as tmp:
        prm = perturbed_prm(reference, Path(tmp) / "prm")
        baseline = None
        for _ in range(args.repeats):
            for name, (fn, cfg) in passes.items():
                rewards, stats = timed(name, fn, samples, prm, reference, args.beta, **cfg)
                if baseline is None:
                    baseline = rewards
                stats["max_abs_reward_diff_vs_naive"] = max(float(np.abs(a - b).max()) for a, b in
                                                            zip(rewards, baseline) if len(a))
                results[name].append(stats)
    for name, runs in results.items():
        scoring = statistics.median(r["scoring_s"] for r in runs)
        figures.update({
            f"{name}_scoring_s": round(scoring, 3), f"{name}_scoring_s_all": [round(r["scoring_s"], 3) for r in runs],
            f"{name}_startup_s": round(statistics.median(r["startup_s"] for r in runs), 3),
            f"{name}_tokens_per_s": round(tokens / scoring, 1),
            f"{name}_machine_busy_share": statistics.median(r["machine_busy_share"] for r in runs),
            f"{name}_max_abs_reward_diff_vs_naive": max(r["max_abs_reward_diff_vs_naive"] for r in runs),
        })
        if name != "naive":
            figures[f"{name}_reference_from_sampler"] = runs[0]["reference_from_sampler"]
            figures[f"ratio_{name}_vs_naive"] = round(figures["naive_scoring_s"] / scoring, 3)
    figures["ratio_vs_naive"] = figures["ratio_ours_vs_naive"]
    figures["loadavg_1min_after"] = os.getloadavg()[0]
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":  # vLLM spawns its engine process and needs this guard
    sys.exit(main())
