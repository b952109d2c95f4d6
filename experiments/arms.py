"""Arms of a real-data experiment: results tables, paired differences and plots, from run directories or saved arms.

An arm is one run of a recipe (its run directory; the arm is named after the folder) or the JSON that
``--save`` wrote for one (per-iteration rows plus every validation problem's greedy and sampled verdicts:
small enough to keep in git, so an arm run in one session is compared, problem by problem, with an arm
run in a later one). Each experiment's ``report.py`` calls :func:`main` with its folder and title.

Paired differences use the same validation problems on both sides: stderr = sd(d) / sqrt(n), where d is
the per-problem difference of greedy correctness (0/1) or of the share of correct samples (sampled pass@1).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from rest.data.grown import is_original
from rest.metrics import PRM_EVAL_METRICS
from rest.report.summary import iteration_rows
from rest.run.rundir import RunDir

METRICS = ("pass@1", "pass@1_sampled", "pass@4", "maj@4")
PHASES = ("sample", "verify", "prm", "select", "train", "eval")
# The PRM arm's held-out PRM figures: AUROC vs outcome correctness (over all samples and within each problem), and
# picking one of the 4 samples per problem.
PRM_METRICS = PRM_EVAL_METRICS
# Per-problem verdicts an arm keeps for pairing: eval mode -> key in an iteration's entry.
VERDICTS = {"greedy": "greedy", "sampled": "sampled"}

# An arm: {"arm": name, "best": iteration or None,
#          "iterations": [{"row": summary row, "tokens": generated tokens, "kept_by_origin": {...},
#                          "greedy": {prompt id: 1/0}, "sampled": {prompt id: share correct}}]}
Arm = dict[str, Any]


def verdicts(run: RunDir, iteration: int, mode: str) -> dict[str, float] | None:
    """Per validation problem: the share of ``mode`` answers of ``iteration``'s policy that checked out."""
    path = run.eval_dir(iteration) / "samples.parquet"
    if not path.is_file():
        return None
    samples = pd.read_parquet(path, columns=["prompt_id", "mode", "correct"])
    chosen = samples[samples["mode"] == mode]
    if chosen.empty:
        return None
    share = chosen["correct"].eq(True).groupby(chosen["prompt_id"].astype(str)).mean()
    return {str(p): float(v) for p, v in share.items()}


def kept_by_origin(run: RunDir, iteration: int) -> dict[str, Any] | None:
    """The kept set's size by origin (policy samples vs mixed-in references) and how many prompts it covers."""
    path = run.kept(iteration)
    if not path.is_file():
        return None
    kept = pd.read_parquet(path)
    original = is_original(kept)
    return {"sampled": int((~original).sum()), "original": int(original.sum()),
            "prompts": int(kept["prompt_id"].nunique())}


def within_prompt_backfill(run: RunDir, iteration: int, evaluation: dict) -> dict:
    """``prm_auroc_within_prompt`` (+ stderr) from the evaluation's scored samples, for evaluations that ran
    before the loop reported it; empty where it is reported or there is no PRM score to compute it from."""
    from rest.prm.quality import within_prompt_auroc

    column = f"prm__{evaluation.get('prm_aggregate')}"
    path = run.eval_dir(iteration) / "samples.parquet"
    if "prm_auroc_within_prompt" in evaluation or evaluation.get("prm_auroc") is None or not path.is_file():
        return {}
    samples = pd.read_parquet(path)
    judged = samples[(samples["mode"] == "sampled") & samples["correct"].notna()]
    if column not in judged.columns:
        return {}
    value, stderr, _ = within_prompt_auroc(judged[column].astype(float).tolist(),
                                           judged["correct"].astype(bool).tolist(), judged["prompt_id"].tolist())
    return {"prm_auroc_within_prompt": value, "prm_auroc_within_prompt_stderr": stderr}


def arm_from_run(path: Path) -> Arm:
    """An arm's finished iterations as read from its run directory (named after the folder)."""
    run = RunDir(path)
    iterations = []
    for row in iteration_rows(run):
        k = row["iteration"]
        if not run.is_done(k, "eval"):  # an iteration stopped part-way has no results to report
            continue
        sample, evaluation = run.read_stats(k, "sample"), run.read_stats(k, "eval")
        evaluation = {**within_prompt_backfill(run, k, evaluation), **evaluation}
        row.update({m: evaluation[m] for m in PRM_METRICS if evaluation.get(m) is not None and m not in row})
        row.update({f"{m}_stderr": evaluation[f"{m}_stderr"] for m in PRM_METRICS
                    if evaluation.get(f"{m}_stderr") is not None and f"{m}_stderr" not in row})
        tokens = (sample.get("generated_tokens") or 0) + (evaluation.get("generated_tokens") or 0)
        entry = {"row": row, "tokens": tokens, "kept_by_origin": kept_by_origin(run, k) if k else None}
        entry.update({key: verdicts(run, k, mode) for mode, key in VERDICTS.items()})
        iterations.append(entry)
    best = (run.manifest().get("best") or {}).get("iteration")
    return {"arm": path.name, "best": best, "iterations": iterations}


def load_arm(path: Path) -> Arm:
    """A run directory or a saved arm (``results/<arm>.json``)."""
    if path.is_file() and path.suffix == ".json":
        return json.loads(path.read_text())
    if not (path / "manifest.json").is_file():
        raise ValueError(f"{path}: neither a run directory (no manifest.json) nor a saved arm (.json)")
    return arm_from_run(path)


def series(arm: Arm, k: int, key: str = "greedy") -> pd.Series | None:
    """Iteration ``k``'s per-problem verdicts (``greedy`` or ``sampled``), or None where the arm has none."""
    found = [it.get(key) for it in arm["iterations"] if it["row"]["iteration"] == k and it.get(key)]
    return pd.Series(found[0], dtype=float) if found else None


def last_iteration(arm: Arm) -> int:
    """The arm's last evaluated iteration (0 while it has none: an arm whose run has just begun)."""
    return max((it["row"]["iteration"] for it in arm["iterations"]), default=0)


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


def kept_cell(entry: dict) -> str:
    """Kept samples, split by origin where references were mixed in, and the prompts they cover."""
    origin = entry.get("kept_by_origin")
    if not origin:
        kept = entry["row"].get("kept")
        return "" if kept is None else str(kept)
    text = f"{origin['sampled']}" + (f" + {origin['original']} ref" if origin["original"] else "")
    return f"{text} ({origin['prompts']} prompts)"


def table(arms: list[Arm], metrics: tuple[str, ...] = METRICS) -> str:
    """One Markdown row per arm and iteration; the arm's best iteration (by its loop.metric) is starred."""
    head = ["arm", "iter", "kept", "train loss", *metrics, *(f"{p} min" for p in PHASES), "tokens generated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        for it in arm["iterations"]:
            row, k = it["row"], it["row"]["iteration"]
            loss = row.get("train_loss")
            name = arm["arm"] if k else f"{arm['arm']} (= base)"
            cells = [name, f"{k}*" if k and k == arm.get("best") else str(k), kept_cell(it),
                     "" if loss is None else f"{loss:.3f}", *(cell(row, m) for m in metrics),
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


def difference_line(label: str, a: pd.Series | None, b: pd.Series | None, what: str) -> str | None:
    if a is None or b is None:
        return None
    mean, error, n = paired(a, b)
    ratio = mean / error if error else float("nan")
    return f"- {label}: {what} {mean:+.3f} ± {error:.3f} (paired, {n} problems, {ratio:+.1f} standard errors)"


def differences(arms: list[Arm], compare: list[tuple[str, str]] | None = None) -> str:
    """Paired pass@1 differences (greedy, and sampled where present): every iteration vs the arm's base
    model, then each compared pair (A vs B: A's iteration k against B's iteration k, or B's last where B
    stopped earlier). Without ``compare``, every arm is compared with the first."""
    lines: list[str | None] = []
    for arm in arms:
        for k in range(1, last_iteration(arm) + 1):
            for key, what in (("greedy", "greedy pass@1"), ("sampled", "sampled pass@1")):
                lines.append(difference_line(f"{arm['arm']} iteration {k} vs base", series(arm, 0, key),
                                             series(arm, k, key), what))
    by_name = {arm["arm"]: arm for arm in arms}
    pairs = compare if compare is not None else [(other["arm"], arms[0]["arm"]) for other in arms[1:]]
    for a_name, b_name in pairs:
        if a_name not in by_name or b_name not in by_name:
            continue
        a, b = by_name[a_name], by_name[b_name]
        for k in range(1, last_iteration(a) + 1):
            kb = min(k, last_iteration(b))
            label = f"{a_name} vs {b_name}, iteration {k}" + ("" if kb == k else f" vs {b_name}'s {kb}")
            lines.append(difference_line(label, series(b, kb), series(a, k), "greedy pass@1"))
    return "\n".join(line for line in lines if line)


def plot(arms: list[Arm], path: Path, title: str) -> None:
    """Greedy pass@1 per iteration with ±1 stderr bars, one line per arm; best iterations ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm in arms:
        rows = [it["row"] for it in arm["iterations"] if it["row"].get("pass@1") is not None]
        line = ax.errorbar([r["iteration"] for r in rows], [r["pass@1"] for r in rows],
                           yerr=[r.get("pass@1_stderr", 0.0) for r in rows], marker="o", capsize=3, label=arm["arm"])
        best = [r for r in rows if r["iteration"] == arm.get("best")]
        if best:
            ax.plot([best[0]["iteration"]], [best[0]["pass@1"]], "o", ms=12, mfc="none", color=line[0].get_color())
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("iteration (0 = base model; ring = best iteration)")
    ax.set_ylabel("greedy pass@1, validation (±1 s.e.)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"--compare takes ARM:OTHER (e.g. mixed:supervised), got {text!r}")
    return a, b


def main(argv: list[str] | None, here: Path, title: str, doc: str) -> int:
    """The report command of an experiment folder ``here`` (saved arms in ``here/results``)."""
    results = here / "results"
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("arms", nargs="+", type=Path, help="run directories (the arm is the folder name) or saved arms")
    parser.add_argument("--plot", type=Path, default=here / "pass_at_1.png")
    parser.add_argument("--save", action="store_true", help=f"write each run directory's arm to {results.name}/ARM.json")
    parser.add_argument("--compare", type=parse_pair, action="append",
                        help="ARM:OTHER, paired greedy pass@1 of ARM minus OTHER (repeatable; default: each arm vs the first)")
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
    print(differences(arms, args.compare))
    plot(arms, args.plot, title)
    print(f"\nplot: {args.plot}")
    if args.save:
        results.mkdir(exist_ok=True)
        for path, arm in zip(args.arms, arms):
            if path.is_dir():
                (results / f"{arm['arm']}.json").write_text(json.dumps(arm, indent=1, sort_keys=True) + "\n")
                print(f"saved: {results.name}/{arm['arm']}.json")
    return 0
