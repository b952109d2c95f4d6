"""The phases of an iteration, how each one runs (in-process or in its own process), and their prerequisites."""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

from rest.errors import RestError
from rest.phases.table import PHASE_TABLE, warnings
from rest.phases.table import phase as declared
from rest.recipe.schema import Recipe
from rest.report.progress import FORCE_TTY_ENV, PROGRESS_FILE_ENV, UI_FD_ENV, VERBOSE_ENV, console
from rest.run.rundir import RunDir, atomic_write_json


class PhaseFailedError(RestError, RuntimeError):
    """A phase exited with an error; the message carries the tail of its log."""


def phase_function(phase: str) -> Callable[[Recipe, RunDir, int], dict]:
    """The library function that implements ``phase``."""
    module, _, name = declared(phase).function.partition(":")
    return getattr(importlib.import_module(module), name)


def active_phases(recipe: Recipe) -> tuple[str, ...]:
    """The phases an iteration of this recipe runs, in order (some only when their recipe section is there)."""
    return tuple(p.name for p in PHASE_TABLE if p.enabled(recipe))


def prerequisite(recipe: Recipe, k: int, phase: str) -> tuple[int, str] | None:
    """The (iteration, phase) that must be done before ``phase`` of iteration ``k`` can run."""
    phases = active_phases(recipe)
    if phase not in phases:
        raise PhaseFailedError(f"phase {phase} needs a `{declared(phase).section}` section in the recipe")
    if phase == "eval" and k == 0:
        return None
    if phase == "sample":
        return (k - 1, "train") if k > 1 else None
    return k, phases[phases.index(phase) - 1]


def check_prerequisite(recipe: Recipe, run: RunDir, k: int, phase: str) -> None:
    """Raise a clear error when the phase before ``phase`` has not finished."""
    needed = prerequisite(recipe, k, phase)
    if needed and not run.is_done(*needed):
        raise PhaseFailedError(
            f"cannot run {phase} of iteration {k}: {needed[1]} of iteration {needed[0]} has not finished "
            f"(run `rest {declared(needed[1]).command} RECIPE --iteration {needed[0]}` or `rest run RECIPE`)"
        )


def execute_phase(recipe: Recipe, run: RunDir, k: int, phase: str, tracker: Any = None) -> dict:
    """Run one phase (isolated where it holds a model), record it in the manifest, log it; returns stats."""
    check_prerequisite(recipe, run, k, phase)
    if tracker is not None:
        tracker.start_phase(k, phase)  # system metrics of the phase go to its iteration's run
    started = time.perf_counter()
    with _running(run, k, phase):
        if declared(phase).isolated:
            stats = run_isolated(run, k, phase)
        else:
            stats = phase_function(phase)(recipe, run, k)
    wall = time.perf_counter() - started
    run.mark_done(k, phase, wall)
    console().print(declared(phase).line(k, stats, wall), markup=False, highlight=False, soft_wrap=True)
    for warning in warnings(stats):
        console().print(f"warning: {phase} of iteration {k}: {warning}", markup=False, highlight=False, soft_wrap=True)
    if tracker is not None:
        tracker.log_phase(k, phase, {**stats, "wall_s": wall})
    return stats


@contextlib.contextmanager
def _running(run: RunDir, k: int, phase: str) -> Iterator[None]:
    """Record that ``phase`` of iteration ``k`` runs in this process, and where its progress is kept."""
    progress = run.progress(k, phase)
    progress.parent.mkdir(parents=True, exist_ok=True)
    progress.unlink(missing_ok=True)
    atomic_write_json(run.running_path, {"phase": phase, "iteration": k, "pid": os.getpid(), "started": time.time()})
    before = os.environ.get(PROGRESS_FILE_ENV)
    os.environ[PROGRESS_FILE_ENV] = str(progress)  # in-process phases and the phase's own process read it
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_FILE_ENV, None)
        else:
            os.environ[PROGRESS_FILE_ENV] = before
        run.running_path.unlink(missing_ok=True)
        progress.unlink(missing_ok=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_isolated(run: RunDir, k: int, phase: str) -> dict:
    """Run a phase in a fresh Python process; returns its stats.

    Everything it prints goes to ``iter_K/logs/PHASE.log``; the terminal gets rest-em's own output
    (progress, messages: a pipe of their own) and, with ``REST_EM_VERBOSE=1`` (``rest -v``), the rest too.
    """
    log_path = run.iteration(k) / "logs" / f"{phase}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{FORCE_TTY_ENV: "1" if sys.stderr.isatty() else "0"})
    # vLLM logs hundreds of INFO lines per engine start; keep the terminal readable unless asked otherwise.
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    cmd = [sys.executable, "-m", "rest.run.worker", phase, str(run.root), str(k)]
    tail: deque[bytes] = deque(maxlen=40)
    verbose = os.environ.get(VERBOSE_ENV) == "1"
    ui_read, ui_write = os.pipe()
    env[UI_FD_ENV] = str(ui_write)
    with open(log_path, "ab") as log, open(ui_read, "rb", buffering=0) as ui:
        # Its own process group, so everything it started (vLLM's engine processes) goes with it.
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, pass_fds=(ui_write,))
        finally:
            os.close(ui_write)  # the child holds it now; end-of-file comes when the child's copies close
        # The relays run beside the wait: processes the phase started keep the pipes open after it dies,
        # so waiting for end-of-file first would hang until they are killed.
        relays = [threading.Thread(target=_relay, args=(proc.stdout, log, tail, verbose), daemon=True),
                  threading.Thread(target=_relay, args=(ui, None, None, True), daemon=True)]
        try:  # a signal from here on (SIGTERM turned into SystemExit) still stops the phase's group
            for relay in relays:
                relay.start()
            code = proc.wait()
        finally:
            _kill_group(proc)
            for relay in relays:
                relay.join(timeout=60)
    if code != 0:
        last = b"".join(tail).decode(errors="replace").rstrip()
        raise PhaseFailedError(
            f"{phase} of iteration {k} failed (exit code {code}); last lines of {log_path}:\n{last}"
        )
    return run.read_stats(k, phase)


def _relay(stream: Any, log: Any, tail: deque | None, terminal: bool) -> None:
    """Copy a phase's output to its log and (``terminal``) to ours, keeping the last lines for errors."""
    read = stream.read1 if hasattr(stream, "read1") else stream.read
    while chunk := read(65536):
        if terminal:
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
        if log is not None:
            log.write(chunk)
            log.flush()  # the log is readable (tail -f) while the phase runs
        if tail is not None:
            tail.extend(chunk.splitlines(keepends=True))
