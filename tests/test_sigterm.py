"""SIGTERM to `rest` must not orphan what a phase started (measured: vLLM's engine outlived a killed `rest run`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A stand-in for `rest`: starts a "phase" in its own session, as rest.run.execute.run_isolated does, that
# starts a long-lived child of its own (vLLM's engine), then waits with the same cleanup.
PARENT = """
import subprocess, sys
from rest.cli.app import stop_on_sigterm
from rest.run.execute import _kill_group
if sys.argv[1] == "handler":
    stop_on_sigterm()
phase = subprocess.Popen(
    [sys.executable, "-c", "import subprocess, sys, time; "
     "engine = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
     "print(engine.pid, flush=True); time.sleep(120)"],
    stdout=subprocess.PIPE, start_new_session=True)
try:  # from here on a SIGTERM finds the cleanup in place (the test sends it once it reads the pids)
    print(phase.pid, phase.stdout.readline().decode().strip(), flush=True)
    phase.wait()
finally:
    _kill_group(phase)
"""


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        state = next(line for line in status.read_text().splitlines() if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "zombie" not in state


def _engine_after_sigterm(mode: str) -> tuple[int, bool]:
    """The stand-in's exit code after SIGTERM, and whether its phase's child outlived it."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE)
    phase, engine = map(int, parent.stdout.readline().split())
    parent.send_signal(signal.SIGTERM)
    code = parent.wait(timeout=30)
    deadline = time.monotonic() + 3
    while _alive(engine) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(engine)
    for pid in (engine, phase):  # what the stand-in orphaned, if anything
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    return code, alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_phase_and_what_it_started():
    code, alive = _engine_after_sigterm("handler")
    assert code == 128 + signal.SIGTERM
    assert not alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_without_the_handler_the_engine_is_orphaned():
    """The failure the handler prevents, so the test above can tell it apart."""
    code, alive = _engine_after_sigterm("none")
    assert code == -signal.SIGTERM
    assert alive
