"""The GSM8K experiment's results table and plot, from the arms' run directories or their saved results.

    .venv/bin/python experiments/gsm8k_smollm2/report.py runs/gsm8k_smollm2/outcome runs/gsm8k_smollm2/prm [--save]
    .venv/bin/python experiments/gsm8k_smollm2/report.py results/outcome.json runs/gsm8k_smollm2/prm

An arm is a run directory or the JSON that ``--save`` wrote for one into ``results/`` beside this file
(per-iteration rows plus every validation problem's greedy verdict: small enough to keep in git, so an
arm run in one session can be compared, problem by problem, with an arm run in a later one).

Prints a Markdown table (per arm and iteration: kept samples, train loss, validation metrics with their
standard errors, wall time per phase, tokens generated), the paired greedy pass@1 differences (each
iteration vs the base model; the PRM arm vs the outcome arm), the held-out PRM figures where a PRM ran
(AUROC, best-of-4 by PRM, PRM-weighted vote, majority, random pick) and writes ``pass_at_1.png`` beside this file.
Paired differences use the same 200 validation problems on both sides: stderr = sd(d) / sqrt(n).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from rest.rundir import RunDir
from rest.summary import iteration_rows

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METRICS = ("pass@1", "pass@1_sampled", "pass@4", "maj@4")
PHASES = ("sample", "verify", "prm", "select", "train", "eval")
# The PRM arm's held-out PRM figures: AUROC vs outcome correctness, and picking one of the 4 samples per problem.
PRM_METRICS = ("prm_auroc", "best_of_n_prm", "prm_weighted_vote", "best_of_n_majority", "best_of_n_random")

# An arm: {"arm": name, "iterations": [{"row": summary row, "tokens": generated tokens, "greedy": {prompt id: 1/0}}]}
Arm = dict[str, Any]


def greedy_correct(run: RunDir, iteration: int) -> dict[str, float] | None:
    """Per validation problem: did the greedy answer of ``iteration``'s policy check out (1/0)?"""
    path = run.root / f"iter_{iteration:03d}" / "eval" / "samples.parquet"
    if not path.is_file():
        return None
    samples = pd.read_parquet(path)
    greedy = samples[samples["mode"] == "greedy"]
    return {str(p): float(c is True) for p, c in zip(greedy["prompt_id"], greedy["correct"])}


def arm_from_run(path: Path) -> Arm:
    """An arm's iterations as read from its run directory (named after the folder)."""
    run = RunDir(path)
    iterations = []
    for row in iteration_rows(run):
        k = row["iteration"]
        if not run.is_done(k, "eval"):  # an iteration stopped part-way has no results to report
            continue
        sample, evaluation = run.read_stats(k, "sample"), run.read_stats(k, "eval")
        row.update({m: evaluation[m] for m in PRM_METRICS if evaluation.get(m) is not None and m not in row})
        tokens = (sample.get("generated_tokens") or 0) + (evaluation.get("generated_tokens") or 0)
        iterations.append({"row": row, "tokens": tokens, "greedy": greedy_correct(run, k)})
    return {"arm": path.name, "iterations": iterations}


def load_arm(path: Path) -> Arm:
    """A run directory or a saved arm (``results/<arm>.json``)."""
    if path.is_file() and path.suffix == ".json":
        return json.loads(path.read_text())
    if not (path / "manifest.json").is_file():
        raise ValueError(f"{path}: neither a run directory (no manifest.json) nor a saved arm (.json)")
    return arm_from_run(path)


def greedy_series(arm: Arm, k: int) -> pd.Series | None:
    """Iteration ``k``'s per-problem greedy verdicts, or None where the arm has none."""
    found = [it["greedy"] for it in arm["iterations"] if it["row"]["iteration"] == k and it["greedy"]]
    return pd.Series(found[0], dtype=float) if found else None


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


def table(arms: list[Arm]) -> str:
    """One Markdown row per arm and iteration."""
    head = ["arm", "iter", "kept", "train loss", *METRICS, *(f"{p} min" for p in PHASES), "tokens generated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        for it in arm["iterations"]:
            row, k = it["row"], it["row"]["iteration"]
            loss = row.get("train_loss")
            cells = [arm["arm"] if k else f"{arm['arm']} (= base)", str(k),
                     "" if row.get("kept") is None else str(row["kept"]),
                     "" if loss is None else f"{loss:.3f}", *(cell(row, m) for m in METRICS),
                     *("" if p not in row["time"] else f"{row['time'][p] / 60:.1f}" for p in PHASES),
                     f"{it['tokens']:,}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prm_table(arms: list[Arm]) -> str:
    """One Markdown row per iteration that evaluated a PRM (the PRM arm's), empty when none did."""
    lines = ["| arm | iter | " + " | ".join(PRM_METRICS) + " |", "|" + "---|" * (len(PRM_METRICS) + 2)]
    for arm in arms:
        for it in arm["iterations"]:
            row = it["row"]
            if any(row.get(m) is not None for m in PRM_METRICS):
                lines.append(f"| {arm['arm']} | {row['iteration']} | "
                             + " | ".join(cell(row, m) for m in PRM_METRICS) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def differences(arms: list[Arm]) -> str:
    """Paired greedy pass@1 differences: every iteration vs the base, and each arm vs the first arm."""
    lines = []
    for arm in arms:
        base = greedy_series(arm, 0)
        for k in range(1, 100):
            now = greedy_series(arm, k)
            if now is None or base is None:
                break
            mean, error, n = paired(base, now)
            lines.append(f"- {arm['arm']} iteration {k} vs base: {mean:+.3f} ± {error:.3f} (paired, {n} problems, "
                         f"{mean / error if error else float('nan'):+.1f} standard errors)")
    first = arms[0]
    for other in arms[1:]:
        for k in range(1, 100):
            a, b = greedy_series(first, k), greedy_series(other, k)
            if a is None or b is None:
                break
            mean, error, n = paired(a, b)
            lines.append(f"- {other['arm']} vs {first['arm']}, iteration {k}: {mean:+.3f} ± {error:.3f} "
                         f"(paired, {n} problems)")
    return "\n".join(lines)


def plot(arms: list[Arm], path: Path) -> None:
    """Greedy pass@1 per iteration with ±1 stderr bars, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in arms:
        rows = [it["row"] for it in arm["iterations"] if it["row"].get("pass@1") is not None]
        ax.errorbar([r["iteration"] for r in rows], [r["pass@1"] for r in rows],
                    yerr=[r.get("pass@1_stderr", 0.0) for r in rows], marker="o", capsize=3, label=arm["arm"])
    ax.set_xlabel("iteration (0 = base model)")
    ax.set_ylabel("greedy pass@1, validation (±1 s.e.)")
    ax.set_title("ReST-EM on GSM8K, SmolLM2-135M-Instruct")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arms", nargs="+", type=Path, help="run directories (the arm is the folder name) or saved arms")
    parser.add_argument("--plot", type=Path, default=HERE / "pass_at_1.png")
    parser.add_argument("--save", action="store_true", help=f"write each run directory's arm to {RESULTS.name}/ARM.json")
    args = parser.parse_args(argv)
    try:
        arms = [load_arm(p) for p in args.arms]
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    print(table(arms))
    print()
    if prm := prm_table(arms):
        print(prm)
        print()
    print(differences(arms))
    plot(arms, args.plot)
    print(f"\nplot: {args.plot}")
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        for path, arm in zip(args.arms, arms):
            if path.is_dir():
                (RESULTS / f"{arm['arm']}.json").write_text(json.dumps(arm, indent=1, sort_keys=True) + "\n")
                print(f"saved: {RESULTS.name}/{arm['arm']}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
