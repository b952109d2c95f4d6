"""Progress without a terminal: plain lines at a steady cadence, no control characters."""
from __future__ import annotations

import io

from rich.console import Console

from rest import progress
from rest.progress import PlainProgress, phase_progress


def test_plain_progress_prints_done_total_rates_and_eta_without_control_characters(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    buffer = io.StringIO()
    bar = PlainProgress("E-step iter 1", total=4, out=Console(file=buffer, width=200), interval=30)
    now[0] = 10.0
    bar.advance(1, samples=8)  # under the interval: nothing printed
    assert buffer.getvalue() == ""
    now[0] = 40.0
    bar.advance(1, samples=8)  # a line
    now[0] = 60.0
    bar.report()  # the closing line
    lines = buffer.getvalue().splitlines()
    assert lines == ["E-step iter 1: 2/4 (50%)  0.4 samples/s  elapsed 0:00:40  ETA 0:00:40",
                     "E-step iter 1: 2/4 (50%)  0.4 samples/s  elapsed 0:01:00  ETA 0:01:00"]  # rates as of the last advance
    assert "\x1b" not in buffer.getvalue() and "\r" not in buffer.getvalue()


def test_phase_progress_is_plain_when_output_is_no_terminal(monkeypatch, capsys):
    monkeypatch.setenv(progress.FORCE_TTY_ENV, "0")
    with phase_progress("eval iter 0 (greedy)", total=3) as bar:
        bar.advance(3, samples=3)
    err = capsys.readouterr().err
    assert err.startswith("eval iter 0 (greedy): 3/3 (100%)") and "\x1b" not in err
