"""Tests of the code verifier: literal completions and gold tests, scored by real sandboxed runs."""
import json
import os
import time
from pathlib import Path

import pytest

from rest.filters.base import GoldAnswerError, Verdict
from rest.filters.code_verifier import (
    CodeVerifier,
    build_program,
    defines,
    extract_code,
    parse_code_gold,
    verdict_of,
    verify_many,
)
from rest.filters.sandbox.runner import SandboxResult

HUMANEVAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "humaneval" / "HumanEval.jsonl"
VERIFIER = CodeVerifier(time_s=5.0)

PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n'
TEST = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
GOLD = {"prompt": PROMPT, "test": TEST, "entry_point": "total"}
ASSERTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 5"]


# ---------------------------------------------------------------- extracting the code

FENCED = "Here you go:\n```python\ndef total(xs):\n    return sum(xs)\n```\nAnd a usage example:\n```python\nprint(total([1]))\n```\n"


@pytest.mark.parametrize(
    ("completion", "names", "expected"),
    [
        (FENCED, ["total"], "def total(xs):\n    return sum(xs)\n"),  # the last fence that defines it
        (FENCED, [], "print(total([1]))\n"),  # no name to look for: the last fence
        ("```py\nx = 1\n```\n```bash\nls\n```\n", ["f"], "x = 1\n"),  # other languages are not code
        ("    return sum(xs)\n", ["total"], "    return sum(xs)\n"),  # raw text, indentation kept
        ("```python\ndef total(xs):\n    return 0", ["total"], "def total(xs):\n    return 0"),  # cut off
        ("~~~\ndef total(xs):\n    return 1\n~~~\n", ["total"], "def total(xs):\n    return 1\n"),
        ("", ["total"], ""),
    ],
)
def test_extract_code(completion, names, expected):
    assert extract_code(completion, names) == expected


def test_defines_looks_for_top_level_definitions_only():
    assert defines("import x\n\ndef total(xs):\n    pass\n", "total")
    assert defines("async def total(xs):\n    pass\n", "total")
    assert defines("total = lambda xs: 0\n", "total")
    assert not defines("    def total(xs):\n        pass\n", "total")
    assert not defines("def totals(xs):\n    pass\n", "total")


def test_the_prompt_goes_before_a_body_and_before_a_whole_function():
    gold = parse_code_gold(GOLD)
    assert build_program("    return sum(xs)\n", gold) == PROMPT + "    return sum(xs)\n"
    whole = "def total(xs):\n    return sum(xs)\n"
    assert build_program(whole, gold) == PROMPT + "\n\n" + whole
    future = "from __future__ import annotations\n" + whole  # cannot follow the prompt: runs alone
    assert build_program(future, gold) == future


# ---------------------------------------------------------------- gold answers


@pytest.mark.parametrize(
    "gold",
    [
        {"test": TEST},  # no entry point
        {"test": TEST, "entry_point": "not an identifier"},
        {"test": "def check(candidate:\n", "entry_point": "total"},  # not Python
        {"test": "assert total([]) == 0\n", "entry_point": "total"},  # no check()
        {"test": TEST, "entry_point": "total", "prompt": "def total(:\n"},
        [],
        ["assert add(1, 2) == 3", 7],
        ["assert add(1, 2) =="],
        "not json",
        42,
        None,
    ],
)
def test_a_gold_that_does_not_parse_is_an_error(gold):
    with pytest.raises(GoldAnswerError):
        VERIFIER.judge("def total(xs):\n    return sum(xs)\n", gold, {})


def test_gold_as_json_and_the_names_assert_tests_call():
    assert parse_code_gold(json.dumps(GOLD)) == parse_code_gold(GOLD)
    gold = parse_code_gold(json.dumps(ASSERTS))
    assert (gold.tests, gold.entry_point, gold.names) == (tuple(ASSERTS), None, ("add",))


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("    return sum(xs)\n", GOLD, Verdict(1.0, "passed", None)),
        (FENCED, GOLD, Verdict(1.0, "passed", None)),
        ("```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```", GOLD, Verdict(1.0, "passed", None)),
        ("    return 3\n", GOLD, Verdict(0.0, "failed", None)),  # check() is one test: all or nothing
        ("    return sum(xs\n", GOLD, Verdict(0.0, "error", None)),
        ("    raise SystemExit(0)\n", GOLD, Verdict(0.0, "failed", None)),
        ("print('all tests passed')\nimport sys\nsys.exit(0)\n", GOLD, Verdict(0.0, "error", None)),
        ("import os\nprint('PASSED')\nos._exit(0)\n", GOLD, Verdict(0.0, "error", None)),
        ("    while True:\n        pass\n", GOLD, Verdict(0.0, "timeout", None)),
        ("    return len(bytearray(8 * 1024 ** 3))\n", GOLD, Verdict(0.0, "memory_limit", None)),
        ("def add(a, b):\n    return a + b\n", ASSERTS, Verdict(2 / 3, "failed", None)),  # 2 of 3 asserts
        ("def add(a, b):\n    return 5 if a == -1 else a + b\n", ASSERTS, Verdict(1.0, "passed", None)),
        ("def add(a, b):\n    return 0\n", ASSERTS, Verdict(1 / 3, "failed", None)),
        ("", ASSERTS, Verdict(0.0, "failed", None)),
    ],
)
def test_verdicts(completion, gold, expected):
    assert CodeVerifier(time_s=2.0).judge(completion, gold, {})[:3] == expected[:3]


@pytest.mark.parametrize(
    ("completion", "gold", "detail"),
    [
        ("    return sum(xs)\n", GOLD, None),
        ("def add(a, b):\n    return a + b\n", ASSERTS, "this test failed with AssertionError:\nassert add(-1, 1) == 5"),
        ("def add(a, b):\n    return a.x\n", ASSERTS,
         "this test failed with AttributeError: 'int' object has no attribute 'x':\nassert add(1, 2) == 3"),
        ("import nothing_here\n", ASSERTS,
         "the program raised ModuleNotFoundError: No module named 'nothing_here' before any test ran"),
        ("    while True:\n        pass\n", GOLD, "stopped after 2 s"),
    ],
)
def test_the_verdict_says_what_went_wrong(completion, gold, detail):
    assert CodeVerifier(time_s=2.0).judge(completion, gold, {}).detail == detail


def test_score_alone_and_no_answer_to_vote_on():
    assert VERIFIER("    return sum(xs)\n", GOLD, {}) == 1.0
    assert VERIFIER.extract_answer("    return sum(xs)\n") is None


def test_the_full_result_tells_the_isolation_and_output():
    result = VERIFIER.run("    print('summing')\n    return sum(xs)\n", GOLD)
    assert (result.status, result.output) == ("passed", b"summing\nsumming\n")
    assert result.isolation == ("full" if os.geteuid() == 0 else result.isolation)


def test_a_sandbox_that_cannot_run_cannot_judge():
    broken = SandboxResult("sandbox_error", (False,), ("-",), None, b"", "", False, 70, 0.1, detail="setup-error")
    assert verdict_of(broken) == Verdict(None, "sandbox_error", None, "setup-error")


def test_verify_many_keeps_the_order_of_its_items():
    items = [("    return sum(xs)\n", GOLD, {}), ("    return 0\n", GOLD, {}), ("def add(a, b):\n    return a + b\n", ASSERTS, {})]
    assert [v[:3] for v in verify_many(VERIFIER, items, workers=2)] == [
        (1.0, "passed", None), (0.0, "failed", None), (2 / 3, "failed", None)]
    assert verify_many(VERIFIER, [], workers=2) == []


def test_verify_many_raises_for_a_bad_gold():
    with pytest.raises(GoldAnswerError):
        verify_many(VERIFIER, [("    return 0\n", GOLD, {}), ("x = 1", {"test": TEST}, {})], workers=2)


# ---------------------------------------------------------------- HumanEval


def humaneval_rows() -> list[dict]:
    """The 164 HumanEval problems; skips (fails under CI=true) without ../shared/data."""
    if not HUMANEVAL.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the HumanEval data is missing: {HUMANEVAL}")
        pytest.skip("HumanEval data (../shared/data) is not in this checkout")
    return [json.loads(line) for line in HUMANEVAL.read_text().splitlines()]


@pytest.mark.integration
def test_every_canonical_humaneval_solution_passes_and_every_broken_one_fails():
    rows = humaneval_rows()
    verifier = CodeVerifier(time_s=30.0)  # generous: a loaded 2-core machine runs two at a time
    golds = [{"prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"]} for r in rows]
    canonical = [(r["canonical_solution"], gold, {}) for r, gold in zip(rows, golds)]
    # Broken: whole functions (the other completion form) where the canonical solution runs but what it
    # returns comes back wrapped in a one-element list.
    broken = [(broken_function(r), gold, {}) for r, gold in zip(rows, golds)]
    started = time.monotonic()
    verdicts = verify_many(verifier, canonical + broken)
    elapsed = time.monotonic() - started
    print(f"\nHumanEval: {len(verdicts)} sandboxed runs in {elapsed:.1f} s on {os.cpu_count()} cores")
    failing = [(r["task_id"], v) for r, v in zip(rows, verdicts[: len(rows)]) if v != Verdict(1.0, "passed", None)]
    passing_broken = [(r["task_id"], v) for r, v in zip(rows, verdicts[len(rows):]) if v.score is None or v.score >= 1]
    assert (len(rows), failing, passing_broken) == (164, [], [])


def broken_function(row: dict) -> str:
    """The canonical solution renamed, and the entry point as a whole function wrapping its result in a list."""
    canonical = (row["prompt"] + row["canonical_solution"]).replace(f"def {row['entry_point']}(", "def _canonical(")
    return f"{canonical}\n\ndef {row['entry_point']}(*args, **kwargs):\n    return [_canonical(*args, **kwargs)]\n"
