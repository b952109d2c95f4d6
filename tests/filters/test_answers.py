"""Literal tests of final-answer extraction: markers, numbers and the answer rules."""
from decimal import Decimal

import pytest

from rest.filters.answers import (
    Candidate,
    Extraction,
    Marked,
    canonical_decimal,
    changes_answer,
    decide,
    find_boxed,
    find_markers,
    last_number,
    model_text,
    numbers_close,
    parse_number,
    read_choice,
    read_marked_number,
    read_math,
    read_number,
    whole_number,
)


@pytest.mark.parametrize(
    ("text", "bodies"),
    [
        (r"so $\boxed{\frac{3}{4}}$.", [r"\frac{3}{4}"]),
        (r"\boxed{\left\{1, 2\right\}}", [r"\left\{1, 2\right\}"]),
        (r"\boxed{a} then \boxed{b}", ["a", "b"]),
        (r"\boxed 5.", ["5"]),
        (r"\fbox{7}", ["7"]),
        (r"\boxed{\boxed{5}}", [r"\boxed{5}"]),
        (r"\boxed{unclosed", []),
        (r"\boxed{a \} b}", [r"a \} b"]),
        (r"\boxedness", []),
    ],
)
def test_find_boxed_bodies(text, bodies):
    assert [marked.body for marked in find_boxed(text)] == bodies


def test_find_boxed_tail_is_the_rest_of_the_sentence():
    assert find_boxed(r"$\boxed{72}$ or 73. Next line") == [Marked(1, "boxed", "72", " or 73")]


def test_find_markers_in_order_each_up_to_the_next_marker():
    text = "The answer is 5. Also #### 6\nThe answer is $\\boxed{7}$."
    assert [(m.kind, m.body) for m in find_markers(text)] == [
        ("phrase", "5. Also "),
        ("hash", "6"),
        ("phrase", "$"),
        ("boxed", "7"),
    ]


def test_two_phrases_on_one_line_are_both_found():
    assert [m.body for m in find_markers("The answer is 5, no, the answer is 6.")] == ["5, no, the ", "6."]


@pytest.mark.parametrize(
    ("text", "key", "rest"),
    [
        ("$1,234.00", "1234", ""),
        ("-$3.50 each", "-3.5", " each"),
        ("25%", "25", ""),
        (r"25\%", "25", ""),
        (r"\frac{3}{4}", "0.75", ""),
        (r"\frac12", "0.5", ""),
        (r"-\dfrac{1}{3}", "-1/3", ""),
        ("2/6", "1/3", ""),
        ("1e5", "100000", ""),
        ("-0", "0", ""),
        ("0.50", "0.5", ""),
        ("**72**", "72", ""),
        (r"\text{\$}1{,}000", "1000", ""),
        ("x = 7", "7", ""),
        ("72 or 73", "72", " or 73"),
        ("1,2345", "1", ",2345"),
    ],
)
def test_read_number_canonical_keys(text, key, rest):
    number, after = read_number(text)
    assert (number.key, after) == (key, rest)


@pytest.mark.parametrize("text", ["seventy", "", "x^2", r"\frac{1}{0}", "n = ?"])
def test_read_number_none(text):
    assert read_number(text) is None


def test_ten_thousand_digit_numbers_are_exact():
    big = "9" * 10_000
    number, _ = read_number(big)
    assert number.key == big
    assert number.value == Decimal(big)
    assert not numbers_close(number.value, Decimal("9" * 9_999 + "8"), 1e-4)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("1234.000", "1234"),
        ("-0.0", "0"),
        ("1E+3", "1000"),
        ("0.00012", "0.00012"),
        ("1E+200", "1e200"),
        ("1E-200", "1e-200"),
    ],
)
def test_canonical_decimal(value, text):
    assert canonical_decimal(Decimal(value)) == text


@pytest.mark.parametrize(
    ("text", "key"),
    [("18 dollars", "18"), ("$1,234", "1234"), ("25%", "25"), ("5 or 6", None), ("abc", None), ("3 4", None)],
)
def test_parse_number(text, key):
    number = parse_number(text)
    assert (number.key if number else None) == key


@pytest.mark.parametrize(
    ("text", "key"), [("7", "7"), ("7.", "7"), ("$7$", "7"), ("7 apples", None), ("2x", None), ("", None)]
)
def test_whole_number(text, key):
    number = whole_number(text)
    assert (number.key if number else None) == key


@pytest.mark.parametrize(
    ("gold", "pred", "close"),
    [
        ("3.14159", "3.14160", True),  # 1e-5 apart
        ("3.14159", "3.15159", False),  # 1e-2 apart
        ("0.5", "0.50001", True),
        ("2", "1.99999", True),  # whole-number gold: absolute tolerance
        ("1000000", "1000000.5", False),  # ... not relative: a big count must be exact
        ("1000000", "1000001", False),
        ("-3", "-3.0", True),
    ],
)
def test_numbers_close(gold, pred, close):
    assert numbers_close(Decimal(gold), Decimal(pred), 1e-4) is close


@pytest.mark.parametrize(
    ("rest", "changes"),
    [
        (" or 73", True),
        (" + 1 = 73", True),
        (", 73", True),
        (" 73", True),
        (r" \text{ or } 73", True),
        (" dollars.", False),
        (". Then 5 more", False),
        (", which is the total", False),
        ("", False),
    ],
)
def test_changes_answer(rest, changes):
    assert changes_answer(rest) is changes


@pytest.mark.parametrize(
    ("body", "candidate"),
    [
        ("72", Candidate("72", "72", False)),
        ("72 or 73", Candidate("72", "72", True)),
        ("72 + 1 = 73", Candidate("72", "72", True)),
        ("72, 73", Candidate("72", "72", True)),
        ("$1,234.", Candidate("1234", "1234", False)),
        ("seventy-two", None),
        ("1. Read the problem", None),  # a markdown heading, not an answer
    ],
)
def test_read_marked_number(body, candidate):
    assert read_marked_number(Marked(0, "hash", body, "")) == candidate


@pytest.mark.parametrize(
    ("marked", "candidate"),
    [
        (Marked(0, "boxed", r"\frac{3}{4}", ""), Candidate("0.75", r"\frac{3}{4}", False)),
        (Marked(0, "boxed", r"\dfrac{\pi}{ 2 }", "."), Candidate(r"\frac{\pi}{2}", r"\dfrac{\pi}{ 2 }", False)),
        (Marked(0, "boxed", "1, 2", ""), Candidate("1,2", "1, 2", False)),
        (Marked(0, "boxed", r"72 \text{ or } 73", ""), Candidate(r"72\text{or}73", r"72 \text{ or } 73", True)),
        (Marked(0, "boxed", "72", " or 73"), Candidate("72", "72", True)),
        (Marked(0, "phrase", r"$x^2+1$.", ""), Candidate("x^2+1", "x^2+1", False)),
        (Marked(0, "phrase", "18 dollars.", ""), Candidate("18", "18", False)),
        (Marked(0, "phrase", "2x + 3.", ""), Candidate("2x+3", "2x + 3", False)),
        (Marked(0, "phrase", "72 + 1 = 73", ""), Candidate("72", "72 + 1 = 73", True)),
        (Marked(0, "hash", "", ""), None),
    ],
)
def test_read_math(marked, candidate):
    assert read_math(marked) == candidate


@pytest.mark.parametrize(
    ("body", "candidate"),
    [
        ("(C).", Candidate("C", "C", False)),
        ("C", Candidate("C", "C", False)),
        ("(b)", Candidate("B", "B", False)),
        ("**(D)** because", Candidate("D", "D", False)),
        (r"\text{(E)}", Candidate("E", "E", False)),
        ("(B) or (C)", Candidate("B", "B", True)),
        ("B, C", Candidate("B", "B", True)),
        ("(F)", None),
        ("Because it is", None),
        ("a function", None),
    ],
)
def test_read_choice(body, candidate):
    assert read_choice(Marked(0, "phrase", body, ""), "ABCDE") == candidate


@pytest.mark.parametrize(
    ("candidates", "extraction"),
    [
        ([], Extraction(None, None, "no_answer")),
        ([None], Extraction(None, None, "no_answer")),
        ([Candidate("72", "72")], Extraction("72", "72", None)),
        ([Candidate("72", "72"), Candidate("72", "72.0")], Extraction("72", "72.0", None)),
        ([Candidate("72", "72"), Candidate("73", "73")], Extraction(None, None, "conflicting_answers")),
        ([Candidate("72", "72", True), Candidate("72", "72")], Extraction(None, None, "ambiguous_answer")),
    ],
)
def test_decide(candidates, extraction):
    assert decide(candidates) == extraction


def test_decide_uses_same_for_different_keys():
    half, point_five = Candidate(r"\frac{1}{2}", r"\frac{1}{2}"), Candidate("0.5", "0.5")
    assert decide([half, point_five], same=lambda a, b: True) == Extraction("0.5", "0.5", None)
    assert decide([half, point_five], same=lambda a, b: False).reason == "conflicting_answers"
    many_forms = [Candidate(str(n), str(n)) for n in range(10)]
    assert decide(many_forms, same=lambda a, b: True).reason == "conflicting_answers"  # never asked


def test_last_number():
    assert last_number("He had 5 apples and 1,200 pears.") == Candidate("1200", "1200")
    assert last_number("no digits") is None


@pytest.mark.parametrize(
    ("completion", "sample", "text"),
    [
        ("Q: 2+3? #### 5\nfoo", {"prompt_text": "Q: 2+3? #### 5"}, "\nfoo"),
        ("  Q: 2+3? #### 5", {"prompt_text": "Q: 2+3? #### 5\n"}, ""),
        ("#### 5", {"prompt_text": "Q: 2+3?"}, "#### 5"),
        ("#### 5", {}, "#### 5"),
        ("#### 5", None, "#### 5"),
        (None, None, ""),
    ],
)
def test_model_text_drops_the_prompt_echo(completion, sample, text):
    assert model_text(completion, sample) == text
