"""The ``implicit_prm`` filter: among outcome-correct samples, keep those the implicit PRM rates well.

The scores come from the ``prm_score`` phase (``prm__min``, ``prm__mean``, ``prm__sum``, ``prm__last_q``
columns); the filter only reads them, so it stays as cheap and literal to test as the other rules.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .step_score import StepScoreFilter

AGGREGATES = ("min", "mean", "sum", "last_q")


def prm_column(aggregate: str) -> str:
    """The sample column holding a PRM aggregate (``min`` -> ``prm__min``)."""
    return f"prm__{aggregate}"


@dataclass(frozen=True)
class ImplicitPRMFilter(StepScoreFilter):
    """:class:`StepScoreFilter` on the implicit PRM's score: the ``aggregate`` of a sample's step rewards
    (``min`` by default, the paper's choice)."""

    aggregate: str = "min"

    name = "implicit_prm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"implicit_prm: aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")

    @property
    def column(self) -> str:
        """The sample column this filter reads."""
        return prm_column(self.aggregate)

    def scores(self, samples: pd.DataFrame) -> pd.Series:
        if self.column not in samples.columns:
            raise KeyError(
                f"implicit_prm: the samples have no '{self.column}' column; the recipe needs a prm section "
                "(the prm_score phase writes the PRM's scores before selection)"
            )
        return pd.to_numeric(samples[self.column], errors="coerce").astype(float)
