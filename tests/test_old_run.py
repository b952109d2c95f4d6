"""A run directory written by an earlier version of rest-em resumes with this one.

``tests/data/old_run`` is arm (s) of the MAWPS experiment as rest-em (commit 6b2e39d, before the package was
split into folders) left it after its iteration-1 E-step: the manifest, the resolved recipe, the sample
shards (their policy column set to the model's name instead of a cache path). Resuming it here must accept
the recipe as the same one (same hash) and reproduce what that version computed next: 16 of the 300
samples correct, and 298 reference solutions kept.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, undeclared_stats

OLD_RUN = REPO / "tests" / "data" / "old_run"


def rest(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rest.cli.app", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_old_run_directory_resumes_with_the_same_results(tmp_path: Path, shared_data: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    recipe = str(run / "recipe.yaml")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}

    for command in ("verify", "filter"):
        done = rest(command, recipe, "--iteration", "1", "--run-dir", str(run), env=env)
        assert done.returncode == 0, done.stdout + done.stderr

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["recipe_hash"] == "07a9f352a5e97dda"
    assert "recipe_changes" not in manifest
    assert set(manifest["iterations"]["1"]) == {"sample", "verify", "select"}
    verify = json.loads((run / "iter_001" / "stats" / "verify.json").read_text())
    assert (verify["samples"], verify["correct"], verify["original_correct"]) == (300, 16, 298)
    select = json.loads((run / "iter_001" / "stats" / "select.json").read_text())
    assert (select["kept"], select["prompts_with_kept"]) == (298, 298)

    assert undeclared_stats(run) == {}

    status = rest("status", str(run), env=env)
    assert status.returncode == 0, status.stderr
    assert "298" in status.stdout
