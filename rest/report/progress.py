"""Rich progress bars for long phases, with throughput counters (samples/s, tokens/s, ...)."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import IO, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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

    def advance(self, steps: float = 1, **counters: float) -> None:
        self.done += steps
        self._rates = rates_text(self.counters, counters, self._started)
        if time.perf_counter() - self._last >= self._interval:
            self.report()

    def report(self) -> None:
        self._last = time.perf_counter()
        elapsed = self._last - self._started
        parts = [f"{self.description}: {self.done:,.0f}" + (f"/{self.total:,.0f}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        if self._rates:
            parts.append(self._rates)
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and 0 < self.done < self.total:
            parts.append(f"ETA {_clock(elapsed * (self.total - self.done) / self.done)}")
        self._out.print("  ".join(parts), markup=False, highlight=False, soft_wrap=True)


def rates_text(counters: dict[str, float], added: dict[str, float], started: float) -> str:
    """Add ``added`` to ``counters`` and return their per-second rates since ``started``."""
    for name, value in added.items():
        counters[name] = counters.get(name, 0) + value
    elapsed = max(time.perf_counter() - started, 1e-9)
    return "  ".join(f"{v / elapsed:,.1f} {k}/s" for k, v in counters.items())


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


@contextlib.contextmanager
def phase_progress(description: str, total: float | None) -> Iterator[PhaseBar | PlainProgress]:
    """A progress bar for one phase, closed when the block ends (plain lines when output is no terminal)."""
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
