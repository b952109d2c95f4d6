"""Selection rules of ReST / ReST-EM / PRIME: which verified samples the M-step trains on.

Every rule records a verdict (score, keep, reason) on every row and never drops one. Rules that pick
among samples (``per_prompt_cap``, ``dedup``) only consider rows the earlier filters still keep;
rules about a sample's own properties (``keep_correct``, ``drop_truncated``) and about its prompt
(``difficulty_band``, computed from ``correct`` over all rows) judge every row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Sequence

import numpy as np
import pandas as pd

from .pipeline import FilterResult

# Accuracies are fractions such as 1/5; this slack keeps them inside a band that starts at 0.2
# however the division rounds.
_BAND_SLACK = 1e-9


@dataclass(frozen=True)
class KeepCorrect:
    """Keep samples whose canonical reward reaches a threshold (binary rewards: the correct ones).

    ``threshold`` is one number, or a schedule with one entry per iteration (ReST's rising tau, e.g.
    ``[0.0, 0.7, 0.8, 0.9]``): iteration K uses entry K (1-based), the last entry once the list ends.
    The iteration is read from each row's ``iteration`` column, or its ``improve_step`` (ReST mode).
    """

    threshold: float | Sequence[float] = 1.0
    strict: bool = False  # keep only rewards above the threshold (ReST's 1[R > tau]) instead of >=

    def __post_init__(self) -> None:
        values = tuple(self.threshold) if isinstance(self.threshold, (list, tuple)) else (self.threshold,)
        if not values or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(
                f"keep_correct: threshold must be a number or a non-empty list of numbers, got {self.threshold!r}"
            )
        if isinstance(self.threshold, (list, tuple)):
            object.__setattr__(self, "threshold", tuple(float(v) for v in values))  # frozen, hashable

    def threshold_at(self, iteration: int) -> float:
        """The threshold of iteration ``iteration`` (1-based; past the schedule's end, its last entry)."""
        if not isinstance(self.threshold, tuple):
            return float(self.threshold)
        return self.threshold[min(max(int(iteration), 1), len(self.threshold)) - 1]

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Score = reward; unjudged samples (reward None) are dropped with their own reason."""
        reward = pd.to_numeric(samples["reward"], errors="coerce")
        judged = reward.notna()
        threshold = self._thresholds(samples)
        passed = judged & ((reward > threshold) if self.strict else (reward >= threshold))
        reason = np.where(~judged, "unjudged", np.where(passed, "correct", "below_threshold"))
        return FilterResult(score=reward, keep=passed, reason=pd.Series(reason, index=samples.index))

    def _thresholds(self, samples: pd.DataFrame) -> pd.Series | float:
        if not isinstance(self.threshold, tuple) or len(self.threshold) == 1:
            return self.threshold_at(1)
        # ReST's Improve steps re-filter one grown set: there the schedule follows the Improve step.
        step = "improve_step" if "improve_step" in samples.columns else "iteration"
        if step not in samples.columns:
            raise KeyError("keep_correct: a threshold schedule needs the samples' 'iteration' column")
        return samples[step].map(self.threshold_at).astype(float)


@dataclass(frozen=True)
class PerPromptCap:
    """Keep at most ``max_per_prompt`` samples per prompt (ReST-EM: 10), best ``by`` first, ties by seed.

    With ``origins`` (e.g. ``[rationalized, reflected]``) the cap counts and limits only rows of those
    origins (the ``origin`` column), so repaired samples can be capped apart from the policy's own.
    """

    max_per_prompt: int = 10
    by: str = "reward"
    origins: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.max_per_prompt < 1:
            raise ValueError(f"per_prompt_cap: max_per_prompt must be >= 1, got {self.max_per_prompt}")
        if self.origins is not None:
            if isinstance(self.origins, str) or not self.origins:
                raise ValueError(f"per_prompt_cap: origins must be a non-empty list, got {self.origins!r}")
            object.__setattr__(self, "origins", tuple(self.origins))  # frozen, hashable

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Rank the still-kept samples of each prompt by ``by`` (descending, random tie-break)."""
        capped = pd.Series(True, index=samples.index)
        if self.origins is not None:
            if "origin" not in samples.columns:
                raise KeyError("per_prompt_cap: option 'origins' needs the samples' 'origin' column")
            capped = samples["origin"].isin(self.origins)
        rank = rank_within(samples, keep & capped, [samples["prompt_id"]], self.by, seed, "per_prompt_cap")
        within = (rank < self.max_per_prompt) | (keep & ~capped)  # NaN (not considered) compares False
        reason = np.where(~keep, "not_considered", np.where(~capped, "not_capped",
                                                            np.where(within, "within_cap", "over_cap")))
        return FilterResult(score=rank, keep=within, reason=pd.Series(reason, index=samples.index))


@dataclass(frozen=True)
class Dedup:
    """Per prompt, keep one sample of each normalised text (whitespace collapsed, case folded).

    The copy kept is the best by ``by`` (descending), ties broken by the seed; score = its rank among
    the copies (0 = kept).
    """

    by: str = "reward"
    text: str = "completion"  # the column whose text is compared

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Rank the still-kept copies of each (prompt, normalised text) and keep the first."""
        if self.text not in samples.columns:
            raise KeyError(f"dedup: column '{self.text}' (option 'text') is not in the samples")
        normalised = samples[self.text].map(normalise_text)
        rank = rank_within(samples, keep, [samples["prompt_id"], normalised], self.by, seed, "dedup")
        first = rank == 0
        reason = np.where(~keep, "not_considered", np.where(first, "unique", "duplicate"))
        return FilterResult(score=rank, keep=first, reason=pd.Series(reason, index=samples.index))


def normalise_text(text: object) -> str:
    """``text`` with runs of whitespace collapsed to one space, trimmed and case folded (None -> "")."""
    return " ".join(str(text).split()).casefold() if isinstance(text, str) else ""


@dataclass(frozen=True)
class DropTruncated:
    """Drop samples the engine stopped at the length limit: their reasoning or final answer is cut off."""

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Keep rows whose ``truncated`` is false; no score."""
        if "truncated" not in samples.columns:
            raise KeyError("drop_truncated: the samples have no 'truncated' column")
        truncated = samples["truncated"].eq(True)
        reason = np.where(truncated, "truncated", "complete")
        score = pd.Series(np.nan, index=samples.index)
        return FilterResult(score=score, keep=~truncated, reason=pd.Series(reason, index=samples.index))


@dataclass(frozen=True)
class KeepWhere:
    """Keep rows whose ``column`` holds one of ``values`` (e.g. ``policy: [original]``: the reference solutions only)."""

    column: str
    values: Sequence[object]

    def __post_init__(self) -> None:
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence) or not self.values:
            raise ValueError(f"keep_where: values must be a non-empty list, got {self.values!r}")
        object.__setattr__(self, "values", tuple(self.values))  # frozen, hashable

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Keep the rows whose value is listed; no score."""
        if self.column not in samples.columns:
            raise KeyError(f"keep_where: column '{self.column}' is not in the samples; columns: "
                           f"{', '.join(map(str, samples.columns))}")
        listed = samples[self.column].isin(self.values)
        reason = np.where(listed, "listed", f"{self.column}_not_listed")
        score = pd.Series(np.nan, index=samples.index)
        return FilterResult(score=score, keep=listed, reason=pd.Series(reason, index=samples.index))


@dataclass(frozen=True)
class DifficultyBand:
    """Keep prompts whose sample accuracy is within [lo, hi] (PRIME: [0.2, 0.8]).

    Accuracy = correct / judged over **all** the policy's rows of the prompt (unjudged rows, ``correct``
    None, and ReST's mixed-in reference rows, ``policy`` "original", are left out; a prompt with none
    judged is dropped as ``unjudged``). Score = the prompt's accuracy.
    """

    lo: float = 0.2
    hi: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.lo <= self.hi <= 1.0:
            raise ValueError(f"difficulty_band: need 0 <= lo <= hi <= 1, got lo={self.lo}, hi={self.hi}")

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Every row of a prompt gets the prompt's accuracy and verdict."""
        from rest.data.grown import is_original

        correct = samples["correct"].where(~is_original(samples))
        counts = pd.DataFrame(
            {"prompt_id": samples["prompt_id"], "right": correct.eq(True).fillna(False).astype(bool),
             "judged": correct.notna()}
        ).groupby("prompt_id")[["right", "judged"]].transform("sum")
        accuracy = (counts["right"] / counts["judged"].where(counts["judged"] > 0)).astype(float)
        too_hard = accuracy < self.lo - _BAND_SLACK
        too_easy = accuracy > self.hi + _BAND_SLACK
        reason = np.select([accuracy.isna(), too_hard, too_easy], ["unjudged", "too_hard", "too_easy"], "in_band")
        in_band = pd.Series(reason == "in_band", index=samples.index)
        return FilterResult(score=accuracy, keep=in_band, reason=pd.Series(reason, index=samples.index))


def rank_within(
    samples: pd.DataFrame, keep: pd.Series, groups: list[pd.Series], by: str, seed: int, name: str
) -> pd.Series:
    """0-based rank of each still-kept row inside its group, best ``by`` first, ties in seeded random order.

    Rows not kept get NaN. The tie order is one permutation of all rows drawn from ``seed``, so the
    same seed picks the same samples.
    """
    if by not in samples.columns:
        raise KeyError(f"{name}: column '{by}' (option 'by') is not in the samples")
    keys = [f"group{i}" for i in range(len(groups))]
    order = pd.DataFrame(
        {
            **{key: group.to_numpy() for key, group in zip(keys, groups)},
            "score": pd.to_numeric(samples[by], errors="coerce").fillna(-np.inf).to_numpy(),
            "tie": np.random.default_rng(seed).permutation(len(samples)),
        },
        index=samples.index,
    )[keep.to_numpy()]
    order = order.sort_values([*keys, "score", "tie"], ascending=[True] * len(keys) + [False, True])
    rank = pd.Series(np.nan, index=samples.index)
    rank[order.index] = order.groupby(keys, sort=False, dropna=False).cumcount().to_numpy().astype(float)
    return rank
