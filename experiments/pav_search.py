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
  predicted Q of the whole answer (the head read as an outcome reward model), and by a random pick (the
  first sample) for reference.

Answers are judged by the recipe's verifier. Prints accuracies with standard errors, the paired difference
search - best-of-N, and tokens per problem; last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time
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
    from rest.engines.generation import (
        generate,
        sampling_params,
        start_engine,
        stop_engine,
    )
    from rest.engines.models import resolve_model
    from rest.metrics import mean_stderr
    from rest.pav.head import ValueHead, hidden_features, load_feature_model
    from rest.pav.phase import with_prefix_caching
    from rest.pav.search import Candidate, beam_search, best_of_n, within_budget
    from rest.phases.sample import build_prompts, policy_after
    from rest.recipe.schema import load_recipe
    from rest.run.rundir import RunDir

    run = RunDir(args.run_dir)
    recipe = load_recipe(run.recipe_path)
    delimiter = recipe.prm.step_delimiter if recipe.prm else "\n"
    policy = policy_after(recipe, run, args.iteration) if args.iteration else resolve_model(recipe.model)
    problems = build_prompts(recipe, load_splits(recipe).eval, policy)
    problems = problems.sample(frac=1.0, random_state=args.seed).head(args.problems).reset_index(drop=True)
    prompts = [[int(t) for t in ids] for ids in problems["prompt_token_ids"]]
    verifier = build_verifier(recipe.verifier.name, recipe.verifier.options)
    head = ValueHead.load(args.head)
    features_model = load_feature_model(head.features_model)

    def value(pairs):
        sequences = [list(p) + list(c) for p, c in pairs]
        rows = hidden_features(features_model, sequences, [[len(s) - 1] for s in sequences], [len(p) for p, _ in pairs])
        return [float(head.predict(r)[0]) for r in rows]

    llm = start_engine(with_prefix_caching(recipe.engine), policy, args.seed)
    try:
        def expand(requests, n):
            outputs = generate(llm, requests, sampling_params(recipe.sampling, n=n, stop=[delimiter]))
            return [[(c.text, c.token_ids, c.finish_reason == "stop" and c.text.endswith(delimiter)) for c in outs]
                    for outs in outputs]

        started = time.perf_counter()
        searched = beam_search(prompts, expand, value, lambda text: verifier.extract_answer(text) is not None,
                               width=args.width, expansions=args.expansions, max_steps=args.max_steps,
                               alpha=args.alpha)
        search_s = time.perf_counter() - started
        started = time.perf_counter()
        drawn = generate(llm, prompts, sampling_params(recipe.sampling, n=args.samples))
        sample_s = time.perf_counter() - started
    finally:
        stop_engine(llm)
    samples = [[Candidate(c.text, list(c.token_ids), 0.0) for c in outs] for outs in drawn]
    budgets = [r.sampled_tokens for r in searched]
    # The head scores only the samples best-of-N may take (those within each problem's budget).
    taken = []
    for prompt, candidates, budget in zip(prompts, samples, budgets):
        within = within_budget(candidates, budget)
        for candidate, q in zip(within, value([(prompt, c.ids) for c in within])):
            candidate.q = q
        taken.append(len(within))
    picked = best_of_n(samples, budgets)

    def right(candidate, gold) -> float:
        return float(candidate is not None and verifier.judge(candidate.text, gold, {}).score == 1.0)

    golds = problems["gold"].tolist()
    search_ok = [right(r.answer, g) for r, g in zip(searched, golds)]
    bon_ok = [right(c, g) for (c, _), g in zip(picked, golds)]
    first_ok = [right(s[0], g) for s, g in zip(samples, golds)]
    result = {"run": args.run_dir.name, "iteration": args.iteration, "problems": len(problems), "width": args.width,
              "expansions": args.expansions, "max_steps": args.max_steps, "alpha": args.alpha}
    for name, values in (("search", search_ok), ("best_of_n_head", bon_ok), ("first_sample", first_ok),
                         ("search_minus_best_of_n", [a - b for a, b in zip(search_ok, bon_ok)])):
        mean, stderr = mean_stderr(values)
        result[name], result[f"{name}_stderr"] = round(mean, 4), round(stderr, 4)
    result["search_tokens_per_problem"] = round(sum(budgets) / len(budgets), 1)
    result["best_of_n_tokens_per_problem"] = round(sum(u for _, u in picked) / len(picked), 1)
    result["best_of_n_samples_per_problem"] = round(sum(taken) / len(taken), 2)
    result.update(search_s=round(search_s, 1), sample_s=round(sample_s, 1))
    for key, value_ in result.items():
        print(f"{key:>32}  {value_}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
