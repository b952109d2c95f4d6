"""The ``code`` verifier: runs a completion's Python against the problem's tests in the sandbox.

Gold formats (a mapping, or the same as a JSON string):

- HumanEval style: ``{"test": "def check(candidate): ...", "entry_point": "f", "prompt": "def f(...):..."}``
  (``prompt`` optional). ``check(entry_point)`` is one test: the score is 1 or 0. The prompt (signature,
  docstring, imports, helpers) goes before the completion's code, so a completion may be only the
  function's body or a whole function that redefines it.
- A list of assert statements (``["assert f(1) == 2", ...]``), each one test: the score is the
  fraction that pass.

The score comes only from the sandbox harness's report (see ``sandbox/runner.py``); the reason is the
sandbox's status: passed, failed, error, timeout, memory_limit, output_limit; a sandbox that could not
start gives ``None`` ("cannot judge", reason sandbox_error). Code has no short final answer, so
``extract_answer`` is None and majority voting does not apply; ``extract_code`` is the code itself.
"""
from __future__ import annotations

import ast
import builtins
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .base import GoldAnswerError, Verdict
from .sandbox.runner import SandboxLimits, SandboxResult, run_sandboxed

_SHOWN_CHARS = 80  # how much of a bad gold answer an error message quotes
# An opening fence (``` or ~~~, optionally tagged python/py/python3 or untagged) to its closing fence
# or, for a completion cut off by the length limit, to the end of the text.
_FENCE = re.compile(r"^[ \t]*(```|~~~)[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3")


@dataclass(frozen=True)
class CodeGold:
    """A parsed gold answer: the tests to run and the program text that goes before the completion."""

    tests: tuple[str, ...]
    entry_point: str | None  # the function the tests call (HumanEval), for finding the right code block
    prompt: str = ""  # goes before the completion's code (HumanEval's signature and docstring)
    names: tuple[str, ...] = ()  # functions the assert tests call, for finding the right code block


def parse_code_gold(gold: Any) -> CodeGold:
    """The tests in ``gold``; raises GoldAnswerError when it is not a HumanEval dict or a list of asserts."""
    if isinstance(gold, (str, bytes)):
        try:
            gold = json.loads(gold)
        except ValueError:
            raise GoldAnswerError(f"code gold is neither a mapping nor a list of asserts: {_shown(gold)}") from None
    if isinstance(gold, Mapping):
        return _humaneval_gold(gold)
    if isinstance(gold, (list, tuple)):
        return _assert_gold(gold)
    raise GoldAnswerError(f"code gold is neither a mapping nor a list of asserts: {_shown(gold)}")


def _humaneval_gold(gold: Mapping[str, Any]) -> CodeGold:
    entry_point, test, prompt = gold.get("entry_point"), gold.get("test"), gold.get("prompt") or ""
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise GoldAnswerError(f"code gold has no valid entry_point: {_shown(entry_point)}")
    if not isinstance(test, str) or not isinstance(prompt, str):
        raise GoldAnswerError(f"code gold's test and prompt must be strings: {_shown(gold)}")
    tree = _parsed(test, "test")
    if not any(isinstance(node, ast.FunctionDef) and node.name == "check" for node in tree.body):
        raise GoldAnswerError(f"code gold's test defines no check(candidate): {_shown(test)}")
    _parsed(prompt, "prompt")
    return CodeGold((f"{test}\n\ncheck({entry_point})\n",), entry_point, prompt)


def _assert_gold(gold: list | tuple) -> CodeGold:
    if not gold or not all(isinstance(t, str) and t.strip() for t in gold):
        raise GoldAnswerError(f"code gold must be a non-empty list of assert strings: {_shown(gold)}")
    names: dict[str, None] = {}
    for test in gold:
        names.update(dict.fromkeys(_called_names(_parsed(test, "assert"))))
    return CodeGold(tuple(gold), None, names=tuple(names))


def _parsed(source: str, what: str) -> ast.Module:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError) as err:
        raise GoldAnswerError(f"code gold's {what} is not valid Python ({err}): {_shown(source)}") from None


def _called_names(tree: ast.AST) -> list[str]:
    """Plain names called in ``tree`` that are not builtins (the functions under test)."""
    called = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    return [name for name in called if not hasattr(builtins, name)]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def extract_code(completion: str, names: Iterable[str] = ()) -> str:
    """The completion's code: the last Python fence defining one of ``names``, else the last fence, else all."""
    blocks = [m.group(3) for m in _FENCE.finditer(completion or "") if m.group(2).lower() in _PYTHON_TAGS]
    if not blocks:
        return completion or ""
    names = tuple(names)
    defining = [block for block in blocks if any(defines(block, name) for name in names)]
    return (defining or blocks)[-1]


def defines(code: str, name: str) -> bool:
    """Whether ``code`` defines ``name`` at top level (def, async def, class or assignment)."""
    pattern = rf"^(?:(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(|class[ \t]+{re.escape(name)}\b|{re.escape(name)}[ \t]*=)"
    return re.search(pattern, code, re.MULTILINE) is not None


def build_program(code: str, gold: CodeGold) -> str:
    """The program the sandbox runs: the gold's prompt, then the completion's code."""
    if not gold.prompt:
        return code
    if gold.entry_point and defines(code, gold.entry_point):
        # A whole function: it redefines the prompt's stub; the prompt still brings imports and helpers.
        program = f"{gold.prompt}\n\n{code}"
        return program if _compiles(program) or not _compiles(code) else code
    return gold.prompt + code  # the completion continues the prompt: the function's body


def _compiles(source: str) -> bool:
    try:
        compile(source, "<program>", "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError):
        return False


@dataclass(frozen=True)
class CodeVerifier:
    """Scores Python completions by the fraction of the gold's tests that pass in the sandbox."""

    name: str = "code"
    time_s: float = 10.0  # wall-clock limit of one run (all of its tests)
    memory_mb: int = 1024  # address space limit of each sandboxed process
    output_bytes: int = 1 << 20  # stdout+stderr kept at most; more ends the run as output_limit
    processes: int = 32  # processes and threads the code may have at once
    workers: int = 0  # parallel runs in verify_many; 0 = two per CPU core (a run waits on process start and exit)

    def limits(self) -> SandboxLimits:
        """The sandbox limits of one run."""
        return SandboxLimits(
            time_s=self.time_s, memory_mb=self.memory_mb, output_bytes=self.output_bytes, processes=self.processes,
        )

    def judge(self, completion: str, gold: Any, sample: Mapping[str, Any] | None = None) -> Verdict:
        """Score (passed/total), reason (the sandbox status); raises GoldAnswerError for a bad gold."""
        parsed = parse_code_gold(gold)
        return verdict_of(self._run(completion, parsed), parsed.tests)

    def __call__(self, completion: str, gold: Any, sample: Mapping[str, Any] | None = None) -> float | None:
        """The score alone (None = the sandbox could not run)."""
        return self.judge(completion, gold, sample).score

    def extract_answer(self, completion: str) -> str | None:
        """None: code has no short final answer to vote on."""
        return None

    def run(self, completion: str, gold: Any) -> SandboxResult:
        """The sandbox's full result for one completion (per-test outcomes, output, isolation level)."""
        return self._run(completion, parse_code_gold(gold))

    def _run(self, completion: str, parsed: CodeGold) -> SandboxResult:
        names = (parsed.entry_point,) if parsed.entry_point else parsed.names
        program = build_program(extract_code(completion, names), parsed)
        return run_sandboxed(program, parsed.tests, limits=self.limits())


def verdict_of(result: SandboxResult, tests: Sequence[str] = ()) -> Verdict:
    """The Verdict for a sandbox result: passed/total, or None when the sandbox itself failed."""
    if result.status == "sandbox_error":
        return Verdict(None, "sandbox_error", None, result.detail or None)
    return Verdict(result.fraction if result.reported else 0.0, result.status, None, failure(result, tests))


_TEST_CHARS = 800  # of a failing test's source quoted in a detail (HumanEval's check functions run long)


def failure(result: SandboxResult, tests: Sequence[str]) -> str | None:
    """The first thing that went wrong (None when every test passed): the error before any test ran, the
    first failing test with its exception, or the limit the run hit."""
    if result.status == "passed":
        return None
    if result.load_error:
        return f"the program raised {_exception(result.load_error)} before any test ran"
    for index, (passed, error) in enumerate(zip(result.tests_passed, result.test_errors)):
        if result.reported and not passed:
            test = tests[index].strip() if index < len(tests) else f"test {index + 1}"
            test = test if len(test) <= _TEST_CHARS else test[:_TEST_CHARS] + "..."
            return f"this test failed with {_exception(error or '?')}:\n{test}"
    return result.detail or result.status


def _exception(error: str) -> str:
    """``AssertionError: `` -> ``AssertionError`` (an exception with no message)."""
    return error.rstrip().removesuffix(":")


def verify_many(verifier: Any, items: Iterable[tuple[str, Any, Mapping[str, Any] | None]], workers: int | None = None) -> list[Verdict]:
    """``verifier.judge`` on every (completion, gold, sample), ``workers`` sandboxes at a time, in order."""
    items = list(items)
    workers = workers or getattr(verifier, "workers", 0) or 2 * (os.cpu_count() or 1)
    # Threads suffice: each run waits on its own subprocess, and nothing here uses signals.
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items) or 1))) as pool:
        return list(pool.map(lambda item: verifier.judge(*item), items))
