"""Outcome verifiers for checkable answers: math, gsm8k, numeric, exact, regex and multiple choice.

Every verifier here follows ``rest.filters.base.Verifier``: ``judge`` parses the gold answer first
(``GoldAnswerError`` when it does not parse), reads the final answer of the part of the completion
the model wrote (answer rules in ``answers.py``), and scores 1.0 (``correct``) or 0.0 (``wrong``,
``no_answer``, ``ambiguous_answer``, ``conflicting_answers``). ``extract_answer`` returns canonical
keys, so identical answers are identical strings for majority voting ("$1,234.00" -> "1234").
Verifiers are small frozen dataclasses: cheap to build and picklable for a process pool.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, ClassVar, Mapping, NamedTuple

from .answers import (
    OR_WORD,
    Candidate,
    Extraction,
    Marked,
    Number,
    decide,
    final_answer,
    find_boxed,
    marked_text,
    model_text,
    normalize_text,
    numbers_close,
    parse_number,
    read_choice,
    read_marked_number,
    read_math,
    read_number,
    whole_number,
)
from .base import GoldAnswerError, Verdict

_SHOWN_CHARS = 80  # how much of a bad gold answer an error message quotes

# ---------------------------------------------------------------- the flow every verifier shares


def judge_answer(verifier: Any, completion: str, gold: Any, sample: Mapping[str, Any] | None = None) -> Verdict:
    """Score, reason and canonical answer of one completion; raises GoldAnswerError for a bad gold."""
    expected = verifier.parse_gold(gold)
    found = verifier.extract(model_text(completion, sample))
    if found.answer is None:
        return Verdict(0.0, found.reason, None)
    if verifier.matches(expected, found):
        return Verdict(1.0, "correct", found.answer)
    return Verdict(0.0, "wrong", found.answer)


def score_answer(verifier: Any, completion: str, gold: Any, sample: Mapping[str, Any] | None = None) -> float | None:
    """The score of ``judge_answer`` alone."""
    return judge_answer(verifier, completion, gold, sample).score


def extract_final_answer(verifier: Any, completion: str) -> str | None:
    """The completion's canonical final answer, None when it has none; sees no prompt, so strips no echo."""
    return verifier.extract(completion or "").answer


def gold_error(family: str, gold: Any, problem: str) -> GoldAnswerError:
    """The error for a gold answer that does not parse, quoting (the start of) the bad value."""
    shown = repr(str(Decimal(gold)) if isinstance(gold, int) else gold)  # repr of a huge int raises
    shown = shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + "..."
    return GoldAnswerError(f"{family} gold answer {shown} {problem}")


def gold_text(family: str, gold: Any) -> str:
    """``gold`` as text: strings as they are, numbers written out, anything else a GoldAnswerError."""
    if isinstance(gold, str):
        return gold.strip()
    if isinstance(gold, (int, float, Decimal)) and not isinstance(gold, bool):
        return str(Decimal(gold)) if isinstance(gold, int) else str(gold)  # str() of a huge int raises
    raise gold_error(family, gold, f"is a {type(gold).__name__}, not text or a number")


# ---------------------------------------------------------------- numbers: gsm8k and numeric


@dataclass(frozen=True)
class NumericVerifier:
    """Any marked number (`#### N`, `The answer is N`, `\\boxed{N}`) against a numeric gold, with tolerance."""

    name: ClassVar[str] = "numeric"
    tolerance: float = 1e-4  # absolute for whole-number gold, else relative to |gold| above 1
    fallback_last_number: bool = False  # without any marker, take the last number in the text

    judge = judge_answer
    __call__ = score_answer
    extract_answer = extract_final_answer

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    def parse_gold(self, gold: Any) -> Number:
        """The gold number; GoldAnswerError unless ``gold`` is exactly one number."""
        number = whole_number(gold_text(self.name, gold))
        if number is None:
            raise gold_error(self.name, gold, "is not a number")
        return number

    def extract(self, text: str) -> Extraction:
        """The final marked number of ``text`` under the answer rules."""
        return final_answer(text, read_marked_number, fallback_last_number=self.fallback_last_number)

    def matches(self, gold: Number, found: Extraction) -> bool:
        """Whether the found number equals the gold within the tolerance."""
        return numbers_close(gold.value, read_number(found.raw)[0].value, self.tolerance)


@dataclass(frozen=True)
class GSM8KVerifier:
    """GSM8K: gold is the text after `####` (commas, `$`, units and `%` stripped); answers as for ``numeric``."""

    name: ClassVar[str] = "gsm8k"
    tolerance: float = 1e-4
    fallback_last_number: bool = False  # off for training data: an unmarked number is a guess

    judge = judge_answer
    __call__ = score_answer
    extract_answer = extract_final_answer

    def __post_init__(self) -> None:
        self._numbers()  # the same checks of the options as ``numeric``

    def parse_gold(self, gold: Any) -> Number:
        """The number after the last `####` of the dataset's answer field, or a bare number."""
        text = gold_text(self.name, gold).rpartition("####")[2]
        number = parse_number(text)
        if number is None:
            raise gold_error(self.name, gold, "is not a number (after its last '####', if any)")
        return number

    def extract(self, text: str) -> Extraction:
        """The final marked number of ``text`` under the answer rules."""
        return self._numbers().extract(text)

    def matches(self, gold: Number, found: Extraction) -> bool:
        """Whether the found number equals the gold within the tolerance."""
        return self._numbers().matches(gold, found)

    def _numbers(self) -> NumericVerifier:
        return NumericVerifier(self.tolerance, self.fallback_last_number)


# ---------------------------------------------------------------- math: math-verify


class MathGold(NamedTuple):
    """A parsed MATH-style gold answer."""

    text: str
    number: Number | None  # set when the answer is one plain number (compared exactly, fast)
    parsed: tuple  # math-verify's parse of ``text``; empty for plain numbers


def math_timeout(seconds: int | None) -> int | None:
    """``seconds`` in the main thread, else None: math-verify's timeouts use SIGALRM, main thread only."""
    if seconds and threading.current_thread() is threading.main_thread():
        return max(1, int(seconds))
    return None


@lru_cache(maxsize=4096)
def parse_latex(latex: str, timeout: int | None) -> tuple:
    """math-verify's parse of an answer written in LaTeX (wrapped in `\\boxed{}`, which it reads best)."""
    from math_verify import parse

    try:
        return tuple(parse("\\boxed{" + latex + "}", parsing_timeout=timeout))
    except Exception:  # math-verify raises on some malformed LaTeX: that is "does not parse"
        return ()


def math_equal(gold: tuple, pred: tuple, timeout: int | None) -> bool:
    """math-verify's equivalence, gold first (the order matters to it)."""
    from math_verify import verify

    try:
        return bool(verify(list(gold), list(pred), timeout_seconds=timeout))
    except Exception:  # a comparison that crashes sympy is not a match
        return False


def sympy_value(parsed: tuple) -> Decimal | None:
    """The real number a parsed expression evaluates to (``\\sqrt{2}`` -> 1.414...), else None."""
    expr = parsed[0] if parsed else None
    if not getattr(expr, "is_number", False):
        return None
    try:
        value = Decimal(str(expr.evalf(30)))
    except (ArithmeticError, ValueError, TypeError):  # complex, infinite, or too many digits to print
        return None
    return value if value.is_finite() else None


@dataclass(frozen=True)
class MathAnswerVerifier:
    """MATH-style answers: every marked answer (last `\\boxed{}` etc.), math-verify equivalence, numeric fallback."""

    name: ClassVar[str] = "math"
    tolerance: float = 1e-4  # numeric fallback when math-verify says no (``\\sqrt2`` vs 1.41421)
    fallback_last_number: bool = False  # without any marker, take the last number in the text
    max_chars: int = 1000  # longer answers are not given to math-verify (it can hang on them)
    timeout_seconds: int | None = 5  # math-verify's own timeout, in the main thread only
    # Imported lazily on the first sample; a fork-server pool imports them once for all its workers.
    preload_modules: ClassVar[tuple[str, ...]] = ("math_verify", "sympy")

    judge = judge_answer
    __call__ = score_answer
    extract_answer = extract_final_answer

    def __post_init__(self) -> None:
        if self.tolerance < 0 or self.max_chars < 1:
            raise ValueError(f"need tolerance >= 0 and max_chars >= 1, got {self.tolerance}, {self.max_chars}")

    def parse_gold(self, gold: Any) -> MathGold:
        """The gold answer (its last box, if it has one), parsed; GoldAnswerError if math-verify cannot."""
        text = gold_text(self.name, gold)
        boxes = find_boxed(text)
        text = (boxes[-1].body if boxes else text).strip().strip("$").strip()
        if not text:
            raise gold_error(self.name, gold, "is empty")
        number = whole_number(text)
        if number is not None:
            return MathGold(text, number, ())
        if len(text) > self.max_chars:
            raise gold_error(self.name, gold, f"is longer than max_chars={self.max_chars}")
        parsed = self._parse(text)
        # math-verify hands back the bare string when sympy cannot read it: that is no parse.
        if not any(not isinstance(item, str) for item in parsed):
            raise gold_error(self.name, gold, "does not parse as math")
        return MathGold(text, None, parsed)

    def extract(self, text: str) -> Extraction:
        """The final answer of ``text`` under the answer rules; equivalent answers do not conflict."""
        return final_answer(text, read_math, self._same, self.fallback_last_number)

    def matches(self, gold: MathGold, found: Extraction) -> bool:
        """Exact for two plain numbers; else math-verify, then the numeric value within the tolerance."""
        pred_number = whole_number(found.raw)
        if gold.number is not None and pred_number is not None:
            return numbers_close(gold.number.value, pred_number.value, self.tolerance)
        gold_parsed = gold.parsed or self._parse(gold.text)
        pred_parsed = self._parse(found.raw)
        if gold_parsed and pred_parsed and math_equal(gold_parsed, pred_parsed, math_timeout(self.timeout_seconds)):
            return True
        gold_value = gold.number.value if gold.number is not None else sympy_value(gold_parsed)
        pred_value = pred_number.value if pred_number is not None else sympy_value(pred_parsed)
        return None not in (gold_value, pred_value) and numbers_close(gold_value, pred_value, self.tolerance)

    def _parse(self, latex: str) -> tuple:
        return parse_latex(latex, math_timeout(self.timeout_seconds)) if len(latex) <= self.max_chars else ()

    def _same(self, first: Candidate, second: Candidate) -> bool:
        return self.matches(MathGold(first.raw, whole_number(first.raw), ()), Extraction(second.key, second.raw, None))


# ---------------------------------------------------------------- text: exact and regex


@dataclass(frozen=True)
class ExactMatchVerifier:
    """The marked answer equals the gold as normalised text (case, spacing, `$`, quotes, end period ignored)."""

    name: ClassVar[str] = "exact"
    case_sensitive: bool = False

    judge = judge_answer
    __call__ = score_answer
    extract_answer = extract_final_answer

    def parse_gold(self, gold: Any) -> str:
        """The normalised gold text; GoldAnswerError when it is empty."""
        text = normalize_text(gold_text(self.name, gold), self.case_sensitive)
        if not text:
            raise gold_error(self.name, gold, "is empty")
        return text

    def extract(self, text: str) -> Extraction:
        """The final marked answer of ``text`` under the answer rules ("X or Y" is ambiguous)."""
        return final_answer(text, self._read)

    def matches(self, gold: str, found: Extraction) -> bool:
        """Whether the normalised texts are equal."""
        return found.answer == gold

    def _read(self, marked: Marked) -> Candidate | None:
        key = normalize_text(marked_text(marked), self.case_sensitive)
        return Candidate(key, key, bool(OR_WORD.search(key))) if key else None


_COMPARE = ("auto", "exact", "numeric")


@dataclass(frozen=True)
class RegexVerifier:
    """Answers found by the user's ``pattern`` (one capture group); compared as numbers or as normalised text."""

    name: ClassVar[str] = "regex"
    pattern: str
    compare: str = "auto"  # "numeric", "exact", or "auto": numeric when the gold is a number
    tolerance: float = 1e-4
    case_sensitive: bool = False

    judge = judge_answer
    __call__ = score_answer
    extract_answer = extract_final_answer

    def __post_init__(self) -> None:
        groups = re.compile(self.pattern).groups
        if groups != 1:
            raise ValueError(f"regex verifier pattern {self.pattern!r} needs exactly one capture group, has {groups}")
        if self.compare not in _COMPARE:
            raise ValueError(f"compare must be one of {_COMPARE}, got {self.compare!r}")

    def parse_gold(self, gold: Any) -> Number | str:
        """The gold as a number (``numeric``, or ``auto`` when it is one), else as normalised text."""
        text = gold_text(self.name, gold)
        number = whole_number(text) if self.compare != "exact" else None
        if number is None and self.compare == "numeric":
            raise gold_error(self.name, gold, "is not a number")
        if number is None and not normalize_text(text, self.case_sensitive):
            raise gold_error(self.name, gold, "is empty")
        return number or normalize_text(text, self.case_sensitive)

    def extract(self, text: str) -> Extraction:
        """Every match of the pattern is a marked answer; they must agree."""
        return decide(self._read(match.group(1)) for match in re.finditer(self.pattern, text))

    def matches(self, gold: Number | str, found: Extraction) -> bool:
        """Numbers within the tolerance, or equal normalised texts."""
        if isinstance(gold, Number):
            pred = whole_number(found.raw)
            return pred is not None and numbers_close(gold.value, pred.value, self.tolerance)
        return normalize_text(found.raw, self.case_sensitive) == gold

    def _read(self, raw: str | None) -> Candidate | None:
        number = whole_number(raw) if raw and self.compare != "exact" else None
        key = number.key if number is not None else normalize_text(raw or "", self.case_sensitive)
        return Candidate(key, raw) if key else None


# ---------------------------------------------------------------- multiple choice


@dataclass(frozen=True)
class MultipleChoiceVerifier:
    """A-E multiple choice: "The answer is (C)", "#### C", `\\boxed{C}`; the gold is a letter."""

    name: ClassVar[str] = "choice"
    choices: str = "ABCDE"  # the option letters, upper case

    judge = judge_answer
    __call__ = score_answer
    extract_answer = extract_final_answer

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z]+", self.choices):
            raise ValueError(f"choices must be upper-case letters, got {self.choices!r}")

    def parse_gold(self, gold: Any) -> str:
        """The gold letter ("C", "(C)", "c"); GoldAnswerError when it is not one of ``choices``."""
        letter = gold_text(self.name, gold).strip("()[] .").upper()
        if len(letter) != 1 or letter not in self.choices:
            raise gold_error(self.name, gold, f"is not one of the choices {self.choices}")
        return letter

    def extract(self, text: str) -> Extraction:
        """The final marked letter of ``text`` under the answer rules ("(B) or (C)" is ambiguous)."""
        return final_answer(text, lambda marked: read_choice(marked, self.choices))

    def matches(self, gold: str, found: Extraction) -> bool:
        """Whether the letters are the same."""
        return found.answer == gold
