"""The ``implicit_prm`` filter: among outcome-correct samples, keep those the implicit PRM rates well.

The scores come from the ``prm_score`` phase (``prm__min``, ``prm__mean``, ``prm__sum``, ``prm__last_q``
columns); the filter only reads them, so it stays as cheap and literal to test as the other rules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
import pandas as pd

from .pipeline import FilterResult
from .selection import rank_within

AGGREGATES = ("min", "mean", "sum", "last_q")
MODES = ("threshold", "top_k", "quantile")


def prm_column(aggregate: str) -> str:
    """The sample column holding a PRM aggregate (``min`` -> ``prm__min``)."""
    return f"prm__{aggregate}"


@dataclass(frozen=True)
class ImplicitPRMFilter:
    """Drop outcome-correct samples the PRM rates poorly; ``mode`` picks the rule.

    - ``threshold``: keep scores >= ``threshold``.
    - ``top_k``: keep the ``top_k`` best-scored samples of each prompt (ties in seeded random order).
    - ``quantile``: keep scores >= the ``quantile``-quantile of the scores considered in the iteration
      (0.25 drops the lowest quarter).

    Only rows that are outcome-correct (``correct`` true) and still kept by the earlier filters are
    considered; every other row gets ``keep`` true (its fate is the earlier filters') and the reason
    ``not_considered``. A considered row without a score is dropped as ``unscored``. Score = the
    aggregate (``min`` by default, the paper's choice), on every row that has one.
    """

    mode: str = "threshold"
    aggregate: str = "min"
    threshold: float = 0.0
    top_k: int = 1
    quantile: float = 0.25

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"implicit_prm: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"implicit_prm: aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if not isinstance(self.threshold, Real) or isinstance(self.threshold, bool) or not math.isfinite(self.threshold):
            raise ValueError(f"implicit_prm: threshold must be a finite number, got {self.threshold!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"implicit_prm: top_k must be an integer >= 1, got {self.top_k!r}")
        if not isinstance(self.quantile, Real) or not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"implicit_prm: quantile must be in [0, 1], got {self.quantile!r}")

    @property
    def column(self) -> str:
        """The sample column this filter reads."""
        return prm_column(self.aggregate)

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Verdicts for every row; raises KeyError when the samples carry no PRM scores."""
        if self.column not in samples.columns:
            raise KeyError(
                f"implicit_prm: the samples have no '{self.column}' column; the recipe needs a prm section "
                "(the prm_score phase writes the PRM's scores before selection)"
            )
        score = pd.to_numeric(samples[self.column], errors="coerce").astype(float)
        considered = keep.astype(bool) & samples["correct"].eq(True).fillna(False).astype(bool)
        scored = considered & score.notna()
        passed = self._passed(samples, score, scored, seed)
        reason = np.select(
            [~considered, ~scored, passed], ["not_considered", "unscored", self._kept_reason()], self._dropped_reason()
        )
        own_keep = ~considered | (scored & passed)
        return FilterResult(score=score, keep=own_keep, reason=pd.Series(reason, index=samples.index))

    def _passed(self, samples: pd.DataFrame, score: pd.Series, scored: pd.Series, seed: int) -> pd.Series:
        if self.mode == "threshold":
            return score >= self.threshold
        if self.mode == "top_k":
            ranked = samples.assign(_prm_score=score)
            rank = rank_within(ranked, scored, [samples["prompt_id"]], "_prm_score", seed, "implicit_prm")
            return rank < self.top_k
        if not scored.any():
            return pd.Series(False, index=samples.index)
        cut = float(np.quantile(score[scored].to_numpy(), self.quantile))
        return score >= cut

    def _kept_reason(self) -> str:
        return {"threshold": "above_threshold", "top_k": "within_top_k", "quantile": "above_quantile"}[self.mode]

    def _dropped_reason(self) -> str:
        return {"threshold": "below_threshold", "top_k": "outside_top_k", "quantile": "below_quantile"}[self.mode]
