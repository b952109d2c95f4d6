"""E-step on the real vLLM CPU build: a realistic batch, resume after a kill, and clear errors."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rest.data.problems import load_splits
from rest.recipe.schema import validate_recipe

pytestmark = pytest.mark.integration

BATCH_RECIPE = {
    "name": "batch",
    "seed": 3,
    "data": {"source": "synthetic", "train_size": 256, "eval_size": 8},
    "sampling": {"n": 4, "max_tokens": 16, "prompts_per_shard": 64},
    "engine": {"dtype": "float32", "enforce_eager": True, "max_model_len": 256, "cpu_kvcache_gib": 2},
    "tracking": {"enabled": False},
}


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"# rest run {path}\n" + yaml.safe_dump(recipe))
    return path


def rest(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rest.cli.app", *args], capture_output=True, text=True,
                          timeout=1200, env=dict(os.environ, **(env or {})), cwd=cwd)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_e_step_resumes_to_exactly_n_samples_per_prompt(tmp_path, builtin_model):
    recipe_path = write_recipe(tmp_path, BATCH_RECIPE)
    run = tmp_path / "run"
    killed = rest("sample", str(recipe_path), "--iteration", "1", "--run-dir", str(run),
                  env={"REST_EM_KILL_AT": "sample:after_shard#2"}, cwd=tmp_path)
    assert killed.returncode != 0
    assert "sample of iteration 1 failed" in killed.stderr
    shards = sorted((run / "iter_001" / "samples").glob("shard-*.parquet"))
    assert len(shards) == 2  # the first two shards to complete (all prompts share one engine batch)
    assert "1" not in json.loads((run / "manifest.json").read_text())["iterations"], "the phase was unfinished"
    before = {p.name: digest(p) for p in shards}

    resumed = rest("sample", str(recipe_path), "--iteration", "1", "--run-dir", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert all(digest(run / "iter_001" / "samples" / name) == h for name, h in before.items())
    check_complete_e_step(run, builtin_model)
    stats = json.loads((run / "iter_001" / "stats" / "sample.json").read_text())
    written = [p for p in (run / "iter_001" / "samples").glob("shard-*.parquet") if p.name not in before]
    assert stats["generated_tokens_this_run"] == sum(int(pd.read_parquet(p)["completion_tokens"].sum()) for p in written)
    assert stats["tokens_per_s"] == pytest.approx(stats["generated_tokens_this_run"] / stats["generate_s"])


def check_complete_e_step(run: Path, policy: str) -> None:
    """Four shards holding exactly n = 4 samples for each of the 256 training prompts, counted right."""
    shards = sorted((run / "iter_001" / "samples").glob("shard-*.parquet"))
    assert len(shards) == 4
    samples = pd.concat(pd.read_parquet(p) for p in shards)
    train_ids = set(load_splits(validate_recipe(BATCH_RECIPE)).train["prompt_id"])
    assert len(samples) == 256 * 4
    assert set(samples["prompt_id"]) == train_ids
    assert all(sorted(ix) == [0, 1, 2, 3] for _, ix in samples.groupby("prompt_id")["sample_index"])
    assert not samples.duplicated(["iteration", "prompt_id", "sample_index"]).any()
    assert samples["iteration"].eq(1).all() and samples["policy"].eq(policy).all()
    assert samples["completion_token_ids"].map(len).between(1, 16).all()
    assert samples["truncated"].eq(samples["completion_token_ids"].map(len).eq(16) & samples["finish_reason"].eq("length")).all()
    stats = json.loads((run / "iter_001" / "stats" / "sample.json").read_text())
    assert stats["shards_resumed"] == 2 and stats["prompts_with_n_samples"] == 256
    assert stats["generated_tokens"] == int(samples["completion_token_ids"].map(len).sum())
    assert "sample" in json.loads((run / "manifest.json").read_text())["iterations"]["1"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("engine.max_model_len=32", "raise engine.max_model_len"),
        ("model=/nonexistent/model-dir", "model path /nonexistent/model-dir does not exist"),
        ("engine.engine_kwargs={max_num_batched_tokens_typo: 3}", "unknown vLLM engine options: max_num_batched_tokens_typo"),
    ],
    ids=["prompt-longer-than-context", "missing-model", "unknown-engine-option"],
)
def test_bad_settings_fail_with_a_clear_message(tmp_path, builtin_model, override, expected):
    recipe_path = write_recipe(tmp_path, BATCH_RECIPE)
    result = rest("sample", str(recipe_path), override, "--iteration", "1", "--run-dir", str(tmp_path / "run"),
                  cwd=tmp_path)
    assert result.returncode == 1
    assert expected in result.stderr
    assert not list((tmp_path / "run").glob("iter_001/samples/*.parquet"))


def test_engine_that_fails_to_start_shows_its_log_tail(tmp_path, builtin_model):
    recipe_path = write_recipe(tmp_path, BATCH_RECIPE)
    result = rest("sample", str(recipe_path), "engine.max_model_len=100000", "--iteration", "1",
                  "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 1
    assert "vLLM engine failed to start" in result.stderr
    assert "last lines of" in result.stderr and "sample.log" in result.stderr
