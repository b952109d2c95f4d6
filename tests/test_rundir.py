"""Run directory: atomic outputs, the manifest, recipe-change detection and the lock."""
from __future__ import annotations

import json
import multiprocessing

import pandas as pd
import pytest

from rest.loop import run_loop
from rest.recipe.schema import PrmConfig, validate_recipe
from rest.run.execute import PhaseFailedError, active_phases, check_prerequisite, prerequisite
from rest.run.rundir import RunDir, RunDirError, atomic_directory, atomic_write_parquet, file_lock


def recipe(**data):
    return validate_recipe({"name": "x", "data": {"train_size": 4}, "tracking": {"enabled": False}, **data})


def test_manifest_records_phases_and_survives_reload(tmp_path):
    run = RunDir(tmp_path / "run")
    run.initialise(recipe())
    assert not run.is_done(1, "sample")
    run.mark_done(1, "sample", wall_s=1.5)
    again = RunDir(tmp_path / "run")
    assert again.is_done(1, "sample") and not again.is_done(1, "verify")
    manifest = json.loads(again.manifest_path.read_text())
    assert manifest["iterations"]["1"]["sample"]["wall_s"] == 1.5
    assert manifest["recipe_hash"] == recipe().hash() and manifest["package_version"]
    assert again.recipe_path.read_text() == recipe().to_yaml()


def test_changed_recipe_is_refused_unless_allowed_and_then_recorded(tmp_path):
    run = RunDir(tmp_path / "run")
    run.initialise(recipe())
    changed = recipe(seed=5)
    with pytest.raises(RunDirError, match="different recipe.*--allow-recipe-change"):
        run.initialise(changed)
    run.initialise(changed, allow_recipe_change=True)
    manifest = run.manifest()
    assert manifest["recipe_hash"] == changed.hash()
    assert manifest["recipe_changes"][0]["from"] == recipe().hash()


def _hold_lock(path, ready, release):
    with file_lock(path, blocking=False):
        ready.set()
        release.wait(30)


def test_second_run_on_the_same_directory_is_refused(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path / "run" / "lock", ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunDirError, match=f"held by another process \\(pid {holder.pid}\\)"):
            run_loop(recipe(), tmp_path / "run")
    finally:
        release.set()
        holder.join(30)
    assert not (tmp_path / "run" / "manifest.json").exists(), "the refused run wrote nothing"


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "a").write_text("2")
            raise RuntimeError("crash mid-write")
    assert (target / "a").read_text() == "1"
    atomic_write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    assert not list(tmp_path.glob(".*tmp*"))


def test_phases_check_their_prerequisites(tmp_path):
    run = RunDir(tmp_path / "run")
    run.initialise(recipe())
    plain = recipe()
    assert prerequisite(plain, 0, "eval") is None and prerequisite(plain, 1, "sample") is None
    assert prerequisite(plain, 2, "sample") == (1, "train") and prerequisite(plain, 1, "train") == (1, "select")
    assert prerequisite(plain, 1, "select") == (1, "verify")
    with pytest.raises(PhaseFailedError, match="needs a `prm` section"):
        prerequisite(plain, 1, "prm_score")
    with pytest.raises(PhaseFailedError, match="select of iteration 1 has not finished.*rest filter"):
        check_prerequisite(plain, run, 1, "train")
    run.mark_done(1, "select", 0.1)
    check_prerequisite(plain, run, 1, "train")


def test_prm_phases_sit_between_verify_and_select():
    with_prm = recipe().model_copy(update={"prm": PrmConfig()})
    assert active_phases(with_prm) == ("sample", "verify", "prm_update", "prm_score", "select", "train", "eval")
    assert active_phases(recipe()) == ("sample", "verify", "select", "train", "eval")
    assert prerequisite(with_prm, 1, "prm_update") == (1, "verify")
    assert prerequisite(with_prm, 1, "select") == (1, "prm_score")


def test_each_phase_shows_and_writes_only_keys_its_stats_type_declares():
    from rest.phases.stats import EvalStats, SelectStats, undeclared
    from rest.phases.table import PHASE_TABLE

    for spec in PHASE_TABLE:
        shown = {key for key, _ in spec.summary}
        assert undeclared(spec.stats, dict.fromkeys(shown), eval_k=4) == set(), spec.name
    assert undeclared(SelectStats, {"kept": 3, "kept_by_origin": {}, "keep": 1}) == {"keep"}
    assert undeclared(EvalStats, {"pass@4": 0.5, "pass@4_stderr": 0.1, "maj@4": 0.4}, eval_k=4) == set()
    assert undeclared(EvalStats, {"pass@8": 0.5, "prm_auroc": 0.7}, eval_k=4) == {"pass@8"}


def test_a_single_phase_command_continues_another_recipes_run_directory_only_when_allowed(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from rest.cli.app import app

    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump(recipe().model_dump(mode="json")))
    second.write_text(yaml.safe_dump(recipe(seed=5).model_dump(mode="json")))
    run = RunDir(tmp_path / "run")
    run.initialise(recipe())
    args = ["filter", str(second), "--iteration", "1", "--run-dir", str(run.root)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "different recipe" in refused.output
    assert "recipe_changes" not in run.manifest()
    allowed = CliRunner().invoke(app, [*args, "--allow-recipe-change"])
    assert "different recipe" not in allowed.output  # it got as far as the phase: its input is missing
    assert "rest sample" in allowed.output or "rest verify" in allowed.output, allowed.output
    assert run.manifest()["recipe_changes"][0]["to"] == recipe(seed=5).hash()
