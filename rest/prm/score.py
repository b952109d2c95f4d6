"""Implicit-PRM scoring: per-token rewards beta * (log pi_prm - log pi_ref), step rewards, aggregates.

``score_frame`` adds to every sample (INTERFACES.md): ``prm__token_rewards`` (one per completion token),
``prm__step_rewards`` (sum of a step's token rewards), ``prm__step_q`` (accumulated reward q at each
step's last token), ``prm__steps``, and the aggregates ``prm__min`` (the default ranking score),
``prm__mean``, ``prm__sum`` (= ``prm__last_q`` = q_T, the outcome reward). A completion with no
tokens has no steps: ``min`` and ``mean`` are NaN, ``sum`` and ``last_q`` are 0. A sample longer than
``prm.max_length`` (prompt + completion) is not run through the models: it gets no rewards and NaN
aggregates, so the ``implicit_prm`` filter drops it as ``unscored`` (counted as ``too_long``).
Steps: see :mod:`rest.prm.steps`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rest.errors import RestError
from rest.phases.stats import PRMScoreStats
from rest.prm.steps import StepSplitter, step_ends
from rest.recipe.schema import EngineConfig, PrmConfig, Recipe
from rest.report.progress import phase_progress
from rest.run.rundir import RunDir, atomic_write_parquet

COLUMNS = ("prm__token_rewards", "prm__step_rewards", "prm__step_q", "prm__steps",
           "prm__min", "prm__mean", "prm__sum", "prm__last_q")


class ScoringError(RestError, ValueError):
    """The samples or models cannot be scored as asked."""


def score_frame(
    samples: pd.DataFrame,
    prm_model: str,
    reference_model: str,
    cfg: PrmConfig,
    label: str = "PRM score",
    *,
    engine: EngineConfig | None = None,
    sampler_dtype: str | None = None,
    share_prompt: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every sample with the implicit PRM; returns the samples with ``prm__*`` columns, and stats.

    ``prm_model``/``reference_model`` are model directories or built-in names. ``label`` names the
    progress bar. ``engine`` (the recipe's vLLM settings) is used by ``backend: vllm``.
    ``sampler_dtype`` is the dtype the E-step engine ran in: the samples' ``logprobs`` replace the
    reference's pass only when it is float32 (see ``PrmConfig.reuse_sampler_logprobs``).
    ``share_prompt=False`` turns the transformers backend's prompt KV reuse and batching off.
    """
    missing = [c for c in ("prompt_token_ids", "completion_token_ids") if c not in samples.columns]
    if missing:
        raise ScoringError(f"samples lack column(s) {', '.join(missing)} needed for PRM scoring")
    from rest.engines.models import resolve_model

    splitter = StepSplitter.from_config(cfg)
    prm_model, reference_model = resolve_model(prm_model), resolve_model(reference_model)
    started = time.perf_counter()
    everything = [(list(map(int, p)), list(map(int, c)))
                  for p, c in zip(samples["prompt_token_ids"], samples["completion_token_ids"])]
    fits = [i for i, (p, c) in enumerate(everything) if len(p) + len(c) <= cfg.max_length]
    requests = [everything[i] for i in fits]
    tokens = sum(len(c) for _, c in requests)
    stats: dict[str, Any] = {
        "samples": len(everything), "too_long": len(everything) - len(fits), "completion_tokens": tokens,
        "backend": cfg.backend, "dtype": cfg.dtype,
        "beta": cfg.beta, "identical_models": same_model(prm_model, reference_model),
        "reference_from_sampler": False, "models_run": 0, "startup_s": 0.0, "scoring_s": 0.0,
    }
    if stats["identical_models"]:
        # The log-ratio of a model with itself is 0 at every token: nothing to run.
        rewards = [np.zeros(len(c)) for _, c in requests]
    else:
        reuse = sampler_logprobs(samples.iloc[fits], reference_model, cfg, sampler_dtype)
        stats["reference_from_sampler"] = reuse is not None
        models = [prm_model] if reuse is not None else [prm_model, reference_model]
        logprobs = _run_models(models, requests, cfg, engine, label, share_prompt, stats)
        reference = reuse if reuse is not None else logprobs[1]
        rewards = [cfg.beta * (a.astype(np.float64) - b.astype(np.float64)) for a, b in zip(logprobs[0], reference)]
    steps_started = time.perf_counter()
    tokenizer = _tokenizer(reference_model)
    columns = [UNSCORED] * len(everything)
    for i, r, (_, c) in zip(fits, rewards, requests):
        columns[i] = aggregate(r, step_ends(tokenizer, c, splitter))
    stats["steps_s"] = time.perf_counter() - steps_started
    frame = samples.copy()
    for name in COLUMNS:
        frame[name] = [row[name] for row in columns]
    wall = time.perf_counter() - started
    stats.update(
        wall_s=wall,
        # Completion tokens whose reward was computed (both models' logprobs), per second of scoring.
        tokens_per_s=tokens / stats["scoring_s"] if stats["scoring_s"] else None,
        mean_steps=float(np.mean([columns[i]["prm__steps"] for i in fits])) if fits else 0.0,
        mean_min=float(np.nanmean(frame["prm__min"])) if frame["prm__min"].notna().any() else None,
    )
    return frame, stats


# What a sample the PRM did not see (over prm.max_length) carries.
UNSCORED: dict[str, Any] = {"prm__token_rewards": [], "prm__step_rewards": [], "prm__step_q": [], "prm__steps": 0,
                            "prm__min": float("nan"), "prm__mean": float("nan"), "prm__sum": float("nan"),
                            "prm__last_q": float("nan")}


def aggregate(token_rewards: np.ndarray, ends: Sequence[int]) -> dict[str, Any]:
    """The ``prm__*`` values of one sample from its token rewards and the token index ending each step."""
    q = np.cumsum(token_rewards, dtype=np.float64)
    step_q = q[np.asarray(ends, dtype=np.int64) - 1] if len(ends) else np.zeros(0)
    step_rewards = np.diff(step_q, prepend=0.0)
    return {
        "prm__token_rewards": [float(x) for x in token_rewards],
        "prm__step_rewards": [float(x) for x in step_rewards],
        "prm__step_q": [float(x) for x in step_q],
        "prm__steps": len(ends),
        "prm__min": float(step_rewards.min()) if len(ends) else float("nan"),
        "prm__mean": float(step_rewards.mean()) if len(ends) else float("nan"),
        "prm__sum": float(step_rewards.sum()),
        "prm__last_q": float(q[-1]) if len(q) else 0.0,
    }


def same_model(a: str, b: str) -> bool:
    """Whether two model references name the same directory (or the same hub id)."""
    return os.path.realpath(a) == os.path.realpath(b) if Path(a).exists() else a == b


def sampler_logprobs(
    samples: pd.DataFrame, reference: str, cfg: PrmConfig, sampler_dtype: str | None
) -> list[np.ndarray] | None:
    """The E-step's own logprobs as the reference's, when they are exactly that; else None.

    They are when every sample was drawn by the reference model, the sampler ran in float32 (vLLM's
    default raw logprobs, not temperature-scaled), the scorer runs in float32 (in bf16 the two differ by
    up to 0.3), and each sample has one logprob per completion token.
    """
    if "logprobs" not in samples.columns or "policy" not in samples.columns or samples.empty:
        return None
    if not all(isinstance(p, str) and reusable(cfg, sampler_dtype, p, reference) for p in samples["policy"].unique()):
        return None
    out = []
    for lp, ids in zip(samples["logprobs"], samples["completion_token_ids"]):
        if lp is None or len(lp) != len(ids):
            return None
        out.append(np.asarray(lp, dtype=np.float32))
    return out


def _run_models(
    models: list[str], requests: list, cfg: PrmConfig, engine: EngineConfig | None, label: str,
    share_prompt: bool, stats: dict[str, Any],
) -> list[list[np.ndarray]]:
    """Completion logprobs under each model, one model loaded at a time."""
    results = []
    for position, path in enumerate(models):
        name = "PRM" if position == 0 else "reference"
        if cfg.backend == "vllm":
            from rest.prm.vllm_scoring import vllm_completion_logprobs

            logprobs, timing = vllm_completion_logprobs(path, requests, engine or EngineConfig(), cfg.dtype,
                                                        f"{label} ({name}, vLLM)")
        else:
            logprobs, timing = _transformers_logprobs(path, requests, cfg, f"{label} ({name})", share_prompt)
        stats["startup_s"] += timing["startup_s"]
        stats["scoring_s"] += timing["scoring_s"]
        stats["models_run"] += 1
        results.append(logprobs)
    return results


def _transformers_logprobs(
    path: str, requests: list, cfg: PrmConfig, label: str, share_prompt: bool
) -> tuple[list[np.ndarray], dict[str, float]]:
    from rest.prm.logprobs import completion_logprobs, load_scoring_model

    started = time.perf_counter()
    model = load_scoring_model(path, cfg.dtype)
    loaded = time.perf_counter()
    with phase_progress(label, total=len(requests)) as bar:
        logprobs = completion_logprobs(model, requests, cfg.batch_tokens, share_prompt, bar)
    del model
    return logprobs, {"startup_s": loaded - started, "scoring_s": time.perf_counter() - loaded}


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def reusable(cfg: PrmConfig, sampler_dtype: str | None, policy: str, reference: str) -> bool:
    """Whether ``policy``'s sampled logprobs are the reference's for this scorer: the recipe allows reuse,
    scorer and sampler both run in float32, and the policy is the reference model."""
    return (cfg.reuse_sampler_logprobs and cfg.dtype == "float32" and canonical_dtype(sampler_dtype) == "float32"
            and same_model(policy, reference))


def canonical_dtype(dtype: str | None) -> str | None:
    """``float``/``half`` (vLLM's names) as float32/float16."""
    return {"float": "float32", "half": "float16"}.get(dtype, dtype) if dtype else dtype


def sampler_dtype_of(recipe: Recipe, run: RunDir, iteration: int) -> str:
    """The dtype iteration ``iteration``'s E-step engine ran in: as its stats record it, else as the recipe
    resolves here."""
    from rest.engines.hardware import resolve_dtype

    recorded = run.read_stats(iteration, "sample").get("engine_dtype")
    return canonical_dtype(recorded or resolve_dtype(recipe.engine.dtype))


def reuses_sampler_logprobs(recipe: Recipe, policy: str) -> bool:
    """Whether a PRM scoring of samples that ``policy`` draws can take the E-step's logprobs as the
    reference's (:func:`sampler_logprobs`): so the E-step records them without being asked."""
    from rest.engines.hardware import resolve_dtype
    from rest.prm.checkpoints import reference_model

    return recipe.prm is not None and reusable(recipe.prm, resolve_dtype(recipe.engine.dtype), policy,
                                                reference_model(recipe))


def prm_score_iteration(recipe: Recipe, run: RunDir, iteration: int) -> PRMScoreStats:
    """Score iteration ``iteration``'s verified samples with the PRM in force after its update."""
    from rest.data.grown import judged_set
    from rest.prm.checkpoints import prm_after, reference_model
    from rest.run.faults import kill_point

    if recipe.prm is None:
        raise ScoringError("the recipe has no `prm` section")
    if not run.verified(iteration).is_file():
        raise ScoringError(f"iteration {iteration} has no verified samples at {run.verified(iteration)}")
    samples = judged_set(recipe, run, iteration)
    prm, reference = prm_after(recipe, run, iteration), reference_model(recipe)
    policies = samples["policy"].unique() if "policy" in samples.columns else []
    sampler_dtype = sampler_dtype_of(recipe, run, iteration) if len(policies) == 1 else None
    frame, stats = score_frame(samples, prm, reference, recipe.prm, f"PRM score iter {iteration}",
                               engine=recipe.engine, sampler_dtype=sampler_dtype)
    kill_point("prm_score.before_write")
    atomic_write_parquet(frame, run.scored(iteration))
    stats.update(prm=prm, reference=reference)
    run.write_stats(iteration, "prm_score", stats)
    return stats
