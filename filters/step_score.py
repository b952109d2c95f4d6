"""Selection by a per-sample score of its reasoning steps, among outcome-correct samples.

The implicit PRM's ``implicit_prm`` and PAV's ``process_advantage`` differ only in the score they read;
the rules (threshold, top-k per prompt, quantile of the iteration or of each prompt), the rows they consider and
their reasons are these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
import pandas as pd

from .pipeline import FilterResult
from .selection import rank_within

MODES = ("threshold", "top_k", "quantile", "prompt_quantile")


@dataclass(frozen=True)
class StepScoreFilter:
    """Drop outcome-correct samples whose step score is poor; ``mode`` picks the rule.

    - ``threshold``: keep scores >= ``threshold``.
    - ``top_k``: keep the ``top_k`` best-scored samples of each prompt (ties in seeded random order).
    - ``quantile``: keep scores >= the ``quantile``-quantile of the scores considered in the iteration
      (0.25 drops the lowest quarter). Scores also measure how hard a problem is, so this cut can drop every
      correct sample of the hardest solved problems.
    - ``prompt_quantile``: the same cut within each prompt's considered samples: a prompt keeps its samples
      scored at or above its own ``quantile``-quantile, so no prompt loses all of them.

    Only rows that are outcome-correct (``correct`` true) and still kept by the earlier filters are
    considered; every other row gets ``keep`` true (its fate is the earlier filters') and the reason
    ``not_considered``. A considered row without a score is dropped as ``unscored``. A subclass names
    itself (``name``) and says what the score is (:meth:`scores`).
    """

    mode: str = "threshold"
    threshold: float = 0.0
    top_k: int = 1
    quantile: float = 0.25

    name = "step_score"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        threshold = self.threshold
        if not isinstance(threshold, Real) or isinstance(threshold, bool) or not math.isfinite(threshold):
            raise ValueError(f"{self.name}: threshold must be a finite number, got {self.threshold!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"{self.name}: top_k must be an integer >= 1, got {self.top_k!r}")
        if not isinstance(self.quantile, Real) or not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"{self.name}: quantile must be in [0, 1], got {self.quantile!r}")

    def scores(self, samples: pd.DataFrame) -> pd.Series:
        """Every row's score (NaN where it has none); raises KeyError when the samples lack its columns."""
        raise NotImplementedError

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Verdicts for every row."""
        score = self.scores(samples)
        considered = keep.astype(bool) & samples["correct"].eq(True).fillna(False).astype(bool)
        scored = considered & score.notna()
        passed = self._passed(samples, score, scored, seed)
        kept_reason = {"threshold": "above_threshold", "top_k": "within_top_k", "quantile": "above_quantile",
                       "prompt_quantile": "above_prompt_quantile"}
        dropped_reason = {"threshold": "below_threshold", "top_k": "outside_top_k", "quantile": "below_quantile",
                          "prompt_quantile": "below_prompt_quantile"}
        reason = np.select([~considered, ~scored, passed], ["not_considered", "unscored", kept_reason[self.mode]],
                           dropped_reason[self.mode])
        own_keep = ~considered | (scored & passed)
        return FilterResult(score=score, keep=own_keep, reason=pd.Series(reason, index=samples.index))

    def _passed(self, samples: pd.DataFrame, score: pd.Series, scored: pd.Series, seed: int) -> pd.Series:
        if self.mode == "threshold":
            return score >= self.threshold
        if self.mode == "top_k":
            ranked = samples.assign(_step_score=score)
            return rank_within(ranked, scored, [samples["prompt_id"]], "_step_score", seed, self.name) < self.top_k
        if not scored.any():
            return pd.Series(False, index=samples.index)
        if self.mode == "prompt_quantile":
            cuts = score[scored].groupby(samples.loc[scored, "prompt_id"]).quantile(self.quantile)
            return score >= samples["prompt_id"].map(cuts)  # NaN cut (prompt with nothing scored): False
        cut = float(np.quantile(score[scored].to_numpy(), self.quantile))
        return score >= cut
