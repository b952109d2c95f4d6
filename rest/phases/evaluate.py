"""Evaluation on the held-out split: greedy pass@1, and pass@k / maj@k from sampled solutions."""
from __future__ import annotations

import time

import pandas as pd

from rest.data.problems import load_splits
from rest.engines.generation import generate, sampling_params, start_engine, stop_engine
from rest.engines.hardware import resolve_dtype
from rest.filters.registry import build_verifier
from rest.metrics import PASS_AT_1, maj_at, majority_correct, mean_stderr, pass_at, pass_at_k, sampled_metric_names
from rest.phases.sample import build_prompts, policy_after
from rest.phases.stats import EvalStats
from rest.phases.verify import judge_frame
from rest.recipe.schema import Recipe
from rest.recipe.seeds import seed_for
from rest.report.progress import phase_progress
from rest.run.rundir import RunDir, atomic_write_json, atomic_write_parquet


def evaluate_iteration(recipe: Recipe, run: RunDir, iteration: int) -> EvalStats:
    """Evaluate the policy produced by ``iteration`` (0 = base model); writes ``iter_K/eval/``."""
    cfg = recipe.eval
    policy = policy_after(recipe, run, iteration)
    problems = build_prompts(recipe, load_splits(recipe).eval, policy)
    max_tokens = cfg.max_tokens or recipe.sampling.max_tokens
    # Greedy decoding ignores top_k and top_p (vLLM resets them at temperature 0).
    requests = [("greedy", sampling_params(recipe.sampling, n=1, temperature=0.0, max_tokens=max_tokens))]
    if cfg.samples:
        requests.append(("sampled", sampling_params(recipe.sampling, n=cfg.samples, temperature=cfg.temperature,
                                                     max_tokens=max_tokens)))
    started = time.perf_counter()
    llm = start_engine(recipe.engine, policy, seed_for(recipe, iteration, "eval_engine"))
    timings = {"engine_start_s": time.perf_counter() - started, "engine_dtype": resolve_dtype(recipe.engine.dtype)}
    tables = []
    try:
        for mode, params in requests:
            gen_started = time.perf_counter()
            with phase_progress(f"eval iter {iteration} ({mode})", total=len(problems)) as bar:
                outputs = generate(llm, list(problems["prompt_token_ids"]), params, bar=bar)
            timings[f"{mode}_generate_s"] = time.perf_counter() - gen_started
            tables.append(_table(problems, outputs, iteration, policy, mode))
        searched = search_with_head(recipe, run, iteration, llm, problems)
    finally:
        stop_engine(llm)
    samples = pd.concat(tables, ignore_index=True)
    judged, data_errors = judge_frame(build_verifier(recipe.verifier.name, recipe.verifier.options), samples)
    results = greedy_metrics(judged[judged["mode"] == "greedy"])
    if cfg.samples:
        results.update(sampled_metrics(judged[judged["mode"] == "sampled"], cfg.k))
    if cfg.samples and recipe.prm is not None:  # the PRM ranks the same N samples (the engine is stopped)
        from rest.prm.heldout import score_heldout

        judged, prm_metrics = score_heldout(recipe, run, iteration, judged)
        results.update(prm_metrics)
    if cfg.samples and recipe.pav is not None and recipe.pav.head:  # the PAV head scores them too
        from rest.pav.heldout import score_heldout as score_with_head

        judged, pav_metrics = score_with_head(recipe, run, iteration, judged)
        results.update(pav_metrics)
    out = run.eval_dir(iteration)
    if searched is not None:
        atomic_write_parquet(searched[0], out / "search.parquet")
        results.update(searched[1])
    results.update(timings, policy=policy, data_errors=data_errors,
                   generated_tokens=int(judged["completion_token_ids"].map(len).sum()))
    atomic_write_parquet(judged, out / "samples.parquet")
    atomic_write_json(out / "results.json", results)
    run.write_stats(iteration, "eval", results)
    return results


def search_with_head(recipe: Recipe, run: RunDir, iteration: int, llm, problems: pd.DataFrame):
    """pav.search with the PAV head in force after ``iteration`` (None without pav.search, or before any head)."""
    if recipe.pav is None or recipe.pav.search is None:
        return None
    from rest.pav.heldout import head_after, search_heldout

    head = head_after(run, iteration)
    if head is None:
        return None
    verifier = build_verifier(recipe.verifier.name, recipe.verifier.options)
    return search_heldout(llm, recipe.pav.search, recipe.sampling, recipe.pav.step_delimiter, head, problems, verifier)


def _table(problems: pd.DataFrame, outputs: list, iteration: int, policy: str, mode: str) -> pd.DataFrame:
    rows = []
    for problem, outs in zip(problems.to_dict("records"), outputs):
        for out in outs:
            rows.append({**problem, "iteration": iteration, "policy": policy, "mode": mode,
                         "sample_index": out.sample_index, "completion": out.text,
                         "completion_token_ids": out.token_ids, "finish_reason": out.finish_reason,
                         "truncated": out.finish_reason == "length"})
    return pd.DataFrame(rows)


def greedy_metrics(judged: pd.DataFrame) -> dict:
    """pass@1 (greedy) with its standard error; unjudged prompts count as not passed and are reported."""
    passed = judged["correct"].eq(True).astype(float).tolist()
    p = sum(passed) / len(passed) if passed else 0.0
    return {
        "prompts": len(passed),
        PASS_AT_1: p,
        f"{PASS_AT_1}_stderr": (p * (1 - p) / len(passed)) ** 0.5 if passed else 0.0,
        "unjudged": int(judged["correct"].isna().sum()),
        "truncation_rate": float(judged["truncated"].mean()) if len(judged) else 0.0,
    }


def sampled_metrics(judged: pd.DataFrame, k: int) -> dict:
    """pass@1 and pass@k (unbiased, from all n samples) and maj@k (first k samples), each with its stderr."""
    sampled, *at_k = sampled_metric_names(k)
    per_prompt: dict[str, list[float]] = {name: [] for name in sampled_metric_names(k)}
    for _, group in judged.sort_values("sample_index").groupby("prompt_id", sort=False):
        n, c = len(group), int(group["correct"].eq(True).sum())
        per_prompt[sampled].append(c / n)
        if pass_at(k) in per_prompt:
            per_prompt[pass_at(k)].append(pass_at_k(n, c, min(k, n)))
        first = group.head(k)
        per_prompt[maj_at(k)].append(float(majority_correct(list(first["answer"]), list(first["correct"]))))
    metrics = {}
    for name, values in per_prompt.items():
        metrics[name], metrics[f"{name}_stderr"] = mean_stderr(values)
    return metrics
