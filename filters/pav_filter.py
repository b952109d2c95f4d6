"""The ``process_advantage`` filter: among outcome-correct samples, keep those whose steps make progress.

It reads the pav phase's step values (rest/pav/values.py): a sample's worst step advantage
(``score: advantage``), or its worst step by Setlur et al.'s search score Q + alpha * A
(``score: progress``), where Q is the prover's chance of success after the step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import pandas as pd

from rest.pav.values import ADVANTAGE_COLUMN, Q_COLUMN, StepValues

from .step_score import StepScoreFilter

SCORES = ("advantage", "progress")


@dataclass(frozen=True)
class ProcessAdvantageFilter(StepScoreFilter):
    """:class:`StepScoreFilter` on PAV step values: min over steps of A_t (``advantage``) or of
    Q_t + alpha * A_t (``progress``). The default keeps samples with no step that lowers the prover's
    chance of success (min advantage >= 0)."""

    score: str = "advantage"
    alpha: float = 0.5

    name = "process_advantage"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score not in SCORES:
            raise ValueError(f"process_advantage: score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if not isinstance(self.alpha, Real) or isinstance(self.alpha, bool) or not math.isfinite(self.alpha):
            raise ValueError(f"process_advantage: alpha must be a finite number, got {self.alpha!r}")

    def scores(self, samples: pd.DataFrame) -> pd.Series:
        missing = [c for c in (Q_COLUMN, ADVANTAGE_COLUMN) if c not in samples.columns]
        if missing:
            raise KeyError(f"process_advantage: the samples have no {', '.join(missing)} column; the recipe "
                           "needs a pav section (the pav phase writes step values before selection)")
        return pd.Series([self._score(q, a) for q, a in zip(samples[Q_COLUMN], samples[ADVANTAGE_COLUMN])],
                         index=samples.index, dtype="float64")

    def _score(self, q, advantage) -> float:
        if q is None or advantage is None or (isinstance(q, float) and math.isnan(q)) or len(advantage) == 0:
            return math.nan
        values = StepValues(q=list(q), advantage=list(advantage))
        return values.min_advantage if self.score == "advantage" else min(values.progress(self.alpha))
