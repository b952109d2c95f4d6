"""What a run looks like from its run directory alone: per-iteration rows, the `rest status` tables, pointers."""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from rest.phases.stats import PRMUpdateStats, RepairStats
from rest.phases.table import PHASE_TABLE, PHASES, TIME_COLUMNS
from rest.report.progress import clock, progress_line
from rest.run.rundir import RunDir

COLUMN_NAMES = {"pass@1_sampled": "pass@1\nsampled", "prm_auroc": "AUROC", "best_of_n_prm": "best of n\nby PRM",
                "prm_weighted_vote": "PRM-weighted\nvote", "best_of_n_majority": "best of n\nby majority",
                "best_of_n_random": "best of n\nrandom pick"}


def iteration_rows(run: RunDir, iterations: int | None = None) -> list[dict[str, Any]]:
    """One row per started iteration (0 = base eval): counts, PRM, train loss, eval metrics, wall time per phase."""
    done = run.manifest().get("iterations", {})
    found = {int(p.name[5:]) for p in run.root.glob("iter_[0-9][0-9][0-9]")} | {int(k) for k in done}
    last = max(found, default=-1) if iterations is None else iterations
    rows = []
    for k in sorted(i for i in found if i <= last):
        phases = done.get(str(k), {})
        sample, select = run.read_stats(k, "sample"), run.read_stats(k, "select")
        train, evaluation = run.read_stats(k, "train"), run.read_stats(k, "eval")
        time: dict[str, float] = {}
        for spec in PHASE_TABLE:  # phases that share a column (the PRM's two) add up
            if spec.name in phases:
                time[spec.time_column] = time.get(spec.time_column, 0.0) + phases[spec.name].get("wall_s", 0.0)
        rows.append({
            "iteration": k,
            "phases_done": [p for p in PHASES if p in phases],
            "generated": sample.get("samples"),
            "kept": select.get("kept"),
            "kept_fraction": select.get("kept_fraction"),
            **repair_fields(run.read_stats(k, "repair")),
            **prm_fields(run.read_stats(k, "prm_update")),
            "train_loss": train.get("train_loss"),
            **eval_metrics(evaluation),
            "time": time,
            "wall_s": sum(time.values()) if time else None,
        })
    return rows


def eval_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """The held-out metrics worth a column: every number reported with a standard error, plus the PRM's AUROC."""
    metrics = {}
    for key, value in stats.items():
        if f"{key}_stderr" in stats and _is_number(value):
            metrics[key], metrics[f"{key}_stderr"] = value, stats[f"{key}_stderr"]
    if _is_number(stats.get("prm_auroc")):
        metrics["prm_auroc"] = stats["prm_auroc"]
    return metrics


def repair_fields(repair: RepairStats) -> dict[str, Any]:
    """The repair phase's verified repairs and eligible prompts (empty when the run does not repair)."""
    if not repair:
        return {}
    return {"repaired": repair.get("verified"), "repair_eligible": repair.get("eligible_prompts")}


def prm_fields(update: PRMUpdateStats) -> dict[str, Any]:
    """The PRM update's last loss, or why it was skipped (empty when the run has no PRM)."""
    if not update:
        return {}
    if update.get("skipped"):
        return {"prm_skipped": update.get("skip_reason") or "skipped"}
    return {"prm_loss": update.get("last_loss")}


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Metric names shown as columns: greedy pass@1 first, then sampled pass@1, pass@k, maj@k, the rest."""
    names = {k for row in rows for k in row if f"{k}_stderr" in row or k == "prm_auroc"}

    def order(name: str) -> tuple:
        number = re.search(r"@(\d+)", name)
        rank = {"pass@1": 0, "pass@1_sampled": 1}.get(name, 2 if name.startswith("pass@") else
                                                       3 if name.startswith("maj@") else 4)
        return rank, int(number.group(1)) if number else 0, name

    return sorted(names, key=order)


def render(rows: list[dict[str, Any]], console: Any) -> None:
    """Print the one-screen summary: iterations, the PRM's held-out metrics (if any), wall time per phase."""
    metrics = metric_columns(rows)
    sampled = [m for m in metrics if m.startswith(("pass@", "maj@"))]
    others = [m for m in metrics if m not in sampled]  # best-of-n and AUROC of a PRM run
    with_prm = any("prm_loss" in r or "prm_skipped" in r for r in rows)
    with_repair = any("repaired" in r for r in rows)
    table = _table("rest-em iterations (held-out metrics ± standard error; pass@1 = greedy)")
    repair_column = ("repaired\n(prompts)",) if with_repair else ()
    for column in ("iter", "samples", *repair_column, "kept", "train\nloss", *(COLUMN_NAMES.get(m, m) for m in sampled)):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        repaired = (f"{_cell(row.get('repaired'))} ({_cell(row.get('repair_eligible'))})",) if with_repair else ()
        table.add_row(str(row["iteration"]), _cell(row.get("generated")), *repaired, _cell(row.get("kept")),
                      _cell(row.get("train_loss"), "{:.4f}"), *(_metric(row, m) for m in sampled))
    console.print(table)
    if with_prm or others:
        prm = _table("implicit PRM: update, and held-out metrics ± standard error")
        prm.add_column("iter", justify="right", no_wrap=True)
        if with_prm:
            prm.add_column("update", justify="right", max_width=28)
        for column in (COLUMN_NAMES.get(m, m) for m in others):
            prm.add_column(column, justify="right", no_wrap=True)
        for row in rows:
            prm.add_row(str(row["iteration"]), *([_prm_cell(row)] if with_prm else []),
                        *(_metric(row, m) for m in others))
        console.print(prm)
    columns = [c for c in TIME_COLUMNS if any(c in r.get("time", {}) for r in rows)]
    if not columns:
        return
    times = _table("wall time per phase (s)")
    for column in ("iter", *columns, "total"):
        times.add_column(column, justify="right")
    for row in rows:
        spent = row.get("time", {})
        times.add_row(str(row["iteration"]), *(_seconds(spent.get(c)) for c in columns), _seconds(row["wall_s"]))
    console.print(times)


def pointers(run: RunDir, stopped_because: str | None = None) -> list[str]:
    """Lines after the tables: why the loop stopped, the run directory, and where the MLflow runs are."""
    manifest = run.manifest()
    lines = running(run)
    lines += [f"stopped: {stopped_because}"] if stopped_because else []
    finished = [(info.get("finished", ""), int(k), PHASES.index(phase) if phase in PHASES else -1, phase)
                for k, phases in manifest.get("iterations", {}).items() for phase, info in phases.items()]
    if finished and not stopped_because:  # timestamps have 1 s resolution: ties go to the later phase
        at, k, _, phase = max(finished)
        lines.append(f"last finished: {phase} of iteration {k} ({at})")
    best = manifest.get("best") or {}
    if "iteration" in best:
        lines.append(f"best iteration: {best['iteration']} ({best.get('metric')} = {best.get('value', 0):.4g})")
    lines.append(f"run directory: {run.root}")
    ids = manifest.get("mlflow") or {}
    if ids.get("parent_run_id"):
        uri = public_uri(ids.get("tracking_uri", ""))
        lines.append(f"MLflow: {uri}  parent run {ids['parent_run_id']}")
        if uri.startswith("sqlite:"):
            lines.append(f"  browse: mlflow ui --backend-store-uri {uri}")
    return lines


def running(run: RunDir) -> list[str]:
    """The phase running now and its progress; or the phase a killed run left unfinished."""
    try:
        info = json.loads(run.running_path.read_text())
    except (OSError, ValueError):
        return []
    what = f"{info['phase']} of iteration {info['iteration']}"
    if not _alive(info["pid"]):
        return [f"interrupted: {what} did not finish (its process {info['pid']} is gone); "
                "rerun the same command to resume"]
    lines = [f"running: {what} for {clock(time.time() - info['started'])}"]
    try:
        bar = json.loads(run.progress(info["iteration"], info["phase"]).read_text())
    except (OSError, ValueError):
        return lines
    age = time.time() - bar["updated"]
    line = progress_line(bar["description"], bar["done"], bar["total"], bar["rates"], bar["elapsed_s"], bar.get("eta_s"))
    lines.append(f"  {line}  ({age:.0f} s ago)")
    return lines


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def header(recipe: Any, run: RunDir) -> list[str]:
    """What a run is, printed when it starts: recipe, run directory, model, engine, where MLflow logs."""
    lines = [f"rest-em  recipe {recipe.name} ({recipe.hash()})  run directory {run.root}",
             f"model {recipe.model}  engine dtype {_dtype(recipe.engine.dtype)}  M-step mixed precision "
             f"{recipe.train.mixed_precision}"]
    ids = run.manifest().get("mlflow") or {}
    if ids.get("parent_run_id"):
        lines.append(f"MLflow {public_uri(ids.get('tracking_uri', ''))}  experiment "
                     f"{recipe.tracking.experiment or recipe.name}  parent run {ids['parent_run_id']}")
    return lines


def _dtype(requested: str) -> str:
    from rest.engines.hardware import resolve_dtype

    return f"{resolve_dtype(requested)} (auto)" if requested == "auto" else requested


def public_uri(uri: str) -> str:
    """A tracking URI without credentials (``https://user:token@host`` -> ``https://host``)."""
    return re.sub(r"//[^/@]*@", "//", uri)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The iteration table as Markdown (the parent MLflow run's description)."""
    metrics = metric_columns(rows)
    head = ["iteration", "generated", "kept", "train loss", *metrics, "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["iteration"]), _cell(row.get("generated")), _cell(row.get("kept")),
                 _cell(row.get("train_loss"), "{:.4f}"), *(_metric(row, m) for m in metrics),
                 _seconds(row.get("wall_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table(title: str) -> Any:
    from rich import box
    from rich.table import Table

    # Light borders and no edge padding: eight columns of "0.625±0.171" still fit an 80-column terminal.
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)


def _prm_cell(row: dict[str, Any]) -> str:
    if "prm_skipped" in row:
        return f"skipped: {row['prm_skipped']}"
    return "-" if row.get("prm_loss") is None else f"loss {row['prm_loss']:.4f}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _metric(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    stderr = row.get(f"{key}_stderr")
    return f"{value:.3f}" if stderr is None else f"{value:.3f}±{stderr:.3f}"
