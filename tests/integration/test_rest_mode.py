"""ReST Grow/Improve and early stopping, end to end on the real stack (vLLM CPU, TRL, MLflow sqlite).

One Grow (iteration 1) and one Improve step (iteration 2) that re-filters the grown samples and continues
the policy at half the learning rate; the grown set mixes in each prompt's reference solution
(`loop.mix_original`). `loop.min_delta: 1.0` makes any improvement impossible, so with `patience: 2` the
loop must stop before iteration 3, with the base model (iteration 0) as the best.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "tiny.yaml"
OVERRIDES = [
    "loop.mode=rest", "train.init=previous", "loop.iterations=3", "loop.improve_steps=2",
    "loop.improve_lr_decay=0.5", "loop.patience=2", "loop.min_delta=1.0",
    "data.train_size=8", "sampling.n=4", "eval.samples=0", "eval.max_tokens=64",
    "loop.mix_original=true", "data.reference_template='{answer}'",
]


@pytest.fixture(scope="module")
def rest_run(tmp_path_factory, builtin_model):
    work = tmp_path_factory.mktemp("rest_mode")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "rest.cli.app", "run", str(TINY), *OVERRIDES, "--run-dir", str(work / "run")]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    again = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return {"dir": work / "run", "out": done.stdout, "again": again.stdout}


def samples(run: Path, k: int) -> pd.DataFrame:
    shards = sorted((run / f"iter_{k:03d}" / "samples").glob("shard-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)


def test_improve_step_refilters_the_grown_samples(rest_run, phase_stats):
    grown, improved = samples(rest_run["dir"], 1), samples(rest_run["dir"], 2)
    key = ["prompt_id", "sample_index"]
    grown, improved = grown.sort_values(key).reset_index(drop=True), improved.sort_values(key).reset_index(drop=True)
    assert len(grown) == 8 * 4 and len(improved) == len(grown)
    assert improved["completion"].tolist() == grown["completion"].tolist()
    assert improved["completion_token_ids"].map(list).tolist() == grown["completion_token_ids"].map(list).tolist()
    assert set(grown["iteration"]) == {1} and set(improved["iteration"]) == {2}
    assert set(grown["improve_step"]) == {1} and set(improved["improve_step"]) == {2}
    sample_stats = phase_stats(rest_run["dir"], 2, "sample")
    assert (sample_stats["grown_in"], sample_stats["generated_tokens"], sample_stats["samples"]) == (1, 0, 32)
    assert "engine_start_s" not in sample_stats  # no engine was started for an Improve step


def test_the_grown_set_mixes_in_the_reference_solutions(rest_run, phase_stats):
    from rest.data.problems import load_splits
    from rest.recipe.schema import load_recipe

    problems = load_splits(load_recipe(TINY, OVERRIDES)).train.set_index("prompt_id")
    for k in (1, 2):
        verified = pd.read_parquet(rest_run["dir"] / f"iter_{k:03d}" / "verified.parquet")
        originals = verified[verified["policy"] == "original"].set_index("prompt_id")
        assert len(verified) == 8 * 4 + 8 and sorted(originals.index) == sorted(problems.index)
        assert set(originals["sample_index"]) == {-1}
        assert (originals["completion"] == problems.loc[originals.index, "reference"]).all()
        assert originals["correct"].all(), "a synthetic reference solution ends in its own gold answer"
        verify = phase_stats(rest_run["dir"], k, "verify")
        assert (verify["samples"], verify["original_rows"], verify["original_correct"]) == (32, 8, 8)
    kept = pd.read_parquet(rest_run["dir"] / "iter_001" / "kept.parquet")
    train = phase_stats(rest_run["dir"], 1, "train")
    assert kept["policy"].eq("original").sum() >= 1, "a correct reference passes keep_correct"
    assert train["examples"] + train["eval_examples"] + train["dropped_overlong"] == len(kept)


def test_improve_step_continues_the_policy_at_a_decayed_learning_rate(rest_run, phase_stats):
    first, second = phase_stats(rest_run["dir"], 1, "train"), phase_stats(rest_run["dir"], 2, "train")
    assert Path(second["init"]) == rest_run["dir"] / "iter_001" / "model"
    lr1 = {row["learning_rate"] for row in first["history"] if "learning_rate" in row}
    lr2 = {row["learning_rate"] for row in second["history"] if "learning_rate" in row}
    assert len(lr1) == len(lr2) == 1  # constant schedule in the tiny recipe
    assert lr2.pop() == pytest.approx(lr1.pop() * 0.5)


def test_loop_stopped_early_and_recorded_the_best_iteration(rest_run, phase_stats):
    manifest = json.loads((rest_run["dir"] / "manifest.json").read_text())
    assert sorted(manifest["iterations"]) == ["0", "1", "2"]
    assert not (rest_run["dir"] / "iter_003").exists()
    assert "early stop: pass@1 has not improved on iteration 0's" in rest_run["out"]
    base = phase_stats(rest_run["dir"], 0, "eval")["pass@1"]
    assert manifest["best"]["iteration"] == 0 and manifest["best"]["value"] == pytest.approx(base)
    # The rerun reaches the same decision from the files and starts no phase.
    assert "early stop" in rest_run["again"]
    rerun_manifest = json.loads((rest_run["dir"] / "manifest.json").read_text())
    assert rerun_manifest["iterations"] == manifest["iterations"]
