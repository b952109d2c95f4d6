"""Monte Carlo step values (PAV labels) on held-out samples: how well do they separate right from wrong?

    .venv/bin/python experiments/pav_heldout.py RUN_DIR [--iteration 0] [--problems 100] [--rollouts 4]

Takes the sampled held-out answers of one iteration's evaluation (``RUN_DIR/iter_K/eval/samples.parquet``,
the policy that wrote them, the run's recipe), rolls that policy out ``--rollouts`` times from every step
prefix with rest-em's pav machinery (rest/pav/: the plan, vLLM with prefix caching, the recipe's verifier),
and reports, for separating correct from incorrect answers, the AUROC (Hanley-McNeil standard error) of
scores that do not read the answer's own verdict:

- ``q_before_last``: Q of the prefix before the last step (the prover's chance of success from there);
- ``min_advantage_before_last``: the worst advantage among the steps before the last (answers with one
  step have none and score Q(p_0) - Q(p_0) = 0);
- ``q0``: Q of the prompt alone: how much is prompt difficulty alone.

These are oracle values: the rollouts are verified against the gold answer, which a verifier at test
time does not have; a trained PAV predicts them. Also best-of-k by ``q_before_last`` per problem against a
random pick and majority vote, and the cost (rollouts, tokens, seconds).

With ``--head DIR`` (a PAV head the pav phase trained, ``RUN/iter_K/pav/head``), the same answers are also
scored by the head alone, no rollouts and no gold: AUROC of its predicted worst advantage, of its predicted
Q before the last step and of its predicted Q of the whole answer, and best-of-k by the last. ``--rollouts
0`` skips the Monte Carlo part. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pandas as pd


def scores(values: pd.DataFrame) -> pd.DataFrame:
    """The label-free scores of each labelled sample (rest/pav/values.py's columns)."""
    q = values["pav__q"].map(list)
    advantage = values["pav__advantage"].map(list)
    return values.assign(
        q_before_last=q.map(lambda v: v[-2]),
        min_advantage_before_last=advantage.map(lambda a: min(a[:-1]) if len(a) > 1 else 0.0),
        q0=q.map(lambda v: v[0]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--iteration", type=int, default=0)
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head", type=Path, help="a trained PAV head directory (RUN/iter_K/pav/head)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from rest.engines.models import resolve_model
    from rest.pav.plan import labelled_samples, make_plan
    from rest.phases.sample import policy_after
    from rest.prm.steps import StepSplitter
    from rest.recipe.schema import PavConfig, load_recipe
    from rest.run.rundir import RunDir

    run = RunDir(args.run_dir)
    recipe = load_recipe(run.recipe_path)
    delimiter = recipe.prm.step_delimiter if recipe.prm else "\n"
    cfg = PavConfig(samples="all", rollouts=max(args.rollouts, 1), step_delimiter=delimiter)
    recipe = recipe.model_copy(update={"pav": cfg})
    policy = policy_after(recipe, run, args.iteration) if args.iteration else resolve_model(recipe.model)
    samples = pd.read_parquet(run.eval_dir(args.iteration) / "samples.parquet")
    samples = samples[samples["mode"] == "sampled"]
    problems = samples["prompt_id"].drop_duplicates().sample(frac=1.0, random_state=args.seed)[: args.problems]
    samples = samples[samples["prompt_id"].isin(set(problems))].reset_index(drop=True)
    chosen = labelled_samples(samples, cfg, args.seed)
    plan = make_plan(chosen, AutoTokenizer.from_pretrained(policy), StepSplitter.from_config(cfg), cfg.rollouts,
                     recipe.sampling.max_tokens)
    result = {"run": args.run_dir.name, "iteration": args.iteration, "problems": int(chosen["prompt_id"].nunique()),
              "samples": len(chosen), "correct": int(chosen["correct"].eq(True).sum())}
    if args.head:
        result.update(head_scores(args.head, plan, chosen))
    if args.rollouts:
        result.update(monte_carlo(args, recipe, plan, chosen, samples, policy))
    for key, value in result.items():
        print(f"{key:>40}  {value}")
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}))


def separation(result: dict, name: str, scores, correct, prompts) -> None:
    """AUROC of ``scores`` against ``correct`` with its Hanley-McNeil standard error, and the same within each
    problem (``prompts``: separating answers, not problems by difficulty), into ``result``."""
    from rest.prm.quality import auroc, hanley_mcneil_stderr, within_prompt_auroc

    auc = auroc(list(scores), list(correct))
    positives = int(sum(correct))
    result[f"auroc_{name}"] = round(auc, 4)
    result[f"auroc_{name}_stderr"] = round(hanley_mcneil_stderr(auc, positives, len(correct) - positives), 4)
    within, stderr, count = within_prompt_auroc(list(scores), list(correct), list(prompts))
    result[f"auroc_within_prompt_{name}"] = None if within is None else round(within, 4)
    result[f"auroc_within_prompt_{name}_stderr"] = None if stderr is None else round(stderr, 4)
    result["prompts_with_both_classes"] = count


def picks(result: dict, frame: pd.DataFrame, score: str, name: str) -> None:
    """Best-of-k by ``score`` per problem, against a random pick and majority vote (mean, stderr)."""
    from rest.metrics import majority_correct, mean_stderr
    from rest.prm.quality import best_of_n_prm, best_of_n_random

    chosen = {name: [], "best_of_n_random": [], "majority": []}
    for _, group in frame.groupby("prompt_id"):
        ok = group["correct"].eq(True).tolist()
        chosen[name].append(best_of_n_prm(group[score].tolist(), ok))
        chosen["best_of_n_random"].append(best_of_n_random(ok))
        chosen["majority"].append(float(majority_correct(group["answer"].tolist(), ok)))
    for key, values in chosen.items():
        mean, stderr = mean_stderr(values)
        result[key], result[f"{key}_stderr"] = round(mean, 4), round(stderr, 4)


def head_scores(directory: Path, plan, chosen: pd.DataFrame) -> dict:
    """The trained head's predicted values of every answer's prefixes, and how well they separate."""
    from rest.pav.head import (
        ValueHead,
        hidden_features,
        load_feature_model,
        predicted_values,
    )

    head = ValueHead.load(directory)
    rows = list(plan.sample_prefixes)
    prompts = chosen.drop_duplicates("prompt_id").set_index("prompt_id")["prompt_token_ids"]
    sequences, positions, prompt_lens = plan.sequences(chosen, prompts)
    started = time.perf_counter()
    model = load_feature_model(head.features_model)
    values = predicted_values(head, hidden_features(model, sequences, positions, prompt_lens))
    frame = chosen.loc[rows].assign(
        head_min_advantage=[min(a) for _, a in values], head_q_before_last=[q[-2] for q, _ in values],
        head_q_final=[q[-1] for q, _ in values])
    result = {"head": str(directory), "head_s": round(time.perf_counter() - started, 1)}
    correct = frame["correct"].eq(True).tolist()
    for name in ("head_min_advantage", "head_q_before_last", "head_q_final"):
        separation(result, name, frame[name], correct, frame["prompt_id"])
    picks(result, frame, "head_q_final", "best_of_n_head_q_final")
    return result


def monte_carlo(args, recipe, plan, chosen: pd.DataFrame, samples: pd.DataFrame, policy: str) -> dict:
    """Roll the policy out from every prefix; the oracle values' separation and cost."""
    from rest.filters.registry import build_verifier

    from rest.engines.generation import (
        generate,
        sampling_params,
        start_engine,
        stop_engine,
    )
    from rest.pav.phase import label, rollout_inputs, rollout_rows, with_prefix_caching
    from rest.phases.verify import judge_frame
    from rest.report.progress import phase_progress

    print(plan.describe(args.iteration), flush=True)
    prompts = samples.drop_duplicates("prompt_id").set_index("prompt_id")["prompt_token_ids"]
    inputs = rollout_inputs(plan, prompts, policy, policy)
    started = time.perf_counter()
    llm = start_engine(with_prefix_caching(recipe.engine), policy, args.seed)
    try:
        with phase_progress("rollouts", total=len(inputs)) as bar:
            outputs = generate(llm, inputs, sampling_params(recipe.sampling, n=args.rollouts,
                                                            max_tokens=plan.max_tokens), bar=bar)
    finally:
        stop_engine(llm)
    rollout_s = time.perf_counter() - started
    rollouts, _ = judge_frame(build_verifier(recipe.verifier.name, recipe.verifier.options),
                              rollout_rows(plan, chosen, outputs))
    valued = scores(label(plan, chosen, rollouts, best_of=1)).merge(
        chosen[["prompt_id", "sample_index", "correct", "answer"]], on=["prompt_id", "sample_index"])
    correct = valued["correct"].eq(True).tolist()
    result = {"rollouts": len(rollouts), "prefixes": len(plan.prefixes),
              "rollout_tokens": int(rollouts["rollout_tokens"].sum()), "rollout_s": round(rollout_s, 1),
              "steps_per_sample": float(valued["pav__steps"].mean())}
    for name in ("q_before_last", "min_advantage_before_last", "q0"):
        separation(result, name, valued[name], correct, valued["prompt_id"])
    picks(result, valued, "q_before_last", "best_of_n_q_before_last")
    return result


if __name__ == "__main__":
    main()
