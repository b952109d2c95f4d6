"""Evaluation metrics: unbiased pass@k, majority vote (maj@k), and means with standard errors."""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

# The held-out metrics' names, declared once: evaluation writes them, ``loop.metric`` must be one of them.
PASS_AT_1 = "pass@1"  # greedy
PASS_AT_1_SAMPLED = "pass@1_sampled"  # mean over the evaluation's samples
PRM_EVAL_METRICS = ("prm_auroc", "prm_auroc_within_prompt", "best_of_n_prm", "prm_weighted_vote", "best_of_n_majority",
                    "best_of_n_random")
PAV_EVAL_METRICS = ("pav_auroc", "pav_auroc_within_prompt", "best_of_n_pav")  # with a trained PAV head (pav.head)
PAV_SEARCH_METRICS = ("pav_search", "pav_search_best_of_n", "pav_search_minus_best_of_n")  # with pav.search


def pass_at(k: int) -> str:
    return f"pass@{k}"


def maj_at(k: int) -> str:
    return f"maj@{k}"


def sampled_metric_names(k: int) -> tuple[str, ...]:
    """What the evaluation's samples yield: sampled pass@1, pass@k (for k > 1: pass@1 is the greedy one), maj@k."""
    return (PASS_AT_1_SAMPLED, *((pass_at(k),) if k > 1 else ()), maj_at(k))


def evaluated_metrics(samples: int, k: int, prm: bool, pav: bool = False, search: bool = False) -> tuple[str, ...]:
    """Every metric an evaluation with ``samples`` samples per problem (k of them voted) reports; ``prm``: with
    an implicit PRM, ``pav``: with a trained PAV head, ``search``: with PAV-guided search (pav.search)."""
    searched = PAV_SEARCH_METRICS if search else ()
    if not samples:
        return (PASS_AT_1, *searched)
    return (PASS_AT_1, *sampled_metric_names(k), *(PRM_EVAL_METRICS if prm else ()), *(PAV_EVAL_METRICS if pav else ()),
            *searched)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool | None]) -> bool:
    """Whether the most common extracted answer is a correct one (ties: the answer seen first wins)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return any(ok is True for a, ok in zip(answers, correct) if a == winner)


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)); (0, 0) for no values."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)
