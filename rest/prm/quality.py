"""How good a PRM is on held-out samples: AUROC against outcome correctness, best-of-N and weighted voting."""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from rest.metrics import majority_correct, mean_stderr


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half (Mann-Whitney U).

    Raises ValueError when a class is missing or a score is not finite: the AUROC is then undefined.
    """
    if len(scores) != len(labels):
        raise ValueError(f"auroc: {len(scores)} scores but {len(labels)} labels")
    values = [float(s) for s in scores]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("auroc: every score must be a finite number")
    positives = sum(1 for label in labels if label)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"auroc needs both classes, got {positives} positive and {negatives} negative")
    ranks = _average_ranks(values)
    rank_sum = sum(rank for rank, label in zip(ranks, labels) if label)
    u = rank_sum - positives * (positives + 1) / 2
    return u / (positives * negatives)


def _average_ranks(values: list[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def hanley_mcneil_stderr(auc: float, positives: int, negatives: int) -> float:
    """Standard error of an AUROC from its class sizes (Hanley and McNeil 1982, eq. 2)."""
    if positives < 1 or negatives < 1:
        raise ValueError(f"hanley_mcneil_stderr needs both classes, got {positives} and {negatives}")
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    return math.sqrt(max(variance, 0.0))


def within_prompt_auroc(scores: Sequence[float], labels: Sequence[bool], prompts: Sequence[str]
                        ) -> tuple[float | None, float | None, int]:
    """AUROC over (correct, incorrect) pairs of the same prompt only, with its stderr and the number of prompts
    that have both classes: how well the scores rank one problem's answers, which is what best-of-N and a
    filter among a prompt's samples need. The plain AUROC also rewards scores that only rank problems by
    difficulty. Ties count a half; unscored (NaN) samples are left out; the stderr treats prompts as clusters
    (the pair-weighted spread of their own AUROCs). (None, None, 0) when no prompt has both classes."""
    frame = pd.DataFrame({"score": list(scores), "label": list(labels), "prompt": list(prompts)})
    frame = frame.dropna(subset=["score"])
    wins, weights = [], []
    for _, group in frame.groupby("prompt", sort=False):
        positive = group.loc[group["label"].astype(bool), "score"].to_numpy()
        negative = group.loc[~group["label"].astype(bool), "score"].to_numpy()
        if len(positive) and len(negative):
            diff = positive[:, None] - negative[None, :]
            wins.append(float((diff > 0).sum() + 0.5 * (diff == 0).sum()))
            weights.append(float(diff.size))
    if not weights:
        return None, None, 0
    value = sum(wins) / sum(weights)
    count = len(weights)
    if count < 2:
        return value, None, count
    spread = sum((w * (c / w - value)) ** 2 for c, w in zip(wins, weights))
    return value, math.sqrt(spread * count / (count - 1)) / sum(weights), count


def best_of_n_prm(scores: Sequence[float], correct: Sequence[bool | None]) -> float:
    """Correctness of the response with the highest PRM score (ties: the expected value of a random pick
    among them; a missing score never wins)."""
    values = [float(s) if s is not None and math.isfinite(float(s)) else -math.inf for s in scores]
    if not values:
        raise ValueError("best_of_n_prm needs at least one response")
    top = max(values)
    winners = [ok is True for v, ok in zip(values, correct) if v == top]
    return sum(winners) / len(winners)


def prm_weighted_vote(answers: Sequence[str | None], scores: Sequence[float], correct: Sequence[bool | None]) -> float:
    """Correctness of the answer with the largest sum of ``sigmoid(score)`` over the responses giving it
    (ALGORITHMS.md, Implicit PRM). Responses without an answer do not vote, a missing score weighs 0, and
    tied answers count as the expected value of a random pick among them; no answer at all is wrong."""
    weights: dict[str, float] = {}
    right: dict[str, bool] = {}
    for answer, score, ok in zip(answers, scores, correct):
        if answer is None:
            continue
        value = float(score) if score is not None else math.nan
        weight = 1 / (1 + math.exp(-value)) if math.isfinite(value) else 0.0
        weights[answer] = weights.get(answer, 0.0) + weight
        right[answer] = right.get(answer, False) or ok is True
    if not weights:
        return 0.0
    top = max(weights.values())
    winners = [right[a] for a, w in weights.items() if w == top]
    return sum(winners) / len(winners)


def best_of_n_random(correct: Sequence[bool | None]) -> float:
    """Expected correctness of a uniformly random pick among the responses."""
    if not correct:
        raise ValueError("best_of_n_random needs at least one response")
    return sum(ok is True for ok in correct) / len(correct)


def prm_eval_metrics(samples: pd.DataFrame, score_column: str) -> dict:
    """AUROC (and its Hanley-McNeil stderr) of ``score_column`` vs ``correct`` over all judged samples, the same
    within each prompt (:func:`within_prompt_auroc`), and
    accuracy per prompt of best-of-N by PRM score, PRM-weighted vote, majority vote (``answer``) and random
    pick, with stderrs.

    The AUROC is None when the judged samples hold only one class (it is undefined then).
    """
    if score_column not in samples.columns:
        raise KeyError(f"prm_eval_metrics: the samples have no '{score_column}' column")
    judged = samples[samples["correct"].notna()]
    scores = pd.to_numeric(judged[score_column], errors="coerce").astype(float)
    labels = judged["correct"].astype(bool)
    scored = scores.notna()
    positives, negatives = int(labels[scored].sum()), int((~labels[scored]).sum())
    metrics: dict = {"prm_eval_samples": int(scored.sum()), "prm_eval_correct": positives,
                     "prm_eval_unscored": int((~scored).sum())}
    if positives and negatives:
        auc = auroc(scores[scored].tolist(), labels[scored].tolist())
        metrics["prm_auroc"], metrics["prm_auroc_stderr"] = auc, hanley_mcneil_stderr(auc, positives, negatives)
    else:
        metrics["prm_auroc"] = metrics["prm_auroc_stderr"] = None
    within = within_prompt_auroc(scores[scored].tolist(), labels[scored].tolist(),
                                 judged.loc[scored, "prompt_id"].tolist())
    (metrics["prm_auroc_within_prompt"], metrics["prm_auroc_within_prompt_stderr"],
     metrics["prm_auroc_within_prompt_prompts"]) = within
    per_prompt: dict[str, list[float]] = {"best_of_n_prm": [], "prm_weighted_vote": [], "best_of_n_majority": [],
                                          "best_of_n_random": []}
    for _, group in samples.sort_values("sample_index").groupby("prompt_id", sort=False):
        correct = group["correct"].tolist()
        per_prompt["best_of_n_prm"].append(best_of_n_prm(group[score_column].tolist(), correct))
        per_prompt["prm_weighted_vote"].append(prm_weighted_vote(list(group["answer"]), group[score_column].tolist(), correct))
        per_prompt["best_of_n_majority"].append(float(majority_correct(list(group["answer"]), correct)))
        per_prompt["best_of_n_random"].append(best_of_n_random(correct))
    for name, values in per_prompt.items():
        metrics[name], metrics[f"{name}_stderr"] = mean_stderr(values)
    return metrics
