"""Reasoning steps of a completion, mapped onto its sampled tokens through character offsets.

How a completion becomes steps (the rules the implicit PRM's step rewards rest on):

- The text is the decoding of the **sampled** completion token ids (special tokens such as EOS kept),
  so every token has a place in it; substrings are never re-tokenised.
- Each delimiter match **ends** the step it closes and belongs to it: ``"a\\n\\nb"`` is ``"a\\n\\n"``,
  ``"b"``. A regex that should *start* steps (a ``Step 2:`` header) is written as a lookahead,
  ``(?=Step \\d+:)``, which cuts before the header.
- A piece that is only delimiters and whitespace is no step of its own: it joins the step before it
  (consecutive delimiters, a delimiter at the end), or the step after it when it leads the text.
- A token belongs to the step in which its **last character** lies; so a token that straddles a cut
  (``".\\n\\nThe"``) counts in the later step, because it is not complete when the earlier one ends.
  Tokens holding only part of a multi-byte character belong with the token that completes it.
- A step that ends up with no token of its own (it lies inside one token) merges into the next.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class StepSplitter:
    """Finds step cuts in text: after each match of a literal delimiter or a regular expression."""

    delimiter: str = "\n\n"
    regex: bool = False

    def __post_init__(self) -> None:
        if not self.delimiter:
            raise ValueError("prm.step_delimiter must not be empty")
        pattern = self.delimiter if self.regex else re.escape(self.delimiter)
        try:
            object.__setattr__(self, "_pattern", re.compile(pattern))
        except re.error as err:
            raise ValueError(f"prm.step_delimiter {self.delimiter!r} is not a valid regex: {err}") from None

    def cuts(self, text: str) -> list[int]:
        """Character positions where one step ends and the next begins (0 < cut < len(text), sorted)."""
        matches = [(m.start(), m.end()) for m in self._pattern.finditer(text)]  # type: ignore[attr-defined]
        bounds = sorted({end for _, end in matches} | {0, len(text)})
        pieces = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        # A piece with only delimiter text and whitespace joins a neighbour instead of being a step.
        keep: list[tuple[int, int]] = []
        pending_start: int | None = None
        for a, b in pieces:
            if _blank(text, a, b, matches):
                if keep:
                    keep[-1] = (keep[-1][0], b)
                elif pending_start is None:
                    pending_start = a
                continue
            if pending_start is not None:
                a, pending_start = pending_start, None
            keep.append((a, b))
        return [b for _, b in keep[:-1]]

    @classmethod
    def from_config(cls, cfg: Any) -> "StepSplitter":
        """The splitter a ``PrmConfig`` describes."""
        return cls(cfg.step_delimiter, cfg.step_regex)


def _blank(text: str, a: int, b: int, matches: list[tuple[int, int]]) -> bool:
    """Whether text[a:b] holds nothing but delimiter matches and whitespace."""
    rest, pos = [], a
    for s, e in matches:
        if e <= a or s >= b:
            continue
        rest.append(text[pos:max(s, pos)])
        pos = max(pos, min(e, b))
    rest.append(text[pos:b])
    return not "".join(rest).strip()


def token_end_offsets(tokenizer: Any, token_ids: Sequence[int]) -> tuple[str, list[int]]:
    """The decoded text of ``token_ids`` and, per token, the character offset where it ends.

    When encoding the text gives back exactly these ids, the tokenizer's offsets are used; otherwise
    (the sampler chose a non-canonical tokenisation) each token's end is how far the decoding of the
    ids up to it agrees with the whole text. A token that completes no character ends where the
    previous one did.
    """
    ids = [int(t) for t in token_ids]
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if not ids:
        return text, []
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoded["input_ids"]) == ids:
        ends = [int(end) for _, end in encoded["offset_mapping"]]
    else:
        ends = decode_walk_ends(tokenizer, ids, text)
    for i in range(1, len(ends)):  # offsets never go back (overlapping byte-level pieces)
        ends[i] = max(ends[i], ends[i - 1])
    return text, ends


def decode_walk_ends(tokenizer: Any, ids: list[int], text: str) -> list[int]:
    """Per-token end offsets from decoding every prefix of ``ids`` (the path for non-canonical ids)."""
    prefixes = tokenizer.batch_decode(
        [ids[: i + 1] for i in range(len(ids))], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    ends = []
    for prefix in prefixes:
        if text.startswith(prefix):
            ends.append(len(prefix))
        else:  # an incomplete multi-byte character decodes to U+FFFD: count only what agrees
            n = 0
            for x, y in zip(prefix, text):
                if x != y:
                    break
                n += 1
            ends.append(n)
    ends[-1] = len(text)
    return ends


def assign_steps(ends: Sequence[int], cuts: Sequence[int]) -> list[int]:
    """Exclusive token index where each step ends, given token end offsets and step cuts."""
    n = len(ends)
    if n == 0:
        return []
    # A token that ends no character (part of a multi-byte one) goes with the token that completes it.
    effective = list(ends)
    for i in range(n - 2, -1, -1):
        if effective[i] == (ends[i - 1] if i else 0):
            effective[i] = effective[i + 1]
    steps = [bisect.bisect_left(cuts, e) for e in effective]  # number of cuts strictly before the end
    boundaries = [i + 1 for i in range(n - 1) if steps[i] != steps[i + 1]]
    return boundaries + [n]


def step_ends(tokenizer: Any, token_ids: Sequence[int], splitter: StepSplitter) -> list[int]:
    """Exclusive token index where each step of a sampled completion ends (the last is len(token_ids))."""
    text, ends = token_end_offsets(tokenizer, token_ids)
    return assign_steps(ends, splitter.cuts(text))
