"""Progress without a terminal: plain lines at a steady cadence, no control characters."""
from __future__ import annotations

import io

from rich.console import Console

from rest.report import progress
from rest.report.progress import PlainProgress, phase_progress


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
    # The ETA runs from the first finished unit (at 10 s): 1 unit per 30 s since, 2 units left.
    assert lines == ["E-step iter 1: 2/4 (50%)  0.4 samples/s  elapsed 0:00:40  ETA 0:01:00",
                     "E-step iter 1: 2/4 (50%)  0.4 samples/s  elapsed 0:01:00  ETA 0:01:40"]  # rates as of the last advance
    assert "\x1b" not in buffer.getvalue() and "\r" not in buffer.getvalue()


def test_phase_progress_is_plain_when_output_is_no_terminal(monkeypatch, capsys):
    monkeypatch.setenv(progress.FORCE_TTY_ENV, "0")
    with phase_progress("eval iter 0 (greedy)", total=3) as bar:
        bar.advance(3, samples=3)
    err = capsys.readouterr().err
    assert err.startswith("eval iter 0 (greedy): 3/3 (100%)") and "\x1b" not in err


def test_a_phase_warns_in_its_own_words_about_what_needs_action():
    from rest.phases.table import warnings

    assert warnings({"truncation_rate": 0.2, "kept": 3, "data_errors": {}}) == []
    found = warnings({"truncation_rate": 0.56, "kept": 0, "data_errors": {"p1": "gold '12 apples' is no number"}})
    assert found == [
        "56% of the answers were cut at the token limit: raise sampling.max_tokens (eval.max_tokens for "
        "evaluation) or ask for shorter answers",
        "no sample was kept: there is nothing to train on",
        "1 gold answers did not parse and count as unjudged (e.g. prompt p1: gold '12 apples' is no number); "
        "all of them are listed under data_errors in its stats file"]
