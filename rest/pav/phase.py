"""The pav phase: roll the prover out from every step prefix of the chosen samples and label each step.

Runs after verification (and repair), in its own process because it holds a vLLM engine. Its cost is
stated before the engine starts (:meth:`Plan.describe`, on the terminal and in ``pav/plan.json``) and a
recipe can cap it (``pav.max_rollouts``). Rollouts share their prefix's prefill: each prefix is one
request with ``n = pav.rollouts``, and the engine runs with prefix caching on. A rollout counts as
verified when the prefix's text plus the rollout passes the recipe's verifier. Writes every rollout
(``pav/rollouts.parquet``, for auditing) and one row of step values per labelled sample
(``pav/values.parquet``, the columns of rest/pav/values.py), which the selection joins.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from rest.data.grown import judged_set
from rest.data.problems import load_splits
from rest.engines.generation import generate, sampling_params, start_engine, stop_engine
from rest.engines.hardware import resolve_dtype
from rest.engines.models import resolve_model
from rest.errors import RestError
from rest.filters.registry import build_verifier
from rest.pav.head import (
    ValueHead,
    fit_head,
    hidden_features,
    load_feature_model,
    prefix_positions,
)
from rest.pav.plan import Plan, labelled_samples, make_plan
from rest.pav.values import (
    ADVANTAGE_COLUMN,
    MIN_ADVANTAGE_COLUMN,
    Q_COLUMN,
    ROLLOUTS_COLUMN,
    STEPS_COLUMN,
    VERIFIED_COLUMN,
    step_values,
)
from rest.phases.sample import build_prompts, policy_after
from rest.phases.stats import PavStats
from rest.phases.verify import judge_frame
from rest.prm.steps import StepSplitter
from rest.recipe.schema import EngineConfig, Recipe
from rest.recipe.seeds import seed_for
from rest.report.progress import console, phase_progress
from rest.run.rundir import (
    RunDir,
    atomic_directory,
    atomic_write_json,
    atomic_write_parquet,
)

KEYS = ["prompt_id", "sample_index"]  # a judged row's key within its iteration (repairs and originals included)


class PavError(RestError, ValueError):
    """The pav phase cannot run as configured (e.g. its plan exceeds pav.max_rollouts)."""


def pav_iteration(recipe: Recipe, run: RunDir, iteration: int) -> PavStats:
    """Step values for iteration ``iteration``'s chosen samples; writes ``pav/values.parquet``."""
    cfg = recipe.pav
    judged = judged_set(recipe, run, iteration)
    chosen = labelled_samples(judged, cfg, seed_for(recipe, iteration, "pav"))
    policy = policy_after(recipe, run, iteration - 1)
    prover = resolve_model(cfg.prover) if cfg.prover else policy
    max_tokens = cfg.max_tokens or recipe.sampling.max_tokens
    plan = make_plan(chosen, _tokenizer(policy), StepSplitter.from_config(cfg), cfg.rollouts, max_tokens)
    stats: dict[str, Any] = {"prover": "policy" if cfg.prover is None else cfg.prover, "best_of": cfg.best_of,
                             "samples": plan.samples, "steps": plan.steps, "prefixes": len(plan.prefixes),
                             "planned_rollouts": plan.planned_rollouts, "max_new_tokens": plan.max_new_tokens}
    atomic_write_json(run.pav_dir(iteration) / "plan.json", stats)
    console().print(plan.describe(iteration), markup=False, highlight=False, soft_wrap=True)
    if cfg.max_rollouts is not None and plan.planned_rollouts > cfg.max_rollouts:
        raise PavError(f"{plan.describe(iteration)}: more than pav.max_rollouts ({cfg.max_rollouts}); raise it, "
                       "or label fewer samples (pav.samples, pav.max_per_prompt) or roll out less (pav.rollouts)")
    rollouts = pd.DataFrame()
    if plan.prefixes:  # nothing to label: no engine is started
        started = time.perf_counter()
        prompts = sampling_prompts(recipe, prover)
        outputs = roll_out(recipe, plan, prompts, prover, policy, seed_for(recipe, iteration, "pav"),
                           f"pav iter {iteration} (rollouts)")
        stats.update(generate_s=time.perf_counter() - started, engine_dtype=resolve_dtype(recipe.engine.dtype))
        rollouts, data_errors = judge_frame(build_verifier(recipe.verifier.name, recipe.verifier.options),
                                            rollout_rows(plan, chosen, outputs))
        stats.update(data_errors=data_errors, rollouts=len(rollouts),
                     verified_rollouts=int(rollouts["correct"].eq(True).sum()),
                     generated_tokens=int(rollouts["rollout_tokens"].sum()))
    values = label(plan, chosen, rollouts, cfg.best_of)
    atomic_write_parquet(rollouts, run.pav_dir(iteration) / "rollouts.parquet")
    if cfg.head and len(values):
        head, head_stats = train_head(recipe, plan, chosen, values, sampling_prompts(recipe, policy), iteration)
        with atomic_directory(run.pav_dir(iteration) / "head") as staging:
            head.save(staging)
        stats.update(head_stats)
    atomic_write_parquet(values, run.pav_values(iteration))
    stats.update(value_stats(values))
    run.write_stats(iteration, "pav", stats)
    return stats


def roll_out(recipe: Recipe, plan: Plan, prompts: pd.Series, prover: str, policy: str, seed: int,
             description: str) -> list:
    """``pav.rollouts`` continuations of every prefix by the prover, in plan order; ``prompts``: the prompt
    token ids (in the prover's tokens) the policy samples with, by prompt id."""
    cfg = recipe.pav
    tokenizer = None if prover == policy else _tokenizer(prover)
    inputs = []
    for prefix in plan.prefixes:
        # The policy continues its own tokens; another prover reads the prefix's text in its own tokens.
        own = list(prefix.completion_ids) if tokenizer is None else (
            tokenizer(prefix.text, add_special_tokens=False)["input_ids"] if prefix.text else [])
        inputs.append([int(t) for t in prompts[prefix.prompt_id]] + own)  # plain ints (ids read from Parquet)
    params = sampling_params(recipe.sampling, n=cfg.rollouts, temperature=cfg.temperature,
                             max_tokens=plan.max_tokens)
    llm = start_engine(with_prefix_caching(recipe.engine), prover, seed)
    try:
        with phase_progress(description, total=len(inputs)) as bar:
            return generate(llm, inputs, params, bar=bar)
    finally:
        stop_engine(llm)


def sampling_prompts(recipe: Recipe, model: str) -> pd.Series:
    """The prompt token ids the policy samples the training problems with, in ``model``'s tokens, by prompt id."""
    return build_prompts(recipe, load_splits(recipe).train, model).set_index("prompt_id")["prompt_token_ids"]


def train_head(recipe: Recipe, plan: Plan, chosen: pd.DataFrame, values: pd.DataFrame, prompts: pd.Series,
               iteration: int) -> tuple[ValueHead, dict[str, Any]]:
    """Fit the PAV head (rest/pav/head.py) to the Q of every prefix p_0 .. p_T of the labelled samples."""
    features_model = resolve_model(recipe.model)
    targets = values.set_index(KEYS)[Q_COLUMN]
    sequences, positions, prompt_lens, labels = [], [], [], []
    for row, prefixes in plan.sample_prefixes.items():
        sample = chosen.loc[row]
        prompt = [int(t) for t in prompts[sample["prompt_id"]]]
        completion = [int(t) for t in sample["completion_token_ids"]]
        ends = [len(plan.prefixes[p].completion_ids) for p in prefixes[1:]] + [len(completion)]
        sequences.append(prompt + completion)
        positions.append(prefix_positions(len(prompt), ends))
        prompt_lens.append(len(prompt))
        labels.extend(targets.loc[(sample["prompt_id"], int(sample["sample_index"]))])
    started = time.perf_counter()
    model = load_feature_model(features_model)
    with phase_progress(f"pav iter {iteration} (head features)", total=len(sequences)) as bar:
        features = hidden_features(model, sequences, positions, prompt_lens, bar)
    del model
    head, loss = fit_head(np.concatenate(features), np.asarray(labels), features_model, recipe.pav.head_l2)
    return head, {"head_prefixes": len(labels), "head_loss": loss, "head_s": time.perf_counter() - started}


def with_prefix_caching(engine: EngineConfig) -> EngineConfig:
    """The recipe's engine with prefix caching on, unless the recipe sets it (rollouts share prefixes)."""
    if "enable_prefix_caching" in engine.engine_kwargs:
        return engine
    return engine.model_copy(update={"engine_kwargs": {**engine.engine_kwargs, "enable_prefix_caching": True}})


def rollout_rows(plan: Plan, chosen: pd.DataFrame, outputs: list) -> pd.DataFrame:
    """One row per rollout: its prefix, and as ``completion`` the prefix text + rollout (what is verified)."""
    rows = []
    for position, (prefix, outs) in enumerate(zip(plan.prefixes, outputs)):
        source = chosen.loc[prefix.source]
        for out in outs:
            rows.append({"prefix": position, "prompt_id": prefix.prompt_id, "question": source["question"],
                         "gold": source["gold"], "prefix_tokens": len(prefix.completion_ids),
                         "prefix_text": prefix.text, "rollout": out.text, "rollout_tokens": len(out.token_ids),
                         "finish_reason": out.finish_reason, "completion": prefix.text + out.text})
    return pd.DataFrame(rows)


def label(plan: Plan, chosen: pd.DataFrame, rollouts: pd.DataFrame, best_of: int) -> pd.DataFrame:
    """One row per labelled sample: its key and step values (rest/pav/values.py)."""
    if rollouts.empty:
        counts: dict[int, tuple[int, int]] = {}
    else:
        verified = rollouts["correct"].eq(True).groupby(rollouts["prefix"])
        counts = {int(p): (int(n), int(c)) for p, n, c in zip(verified.size().index, verified.size(), verified.sum())}
    rows, outcomes = [], chosen["correct"].eq(True)
    for row, positions in plan.sample_prefixes.items():
        sample = chosen.loc[row]
        prefix_counts = [counts[p] for p in positions]
        values = step_values(prefix_counts, float(outcomes.loc[row]), best_of)
        rows.append({"prompt_id": sample["prompt_id"], "sample_index": int(sample["sample_index"]),
                     Q_COLUMN: values.q, ADVANTAGE_COLUMN: values.advantage,
                     ROLLOUTS_COLUMN: [n for n, _ in prefix_counts], VERIFIED_COLUMN: [c for _, c in prefix_counts],
                     MIN_ADVANTAGE_COLUMN: values.min_advantage, STEPS_COLUMN: len(positions)})
    return pd.DataFrame(rows, columns=[*KEYS, Q_COLUMN, ADVANTAGE_COLUMN, ROLLOUTS_COLUMN, VERIFIED_COLUMN,
                                       MIN_ADVANTAGE_COLUMN, STEPS_COLUMN])


def value_stats(values: pd.DataFrame) -> dict[str, float]:
    """Means over the labelled samples: Q of the prompt alone and the worst step's advantage."""
    if values.empty:
        return {}
    return {"mean_q0": float(values[Q_COLUMN].map(lambda q: q[0]).mean()),
            "mean_min_advantage": float(values[MIN_ADVANTAGE_COLUMN].mean())}


def with_values(run: RunDir, iteration: int, judged: pd.DataFrame) -> pd.DataFrame:
    """``judged`` with the pav columns joined on the sample key (NaN/None where a row has no values)."""
    values = pd.read_parquet(run.pav_values(iteration))
    clash = [c for c in values.columns if c in judged.columns and c not in KEYS]
    return judged.drop(columns=clash).merge(values, on=KEYS, how="left", validate="many_to_one")


def _tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)
