"""The filter pipeline: apply the recipe's filters in order and record every verdict on every sample."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd


@dataclass
class FilterResult:
    """One filter's verdict on every row: a score (NaN = none), keep flag and reason."""

    score: pd.Series
    keep: pd.Series
    reason: pd.Series


class Filter(Protocol):
    """Sees every sample of the iteration and the running keep mask; never drops rows itself.

    What a filter needs to know about the iteration it reads from the samples (each row carries its
    ``iteration``), so the signature stays the same for every filter, built-in or user code.
    """

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Return this filter's verdict for every row of ``samples``."""
        ...


@dataclass
class FilterStats:
    """Counts one filter produced: rows that came in, kept, dropped by reason, prompts with a kept row."""

    name: str
    incoming: int
    kept: int
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    prompts_with_kept: int = 0

    def as_metrics(self) -> dict[str, float]:
        """Flat metric names for MLflow."""
        metrics = {
            f"filter/{self.name}/in": self.incoming,
            f"filter/{self.name}/kept": self.kept,
            f"filter/{self.name}/prompts_with_kept": self.prompts_with_kept,
        }
        for reason, count in self.dropped_by_reason.items():
            metrics[f"filter/{self.name}/dropped/{reason}"] = count
        return metrics


def run_pipeline(
    samples: pd.DataFrame, filters: list[tuple[str, Filter]], seed: int
) -> tuple[pd.DataFrame, list[FilterStats]]:
    """Apply ``(column, filter)`` pairs in order; returns all rows with verdict columns and ``kept``."""
    table = samples.reset_index(drop=True).copy()
    keep = pd.Series(True, index=table.index)
    stats = []
    for column, flt in filters:
        result = flt.apply(table, keep.copy(), seed)
        _check_complete(column, result, table.index)
        own_keep = result.keep.astype(bool)
        table[f"{column}__score"] = pd.to_numeric(result.score, errors="coerce")
        table[f"{column}__keep"] = own_keep
        table[f"{column}__reason"] = result.reason.astype(str)
        stats.append(_stats(column, table, keep, own_keep))
        keep = keep & own_keep
    table["kept"] = keep
    return table, stats


def _check_complete(name: str, result: FilterResult, index: pd.Index) -> None:
    """A verdict must cover every row: a missing one would drop that sample without a reason."""
    for part in ("score", "keep", "reason"):
        series = getattr(result, part)
        if len(series) != len(index) or not series.index.equals(index):
            raise ValueError(f"filter '{name}' returned a {part} for {len(series)} rows; the samples have {len(index)}")
    if result.keep.isna().any() or result.reason.isna().any():
        raise ValueError(f"filter '{name}' left keep or reason empty on some rows")


def _stats(name: str, table: pd.DataFrame, before: pd.Series, own_keep: pd.Series) -> FilterStats:
    after = before & own_keep
    dropped = table.loc[before & ~own_keep, f"{name}__reason"].value_counts()
    return FilterStats(
        name=name,
        incoming=int(before.sum()),
        kept=int(after.sum()),
        dropped_by_reason={str(k): int(v) for k, v in dropped.items()},
        prompts_with_kept=int(table.loc[after, "prompt_id"].nunique()),
    )


def describe(stats: list[FilterStats]) -> dict[str, Any]:
    """JSON-ready summary of the pipeline's counts."""
    return {s.name: {"in": s.incoming, "kept": s.kept, "dropped": s.dropped_by_reason,
                     "prompts_with_kept": s.prompts_with_kept} for s in stats}
