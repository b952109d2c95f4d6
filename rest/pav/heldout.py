"""The trained PAV head on the held-out split: predicted step values of the evaluation's sampled answers.

No rollouts and no gold answer: each answer is cut into steps (the pav section's splitter), the head
predicts Q of every prefix p_0 .. p_T from the base model's hidden states, and the answer's predicted
worst advantage is its score. Metrics: ``pav_auroc`` (that score against correctness, Hanley-McNeil
standard error), ``pav_auroc_within_prompt`` (the same among each problem's answers only) and
``best_of_n_pav`` (per problem, the answer with the highest predicted Q of the whole).
With ``pav.search``, :func:`search_heldout` also runs the head-guided beam search against best-of-N.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from rest.metrics import PAV_SEARCH_METRICS, mean_stderr
from rest.pav.head import (
    ValueHead,
    hidden_features,
    load_feature_model,
    predicted_values,
    prefix_positions,
)
from rest.prm.quality import auroc, best_of_n_prm, hanley_mcneil_stderr, within_prompt_auroc
from rest.prm.steps import StepSplitter, step_ends
from rest.recipe.schema import PavSearchConfig, Recipe, SamplingConfig
from rest.run.rundir import RunDir

PREDICTED_Q = "pav__predicted_q"
PREDICTED_MIN_ADVANTAGE = "pav__predicted_min_advantage"


def head_after(run: RunDir, iteration: int) -> Path | None:
    """The PAV head in force after ``iteration``: the latest one trained at or before it (None before any)."""
    for k in range(iteration, 0, -1):
        directory = run.pav_dir(k) / "head"
        if (directory / "head.npz").is_file():
            return directory
    return None


def score_heldout(recipe: Recipe, run: RunDir, iteration: int, judged: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The evaluation's rows with the head's predictions on the sampled ones, and its metrics ({} without a head)."""
    from transformers import AutoTokenizer

    directory = head_after(run, iteration)
    if directory is None:
        return judged, {}
    started = time.perf_counter()
    head = ValueHead.load(directory)
    tokenizer = AutoTokenizer.from_pretrained(head.features_model)
    splitter = StepSplitter.from_config(recipe.pav)
    rows = judged[(judged["mode"] == "sampled") & judged["correct"].notna()
                  & judged["completion_token_ids"].map(len).gt(0)]
    sequences, positions, prompt_lens = [], [], []
    for prompt, completion in zip(rows["prompt_token_ids"], rows["completion_token_ids"]):
        prompt, completion = [int(t) for t in prompt], [int(t) for t in completion]
        sequences.append(prompt + completion)
        positions.append(prefix_positions(len(prompt), step_ends(tokenizer, completion, splitter)))
        prompt_lens.append(len(prompt))
    model = load_feature_model(head.features_model)
    values = predicted_values(head, hidden_features(model, sequences, positions, prompt_lens))
    scored = rows.assign(**{PREDICTED_Q: [q for q, _ in values], PREDICTED_MIN_ADVANTAGE: [min(a) for _, a in values]})
    merged = judged.copy()
    for column in (PREDICTED_Q, PREDICTED_MIN_ADVANTAGE):  # None on greedy rows
        merged[column] = scored[column].reindex(judged.index)
    labels = scored["correct"].astype(bool).tolist()
    positives, negatives = sum(labels), len(labels) - sum(labels)
    metrics: dict = {"pav_head": str(directory), "pav_eval_samples": len(scored), "pav_eval_correct": positives}
    if positives and negatives:
        auc = auroc(scored[PREDICTED_MIN_ADVANTAGE].tolist(), labels)
        metrics["pav_auroc"], metrics["pav_auroc_stderr"] = auc, hanley_mcneil_stderr(auc, positives, negatives)
    else:
        metrics["pav_auroc"] = metrics["pav_auroc_stderr"] = None
    metrics["pav_auroc_within_prompt"], metrics["pav_auroc_within_prompt_stderr"], _ = within_prompt_auroc(
        scored[PREDICTED_MIN_ADVANTAGE].tolist(), labels, scored["prompt_id"].tolist())
    picks = [best_of_n_prm([q[-1] for q in group[PREDICTED_Q]], group["correct"].tolist())
             for _, group in scored.groupby("prompt_id", sort=False)]
    metrics["best_of_n_pav"], metrics["best_of_n_pav_stderr"] = mean_stderr(picks)
    metrics["pav_scoring_s"] = time.perf_counter() - started
    return merged, metrics


def search_heldout(llm: Any, cfg: PavSearchConfig, sampling: SamplingConfig, delimiter: str, head_dir: Path,
                   problems: pd.DataFrame, verifier: Any) -> tuple[pd.DataFrame, dict]:
    """PAV-guided beam search on ``problems`` (rows of ``build_prompts``) against best-of-N at equal tokens.

    ``llm`` (a running engine or replica pool) continues each beam to the end of its next step (``delimiter``
    kept); the head's predicted Q + alpha * A ranks candidates; the answer is the finished one with the highest
    Q. Best-of-N draws ``cfg.samples`` whole answers per problem and, of the first that fit the tokens the
    search spent on that problem, takes the one with the highest predicted Q (the head read as an outcome
    reward model). Returns one row per problem and the metrics of :data:`rest.metrics.PAV_SEARCH_METRICS`.
    """
    from rest.engines.generation import generate, sampling_params
    from rest.pav.search import Candidate, beam_search, best_of_n, within_budget

    started = time.perf_counter()
    head = ValueHead.load(head_dir)
    model = load_feature_model(head.features_model)

    def value(pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        sequences = [list(p) + list(c) for p, c in pairs]
        rows = hidden_features(model, sequences, [[len(s) - 1] for s in sequences], [len(p) for p, _ in pairs])
        return [float(head.predict(r)[0]) for r in rows]

    def expand(requests: list[list[int]], n: int) -> list[list[tuple[str, list[int], bool]]]:
        outputs = generate(llm, requests, sampling_params(sampling, n=n, stop=[delimiter]))
        return [[(c.text, c.token_ids, c.finish_reason == "stop" and c.text.endswith(delimiter)) for c in outs]
                for outs in outputs]

    chosen = problems.head(cfg.problems) if cfg.problems else problems
    prompts = [[int(t) for t in ids] for ids in chosen["prompt_token_ids"]]
    searched = beam_search(prompts, expand, value, lambda text: verifier.extract_answer(text) is not None,
                           width=cfg.width, expansions=cfg.expansions, max_steps=cfg.max_steps, alpha=cfg.alpha)
    budgets = [r.sampled_tokens for r in searched]
    drawn = generate(llm, prompts, sampling_params(sampling, n=cfg.samples))
    samples = [[Candidate(c.text, list(c.token_ids), 0.0) for c in outs] for outs in drawn]
    taken = []
    for prompt, candidates, budget in zip(prompts, samples, budgets):  # the head scores what best-of-N may take
        within = within_budget(candidates, budget)
        for candidate, q in zip(within, value([(prompt, c.ids) for c in within])):
            candidate.q = q
        taken.append(len(within))
    picked = best_of_n(samples, budgets)

    def right(candidate: Any, gold: Any) -> bool:
        return candidate is not None and verifier.judge(candidate.text, gold, {}).score == 1.0

    golds = chosen["gold"].tolist()
    table = pd.DataFrame({
        "prompt_id": chosen["prompt_id"].tolist(),
        "search_answer": [r.answer.text if r.answer else None for r in searched],
        "search_correct": [right(r.answer, g) for r, g in zip(searched, golds)],
        "search_tokens": budgets,
        "best_of_n_answer": [c.text if c else None for c, _ in picked],
        "best_of_n_correct": [right(c, g) for (c, _), g in zip(picked, golds)],
        "best_of_n_tokens": [used for _, used in picked],
        "best_of_n_samples": taken,
    })
    metrics: dict = {}
    search_ok, bon_ok = table["search_correct"].astype(float), table["best_of_n_correct"].astype(float)
    for name, values in zip(PAV_SEARCH_METRICS, (search_ok, bon_ok, search_ok - bon_ok)):
        metrics[name], metrics[f"{name}_stderr"] = mean_stderr(values.tolist())
    metrics.update(pav_search_problems=len(table), pav_search_tokens_per_problem=float(table["search_tokens"].mean()),
                   pav_search_best_of_n_tokens_per_problem=float(table["best_of_n_tokens"].mean()),
                   pav_search_best_of_n_samples_per_problem=float(table["best_of_n_samples"].mean()),
                   pav_search_s=time.perf_counter() - started)
    return table, metrics
