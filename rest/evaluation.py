"""Evaluation on the held-out split: greedy pass@1 of a policy, with the recipe's verifier."""
from __future__ import annotations

import time

import pandas as pd

from rest.data import load_splits
from rest.filters.registry import build_verifier
from rest.generation import generate, start_engine, stop_engine
from rest.recipe import Recipe
from rest.rundir import RunDir, atomic_write_json, atomic_write_parquet
from rest.sampling import build_prompts, policy_after
from rest.verify import judge_frame


def evaluate_iteration(recipe: Recipe, run: RunDir, iteration: int) -> dict:
    """Evaluate the policy produced by ``iteration`` (0 = base model); writes ``iter_K/eval/``."""
    from vllm import SamplingParams

    policy = policy_after(recipe, run, iteration)
    problems = build_prompts(recipe, load_splits(recipe).eval, policy)
    started = time.perf_counter()
    llm = start_engine(recipe.engine, policy, recipe.seed)
    engine_start = time.perf_counter() - started
    params = SamplingParams(
        n=1, temperature=0.0, max_tokens=recipe.eval.max_tokens or recipe.sampling.max_tokens,
        stop=recipe.sampling.stop or None,
    )
    gen_started = time.perf_counter()
    try:
        outputs = generate(llm, list(problems["prompt_token_ids"]), params)
    finally:
        stop_engine(llm)
    generate_s = time.perf_counter() - gen_started
    samples = problems.assign(
        iteration=iteration,
        policy=policy,
        completion=[outs[0].text for outs in outputs],
        completion_token_ids=[outs[0].token_ids for outs in outputs],
        finish_reason=[outs[0].finish_reason for outs in outputs],
    )
    samples["truncated"] = samples["finish_reason"] == "length"
    judged, data_errors = judge_frame(build_verifier(recipe.verifier.name, recipe.verifier.options), samples)
    results = greedy_metrics(judged)
    results.update(
        policy=policy, data_errors=data_errors, engine_start_s=engine_start, generate_s=generate_s,
        generated_tokens=int(judged["completion_token_ids"].map(len).sum()),
    )
    out = run.eval_dir(iteration)
    atomic_write_parquet(judged, out / "samples.parquet")
    atomic_write_json(out / "results.json", results)
    run.write_stats(iteration, "eval", results)
    return results


def greedy_metrics(judged: pd.DataFrame) -> dict:
    """pass@1 (greedy) with its standard error; unjudged prompts count as not passed and are reported."""
    passed = judged["correct"].eq(True).astype(float)
    n = len(passed)
    p = float(passed.mean()) if n else 0.0
    return {
        "prompts": n,
        "pass@1": p,
        "pass@1_stderr": (p * (1 - p) / n) ** 0.5 if n else 0.0,
        "unjudged": int(judged["correct"].isna().sum()),
        "truncation_rate": float(judged["truncated"].mean()) if n else 0.0,
    }
