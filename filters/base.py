"""The interfaces every verifier and filter of rest-em follows."""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Protocol


class GoldAnswerError(ValueError):
    """The dataset's reference answer cannot be parsed: a data error, never a reward."""


class Verdict(NamedTuple):
    """One verifier's judgement of one completion."""

    score: float | None  # in [0, 1]; None = cannot judge
    reason: str  # short machine-readable reason: "correct", "wrong", "no_answer", ...
    answer: str | None = None  # the extracted final answer, for majority voting and audits
    detail: str | None = None  # what went wrong, in words a reader or a reflecting model can act on


class Verifier(Protocol):
    """Scores a completion against the gold answer: ``(completion, gold, sample) -> float | None``."""

    name: str

    def __call__(self, completion: str, gold: Any, sample: Mapping[str, Any]) -> float | None:
        """The score alone (None = cannot judge)."""
        ...

    def judge(self, completion: str, gold: Any, sample: Mapping[str, Any]) -> Verdict:
        """Score, reason and extracted answer; raises GoldAnswerError when ``gold`` does not parse."""
        ...

    def extract_answer(self, completion: str) -> str | None:
        """The completion's final answer as the verifier reads it (shared with majority voting)."""
        ...
