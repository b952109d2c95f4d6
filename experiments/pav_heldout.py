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
random pick and majority vote, and the cost (rollouts, tokens, seconds). Last line: one JSON object.
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
    args = parser.parse_args()

    from rest.filters.registry import build_verifier
    from transformers import AutoTokenizer

    from rest.engines.models import resolve_model
    from rest.metrics import majority_correct, mean_stderr
    from rest.pav.phase import label, roll_out, rollout_rows
    from rest.pav.plan import labelled_samples, make_plan
    from rest.phases.sample import policy_after
    from rest.phases.verify import judge_frame
    from rest.prm.quality import (
        auroc,
        best_of_n_prm,
        best_of_n_random,
        hanley_mcneil_stderr,
    )
    from rest.prm.steps import StepSplitter
    from rest.recipe.schema import PavConfig, load_recipe
    from rest.run.rundir import RunDir

    run = RunDir(args.run_dir)
    recipe = load_recipe(run.recipe_path)
    delimiter = recipe.prm.step_delimiter if recipe.prm else "\n"
    cfg = PavConfig(samples="all", rollouts=args.rollouts, step_delimiter=delimiter)
    recipe = recipe.model_copy(update={"pav": cfg})
    policy = policy_after(recipe, run, args.iteration) if args.iteration else resolve_model(recipe.model)
    samples = pd.read_parquet(run.eval_dir(args.iteration) / "samples.parquet")
    samples = samples[samples["mode"] == "sampled"]
    problems = samples["prompt_id"].drop_duplicates().sample(frac=1.0, random_state=args.seed)[: args.problems]
    samples = samples[samples["prompt_id"].isin(set(problems))].reset_index(drop=True)
    chosen = labelled_samples(samples, cfg, args.seed)
    plan = make_plan(chosen, AutoTokenizer.from_pretrained(policy), StepSplitter.from_config(cfg), cfg.rollouts,
                     recipe.sampling.max_tokens)
    print(plan.describe(args.iteration), flush=True)
    prompts = samples.drop_duplicates("prompt_id").set_index("prompt_id")["prompt_token_ids"]
    started = time.perf_counter()
    outputs = roll_out(recipe, plan, prompts, policy, policy, args.seed, "rollouts")
    rollout_s = time.perf_counter() - started
    rollouts, _ = judge_frame(build_verifier(recipe.verifier.name, recipe.verifier.options),
                              rollout_rows(plan, chosen, outputs))
    valued = scores(label(plan, chosen, rollouts, best_of=1)).merge(
        chosen[["prompt_id", "sample_index", "correct", "answer"]], on=["prompt_id", "sample_index"])
    correct = valued["correct"].eq(True)
    result = {"run": args.run_dir.name, "iteration": args.iteration, "problems": int(valued["prompt_id"].nunique()),
              "samples": len(valued), "correct": int(correct.sum()), "rollouts": len(rollouts),
              "prefixes": len(plan.prefixes), "rollout_tokens": int(rollouts["rollout_tokens"].sum()),
              "rollout_s": round(rollout_s, 1), "steps_per_sample": float(valued["pav__steps"].mean())}
    for name in ("q_before_last", "min_advantage_before_last", "q0"):
        auc = auroc(valued[name].tolist(), correct.tolist())
        result[f"auroc_{name}"] = round(auc, 4)
        result[f"auroc_{name}_stderr"] = round(hanley_mcneil_stderr(auc, int(correct.sum()), int((~correct).sum())), 4)
    picks = {"best_of_n_q_before_last": [], "best_of_n_random": [], "majority": []}
    for _, group in valued.groupby("prompt_id"):
        ok = group["correct"].tolist()
        picks["best_of_n_q_before_last"].append(best_of_n_prm(group["q_before_last"].tolist(), ok))
        picks["best_of_n_random"].append(best_of_n_random(ok))
        picks["majority"].append(float(majority_correct(group["answer"].tolist(), ok)))
    for name, values in picks.items():
        mean, stderr = mean_stderr(values)
        result[name], result[f"{name}_stderr"] = round(mean, 4), round(stderr, 4)
    for key, value in result.items():
        print(f"{key:>40}  {value}")
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
