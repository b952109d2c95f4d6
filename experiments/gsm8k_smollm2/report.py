"""The GSM8K experiment's results table and plot, from the arms' run directories alone.

    .venv/bin/python experiments/gsm8k_smollm2/report.py runs/gsm8k_smollm2/outcome runs/gsm8k_smollm2/prm

Prints a Markdown table (per arm and iteration: kept samples, train loss, validation metrics with their
standard errors, wall time per phase, tokens generated), the paired greedy pass@1 differences (each
iteration vs the base model; the PRM arm vs the outcome arm), the held-out PRM figures where a PRM ran
(AUROC, best-of-4 by PRM, PRM-weighted vote, majority, random pick) and writes ``pass_at_1.png`` beside this file.
Paired differences use the same 200 validation problems on both sides: stderr = sd(d) / sqrt(n).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from rest.rundir import RunDir
from rest.summary import iteration_rows

HERE = Path(__file__).resolve().parent
METRICS = ("pass@1", "pass@1_sampled", "pass@4", "maj@4")
# The PRM arm's held-out PRM figures: AUROC vs outcome correctness, and picking one of the 4 samples per problem.
PRM_METRICS = ("prm_auroc", "best_of_n_prm", "prm_weighted_vote", "best_of_n_majority", "best_of_n_random")


def greedy_correct(run: RunDir, iteration: int) -> pd.Series | None:
    """Per validation problem: did the greedy answer of ``iteration``'s policy check out (1/0)?"""
    path = run.root / f"iter_{iteration:03d}" / "eval" / "samples.parquet"
    if not path.is_file():
        return None
    samples = pd.read_parquet(path)
    greedy = samples[samples["mode"] == "greedy"].set_index("prompt_id")
    return greedy["correct"].eq(True).astype(float)


def paired(a: pd.Series, b: pd.Series) -> tuple[float, float, int]:
    """Mean of b - a over the problems both have, its standard error, and the problem count."""
    d = (b - a).dropna()
    n = len(d)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"), n


def cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    error = row.get(f"{key}_stderr")
    return f"{value:.3f} ± {error:.3f}" if error is not None else f"{value:.3f}"


def table(arms: dict[str, RunDir]) -> str:
    """One Markdown row per arm and iteration."""
    phases = ("sample", "verify", "prm", "select", "train", "eval")
    head = ["arm", "iter", "kept", "train loss", *METRICS, *(f"{p} min" for p in phases), "tokens generated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, run in arms.items():
        for row in iteration_rows(run):
            k = row["iteration"]
            sample = run.read_stats(k, "sample")
            evaluation = run.read_stats(k, "eval")
            tokens = (sample.get("generated_tokens") or 0) + (evaluation.get("generated_tokens") or 0)
            loss = row.get("train_loss")
            cells = [name if k else f"{name} (= base)", str(k), "" if row.get("kept") is None else str(row["kept"]),
                     "" if loss is None else f"{loss:.3f}", *(cell(row, m) for m in METRICS),
                     *("" if p not in row["time"] else f"{row['time'][p] / 60:.1f}" for p in phases),
                     f"{tokens:,}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prm_table(arms: dict[str, RunDir]) -> str:
    """One Markdown row per iteration that evaluated a PRM (the PRM arm's), empty when none did."""
    lines = ["| arm | iter | " + " | ".join(PRM_METRICS) + " |", "|" + "---|" * (len(PRM_METRICS) + 2)]
    for name, run in arms.items():
        for row in iteration_rows(run):
            if row.get("prm_auroc") is not None or row.get("best_of_n_prm") is not None:
                lines.append(f"| {name} | {row['iteration']} | " + " | ".join(cell(row, m) for m in PRM_METRICS) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def differences(arms: dict[str, RunDir]) -> str:
    """Paired greedy pass@1 differences: every iteration vs the base, and each arm vs the first arm."""
    lines = []
    names = list(arms)
    for name, run in arms.items():
        base = greedy_correct(run, 0)
        for k in range(1, 100):
            now = greedy_correct(run, k)
            if now is None or base is None:
                break
            mean, error, n = paired(base, now)
            lines.append(f"- {name} iteration {k} vs base: {mean:+.3f} ± {error:.3f} (paired, {n} problems, "
                         f"{mean / error if error else float('nan'):+.1f} standard errors)")
    for other in names[1:]:
        for k in range(1, 100):
            a, b = greedy_correct(arms[names[0]], k), greedy_correct(arms[other], k)
            if a is None or b is None:
                break
            mean, error, n = paired(a, b)
            lines.append(f"- {other} vs {names[0]}, iteration {k}: {mean:+.3f} ± {error:.3f} (paired, {n} problems)")
    return "\n".join(lines)


def plot(arms: dict[str, RunDir], path: Path) -> None:
    """Greedy pass@1 per iteration with ±1 stderr bars, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in arms.items():
        rows = [r for r in iteration_rows(run) if r.get("pass@1") is not None]
        ax.errorbar([r["iteration"] for r in rows], [r["pass@1"] for r in rows],
                    yerr=[r.get("pass@1_stderr", 0.0) for r in rows], marker="o", capsize=3, label=name)
    ax.set_xlabel("iteration (0 = base model)")
    ax.set_ylabel("greedy pass@1, validation (±1 s.e.)")
    ax.set_title("ReST-EM on GSM8K, SmolLM2-135M-Instruct")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories; the arm is the folder name")
    parser.add_argument("--plot", type=Path, default=HERE / "pass_at_1.png")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.runs if not (p / "manifest.json").is_file()]
    if missing:
        print(f"not a run directory (no manifest.json): {', '.join(missing)}", file=sys.stderr)
        return 2
    arms = {p.name: RunDir(p) for p in args.runs}
    print(table(arms))
    print()
    if prm := prm_table(arms):
        print(prm)
        print()
    print(differences(arms))
    plot(arms, args.plot)
    print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
