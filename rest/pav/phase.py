"""The pav phase: roll the prover out from every step prefix of the chosen samples and label each step.

Runs after verification (and repair), in its own process because it holds a vLLM engine. Its cost is
stated before the engine starts (:meth:`Plan.describe`, on the terminal and in ``pav/plan.json``) and a
recipe can cap it (``pav.max_rollouts``). Rollouts share their prefix's prefill: each prefix is one
request with ``n = pav.rollouts``, and the engine runs with prefix caching on. A rollout counts as
verified when the prefix's text plus the rollout passes the recipe's verifier. Rollouts are written a
shard of prefixes at a time (``pav/rollouts/``: a killed phase resumes with the shards it finished), then
all together (``pav/rollouts.parquet``, for auditing), with one row of step values per labelled sample
(``pav/values.parquet``, the columns of rest/pav/values.py), which the selection joins.
"""
from __future__ import annotations

import json
import shutil
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
)
from rest.pav.plan import Plan, labelled_samples, make_plan
from rest.pav.values import (
    ADVANTAGE_COLUMN,
    MIN_ADVANTAGE_COLUMN,
    Q_COLUMN,
    ROLLOUTS_COLUMN,
    STEPS_COLUMN,
    VALUE_COLUMNS,
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
from rest.run.faults import kill_point
from rest.run.rundir import (
    RunDir,
    atomic_directory,
    atomic_write_json,
    atomic_write_parquet,
)

KEYS = ["prompt_id", "sample_index"]  # a judged row's key within its iteration (repairs and originals included)
PREFIXES_PER_SHARD = 200  # prefixes whose rollouts are generated, verified and written together


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
    start_plan(run, iteration, {**stats, "digest": plan.digest(prover, cfg)})
    console().print(plan.describe(iteration), markup=False, highlight=False, soft_wrap=True)
    if cfg.max_rollouts is not None and plan.planned_rollouts > cfg.max_rollouts:
        raise PavError(f"{plan.describe(iteration)}: more than pav.max_rollouts ({cfg.max_rollouts}); raise it, "
                       "or label fewer samples (pav.samples, pav.max_per_prompt) or roll out less (pav.rollouts)")
    rollouts = pd.DataFrame()
    prompts = sampling_prompts(recipe, policy) if plan.prefixes else None
    if plan.prefixes:  # nothing to label: no engine is started
        prover_prompts = prompts if prover == policy else sampling_prompts(recipe, prover)
        rollouts, shard_stats = rolled_out(recipe, run, iteration, plan, chosen, prover, policy, prover_prompts)
        stats.update(shard_stats, rollouts=len(rollouts), verified_rollouts=int(rollouts["correct"].eq(True).sum()),
                     generated_tokens=int(rollouts["rollout_tokens"].sum()))
    values = label(plan, chosen, rollouts, cfg.best_of)
    atomic_write_parquet(rollouts, run.pav_dir(iteration) / "rollouts.parquet")
    if cfg.head and len(values):
        head, head_stats = train_head(recipe, plan, chosen, values, prompts, iteration)
        with atomic_directory(run.pav_dir(iteration) / "head") as staging:
            head.save(staging)
        stats.update(head_stats)
    atomic_write_parquet(values, run.pav_values(iteration))
    stats.update(value_stats(values))
    run.write_stats(iteration, "pav", stats)
    return stats


def start_plan(run: RunDir, iteration: int, plan: dict[str, Any]) -> None:
    """Record the plan; rollout shards of a different plan (other samples, settings or prover) are removed."""
    path = run.pav_dir(iteration) / "plan.json"
    earlier = json.loads(path.read_text()).get("digest") if path.is_file() else None
    if earlier != plan["digest"]:
        shutil.rmtree(run.pav_dir(iteration) / "rollouts", ignore_errors=True)
    atomic_write_json(path, plan)


def rolled_out(recipe: Recipe, run: RunDir, iteration: int, plan: Plan, chosen: pd.DataFrame, prover: str,
               policy: str, prompts: pd.Series) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every prefix's verified rollouts, a shard of ``PREFIXES_PER_SHARD`` prefixes at a time; the shards a
    killed run finished are kept, so a rerun rolls out only the rest. ``prompts``: :func:`sampling_prompts`
    in the prover's tokens."""
    shards = [range(start, min(start + PREFIXES_PER_SHARD, len(plan.prefixes)))
              for start in range(0, len(plan.prefixes), PREFIXES_PER_SHARD)]
    paths = [run.pav_dir(iteration) / "rollouts" / f"shard-{i:05d}.parquet" for i in range(len(shards))]
    todo = [i for i, path in enumerate(paths) if not path.is_file()]
    stats: dict[str, Any] = {"shards": len(shards), "shards_resumed": len(shards) - len(todo), "data_errors": {}}
    if todo:
        started = time.perf_counter()
        verifier = build_verifier(recipe.verifier.name, recipe.verifier.options)
        inputs = rollout_inputs(plan, prompts, prover, policy)
        params = sampling_params(recipe.sampling, n=recipe.pav.rollouts, temperature=recipe.pav.temperature,
                                 max_tokens=plan.max_tokens)
        llm = start_engine(with_prefix_caching(recipe.engine), prover, seed_for(recipe, iteration, "pav"))
        try:
            with phase_progress(f"pav iter {iteration} (rollouts)", total=sum(len(shards[i]) for i in todo)) as bar:
                for i in todo:
                    outputs = generate(llm, [inputs[p] for p in shards[i]], params, bar=bar)
                    judged, errors = judge_frame(verifier, rollout_rows(plan, chosen, outputs, shards[i].start))
                    atomic_write_parquet(judged, paths[i])
                    stats["data_errors"].update(errors)
                    kill_point("pav:after_shard")
        finally:
            stop_engine(llm)
        stats.update(generate_s=time.perf_counter() - started, engine_dtype=resolve_dtype(recipe.engine.dtype))
    return pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True), stats


def rollout_inputs(plan: Plan, prompts: pd.Series, prover: str, policy: str) -> list[list[int]]:
    """The prover's input for every prefix, in plan order; ``prompts``: the prompt token ids (in the prover's
    tokens) the policy samples with, by prompt id."""
    tokenizer = None if prover == policy else _tokenizer(prover)
    inputs = []
    for prefix in plan.prefixes:
        # The policy continues its own tokens; another prover reads the prefix's text in its own tokens.
        own = list(prefix.completion_ids) if tokenizer is None else (
            tokenizer(prefix.text, add_special_tokens=False)["input_ids"] if prefix.text else [])
        inputs.append([int(t) for t in prompts[prefix.prompt_id]] + own)  # plain ints (ids read from Parquet)
    return inputs


def sampling_prompts(recipe: Recipe, model: str) -> pd.Series:
    """The prompt token ids the policy samples the training problems with, in ``model``'s tokens, by prompt id."""
    return build_prompts(recipe, load_splits(recipe).train, model).set_index("prompt_id")["prompt_token_ids"]


def train_head(recipe: Recipe, plan: Plan, chosen: pd.DataFrame, values: pd.DataFrame, prompts: pd.Series,
               iteration: int) -> tuple[ValueHead, dict[str, Any]]:
    """Fit the PAV head (rest/pav/head.py) to the Q of every prefix p_0 .. p_T of the labelled samples."""
    features_model = resolve_model(recipe.model)
    targets = values.set_index(KEYS)[Q_COLUMN]
    sequences, positions, prompt_lens = plan.sequences(chosen, prompts)
    labels = [q for row in plan.sample_prefixes for q in
              targets.loc[(chosen.loc[row, "prompt_id"], int(chosen.loc[row, "sample_index"]))]]
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


def rollout_rows(plan: Plan, chosen: pd.DataFrame, outputs: list, first: int = 0) -> pd.DataFrame:
    """One row per rollout of the prefixes from position ``first`` on: its prefix, and as ``completion`` the
    prefix text + rollout (what is verified)."""
    rows = []
    for position, (prefix, outs) in enumerate(zip(plan.prefixes[first:], outputs), start=first):
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
    return pd.DataFrame(rows, columns=[*KEYS, *VALUE_COLUMNS])


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
