"""Packaging: `filters/` and `cli/` install as `rest.filters` / `rest.cli` (no generic top-level names),
in a regular and in an editable install."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.util, json, rest, rest.filters, rest.filters.base, rest.filters.sandbox.runner, rest.cli
print(json.dumps({
    "filters_file": rest.filters.__file__,
    "cli_file": rest.cli.__file__,
    "top_level_filters": importlib.util.find_spec("filters") is not None,
    "top_level_cli": importlib.util.find_spec("cli") is not None,
    "verdict": rest.filters.base.Verdict(1.0, "correct")._asdict(),
}))
"""


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_install_maps_filters_and_cli_under_rest(tmp_path, editable):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = ["-e", str(REPO)] if editable else [str(REPO)]
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", *target],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run([str(python), "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout)
    assert not found["top_level_filters"] and not found["top_level_cli"]
    assert found["verdict"] == {"score": 1.0, "reason": "correct", "answer": None, "detail": None}
    if editable:
        assert Path(found["filters_file"]) == REPO / "filters" / "__init__.py"
        assert Path(found["cli_file"]) == REPO / "cli" / "__init__.py"
    else:
        site = next((venv / "lib").glob("python3*/site-packages"))
        assert Path(found["filters_file"]) == site / "rest" / "filters" / "__init__.py"
        for module in ("cli/app.py", "prm/score.py", "phases/table.py", "run/worker.py", "filters/sandbox/launcher.py"):
            assert (site / "rest" / module).is_file(), f"rest/{module} is not installed"
        assert not (site / "filters").exists() and not (site / "cli").exists()
    assert (venv / "bin" / "rest").is_file(), "the console script is installed"
