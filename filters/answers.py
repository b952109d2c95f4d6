"""Finding the final answer in a model's response: answer markers, numbers, and the answer rules.

The rules (ALGORITHMS.md, "Answer checking"): every marked final answer counts (`#### X`,
`The answer is X`, `\\boxed{X}`); the same answer repeated counts once; answers that disagree make
the response wrong (`conflicting_answers`); text right after an answer that changes it (`72 or 73`,
`72 + 1 = 73`, `72, 73`) makes it wrong (`ambiguous_answer`); no marker means `no_answer`.
Numbers are read exactly as `Decimal`s (never floats), so 10,000-digit answers compare exactly.
"""
from __future__ import annotations

import re
from bisect import bisect_left
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from math import gcd
from typing import Any, Callable, Iterable, Mapping, NamedTuple

_MOST_FORMS = 8  # more different-looking answers than this are never one answer
NO_ANSWER = "no_answer"
AMBIGUOUS = "ambiguous_answer"
CONFLICTING = "conflicting_answers"


class Marked(NamedTuple):
    """One marked final answer as found in the text, before a verifier reads it."""

    start: int  # where the marker stands in the text
    kind: str  # "boxed", "hash" (`#### X`) or "phrase" (`The answer is X`)
    body: str  # boxed: the box's content; else the text after the marker, to the line's end or next marker
    tail: str  # boxed: the rest of the sentence after the box (to the next marker); otherwise ""


class Candidate(NamedTuple):
    """One marked answer as a verifier reads it."""

    key: str  # canonical form: answers that are the same have the same key
    raw: str  # the answer as written, for the verifier's own comparison
    ambiguous: bool = False  # text right after it changes the answer ("72 or 73")


class Extraction(NamedTuple):
    """A response's final answer, or the reason it has none."""

    answer: str | None  # the canonical key, identical for identical answers (majority voting)
    raw: str | None
    reason: str | None  # None when there is an answer; else NO_ANSWER, AMBIGUOUS or CONFLICTING


class Number(NamedTuple):
    """A number read from text, exact."""

    value: Decimal
    key: str  # canonical text: "1234" for "$1,234.00", "1/3" for "\\frac{1}{3}"


# ---------------------------------------------------------------- the model's own text


def model_text(completion: str | None, sample: Mapping[str, Any] | None) -> str:
    """The part of ``completion`` the model wrote: after the last verbatim echo of ``sample["prompt_text"]``."""
    text = completion or ""
    prompt = str((sample or {}).get("prompt_text") or "").strip()
    # An echoed prompt carries its few-shot answers ("#### 5"); only what follows it is the model's.
    at = text.rfind(prompt) if prompt else -1
    return text if at < 0 else text[at + len(prompt):]


# ---------------------------------------------------------------- markers

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*(\{)?")
_SIMPLE_BOX = re.compile(r"[-+]?\d[\d.,]*(?<![.,])|[A-Za-z](?!\w)")  # `\boxed 5`, `\boxed C`, not `\boxed to`
_HASH = re.compile(r"####[ \t]*")
_PHRASE = re.compile(r"\banswer\s+is\b[ \t]*:?[ \t]*", re.IGNORECASE)
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
_SENTENCE_END = re.compile(r"\n|[.!?](?=\s|$)")
_CLOSERS = re.compile(r"^\s*(?:\$\$?|\\\)|\\\])")


def clause(text: str) -> str:
    """``text`` up to the end of its sentence or line."""
    end = _SENTENCE_END.search(text)
    return text if end is None else text[: end.start()]


def brace_pairs(text: str) -> dict[int, int]:
    """The index of the `}` closing each closed `{` of ``text`` (escaped braces do not count), in one pass."""
    pairs: dict[int, int] = {}
    open_at: list[int] = []
    for match in _BRACE_OR_ESCAPE.finditer(text):
        if match.group() == "{":
            open_at.append(match.start())
        elif match.group() == "}" and open_at:
            pairs[open_at.pop()] = match.start()
    return pairs


def box_spans(text: str) -> list[tuple[int, str, int]]:
    """(start, content, end) of every `\\boxed{...}` (nested braces allowed) and `\\boxed 5`; boxes in a box skipped."""
    spans: list[tuple[int, str, int]] = []
    boxes = list(_BOX.finditer(text))
    # One pass over the braces for all boxes: scanning from each box would be quadratic.
    pairs = brace_pairs(text) if boxes else {}
    covered = 0
    for match in boxes:
        if match.start() < covered:
            continue
        if match.group(1):
            end = pairs.get(match.end() - 1)
            if end is None:
                continue
            body, after = text[match.end(): end], end + 1
        else:
            simple = _SIMPLE_BOX.match(text, match.end())
            if simple is None:
                continue
            body, after = simple.group(0), simple.end()
        covered = after
        spans.append((match.start(), body.strip(), after))
    return spans


def find_markers(text: str) -> list[Marked]:
    """Every marked final answer in ``text`` in order: boxes, `#### X` and `The answer is X`."""
    spans = [(start, "boxed", body, after) for start, body, after in box_spans(text)]
    for kind, pattern in (("hash", _HASH), ("phrase", _PHRASE)):
        spans += [(match.start(), kind, "", match.end()) for match in pattern.finditer(text)]
    spans.sort()
    starts = [span[0] for span in spans]
    newlines = [match.start() for match in re.finditer("\n", text)] + [len(text)]
    found = []
    for start, kind, body, after in spans:
        # What a marker marks ends at the line's end or at the next marker ("The answer is $\boxed{5}$"
        # leaves the phrase nothing): linear in the text however many markers a line holds.
        following = bisect_left(starts, after)
        stop = min(newlines[bisect_left(newlines, after)], starts[following] if following < len(starts) else len(text))
        marked = text[after:stop]
        if kind == "boxed":
            found.append(Marked(start, kind, body, clause(_CLOSERS.sub("", marked, count=1))))
        else:
            found.append(Marked(start, kind, marked, ""))
    return found


def find_boxed(text: str) -> list[Marked]:
    """Every box of ``text`` as a marker, in order (``tail``: the rest of its sentence)."""
    return [marked for marked in find_markers(text) if marked.kind == "boxed"]


# ---------------------------------------------------------------- numbers

_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_FRAC_ARG = rf"\{{\s*(?:{_NUM})\s*\}}|\d"
_NUMBER_AT = re.compile(
    rf"(?:[A-Za-z]\s*=)?[\s:=*~≈$(\[]*(?P<sign>[-+]?)\s*\$?\s*(?:"
    rf"\\[dt]?frac\s*(?P<fnum>{_FRAC_ARG})\s*(?P<fden>{_FRAC_ARG})"
    rf"|(?P<num>{_NUM})(?:[eE](?P<exp>[-+]?\d{{1,4}}))?(?:\s*/\s*(?P<den>{_NUM}))?)(?:\s*%)?"
)
_ANY_NUMBER = re.compile(rf"-?(?:{_NUM})")
_CHANGES = re.compile(
    r"^\s*[-+]?\.?\d"  # a second number right after the first: "72 73"
    r"|(?:\bor\b|\band\b|\bto\b|\bx\b|[-+*/=,;×÷])\s*[$(\s]*(?:\\[dt]?frac\s*\{?)?[-+]?\.?\d",
    re.IGNORECASE,
)
_LATEX_NOISE = (
    (re.compile(r"<<[^<>\n]*>>"), ""),  # GSM8K calculator notes: "The answer is <<8=8>>8."
    (re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\[!,;]|\\(?:left|right)(?![a-zA-Z])|\*\*"), ""),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\([$%])"), r"\1"),
    (re.compile("−"), "-"),
)
_HEADING = re.compile(r"[.):]\s*[A-Za-z]")
_PLAIN_DIGITS = 100  # beyond this many zeros, a canonical number is written as digits + "e" + exponent


def clean_number_text(text: str) -> str:
    """``text`` without what wraps numbers: LaTeX (`\\$`, `{,}`, `\\text{}`), markdown `**`, GSM8K `<<...>>`."""
    for pattern, replacement in _LATEX_NOISE:
        text = pattern.sub(replacement, text)
    return text


def canonical_decimal(value: Decimal) -> str:
    """The one text for a value: no exponent, no trailing zeros, no "-0" (exponent form only when huge)."""
    sign, digit_tuple, exponent = value.as_tuple()
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    if not digits:
        return "0"
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    if 0 <= exponent <= _PLAIN_DIGITS:
        body = digits + "0" * exponent
    elif exponent < 0 and -exponent < len(digits):
        body = f"{digits[:exponent]}.{digits[exponent:]}"
    elif exponent < 0 and -exponent <= _PLAIN_DIGITS:
        body = "0." + "0" * (-exponent - len(digits)) + digits
    else:
        body = f"{digits}e{exponent}"
    return ("-" if sign else "") + body


def _decimal(text: str, negative: bool = False) -> Decimal:
    return Decimal(("-" if negative else "") + text.strip("{} ").replace(",", ""))


def _fraction(numerator: Decimal, denominator: Decimal) -> Number | None:
    if denominator == 0:
        return None
    with localcontext() as context:
        context.prec = 60
        context.clear_flags()
        value = numerator / denominator
        exact = not context.flags[Inexact]
    if exact:
        return Number(value, canonical_decimal(value))
    # "p/q" for a non-terminating fraction of whole numbers short enough to print (str() of a huge int raises).
    if all(_is_integral(part) and len(part.as_tuple().digits) < 500 for part in (numerator, denominator)):
        top, bottom = int(numerator), int(denominator)
        common = gcd(top, bottom) * (-1 if bottom < 0 else 1)
        return Number(value, f"{top // common}/{bottom // common}")
    return Number(value, canonical_decimal(value))


def read_number(text: str) -> tuple[Number, str] | None:
    """The number at the start of ``text`` (after `$`, `:`, `=`, `x =`) and the text after it; None if none."""
    text = clean_number_text(text)
    match = _NUMBER_AT.match(text)
    if match is None:
        return None
    negative = match.group("sign") == "-"
    try:
        if match.group("fnum"):
            number = _fraction(_decimal(match.group("fnum"), negative), _decimal(match.group("fden")))
        elif match.group("den"):
            number = _fraction(_decimal(match.group("num"), negative), _decimal(match.group("den")))
        else:
            value = _decimal(match.group("num") + "e" + (match.group("exp") or "0"), negative)
            number = Number(value, canonical_decimal(value))
    except InvalidOperation:
        return None
    if number is None:
        return None
    return number, text[match.end():]


def changes_answer(rest: str) -> bool:
    """Whether the text right after an answer changes it: another number after `or`, `+`, `=`, `,` ..."""
    return bool(_CHANGES.search(clause(clean_number_text(rest))))


def read_marked_number(marked: Marked) -> Candidate | None:
    """The number a marker marks, flagged ambiguous when the text after it changes it; None if none."""
    read = read_number(marked.body)
    if read is None:
        return None
    number, rest = read
    if marked.kind == "hash" and _HEADING.match(rest):
        return None  # "#### 1. Read the problem" is a markdown heading, not an answer
    ambiguous = changes_answer(rest) or changes_answer(marked.tail)
    return Candidate(number.key, number.key, ambiguous)


def parse_number(text: str) -> Number | None:
    """``text`` as one number, units and words after it allowed ("18 dollars", "25%"); None if not."""
    read = read_number(text)
    if read is None or re.search(r"\d", clause(read[1])):  # a second number: "5 or 6", "3 4"
        return None
    return read[0]


def last_number(text: str) -> Candidate | None:
    """The last number in ``text``, for the `fallback_last_number` option."""
    last = None
    for last in _ANY_NUMBER.finditer(clean_number_text(text)):
        pass
    number = read_number(last.group(0)) if last else None
    return Candidate(number[0].key, number[0].key) if number else None


def _is_integral(value: Decimal) -> bool:
    return value.as_tuple().exponent >= 0 or value == value.to_integral_value()


def numbers_close(gold: Decimal, pred: Decimal, tolerance: float) -> bool:
    """Equal, or within ``tolerance``: absolute for whole-number gold, relative to |gold| above 1 otherwise.

    Two whole numbers must be equal exactly: a count off by one is wrong however large it is.
    """
    if gold == pred:
        return True
    if _is_integral(gold) and _is_integral(pred):
        return False
    scale = Decimal(1) if _is_integral(gold) else max(Decimal(1), abs(gold))
    return abs(gold - pred) <= Decimal(str(tolerance)) * scale


# ---------------------------------------------------------------- the answer rules


def decide(
    candidates: Iterable[Candidate | None],
    same: Callable[[Candidate, Candidate], bool] | None = None,
) -> Extraction:
    """The final answer among the marked ones: none, ambiguous, conflicting, or the (last) agreed one.

    ``same`` tells two different keys that are still the same answer (``\\frac12`` and ``0.5``).
    """
    found = [candidate for candidate in candidates if candidate is not None]
    if not found:
        return Extraction(None, None, NO_ANSWER)
    if any(candidate.ambiguous for candidate in found):
        return Extraction(None, None, AMBIGUOUS)
    last = found[-1]
    distinct = {candidate.key: candidate for candidate in found if candidate.key != last.key}
    if len(distinct) > _MOST_FORMS:
        return Extraction(None, None, CONFLICTING)  # spares ``same`` (math-verify) a flood of checks
    if all(same is not None and same(other, last) for other in distinct.values()):
        return Extraction(last.key, last.raw, None)
    return Extraction(None, None, CONFLICTING)


def final_answer(
    text: str,
    read: Callable[[Marked], Candidate | None],
    same: Callable[[Candidate, Candidate], bool] | None = None,
    fallback_last_number: bool = False,
) -> Extraction:
    """The final answer of ``text`` under the answer rules, each marker read by ``read``."""
    found = decide((read(marked) for marked in find_markers(text)), same)
    if found.reason == NO_ANSWER and fallback_last_number:
        return decide([last_number(text)], same)
    return found


# ---------------------------------------------------------------- reading one marker

_SPAN = re.compile(r"\s*(\$\$?|\\\(|\\\[)(.+?)(?:\$\$?|\\\)|\\\])", re.DOTALL)
OR_WORD = re.compile(r"\bor\b", re.IGNORECASE)  # "X or Y" offers a choice: not one answer
_ARITHMETIC = re.compile(r"[-+*/×·]|\\cdot|\\times")
_GLUED = re.compile(r"[\w^\\{]")  # "2x", "2^{10}", "2\sqrt{2}": the number is part of an expression
_KEY_NOISE = re.compile(r"\s+|\\left|\\right|\\displaystyle|\\[!,;: ]|\$")
_QUOTES = "\"'`“”‘’"


def whole_number(text: str) -> Number | None:
    """``text`` when it is exactly one number (no units or words after it), else None."""
    read = read_number(text)
    return read[0] if read is not None and not read[1].strip(" $.") else None


def math_changes(latex: str) -> bool:
    """Whether a LaTeX answer offers a choice or a calculation ("72 \\text{ or } 73", "72 + 1 = 73")."""
    plain = clean_number_text(latex)
    if OR_WORD.search(plain):
        return True
    lhs, equals, rhs = plain.partition("=")
    return bool(equals and rhs.strip() and re.search(r"\d", lhs) and _ARITHMETIC.search(lhs))


def latex_key(latex: str) -> str:
    """A canonical text for a LaTeX answer: plain numbers canonical, spacing and `\\left` dropped."""
    number = whole_number(latex)
    if number is not None:
        return number.key
    key = _KEY_NOISE.sub("", latex).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return key.rstrip(".")


def read_plain_math(text: str) -> Candidate | None:
    """An answer written without LaTeX delimiters: a number (units allowed), else the text as LaTeX."""
    raw = clause(text).strip().rstrip(".").strip()
    if not raw.strip(" $"):
        return None  # "The answer is $\boxed{72}$": the phrase marks only the box's opening `$`
    read = read_number(raw)
    if read is not None and not _GLUED.match(read[1]):
        number, rest = read
        if changes_answer(rest):
            return Candidate(number.key, raw, ambiguous=True)
        if not re.search(r"[\d\\]", rest):
            return Candidate(number.key, number.key)
    return Candidate(latex_key(raw), raw, math_changes(raw))


def read_math(marked: Marked) -> Candidate | None:
    """One marker's answer for the math verifier: a box's content, a `$...$` span, or plain text."""
    if marked.kind == "boxed":
        latex, rest = marked.body, marked.tail
    else:
        span = _SPAN.match(marked.body)
        if span is None:
            return read_plain_math(marked.body)
        latex, rest = span.group(2), marked.body[span.end():]
    latex = latex.strip()
    if not latex:
        return None
    return Candidate(latex_key(latex), latex, math_changes(latex) or changes_answer(rest))


def normalize_text(text: str, case_sensitive: bool = False) -> str:
    """Text for exact comparison: LaTeX/markdown wrappers, quotes, end punctuation and extra spaces dropped."""
    text = clean_number_text(text).strip().strip("$").strip().strip(_QUOTES).rstrip(".!").strip()
    text = " ".join(text.split())
    return text if case_sensitive else text.lower()


def marked_text(marked: Marked) -> str:
    """The text a marker marks: a box's content, a `$...$` span, or the rest of the sentence."""
    if marked.kind == "boxed":
        return marked.body
    span = _SPAN.match(marked.body)
    return span.group(2) if span else clause(marked.body)


def read_choice(marked: Marked, choices: str) -> Candidate | None:
    """The option letter a marker marks ("(C)", "C", "\\boxed{C}"); ambiguous when another follows ("(B) or (C)")."""
    letters = choices + choices.lower()
    # A bare letter must be upper case ("The answer is a ..." is prose); in brackets either case.
    option = rf"(?:\(([{letters}])\)|\[([{letters}])\]|([{choices}])(?![\w']))"
    body = clean_number_text(marked.body)
    found = re.match(rf"[\s:*$]*{option}", body)
    if found is None:
        return None
    letter = next(group for group in found.groups() if group).upper()
    rest = clause(body[found.end():] + " " + marked.tail)
    return Candidate(letter, letter, bool(re.search(rf"(?:\bor\b|\band\b|[,/;&])\s*{option}", rest)))
