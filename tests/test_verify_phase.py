"""The verify phase: the worker pool judges exactly as one process does, in order, and reports bad golds."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import pandas as pd
import pytest

import rest.phases.verify
from rest.filters.base import Verdict
from rest.filters.code_verifier import CodeVerifier
from rest.filters.verifiers import GSM8KVerifier, MathAnswerVerifier, math_timeout
from rest.phases.verify import judge_frame, pool_start_method, verification_stats

VERDICT_COLUMNS = ["correct", "reward", "verify__reason", "answer"]
IN_POOL = {"workers": 2, "chunk_size": 1, "pool_start_s": 0.0}  # every row goes to the pool's queue

GSM8K_ROWS = [  # (prompt_id, completion, gold) -> (correct, reward, reason, answer)
    (("p1", "48/2 = 24. 48 + 24 = 72.\n#### 72", "Natalia sold 72.\n#### 72"), (True, 1.0, "correct", "72")),
    (("p1", "The answer is 71.", "Natalia sold 72.\n#### 72"), (False, 0.0, "wrong", "71")),
    (("p2", "#### 72 or 73", "#### 72"), (False, 0.0, "ambiguous_answer", None)),
    (("p2", "#### 5\nThe answer is 6", "#### 72"), (False, 0.0, "conflicting_answers", None)),
    (("bad", "#### 3", "no number here"), (None, None, "gold_parse_error", None)),
    (("p3", "I have no idea", "#### 10"), (False, 0.0, "no_answer", None)),
    (("bad", "#### 4", "no number here"), (None, None, "gold_parse_error", None)),
    (("p4", "The answer is $1,234.", "#### 1,234"), (True, 1.0, "correct", "1234")),
]
BAD_GOLD = "gsm8k gold answer 'no number here' is not a number (after its last '####', if any)"


def frame(rows: list[tuple[str, Any, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"prompt_id": p, "sample_index": i, "completion": c, "gold": g} for i, (p, c, g) in enumerate(rows)]
    )


def verdicts(judged: pd.DataFrame) -> list[tuple]:
    return [tuple(None if pd.isna(v) else v for v in row) for row in judged[VERDICT_COLUMNS].itertuples(index=False)]


@pytest.fixture(params=["fork", "forkserver"])
def start_method(request, monkeypatch):
    """Run the test with workers forked from this process, or from a fork server.

    The start method is forced: other tests leave threads behind (tqdm's monitor), which would make
    ``pool_start_method`` choose the fork server for the rest of the session.
    """
    monkeypatch.setattr(rest.phases.verify, "pool_start_method", lambda: request.param)
    return request.param


def test_the_pool_forks_only_while_no_other_thread_runs():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert pool_start_method() == "forkserver"
    finally:
        stop.set()
        thread.join()
    # A fresh interpreter runs no other thread (this session may: other tests leave tqdm's monitor).
    fresh = subprocess.run([sys.executable, "-c", "from rest.phases.verify import pool_start_method as m; print(m())"],
                           capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == "fork"


@pytest.mark.parametrize("mode", [{"workers": 1}, IN_POOL, {"workers": 2, "chunk_size": 3, "pool_start_s": 0.0}])
def test_literal_gsm8k_mix_in_one_process_and_in_the_pool(mode, start_method):
    samples = frame([row for row, _ in GSM8K_ROWS])
    judged, errors = judge_frame(GSM8KVerifier(), samples, **mode)
    assert verdicts(judged) == [expected for _, expected in GSM8K_ROWS]
    assert errors == {"bad": BAD_GOLD}, "a bad gold is a data error reported with its prompt id"
    assert judged["completion"].tolist() == samples["completion"].tolist(), "rows stay in input order"


def test_math_with_latex_gives_identical_verdicts_in_the_pool():
    rows = [
        ("m1", "so \\boxed{\\frac12}", "0.5"),
        ("m2", "The answer is $\\frac{3}{4}$", "\\frac34"),
        ("m3", "\\boxed{\\sqrt{2}}", "1.41421"),
        ("m4", "\\boxed{2\\pi}", "\\boxed{\\pi}"),
        ("m5", "\\boxed{x^2+2x+1}", "(x+1)^2"),
        ("m6", "\\boxed{3}", "\\frac{"),
    ]
    single, single_errors = judge_frame(MathAnswerVerifier(), frame(rows), workers=1)
    pooled, pooled_errors = judge_frame(MathAnswerVerifier(), frame(rows), **IN_POOL)
    assert verdicts(single) == verdicts(pooled) == [
        (True, 1.0, "correct", "0.5"),
        (True, 1.0, "correct", "0.75"),
        (True, 1.0, "correct", "\\sqrt{2}"),
        (False, 0.0, "wrong", "2\\pi"),
        (True, 1.0, "correct", "x^2+2x+1"),
        (None, None, "gold_parse_error", None),
    ]
    assert single_errors == pooled_errors == {"m6": "math gold answer '\\\\frac{' does not parse as math"}


def test_code_gives_identical_verdicts_in_the_pool():
    gold = {"prompt": 'def add(a, b):\n    """Sum."""\n', "test": "def check(f):\n    assert f(1, 2) == 3\n",
            "entry_point": "add"}
    rows = [("c1", "    return a + b\n", gold), ("c2", "    return a - b\n", gold),
            ("c3", "    while True: pass\n", gold), ("c4", "    return a + b\n", {"test": "x"})]
    verifier = CodeVerifier(time_s=1.5)
    single, single_errors = judge_frame(verifier, frame(rows), workers=1)
    pooled, pooled_errors = judge_frame(verifier, frame(rows), **IN_POOL)
    assert verdicts(single) == verdicts(pooled) == [
        (True, 1.0, "passed", None),
        (False, 0.0, "failed", None),
        (False, 0.0, "timeout", None),
        (None, None, "gold_parse_error", None),
    ]
    assert list(single_errors) == list(pooled_errors) == ["c4"]


# ---------------------------------------------------------------- where the work runs


def alarm_fires() -> bool:
    """Whether math-verify's SIGALRM timeout interrupts a 3 s sleep after 1 s here."""
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout

    try:
        timeout(1)(time.sleep)(3)
    except TimeoutException:
        return True
    return False


@dataclass(frozen=True)
class ProbeVerifier:
    """Judges nothing: reports the process it ran in and whether signal timeouts work there."""

    name: ClassVar[str] = "probe"
    alarm: bool = False

    def judge(self, completion: str, gold: Any, sample: Any) -> Verdict:
        if completion == "raise":
            raise RuntimeError("a bug in the verifier")
        timeouts = math_timeout(5) == 5 and (not self.alarm or alarm_fires())
        return Verdict(1.0 if timeouts else 0.0, "probe", str(os.getpid()))


def test_pool_workers_run_math_verify_timeouts_in_their_main_thread(start_method):
    # Each row takes 1 s (the alarm), so this process judges about one row a second from the back
    # while the workers, once up and warm (one throwaway row: a second or two), take rows from the front.
    rows = [(f"p{i}", "x", "x") for i in range(8)]
    judged, _ = judge_frame(ProbeVerifier(alarm=True), frame(rows), **IN_POOL)
    assert judged["reward"].tolist() == [1.0] * 8, "SIGALRM timeouts must fire wherever a row is judged"
    assert set(judged["answer"]) - {str(os.getpid())}, "some rows must have been judged in worker processes"


def test_cheap_work_stays_in_this_process():
    judged, _ = judge_frame(ProbeVerifier(), frame([(f"p{i}", "x", "x") for i in range(200)]), workers=2)
    assert set(judged["answer"]) == {str(os.getpid())}, "starting a pool for 200 cheap rows costs more than it saves"


def test_a_verifier_bug_is_raised_not_recorded():
    rows = [("p0", "x", "x"), ("p1", "raise", "x"), ("p2", "x", "x")]
    with pytest.raises(RuntimeError, match="a bug in the verifier"):
        judge_frame(ProbeVerifier(), frame(rows), **IN_POOL)


@dataclass(frozen=True)
class LocalVerifier:
    """A verifier holding a lambda: it cannot be pickled into a worker."""

    score: Callable[[str], float] = field(default=lambda completion: 1.0)

    def judge(self, completion: str, gold: Any, sample: Any) -> Verdict:
        return Verdict(self.score(completion), "local", None)


def test_a_verifier_that_cannot_be_pickled_is_judged_in_this_process():
    with pytest.warns(UserWarning, match="cannot be sent to worker processes"):
        judged, _ = judge_frame(LocalVerifier(), frame([("p0", "x", "x"), ("p1", "y", "x")]), **IN_POOL)
    assert judged["reward"].tolist() == [1.0, 1.0]


def test_verification_stats_count_reasons_and_list_data_errors():
    judged, errors = judge_frame(GSM8KVerifier(), frame([row for row, _ in GSM8K_ROWS]), workers=1)
    assert verification_stats(judged, errors) == {
        "samples": 8,
        "correct": 2,
        "unjudged": 2,
        "accuracy": 0.25,
        "prompts_with_correct": 2,
        "reasons": {"correct": 2, "gold_parse_error": 2, "wrong": 1, "ambiguous_answer": 1,
                    "conflicting_answers": 1, "no_answer": 1},
        "data_errors": {"bad": BAD_GOLD},
    }
