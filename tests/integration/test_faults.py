"""Crash anywhere, rerun, get the same result: SIGKILL during the E-step, the PRM update, the filter and the
M-step of one tiny real run (vLLM CPU, PRM, TRL, MLflow sqlite), each rerun with the same command.

Kill points (``REST_EM_KILL_AT``, rest/faults.py) sit inside each phase, after part of its work is on
disk; every step asserts the phase really was cut off before rerunning. A second run directory redoes
the phases after the E-step without interruption, on the same samples, for comparison.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# Not yet seen green end to end (the session ran out under a loaded machine): see the issue notes.
pytestmark = [pytest.mark.integration, pytest.mark.pending]

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "tests" / "data" / "prm_tiny.yaml"
OVERRIDES = ["sampling.prompts_per_shard=4", "train.save_steps=1", "train.batch_size=2", "eval.samples=0",
             "eval.max_tokens=48", "prm.max_samples=16"]
PROMPTS, N = 12, 6


def rest(work: Path, *args: str, kill: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    env.pop("REST_EM_KILL_AT", None)
    if kill:
        env["REST_EM_KILL_AT"] = kill
    cmd = [sys.executable, "-m", "rest.cli.app", *args]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)


def run_cmd(run_dir: Path) -> list[str]:
    return ["run", str(RECIPE), *OVERRIDES, "--run-dir", str(run_dir)]


def done(run_dir: Path, k: int = 1) -> set[str]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return set(manifest["iterations"].get(str(k), {}))


def shard_hashes(run_dir: Path) -> dict[str, str]:
    shards = sorted((run_dir / "iter_001" / "samples").glob("shard-*.parquet"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, builtin_model):
    """The run, killed once in each phase and rerun each time; what each crash left behind."""
    work = tmp_path_factory.mktemp("faults")
    run_dir, seen = work / "run", {}

    killed = rest(work, *run_cmd(run_dir), kill="sample:after_shard#2")
    assert killed.returncode != 0
    seen["sample"] = (done(run_dir), shard_hashes(run_dir))

    killed = rest(work, *run_cmd(run_dir), kill="prm_update:before_save")
    assert killed.returncode != 0, killed.stdout[-2000:] + killed.stderr[-3000:]
    seen["prm_update"] = (done(run_dir), shard_hashes(run_dir), (run_dir / "iter_001" / "prm").exists())

    killed = rest(work, *run_cmd(run_dir), kill="select:after_verdicts")
    assert killed.returncode == -9  # the filter runs inside `rest run` itself
    seen["select"] = (done(run_dir), (run_dir / "iter_001" / "verdicts.parquet").is_file(),
                      (run_dir / "iter_001" / "kept.parquet").is_file())

    killed = rest(work, *run_cmd(run_dir), kill="train_checkpoint_saved#1")
    assert killed.returncode != 0, killed.stdout[-2000:] + killed.stderr[-3000:]
    seen["train"] = (done(run_dir), sorted(p.name for p in (run_dir / "iter_001" / "train").glob("checkpoint-*")))

    final = rest(work, *run_cmd(run_dir))
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-5000:]
    return {"work": work, "dir": run_dir, "seen": seen}


def test_each_kill_left_its_phase_unfinished(crashed):
    seen = crashed["seen"]
    phases, shards = seen["sample"]
    assert "sample" not in phases and len(shards) == 2  # 2 of 3 shards written, phase not recorded
    phases, _, prm_saved = seen["prm_update"]
    assert {"sample", "verify"} <= phases and "prm_update" not in phases and not prm_saved
    phases, verdicts, kept = seen["select"]
    assert {"prm_update", "prm_score"} <= phases and "select" not in phases and verdicts and not kept
    phases, checkpoints = seen["train"]
    assert "select" in phases and "train" not in phases and checkpoints == ["checkpoint-1"]


def test_rerun_completes_with_exactly_n_samples_and_unchanged_shards(crashed):
    run_dir = crashed["dir"]
    assert done(run_dir) == {"sample", "verify", "prm_update", "prm_score", "select", "train", "eval"}
    hashes = shard_hashes(run_dir)
    assert len(hashes) == 3
    first_two = crashed["seen"]["sample"][1]
    assert {name: hashes[name] for name in first_two} == first_two  # finished shards never rewritten
    samples = pd.read_parquet(run_dir / "iter_001" / "verified.parquet")
    assert len(samples) == PROMPTS * N
    assert samples.groupby("prompt_id").size().eq(N).all() and samples["prompt_id"].nunique() == PROMPTS
    assert not samples.duplicated(["iteration", "prompt_id", "sample_index"]).any()


def test_killed_m_step_resumed_from_its_checkpoint(crashed):
    train = json.loads((crashed["dir"] / "iter_001" / "stats" / "train.json").read_text())
    assert train["resumed_from_step"] == 1 and train["steps"] > 1


def test_one_nested_mlflow_run_per_iteration(crashed):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{crashed['work'] / 'mlflow.db'}")
    manifest = json.loads((crashed["dir"] / "manifest.json").read_text())
    parent = manifest["mlflow"]["parent_run_id"]
    experiment = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(run.data.tags["rest.iteration"] for run in children) == ["0", "1"]
    assert len(client.search_runs([experiment], "tags.`rest.iteration` = '1'")) == 1


def test_kept_set_and_training_data_equal_an_uninterrupted_run_on_the_same_samples(crashed):
    """Everything after the E-step is deterministic: redo it without crashes on a copy of the samples."""
    work, run_dir = crashed["work"], crashed["dir"]
    fresh = work / "uninterrupted"
    fresh.mkdir()
    shutil.copy(run_dir / "recipe.yaml", fresh / "recipe.yaml")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["iterations"] = {"0": manifest["iterations"]["0"], "1": {"sample": manifest["iterations"]["1"]["sample"]}}
    manifest["mlflow"] = {}
    (fresh / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(run_dir / "iter_001" / "samples", fresh / "iter_001" / "samples")
    shutil.copytree(run_dir / "iter_001" / "stats", fresh / "iter_001" / "stats")
    for command in ("verify", "prm-train", "prm-score", "filter"):
        result = rest(work, command, str(RECIPE), *OVERRIDES, "--iteration", "1", "--run-dir", str(fresh))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    key = ["prompt_id", "sample_index"]
    crashed_kept = pd.read_parquet(run_dir / "iter_001" / "kept.parquet").sort_values(key).reset_index(drop=True)
    clean_kept = pd.read_parquet(fresh / "iter_001" / "kept.parquet").sort_values(key).reset_index(drop=True)
    assert len(crashed_kept) > 0
    assert crashed_kept[key + ["completion"]].equals(clean_kept[key + ["completion"]])
    assert crashed_kept["prm__min"].tolist() == pytest.approx(clean_kept["prm__min"].tolist(), abs=1e-5)
    # The resumed M-step trained on exactly that set (its record covers the batches after the resume).
    train = json.loads((run_dir / "iter_001" / "stats" / "train.json").read_text())
    assert train["examples"] == len(clean_kept)
    trained_on = json.loads((run_dir / "iter_001" / "train" / "data_rank0.json").read_text())["samples"]
    assert trained_on and set(trained_on) <= {f"{p}/{i}" for p, i in zip(clean_kept["prompt_id"], clean_kept["sample_index"])}
