"""`rest status` and the end-of-run summary, from a hand-made run directory (no MLflow, no engine)."""
from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from rest.cli.app import app
from rest.loop import summary_rows
from rest.report.plots import plot_kept, plot_metrics
from rest.report.summary import iteration_rows, markdown, metric_columns, pointers, public_uri, render
from rest.run.rundir import RunDir

EVAL = {"pass@1": 0.25, "pass@1_stderr": 0.1, "pass@4": 0.5, "pass@4_stderr": 0.12, "maj@4": 0.375,
        "maj@4_stderr": 0.11, "pass@1_sampled": 0.2, "pass@1_sampled_stderr": 0.05, "prompts": 8,
        "engine_start_s": 20.0, "policy": "base"}


def make_run(tmp_path, with_prm: bool) -> RunDir:
    run = RunDir(tmp_path / "run")
    phases = {"0": {"eval": {"wall_s": 30.0, "finished": "2026-01-01T00:00:01"}}}
    run.write_stats(0, "eval", EVAL)
    for k, loss in ((1, 0.9), (2, 0.7)):
        run.write_stats(k, "sample", {"samples": 64, "prompts": 16})
        run.write_stats(k, "select", {"samples": 64, "kept": 8 * k, "kept_fraction": 8 * k / 64})
        run.write_stats(k, "train", {"train_loss": loss, "history": [{"step": 1, "loss": loss}]})
        prm_eval = {"prm_auroc": 0.6, "prm_auroc_stderr": 0.2, "best_of_n_prm": 0.5, "best_of_n_prm_stderr": 0.1,
                    "best_of_n_majority": 0.375, "best_of_n_majority_stderr": 0.1} if with_prm else {}
        run.write_stats(k, "eval", {**EVAL, "pass@1": 0.25 + 0.125 * k, **prm_eval})
        done = {"sample": 50.0, "verify": 0.5, "prm_update": 12.0, "prm_score": 8.0, "select": 0.25,
                "train": 20.0, "eval": 30.0}
        if not with_prm:
            del done["prm_update"], done["prm_score"]
        # Same-second finish times, as for quick phases: the later phase counts as the last one.
        phases[str(k)] = {p: {"wall_s": s, "finished": f"2026-01-01T00:0{k}:{(i + 1) // 2:02d}"} for i, (p, s) in
                          enumerate(done.items())}
    if with_prm:
        run.write_stats(1, "prm_update", {"skipped": True, "skip_reason": "no usable labels"})
        run.write_stats(2, "prm_update", {"skipped": False, "first_loss": 0.69, "last_loss": 0.61,
                                          "history": [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.61}]})
    run.iteration(3).mkdir()  # started, nothing finished yet
    run.write_manifest({"iterations": phases, "recipe_hash": "abc",
                        "mlflow": {"tracking_uri": "https://user:token@mlflow.example/", "parent_run_id": "p123"},
                        "best": {"iteration": 2, "metric": "pass@1", "value": 0.5}})
    return run


def test_rows_without_prm(tmp_path):
    rows = iteration_rows(make_run(tmp_path, with_prm=False))
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    base, one, two, started = rows
    assert base["generated"] is None and base["pass@1"] == 0.25 and base["time"] == {"eval": 30.0}
    assert (one["generated"], one["kept"], one["kept_fraction"], one["train_loss"]) == (64, 8, 0.125, 0.9)
    assert two["pass@1"] == 0.5 and two["pass@4_stderr"] == 0.12 and "prompts" not in two
    assert two["time"] == {"sample": 50.0, "verify": 0.5, "select": 0.25, "train": 20.0, "eval": 30.0}
    assert two["wall_s"] == pytest.approx(100.75) and "prm_loss" not in two and "prm_auroc" not in two
    assert two["phases_done"] == ["sample", "verify", "select", "train", "eval"]
    assert started["time"] == {} and started["wall_s"] is None and started["phases_done"] == []
    assert metric_columns(rows) == ["pass@1", "pass@1_sampled", "pass@4", "maj@4"]
    assert summary_rows(make_run(tmp_path / "b", False), 1) == rows[:2], "the loop's rows are the same rows"


def test_rows_and_tables_with_prm(tmp_path):
    run = make_run(tmp_path, with_prm=True)
    rows = iteration_rows(run)
    assert rows[1]["prm_skipped"] == "no usable labels" and rows[2]["prm_loss"] == 0.61
    assert rows[2]["prm_auroc"] == 0.6 and rows[2]["time"]["prm"] == 20.0
    assert metric_columns(rows) == ["pass@1", "pass@1_sampled", "pass@4", "maj@4", "best_of_n_majority",
                                    "best_of_n_prm", "prm_auroc"]
    console = Console(record=True, width=160)
    render(rows, console)
    text = console.export_text()
    assert "skipped: no usable labels" in text and "loss 0.6100" in text and "AUROC" in text
    held_out_prm = text.split("implicit PRM")[1].split("wall time")[0]
    assert "AUROC" in held_out_prm and "0.600±0.200" in held_out_prm and "0.500±0.100" in held_out_prm
    assert "prm" in text.split("wall time per phase")[1]
    lines = pointers(run, "finished all iterations")
    assert lines[0] == "stopped: finished all iterations"
    assert "best iteration: 2 (pass@1 = 0.5)" in lines
    assert "MLflow: https://mlflow.example/  parent run p123" in lines, "credentials never printed"
    assert pointers(run)[0] == "last finished: eval of iteration 2 (2026-01-01T00:02:03)"
    table = markdown(rows)
    assert table.splitlines()[0].startswith("| iteration | generated | kept | train loss | pass@1 |")
    assert "| 2 | 64 | 16 | 0.7000 | 0.500±0.100 |" in table


def test_public_uri_strips_credentials_only():
    assert public_uri("http://u:p@host:5000/x") == "http://host:5000/x"
    assert public_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_status_command_prints_tables_and_pointers(tmp_path):
    run = make_run(tmp_path, with_prm=False)
    result = CliRunner().invoke(app, ["status", str(run.root)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "rest-em iterations" in result.output and "wall time per phase" in result.output
    assert "0.375±0.110" in result.output and "best iteration: 2" in result.output
    assert f"run directory: {run.root}" in result.output
    missing = CliRunner().invoke(app, ["status", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "not a rest-em run directory" in missing.output


def test_plots_are_written_only_when_there_is_something_to_plot(tmp_path):
    rows = iteration_rows(make_run(tmp_path, with_prm=True))
    assert plot_metrics(rows, tmp_path / "m.png") and plot_kept(rows, tmp_path / "k.png")
    for name in ("m.png", "k.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_metrics([{"iteration": 0}], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    assert not plot_kept(rows[:1], tmp_path / "none.png")
    json.dumps(rows)  # rows are plain data (they also go to MLflow and the markdown description)


def test_rows_and_table_with_repair(tmp_path):
    run = make_run(tmp_path, with_prm=False)
    run.write_stats(1, "repair", {"eligible_prompts": 10, "attempts": 40, "verified": 7})
    run.write_stats(2, "repair", {"eligible_prompts": 6, "attempts": 24, "verified": 3})
    rows = iteration_rows(run)
    assert (rows[1]["repaired"], rows[1]["repair_eligible"], rows[2]["repaired"]) == (7, 10, 3)
    assert "repaired" not in rows[0] and "repaired" not in iteration_rows(make_run(tmp_path / "b", False))[1]
    console = Console(record=True, width=160)
    render(rows, console)
    text = console.export_text()
    assert "repaired" in text and "7 (10)" in text and "3 (6)" in text


def test_status_shows_the_running_phase_its_progress_or_that_it_was_killed(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import time

    from rest.report import progress
    from rest.report.summary import running
    from rest.run.rundir import RunDir, atomic_write_json

    run = RunDir(tmp_path)
    assert running(run) == []
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(run.progress(1, "sample")))
    run.progress(1, "sample").parent.mkdir(parents=True)
    atomic_write_json(run.running_path, {"phase": "sample", "iteration": 1, "pid": os.getpid(),
                                         "started": time.time() - 125})
    with progress.phase_progress("E-step iter 1", total=10) as bar:
        bar.advance(1, samples=8)
        bar.advance(3, samples=24)
        bar.record()
        lines = running(run)
    assert lines[0] == "running: sample of iteration 1 for 0:02:05"
    assert lines[1].startswith("  E-step iter 1: 4/10 (40%)  ") and "samples/s" in lines[1] and "ETA" in lines[1]
    assert json.loads(run.progress(1, "sample").read_text())["done"] == 4  # the bar's last state is recorded

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    atomic_write_json(run.running_path, {"phase": "train", "iteration": 2, "pid": int(gone.stdout),
                                         "started": time.time()})
    assert running(run) == [f"interrupted: train of iteration 2 did not finish (its process {int(gone.stdout)} is "
                            "gone); rerun the same command to resume"]
