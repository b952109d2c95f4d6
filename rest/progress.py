"""Rich progress bars for long phases, with throughput counters (samples/s, tokens/s, ...)."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# Set by the parent when a phase runs in a child process whose output is relayed to a terminal.
FORCE_TTY_ENV = "REST_EM_FORCE_TTY"


def console() -> Console:
    """The console progress and summaries go to (stderr, so stdout stays clean for data)."""
    return Console(stderr=True, force_terminal=True if os.environ.get(FORCE_TTY_ENV) == "1" else None)


class PhaseBar:
    """One progress bar; ``advance`` also accumulates counters and shows their rates."""

    def __init__(self, progress: Progress, task: int):
        self._progress, self._task = progress, task
        self._started = time.perf_counter()
        self.counters: dict[str, float] = {}

    def advance(self, steps: float = 1, **counters: float) -> None:
        """Move the bar by ``steps`` and add to the named counters (shown as per-second rates)."""
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        rates = "  ".join(f"{v / elapsed:,.1f} {k}/s" for k, v in self.counters.items())
        self._progress.update(self._task, advance=steps, rates=rates)


@contextlib.contextmanager
def phase_progress(description: str, total: float | None) -> Iterator[PhaseBar]:
    """A progress bar for one phase, closed when the block ends."""
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rates]}"), TimeElapsedColumn(),
    )
    with Progress(*columns, console=console(), transient=False) as progress:
        yield PhaseBar(progress, progress.add_task(description, total=total, rates=""))
