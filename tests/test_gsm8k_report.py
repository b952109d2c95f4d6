"""The GSM8K experiment's report: arms saved in one session compare, problem by problem, with later ones."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("gsm8k_report", REPO / "experiments" / "gsm8k_smollm2" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def saved_arm(name: str, verdicts: list[list[int]], kept: list[int | None]) -> dict:
    """An arm as ``--save`` writes it: one entry per iteration with its row and greedy verdicts."""
    iterations = []
    for k, (greedy, count) in enumerate(zip(verdicts, kept)):
        p = sum(greedy) / len(greedy)
        row = {"iteration": k, "kept": count, "pass@1": p, "pass@1_stderr": math.sqrt(p * (1 - p) / len(greedy)),
               "time": {"eval": 60.0}}
        iterations.append({"row": row, "tokens": 1000 * (k + 1), "greedy": {f"q{i}": float(c) for i, c in enumerate(greedy)}})
    return {"arm": name, "iterations": iterations}


def test_saved_arms_are_paired_problem_by_problem(report, tmp_path, capsys):
    base = [0, 0, 1, 0]
    outcome = saved_arm("outcome", [base, [1, 0, 1, 0]], [None, 8])
    prm = saved_arm("prm", [base, [1, 1, 1, 0]], [None, 6])
    paths = []
    for arm in (outcome, prm):
        paths.append(tmp_path / f"{arm['arm']}.json")
        paths[-1].write_text(json.dumps(arm))
    assert report.main([str(p) for p in paths] + ["--plot", str(tmp_path / "plot.png")]) == 0
    out = capsys.readouterr().out
    # outcome: d = (1, 0, 0, 0), mean 0.25, sd 0.5, stderr 0.25; prm vs base: d = (1, 1, 0, 0), stderr 0.289.
    assert ("- outcome iteration 1 vs base: greedy pass@1 +0.250 ± 0.250 (paired, 4 problems, +1.0 standard errors)"
            in out)
    assert "- prm iteration 1 vs base: greedy pass@1 +0.500 ± 0.289 (paired, 4 problems, +1.7 standard errors)" in out
    assert "- prm vs outcome, iteration 1: greedy pass@1 +0.250 ± 0.250 (paired, 4 problems, +1.0 standard errors)" in out
    assert "| prm | 1 | 6 |" in out and "| outcome (= base) | 0 |" in out and "| 2,000 |" in out
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_a_path_that_is_no_arm_is_refused_by_name(report, tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert f"{tmp_path}: neither a run directory" in capsys.readouterr().err
