"""Step values from rollout counts: Q of each step prefix under the prover, and each step's advantage.

A completion with steps s_1..s_T has prefixes p_0 (the prompt alone) .. p_T (the whole completion).
Q(p_t), for t < T, is estimated from ``r`` rollouts of the prover continuing p_t, ``c`` of which verify:
c / r for the prover itself, and for a best-of-K prover (Setlur et al. 2024: it succeeds when one of K
attempts does) the unbiased 1 - C(r-c, K) / C(r, K), as pass@K. Q(p_T) is the completion's own verdict
(1 or 0): nothing is left to roll out. The advantage of step t is A_t = Q(p_t) - Q(p_{t-1}).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rest.metrics import pass_at_k

# The columns the pav phase writes for each labelled sample, declared once (filters and reports read them).
Q_COLUMN = "pav__q"  # Q(p_0) .. Q(p_T): T + 1 values
ADVANTAGE_COLUMN = "pav__advantage"  # A_1 .. A_T
ROLLOUTS_COLUMN = "pav__rollouts"  # rollouts from p_0 .. p_{T-1}
VERIFIED_COLUMN = "pav__verified"  # verified rollouts from p_0 .. p_{T-1}
MIN_ADVANTAGE_COLUMN = "pav__min_advantage"  # min over A_1 .. A_T
STEPS_COLUMN = "pav__steps"  # T
VALUE_COLUMNS = (Q_COLUMN, ADVANTAGE_COLUMN, ROLLOUTS_COLUMN, VERIFIED_COLUMN, MIN_ADVANTAGE_COLUMN, STEPS_COLUMN)


def prefix_q(rollouts: int, verified: int, best_of: int = 1) -> float:
    """Q of one prefix: the share of verified rollouts, or for best-of-K the chance that one of K verifies."""
    return pass_at_k(rollouts, verified, best_of)


@dataclass(frozen=True)
class StepValues:
    """Q of every prefix and the advantage of every step of one completion."""

    q: list[float]
    advantage: list[float]

    @property
    def min_advantage(self) -> float:
        return min(self.advantage)

    def progress(self, alpha: float) -> list[float]:
        """Q(p_t) + alpha * A_t per step, the score Setlur et al. search with (alpha 0.2-0.6 there)."""
        return [q + alpha * a for q, a in zip(self.q[1:], self.advantage)]


def step_values(counts: Sequence[tuple[int, int]], outcome: float, best_of: int = 1) -> StepValues:
    """Values of a completion from ``(rollouts, verified)`` of its prefixes p_0 .. p_{T-1} and its verdict."""
    if not counts:
        raise ValueError("a completion has at least one step: counts for p_0 are needed")
    q = [prefix_q(r, c, best_of) for r, c in counts] + [float(outcome)]
    return StepValues(q=q, advantage=[after - before for before, after in zip(q, q[1:])])
