"""Checking the arithmetic a solution writes down: every ``expression = number`` it states must hold.

A right final answer reached through a false step ("55 - 10 = 55", "2.46 = 37.38") teaches the false
step. Rationalisations (STaR) make many such steps: the hint fixes the answer, not the working. This is the
exact, rule-based counterpart of the implicit PRM's step filter for solutions whose steps are arithmetic.

What counts as an equation: within one line, the arithmetic right before an ``=`` (numbers, ``+ - * /
x × ÷``, parentheses; ``$`` and thousands commas ignored) against the number right after it; a chain
``6 * 8 = 48 + 15 = 63`` is two steps. A left side that is a single number counts only where it is all
of its segment (``2.46 = 37.38``), not the end of a phrase (``half of 20 = 10``). Expressions are
parsed, never executed: only numbers and the four operations.
"""
from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from .pipeline import FilterResult

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_TAIL = re.compile(r"[\d.+\-*/()\s]*\d[\d.+\-*/()\s]*$")  # the arithmetic a segment ends with
_HEAD = re.compile(r"^\s*(-?(?:\d+\.?\d*|\.\d+))")  # the number a segment starts with
_OPERATOR_BETWEEN = re.compile(r"\d[\s)]*[-+*/][\s(]*[\d.]")
_MAX_CHARS = 200  # longer "expressions" are not a step anyone wrote


class Equation(NamedTuple):
    text: str  # as written (normalised: no $ or thousands commas)
    left: float
    right: float
    decimals: int  # digits written after the right side's decimal point

    @property
    def holds(self) -> bool:
        """Whether left equals right as far as right is written: integers exactly (after rounding),
        decimals to within one unit of their last digit (2 / 3 = 0.67 and 0.66 both hold)."""
        return abs(self.left - self.right) < (0.5 if self.decimals == 0 else 10.0 ** -self.decimals + 1e-12)


def equations(text: str) -> list[Equation]:
    """Every checkable ``left = right`` in ``text``."""
    found = []
    for line in _normalised(text).split("\n"):
        segments = line.split("=")
        for before, after in zip(segments, segments[1:]):
            left, right = _left(before), _HEAD.match(after)
            value = _value(left) if left is not None else None
            if value is not None and right is not None:
                written = right.group(1)
                decimals = len(written.partition(".")[2])
                found.append(Equation(f"{left} = {written}", value, float(written), decimals))
    return found


def false_equations(text: str) -> list[str]:
    """The equations in ``text`` that do not hold, as written."""
    return [eq.text for eq in equations(text) if not eq.holds]


def _normalised(text: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", str(text)).replace("$", "")
    text = text.replace("×", "*").replace("÷", "/")
    return re.sub(r"(?<=\d)\s*[xX]\s*(?=\d)", " * ", text)


def _left(segment: str) -> str | None:
    """The arithmetic a segment ends with, when it is an operation or the whole segment."""
    match = _TAIL.search(segment[-_MAX_CHARS:])  # bounded: a regex search over a long line is quadratic
    if match is None:
        return None
    side = match.group(0).strip()
    whole = side == segment.strip(" \t:")
    return side if len(side) <= _MAX_CHARS and (whole or _OPERATOR_BETWEEN.search(side)) else None


def _value(expression: str) -> float | None:
    try:
        return _evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    raise ValueError("not arithmetic")


@dataclass(frozen=True)
class TrueArithmetic:
    """Drop samples that state a false equation (and, with ``require_equation``, those that state none).

    Score = the fraction of the sample's equations that hold (NaN with none). Only rows of ``origins``
    (e.g. ``[rationalized]``; the ``origin`` column) are judged when given; the others are kept.
    """

    require_equation: bool = False
    origins: tuple[str, ...] | None = None
    text: str = "completion"

    def __post_init__(self) -> None:
        if self.origins is not None:
            if isinstance(self.origins, (str, bytes)) or not self.origins:
                raise ValueError(f"true_arithmetic: origins must be a non-empty list, got {self.origins!r}")
            object.__setattr__(self, "origins", tuple(self.origins))

    def apply(self, samples: pd.DataFrame, keep: pd.Series, seed: int) -> FilterResult:
        """Check every judged row's equations; rows outside ``origins`` are kept unjudged."""
        if self.text not in samples.columns:
            raise KeyError(f"true_arithmetic: column '{self.text}' (option 'text') is not in the samples")
        judged = samples["origin"].isin(self.origins) if self.origins and "origin" in samples.columns else (
            pd.Series(self.origins is None, index=samples.index))
        score, reason = [], []
        for text, checked in zip(samples[self.text], judged):
            found = equations(text) if checked and isinstance(text, str) else []
            false = [eq for eq in found if not eq.holds]
            score.append(1 - len(false) / len(found) if found else np.nan)
            reason.append("not_judged" if not checked else "false_equation" if false else
                          "no_equation" if not found and self.require_equation else "arithmetic_holds")
        reasons = pd.Series(reason, index=samples.index)
        return FilterResult(score=pd.Series(score, index=samples.index, dtype=float),
                            keep=reasons.isin(["arithmetic_holds", "not_judged"]), reason=reasons)
