"""E-step: sample n completions per training prompt from the current policy with vLLM, shard by shard."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from rest.data.problems import load_splits
from rest.data.prompts import encode_prompt, render_prompt
from rest.engines.generation import (
    Completion,
    completed_groups,
    engine_replicas,
    generate_stream,
    sampling_params,
    start_engine,
    stop_engine,
)
from rest.engines.hardware import resolve_dtype
from rest.engines.models import resolve_model
from rest.errors import RestError
from rest.phases.stats import SampleStats
from rest.prm.score import reuses_sampler_logprobs
from rest.recipe.schema import Recipe
from rest.recipe.seeds import seed_for
from rest.report.progress import phase_progress
from rest.run.faults import kill_point
from rest.run.modes import grow_iteration, improve_step, is_grow
from rest.run.rundir import RunDir, atomic_write_parquet


class SamplingError(RestError, RuntimeError):
    """The E-step cannot run as configured (no prompts, prompt longer than the context, ...)."""


def policy_after(recipe: Recipe, run: RunDir, iteration: int) -> str:
    """The policy produced by ``iteration`` (0 = the base model); what iteration + 1 samples from."""
    if iteration == 0:
        return resolve_model(recipe.model)
    model = run.model(iteration)
    if not (model / "config.json").is_file():
        raise SamplingError(f"iteration {iteration} has no trained model at {model}; run its M-step first")
    return str(model)


def shard_path(run: RunDir, iteration: int, shard: int) -> Path:
    """Path of one E-step shard."""
    return run.samples_dir(iteration) / f"shard-{shard:05d}.parquet"


def build_prompts(recipe: Recipe, problems: pd.DataFrame, model: str) -> pd.DataFrame:
    """Add the exact prompt text and token ids the engine will see; check they fit the context."""
    from transformers import AutoTokenizer

    if problems.empty:
        raise SamplingError("the prompt set is empty: check data.* in the recipe")
    tokenizer = AutoTokenizer.from_pretrained(model)
    table = problems.copy()
    table["prompt_text"] = [render_prompt(tokenizer, recipe.prompt, q) for q in table["question"]]
    table["prompt_token_ids"] = [encode_prompt(tokenizer, t) for t in table["prompt_text"]]
    longest = max(len(ids) for ids in table["prompt_token_ids"])
    if longest + 1 > recipe.engine.max_model_len:
        raise SamplingError(
            f"a prompt has {longest} tokens but engine.max_model_len is {recipe.engine.max_model_len}; "
            "raise engine.max_model_len or shorten the prompt template"
        )
    return table


def sample_iteration(recipe: Recipe, run: RunDir, iteration: int) -> SampleStats:
    """Run (or resume) the E-step of ``iteration``; returns its stats (also written to the run dir)."""
    if not is_grow(recipe, iteration):
        return reuse_grown_samples(recipe, run, iteration)
    policy = policy_after(recipe, run, iteration - 1)
    prompts = build_prompts(recipe, load_splits(recipe).train, policy)
    cfg = recipe.sampling
    shards = [prompts.iloc[i : i + cfg.prompts_per_shard] for i in range(0, len(prompts), cfg.prompts_per_shard)]
    todo = [i for i in range(len(shards)) if not shard_path(run, iteration, i).is_file()]
    seed = seed_for(recipe, iteration, "sample_engine")
    stats = {"prompts": len(prompts), "shards": len(shards), "shards_resumed": len(shards) - len(todo)}
    if todo:
        started = time.perf_counter()
        llm = start_engine(recipe.engine, policy, seed)
        stats["engine_start_s"] = time.perf_counter() - started
        stats["engine_dtype"] = resolve_dtype(recipe.engine.dtype)
        params = sampling_params(cfg, logprobs=cfg.logprobs or reuses_sampler_logprobs(recipe, policy))
        gen_started, new_tokens = time.perf_counter(), 0
        try:
            with phase_progress(f"E-step iter {iteration}", total=sum(len(shards[i]) for i in todo)) as bar:
                for i, frame in sample_shards(llm, params, {i: shards[i] for i in todo}, iteration, policy, bar):
                    if recipe.loop.mode == "rest":
                        frame["improve_step"] = 1
                    atomic_write_parquet(frame, shard_path(run, iteration, i))
                    new_tokens += int(frame["completion_tokens"].sum())
                    kill_point("sample:after_shard")
            stats["generate_s"] = time.perf_counter() - gen_started
        finally:
            stats.update(engine_replicas(llm))
            stop_engine(llm)
        # This run's rate: the tokens of the shards it wrote (a resumed run's earlier shards are not its work).
        stats["generated_tokens_this_run"] = new_tokens
        stats["tokens_per_s"] = new_tokens / max(stats["generate_s"], 1e-9)
    samples = read_samples(run, iteration)
    stats.update(summarise(samples, cfg.n))
    run.write_stats(iteration, "sample", stats)
    return stats


def reuse_grown_samples(recipe: Recipe, run: RunDir, iteration: int) -> dict:
    """ReST Improve step: this iteration filters its Grow's samples again (same shards, own iteration number)."""
    grown = grow_iteration(recipe, iteration)
    sources = sorted(run.samples_dir(grown).glob("shard-*.parquet"))
    if not sources or not run.is_done(grown, "sample"):
        raise SamplingError(f"iteration {iteration} re-filters the samples of iteration {grown}, which has none yet")
    step = improve_step(recipe, iteration)
    for source in sources:
        target = run.samples_dir(iteration) / source.name
        if not target.is_file():
            frame = pd.read_parquet(source).assign(iteration=iteration, improve_step=step)
            atomic_write_parquet(frame, target)
    samples = read_samples(run, iteration)
    stats = {"prompts": int(samples["prompt_id"].nunique()), "shards": len(sources), "grown_in": grown,
             "improve_step": step, **summarise(samples, recipe.sampling.n)}
    stats["generated_tokens"] = 0  # nothing was generated: the tokens were counted at the Grow
    run.write_stats(iteration, "sample", stats)
    return stats


def sample_shards(llm, params, shards: dict[int, pd.DataFrame], iteration: int, policy: str, bar):
    """Sample every prompt of ``shards`` in one stream; yields ``(shard, frame)`` as each shard completes.

    Every prompt is queued at once, as ``LLM.generate`` would, so the engine's batch stays as full as vLLM
    can make it and never drains between shards. vLLM schedules first come, first served, so shards still
    finish roughly in order; a shard's rows (prompt order, then sample index) are yielded as soon as all its
    prompts have finished.
    """
    numbers = list(shards)
    ids = [ids for shard in shards.values() for ids in shard["prompt_token_ids"]]
    sizes = [len(shard) for shard in shards.values()]
    stream = generate_stream(llm, ids, params, bar=bar, groups=sizes)
    for k, completions in completed_groups(stream, sizes):
        yield numbers[k], _shard_frame(shards[numbers[k]], completions, iteration, policy)


def _shard_frame(shard: pd.DataFrame, completions: list, iteration: int, policy: str) -> pd.DataFrame:
    return pd.DataFrame([sample_row(problem, out, iteration, policy)
                         for problem, outs in zip(shard.itertuples(index=False), completions) for out in outs])


def sample_row(prompt: Any, out: Completion, iteration: int, policy: str, sample_index: int | None = None) -> dict:
    """One row of the samples table (docs/interfaces.md): ``prompt`` (a row of :func:`build_prompts`) + ``out``."""
    return {
        "prompt_id": prompt.prompt_id,
        "sample_index": out.sample_index if sample_index is None else sample_index,
        "iteration": iteration,
        "policy": policy,
        "question": prompt.question,
        "prompt_text": prompt.prompt_text,
        "prompt_token_ids": list(prompt.prompt_token_ids),
        "completion_token_ids": out.token_ids,
        "completion": out.text,
        "finish_reason": out.finish_reason,
        "truncated": out.finish_reason == "length",
        "logprobs": out.logprobs,
        "completion_tokens": len(out.token_ids),
        "gold": stored_gold(prompt.gold),
    }


def stored_gold(gold: object) -> str:
    """The gold answer as stored on a sample: text as is; structured golds (code tests) as JSON, not repr."""
    return gold if isinstance(gold, str) else json.dumps(gold, default=_plain)


def _plain(value: object) -> object:
    """numpy arrays and scalars that Parquet/pandas hand back, as JSON-able Python values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def read_samples(run: RunDir, iteration: int) -> pd.DataFrame:
    """All finished shards of an iteration, in shard order."""
    paths = sorted(run.samples_dir(iteration).glob("shard-*.parquet"))
    if not paths:
        raise SamplingError(f"iteration {iteration} has no E-step samples in {run.samples_dir(iteration)}")
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def summarise(samples: pd.DataFrame, n: int) -> dict:
    """Counts that must agree with each other: samples = prompts x n, unique keys, tokens, truncation."""
    keys = samples[["iteration", "prompt_id", "sample_index"]]
    per_prompt = samples.groupby("prompt_id").size()
    return {
        "samples": len(samples),
        "unique_samples": int(len(keys.drop_duplicates())),
        "prompts_sampled": int(per_prompt.size),
        "prompts_with_n_samples": int((per_prompt == n).sum()),
        "prompt_tokens": int(samples["prompt_token_ids"].map(len).sum()),
        "generated_tokens": int(samples["completion_tokens"].sum()),
        "truncation_rate": float(samples["truncated"].mean()),
    }
