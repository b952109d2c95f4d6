"""Fixtures shared by the end-to-end tests: a real `mlflow server`, and the tiny run that logs to it.

One real `rest run` costs minutes on a small machine, so the run-directory checks (test_run_tiny.py) and the
remote-tracking checks (test_mlflow_server.py) read the same run, made once per session.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "tiny.yaml"
# System metrics sampled every 2 s, so even the short base evaluation gets several samples.
TINY_OVERRIDES = ["tracking.system_metrics_interval_s=2"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a sqlite store and proxied artifacts, on a free local port; killed at the end."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    # No background job runner: it is not needed here and costs CPU on a small machine.
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "wb")
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not come up: " + (root / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def run_watching_status(cmd: list[str], work: Path, env: dict, run: Path, timeout: float):
    """Run ``cmd`` to its end; meanwhile read the run's status as `rest status` does, every second.

    Returns the finished process (stdout and stderr as text) and every distinct status line seen, plus the
    output of one `rest status` command made while a phase showed progress.
    """
    from rest.report.summary import running
    from rest.run.rundir import RunDir

    seen: list[str] = []
    status_tries = 5  # a phase may end while `rest status` starts: try again (with the next phase's progress)
    with open(work / "out.txt", "w+") as out, open(work / "err.txt", "w+") as err:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"{cmd} did not finish in {timeout} s"
            lines = running(RunDir(run))
            seen += [line for line in lines if line not in seen]
            if len(lines) == 2 and status_tries and not any(line.startswith("rest status:") for line in seen):
                status_tries -= 1
                status = subprocess.run([sys.executable, "-m", "rest.cli.app", "status", str(run)], env=env,
                                        capture_output=True, text=True, timeout=120)
                if "running: " in status.stdout:
                    seen += ["rest status:" + status.stdout]
            time.sleep(1)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read()), seen


@pytest.fixture(scope="session")
def tiny_run(mlflow_server, tmp_path_factory, builtin_model):
    """`rest run` on the tiny recipe, logging to the server, then the same command again (it must resume)."""
    from mlflow.tracking import MlflowClient

    work = tmp_path_factory.mktemp("tiny")
    run = work / "run"
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "rest.cli.app", "run", str(TINY), "--run-dir", str(run),
           f"tracking.tracking_uri={mlflow_server}", *TINY_OVERRIDES]
    first, status_seen = run_watching_status(cmd, work, env, run, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    manifest_after_first = json.loads((run / "manifest.json").read_text())
    logs_after_first = {str(p): p.stat().st_size for p in run.glob("iter_*/logs/*.log")}
    again = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    return {"dir": run, "work": work, "first": first, "again": again, "base": builtin_model,
            "manifest_after_first": manifest_after_first, "logs_after_first": logs_after_first,
            "logs_after_again": {str(p): p.stat().st_size for p in run.glob("iter_*/logs/*.log")},
            "client": client, "url": mlflow_server, "status_seen": status_seen,
            "parents": [r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            "children": {r.data.tags["rest.iteration"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}}


@pytest.fixture(scope="session")
def phase_stats():
    """Reads ``iter_<k>/stats/<phase>.json`` of a run directory."""
    def read(run: Path, k: int, phase: str) -> dict:
        return json.loads((run / f"iter_{k:03d}" / "stats" / f"{phase}.json").read_text())
    return read
