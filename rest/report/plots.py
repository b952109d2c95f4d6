"""Plots of a run by iteration (PNG files for MLflow): held-out metrics with error bars, kept fraction."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rest.report.summary import metric_columns


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(rows: list[dict[str, Any]], path: Path) -> bool:
    """Every held-out metric by iteration with ± one standard error; False when no iteration was evaluated."""
    metrics = [m for m in metric_columns(rows) if any(r.get(m) is not None for r in rows)]
    if not metrics:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, name in enumerate(metrics):
        points = [r for r in rows if r.get(name) is not None]
        dodge = (i - (len(metrics) - 1) / 2) * 0.04  # side by side, so the error bars stay readable
        ax.errorbar([r["iteration"] + dodge for r in points], [r[name] for r in points],
                    yerr=[r.get(f"{name}_stderr") or 0.0 for r in points], marker="o", capsize=3,
                    label="pass@1 (greedy)" if name == "pass@1" else name)
    ax.set_xlabel("iteration (0 = base model)")
    ax.set_ylabel("held-out score")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(sorted({r["iteration"] for r in rows}))
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_kept(rows: list[dict[str, Any]], path: Path) -> bool:
    """Kept fraction of the E-step samples per iteration (bars labelled kept / generated)."""
    points = [r for r in rows if r.get("kept_fraction") is not None]
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar([r["iteration"] for r in points], [r["kept_fraction"] for r in points], width=0.6,
                  color="tab:green")
    ax.bar_label(bars, labels=[f"{r.get('kept')}/{r.get('generated')}" for r in points], fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("kept fraction")
    ax.set_ylim(0, 1.1)
    ax.set_xticks([r["iteration"] for r in points])
    ax.set_xlim(min(r["iteration"] for r in points) - 0.8, max(r["iteration"] for r in points) + 0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
