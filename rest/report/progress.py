"""Rich progress bars for long phases, with throughput counters (samples/s, tokens/s, ...)."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rest.run.rundir import atomic_write_json

# Set by the parent when a phase runs in a child process whose output is relayed to a terminal.
FORCE_TTY_ENV = "REST_EM_FORCE_TTY"
# Set by the parent for a phase's own process: the file descriptor where rest-em's own output (progress,
# its messages) goes, apart from the process's stdout/stderr, which third-party libraries fill.
UI_FD_ENV = "REST_EM_UI_FD"
# 1: third-party output (vLLM, torch, TRL) is shown on the terminal too, not only in the phase's log.
VERBOSE_ENV = "REST_EM_VERBOSE"
_ui_stream: IO[str] | None = None


def console() -> Console:
    """The console progress and summaries go to: stderr, or a phase process's channel to its parent."""
    file = _ui_stream if _ui_stream is not None else sys.stderr
    return Console(file=file, force_terminal=True if os.environ.get(FORCE_TTY_ENV) == "1" else None)


def adopt_ui_channel() -> None:
    """In a phase's own process: send :func:`console` output down the channel the parent opened for it.

    The variable naming it is removed at once, so processes this one starts (vLLM's engine, launcher
    ranks), which do not inherit the descriptor, never write to whatever else that number means there.
    """
    global _ui_stream
    fd = os.environ.pop(UI_FD_ENV, None)
    if fd:
        try:
            _ui_stream = os.fdopen(int(fd), "w", buffering=1)
        except (OSError, ValueError):  # not open here: plain stderr
            _ui_stream = None


# Without a terminal (CI, nohup, a file) progress is a plain line every this many seconds (default 30).
PLAIN_INTERVAL_ENV = "REST_EM_PROGRESS_INTERVAL"
# Set for a running phase: the JSON file where its progress bars keep their state (read by `rest status`).
PROGRESS_FILE_ENV = "REST_EM_PROGRESS_FILE"
_RECORD_INTERVAL_S = 2.0


class PhaseBar:
    """One progress bar; ``advance`` also accumulates counters and shows their rates."""

    def __init__(self, progress: Progress, task: int):
        self._progress, self._task = progress, task
        self._started = time.perf_counter()
        self.counters: dict[str, float] = {}

    def advance(self, steps: float = 1, **counters: float) -> None:
        """Move the bar by ``steps`` and add to the named counters (shown as per-second rates)."""
        self._progress.update(self._task, advance=steps, rates=rates_text(self.counters, counters, self._started))


class PlainProgress:
    """The same interface for output that is no terminal: ``description: done/total (pct)  rates  elapsed
    ETA`` every ``interval`` seconds and once at the end, no control characters."""

    def __init__(self, description: str, total: float | None, out: Console, interval: float):
        self.description, self.total, self._out, self._interval = description, total, out, interval
        self._started = self._last = time.perf_counter()
        self.done, self.counters, self._rates = 0.0, {}, ""
        self.eta = Eta(total)

    def advance(self, steps: float = 1, **counters: float) -> None:
        self.done += steps
        self._rates = rates_text(self.counters, counters, self._started)
        self.eta.update(self.done)
        if time.perf_counter() - self._last >= self._interval:
            self.report()

    def report(self) -> None:
        self._last = time.perf_counter()
        line = progress_line(self.description, self.done, self.total, self._rates, self._last - self._started,
                             self.eta.seconds(self.done))
        self._out.print(line, markup=False, highlight=False, soft_wrap=True)


class Eta:
    """Time left, from the pace since the first unit finished: the wait before it (an engine starting, a
    model loading) says nothing about the pace after."""

    def __init__(self, total: float | None):
        self.total = total
        self._first: tuple[float, float] | None = None  # (when, done) at the first advance

    def update(self, done: float) -> None:
        if self._first is None:
            self._first = (time.perf_counter(), done)

    def seconds(self, done: float) -> float | None:
        if not self.total or self._first is None or not self._first[1] < done < self.total:
            return None
        when, first = self._first
        return (time.perf_counter() - when) * (self.total - done) / (done - first)


class RecordedProgress:
    """A bar that also keeps its state in a JSON file every few seconds, for `rest status` to show."""

    def __init__(self, bar: PhaseBar | PlainProgress, description: str, total: float | None, path: Path):
        self._bar, self._path = bar, path
        self._state: dict[str, Any] = {"description": description, "total": total, "done": 0.0, "rates": ""}
        self._started = self._last = time.perf_counter()
        self._eta = Eta(total)

    @property
    def counters(self) -> dict[str, float]:
        return self._bar.counters

    def advance(self, steps: float = 1, **counters: float) -> None:
        self._bar.advance(steps, **counters)
        self._state["done"] += steps
        self._eta.update(self._state["done"])
        if time.perf_counter() - self._last >= _RECORD_INTERVAL_S:
            self.record()

    def record(self) -> None:
        """Replace the file with the bar's state now (atomically: a reader never sees half of it)."""
        self._last = time.perf_counter()
        elapsed = self._last - self._started
        self._state.update(elapsed_s=elapsed, updated=time.time(), rates=rates_text(self.counters, {}, self._started),
                           eta_s=self._eta.seconds(self._state["done"]))
        try:
            atomic_write_json(self._path, self._state)
        except OSError:  # the run directory went away or is read-only: progress is not worth failing for
            pass


def progress_line(description: str, done: float, total: float | None, rates: str, elapsed: float,
                  eta: float | None = None) -> str:
    """``E-step iter 1: 254/300 (85%)  3.8 samples/s  elapsed 0:09:01  ETA 0:01:38``."""
    parts = [f"{description}: {done:,.0f}" + (f"/{total:,.0f} ({100 * done / total:.0f}%)" if total else "")]
    if rates:
        parts.append(rates)
    parts.append(f"elapsed {clock(elapsed)}")
    if eta is not None:
        parts.append(f"ETA {clock(eta)}")
    return "  ".join(parts)


def rates_text(counters: dict[str, float], added: dict[str, float], started: float) -> str:
    """Add ``added`` to ``counters`` and return their per-second rates since ``started``."""
    for name, value in added.items():
        counters[name] = counters.get(name, 0) + value
    elapsed = max(time.perf_counter() - started, 1e-9)
    return "  ".join(f"{v / elapsed:,.1f} {k}/s" for k, v in counters.items())


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


@contextlib.contextmanager
def phase_progress(description: str, total: float | None) -> Iterator[PhaseBar | PlainProgress | RecordedProgress]:
    """A progress bar for one phase, closed when the block ends (plain lines when output is no terminal);
    while a phase runs (``REST_EM_PROGRESS_FILE`` set), its state is kept in that file as well."""
    path = os.environ.get(PROGRESS_FILE_ENV)
    with _bar(description, total) as bar:
        if not path:
            yield bar
            return
        recorded = RecordedProgress(bar, description, total, Path(path))
        recorded.record()
        yield recorded
        recorded.record()


@contextlib.contextmanager
def _bar(description: str, total: float | None) -> Iterator[PhaseBar | PlainProgress]:
    out = console()
    if not out.is_terminal:
        plain = PlainProgress(description, total, out, float(os.environ.get(PLAIN_INTERVAL_ENV, "30")))
        yield plain
        plain.report()
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rates]}"), TimeElapsedColumn(),
    )
    with Progress(*columns, console=out, transient=False) as progress:
        yield PhaseBar(progress, progress.add_task(description, total=total, rates=""))
