"""Histograms of the implicit PRM's scores at selection: correct vs incorrect, kept vs dropped (PNG files)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rest.filters.prm_filter import ImplicitPRMFilter


def plot_prm_filters(table: pd.DataFrame, filters: list[tuple[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per ``implicit_prm`` filter of the pipeline (``<column>_scores.png`` in ``out_dir``)."""
    written = []
    for column, flt in filters:
        if isinstance(flt, ImplicitPRMFilter) and f"{column}__score" in table.columns:
            path = out_dir / f"{column}_scores.png"
            plot_prm_histograms(table, column, flt.column, path)
            written.append(path)
    return written


def plot_prm_histograms(table: pd.DataFrame, column: str, score_column: str, path: Path) -> None:
    """Left: the score of outcome-correct vs incorrect samples (all rows); right: kept vs dropped among the
    rows the filter judged (outcome-correct rows the earlier filters kept)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = pd.to_numeric(table[f"{column}__score"], errors="coerce")
    reason = table[f"{column}__reason"]
    judged = ~reason.isin(["not_considered", "unscored"]) & score.notna()
    kept = table[f"{column}__keep"].astype(bool)
    correct = table["correct"].eq(True)
    incorrect = table["correct"].eq(False)
    groups = [
        ("outcome", [("correct", score[correct & score.notna()]), ("incorrect", score[incorrect & score.notna()])]),
        (f"{column} verdict", [("kept", score[judged & kept]), ("dropped", score[judged & ~kept])]),
    ]
    values = score.dropna()
    bins = 20 if values.nunique() > 1 else 1
    span = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if span[0] == span[1]:
        span = (span[0] - 0.5, span[1] + 0.5)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for ax, (title, series) in zip(axes, groups):
        for label, data in series:
            ax.hist(data, bins=bins, range=span, alpha=0.55, label=f"{label} ({len(data)})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(score_column)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("samples")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
