"""PAV-guided step-level beam search against best-of-N reranked by the same head, at equal sampled tokens.

    .venv/bin/python experiments/pav_search.py RUN_DIR --head HEAD_DIR [--iteration 0] [--problems 100] \
        [--width 4] [--expansions 4] [--max-steps 4] [--alpha 0.5] [--samples 16]

On held-out problems of a run (its recipe's validation split, its few-shot prompt, the policy of
``--iteration``) with a trained PAV head (``RUN/iter_K/pav/head``, experiments/pav_head.sh):

- search: rest/pav/search.py's beam search; vLLM continues each beam to the end of its next step (the
  step delimiter kept), the head's predicted Q + alpha * A ranks the candidates, the highest-Q finished
  candidate is the answer;
- best-of-N: ``--samples`` whole answers per problem drawn as the E-step draws them; per problem, the first
  ones that fit the tokens the search spent on that problem (at least one) are reranked by the head's
  predicted Q of the whole answer (the head read as an outcome reward model).

Answers are judged by the recipe's verifier. The same code runs inside evaluation with ``pav.search``
(rest/pav/heldout.py: search_heldout). Prints accuracies with standard errors, the paired difference
search - best-of-N, and tokens per problem; last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--head", type=Path, required=True)
    parser.add_argument("--iteration", type=int, default=0)
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--expansions", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from rest.filters.registry import build_verifier

    from rest.data.problems import load_splits
    from rest.engines.generation import start_engine, stop_engine
    from rest.engines.models import resolve_model
    from rest.pav.heldout import search_heldout
    from rest.pav.phase import with_prefix_caching
    from rest.phases.sample import build_prompts, policy_after
    from rest.recipe.schema import PavSearchConfig, load_recipe
    from rest.run.rundir import RunDir

    run = RunDir(args.run_dir)
    recipe = load_recipe(run.recipe_path)
    delimiter = recipe.pav.step_delimiter if recipe.pav else recipe.prm.step_delimiter if recipe.prm else "\n"
    policy = policy_after(recipe, run, args.iteration) if args.iteration else resolve_model(recipe.model)
    problems = build_prompts(recipe, load_splits(recipe).eval, policy)
    problems = problems.sample(frac=1.0, random_state=args.seed).head(args.problems).reset_index(drop=True)
    cfg = PavSearchConfig(width=args.width, expansions=args.expansions, max_steps=args.max_steps, alpha=args.alpha,
                          samples=args.samples)
    verifier = build_verifier(recipe.verifier.name, recipe.verifier.options)
    llm = start_engine(with_prefix_caching(recipe.engine), policy, args.seed)
    try:
        table, metrics = search_heldout(llm, cfg, recipe.sampling, delimiter, args.head, problems, verifier)
    finally:
        stop_engine(llm)
    result = {"run": args.run_dir.name, "iteration": args.iteration, **cfg.model_dump(), **metrics}
    for key, value in result.items():
        print(f"{key:>40}  {round(value, 4) if isinstance(value, float) else value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
