"""Literal tests of the outcome verifiers: each case a literal completion and gold, and the verdict expected."""
import json
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from rest.filters.base import GoldAnswerError, Verdict
from rest.filters.registry import BUILTIN_VERIFIERS, build_verifier

BIG = "9" * 10_000
BIG_MINUS_ONE = "9" * 9_999 + "8"
GSM8K_TRAIN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gsm8k" / "train.jsonl"


def verdict(name, completion, gold, sample=None, **options):
    """The verdict of the named verifier built with ``options``."""
    return build_verifier(name, options).judge(completion, gold, sample or {})


CASES = [
    # name, completion, gold, expected verdict
    # -- gsm8k conventions
    ("gsm8k", "She earns 5 * 2 = 10.\n#### 10", "#### 10", Verdict(1.0, "correct", "10")),
    ("gsm8k", "#### $1,234", "1234", Verdict(1.0, "correct", "1234")),
    ("gsm8k", "The answer is $1,234.00.", "Weng earns $<<12/60=0.2>>0.2.\n#### 1,234", Verdict(1.0, "correct", "1234")),
    ("gsm8k", r"So she pays $\boxed{18}$ dollars.", 18, Verdict(1.0, "correct", "18")),
    ("gsm8k", "The answer is 18 dollars.", "18", Verdict(1.0, "correct", "18")),
    ("gsm8k", "#### 25%", "25", Verdict(1.0, "correct", "25")),
    ("gsm8k", "#### 17", "#### 18", Verdict(0.0, "wrong", "17")),
    ("gsm8k", "#### -3", "-3", Verdict(1.0, "correct", "-3")),
    # -- several different final answers, repeats, and text that changes the answer
    ("gsm8k", "The answer is 72.\n#### 73", "72", Verdict(0.0, "conflicting_answers", None)),
    ("gsm8k", r"\boxed{72} ... \boxed{73}", "73", Verdict(0.0, "conflicting_answers", None)),
    ("gsm8k", "The answer is 72.\n#### 72", "72", Verdict(1.0, "correct", "72")),
    ("gsm8k", "#### 72\n#### 72.00", "72", Verdict(1.0, "correct", "72")),
    ("gsm8k", "#### 72 or 73", "72", Verdict(0.0, "ambiguous_answer", None)),
    ("gsm8k", "The answer is 72 + 1 = 73", "73", Verdict(0.0, "ambiguous_answer", None)),
    ("gsm8k", "#### 72, 73", "72", Verdict(0.0, "ambiguous_answer", None)),
    ("gsm8k", r"$\boxed{72}$ or 73", "72", Verdict(0.0, "ambiguous_answer", None)),
    ("gsm8k", "#### 1. Read the problem\nShe has 4.\n#### 4", "4", Verdict(1.0, "correct", "4")),
    ("gsm8k", "The answer is <<8=8>>8.", "8", Verdict(1.0, "correct", "8")),
    ("gsm8k", "The answer is $\\boxed{8}$.", "8", Verdict(1.0, "correct", "8")),
    ("gsm8k", "#### 1\n#### 2\n#### 3\n#### 4\n#### 5\n#### 6", "6", Verdict(0.0, "conflicting_answers", None)),
    # -- no marker, empty output
    ("gsm8k", "", "72", Verdict(0.0, "no_answer", None)),
    ("gsm8k", "She sold 72 clips.", "72", Verdict(0.0, "no_answer", None)),
    ("gsm8k", "#### seventy-two", "72", Verdict(0.0, "no_answer", None)),
    ("math", "", "1", Verdict(0.0, "no_answer", None)),
    ("numeric", "", "1", Verdict(0.0, "no_answer", None)),
    ("exact", "", "Paris", Verdict(0.0, "no_answer", None)),
    ("choice", "", "A", Verdict(0.0, "no_answer", None)),
    # -- 10,000-digit numbers: exact, no float overflow
    ("gsm8k", f"#### {BIG}", f"#### {BIG}", Verdict(1.0, "correct", BIG)),
    ("gsm8k", f"#### {BIG_MINUS_ONE}", f"#### {BIG}", Verdict(0.0, "wrong", BIG_MINUS_ONE)),
    ("numeric", f"The answer is {BIG}.", BIG, Verdict(1.0, "correct", BIG)),
    ("numeric", f"The answer is {BIG_MINUS_ONE}.", BIG, Verdict(0.0, "wrong", BIG_MINUS_ONE)),
    ("math", f"\\boxed{{{BIG}}}", BIG, Verdict(1.0, "correct", BIG)),
    ("math", f"\\boxed{{{BIG_MINUS_ONE}}}", BIG, Verdict(0.0, "wrong", BIG_MINUS_ONE)),
    # -- numeric tolerance (1e-4)
    ("numeric", "#### 3.14160", "3.14159", Verdict(1.0, "correct", "3.1416")),
    ("numeric", "#### 3.15159", "3.14159", Verdict(0.0, "wrong", "3.15159")),
    ("numeric", "#### 0.3333", "0.33333", Verdict(1.0, "correct", "0.3333")),
    ("numeric", r"#### \frac{1}{3}", "0.33333", Verdict(1.0, "correct", "1/3")),
    ("math", r"\boxed{0.33334}", r"\frac{1}{3}", Verdict(1.0, "correct", "0.33334")),
    ("math", r"\boxed{0.34}", r"\frac{1}{3}", Verdict(0.0, "wrong", "0.34")),
    # -- math: LaTeX variants of one half are all equal
    ("math", r"\boxed{\frac12}", r"\frac{1}{2}", Verdict(1.0, "correct", "0.5")),
    ("math", r"\boxed{\frac{1}{2}}", "0.5", Verdict(1.0, "correct", "0.5")),
    ("math", r"\boxed{0.5}", "1/2", Verdict(1.0, "correct", "0.5")),
    ("math", r"\boxed{1/2}", r"\frac12", Verdict(1.0, "correct", "0.5")),
    ("math", r"The answer is $\dfrac{1}{2}$.", r"\frac{1}{2}", Verdict(1.0, "correct", "0.5")),
    ("math", r"\boxed{\frac12} and again \boxed{0.5}", "1/2", Verdict(1.0, "correct", "0.5")),
    # -- math: nested braces, math-verify equivalence, its numeric fallback
    ("math", r"so $\boxed{\frac{3}{4}}$.", r"\frac34", Verdict(1.0, "correct", "0.75")),
    ("math", r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt3}{2}", Verdict(1.0, "correct", r"\frac{\sqrt{3}}{2}")),
    ("math", r"\boxed{x^2 + 1}", r"1+x^2", Verdict(1.0, "correct", "x^2+1")),
    ("math", r"\boxed{x^2 - 1}", r"1+x^2", Verdict(0.0, "wrong", "x^2-1")),
    ("math", r"\boxed{1.41421}", r"\sqrt{2}", Verdict(1.0, "correct", "1.41421")),
    ("math", r"\boxed{\{1, 2\}}", r"1, 2", Verdict(1.0, "correct", r"\{1,2\}")),
    ("math", r"\boxed 5", "5", Verdict(1.0, "correct", "5")),
    ("math", "Final Answer: The final answer is $12$. I hope it is correct.", "12", Verdict(1.0, "correct", "12")),
    ("math", "#### 5", r"\boxed{5}", Verdict(1.0, "correct", "5")),
    ("math", r"\boxed{2} and later \boxed{3}", "3", Verdict(0.0, "conflicting_answers", None)),
    # the phrase before a `$`-wrapped box marks only the `$`: one answer, not two that conflict
    ("math", r"The answer is $\boxed{72}$.", "72", Verdict(1.0, "correct", "72")),
    ("math", r"The final answer is $\boxed{\frac{1}{2}}$. I hope it is correct.", "0.5",
     Verdict(1.0, "correct", "0.5")),
    ("math", r"The answer is $\boxed{72}$ or $73$.", "72", Verdict(0.0, "ambiguous_answer", None)),
    ("gsm8k", r"The answer is $\boxed{72}$.", "72", Verdict(1.0, "correct", "72")),
    ("math", r"\boxed{3}", r"so the answer is $\boxed{3}$.", Verdict(1.0, "correct", "3")),  # gold: its last box
    ("math", r"we write \boxed to mark it; \boxed{3}", "3", Verdict(1.0, "correct", "3")),
    ("math", r"\boxed{72 \text{ or } 73}", "72", Verdict(0.0, "ambiguous_answer", None)),
    ("math", "The answer is 72 + 1 = 73", "73", Verdict(0.0, "ambiguous_answer", None)),
    # -- multiple choice
    ("choice", "The answer is (B).", "B", Verdict(1.0, "correct", "B")),
    ("choice", "#### C", "(C)", Verdict(1.0, "correct", "C")),
    ("choice", r"$\boxed C$", "C", Verdict(1.0, "correct", "C")),
    ("choice", r"$\boxed{D}$", "d", Verdict(1.0, "correct", "D")),
    ("choice", r"\boxed{\text{(E)}}", "E", Verdict(1.0, "correct", "E")),
    ("choice", "The answer is (B).", "C", Verdict(0.0, "wrong", "B")),
    ("choice", "The answer is (B) or (C).", "B", Verdict(0.0, "ambiguous_answer", None)),
    ("choice", "The answer is (B).\n#### C", "B", Verdict(0.0, "conflicting_answers", None)),
    ("choice", "The answer is Because of (B)", "B", Verdict(0.0, "no_answer", None)),
    # -- exact
    ("exact", "The answer is Paris.", "paris", Verdict(1.0, "correct", "paris")),
    ("exact", r"\boxed{\text{Paris}}", "Paris", Verdict(1.0, "correct", "paris")),
    ("exact", "#### Rome", "Paris", Verdict(0.0, "wrong", "rome")),
    ("exact", "The answer is Paris or Rome.", "Paris", Verdict(0.0, "ambiguous_answer", None)),
]


@pytest.mark.parametrize(("name", "completion", "gold", "expected"), CASES)
def test_verdict(name, completion, gold, expected):
    assert verdict(name, completion, gold) == expected


def test_ten_thousand_digit_answers_are_fast():
    start = time.perf_counter()
    for name in ("gsm8k", "numeric", "math"):
        assert verdict(name, f"#### {BIG_MINUS_ONE}", BIG).score == 0.0
        assert verdict(name, f"#### {BIG}", int(Decimal(BIG))).score == 1.0  # a Python int gold too
    assert time.perf_counter() - start < 5


def test_answer_only_in_the_prompt_echo_does_not_count():
    prompt = "Question: Tom has 2 + 3 apples. How many?\nAnswer: He has 2 + 3 = 5 apples.\n#### 5\n\nQuestion: ..."
    sample = {"prompt_text": prompt}
    assert verdict("gsm8k", "I am not sure.", "5", sample) == Verdict(0.0, "no_answer", None)
    assert verdict("gsm8k", prompt + "\nI am not sure.", "5", sample) == Verdict(0.0, "no_answer", None)
    assert verdict("gsm8k", prompt + "\nI count 5.\n#### 5", "5", sample) == Verdict(1.0, "correct", "5")
    # the echoed "#### 5" does not conflict with the model's own answer either
    assert verdict("gsm8k", prompt + "\n#### 6", "6", sample) == Verdict(1.0, "correct", "6")


@pytest.mark.parametrize(
    ("name", "gold", "message"),
    [
        ("gsm8k", "He sold some.\n#### seventy", "seventy"),
        ("gsm8k", None, "None"),
        ("numeric", "abc", "'abc'"),
        ("math", r"\frac{1}{", r"\\frac{1}{"),
        ("math", "", "is empty"),
        ("choice", "F", "'F'"),
        ("exact", "  ", "is empty"),
        ("gsm8k", "#### " + "x" * 500, r"xxx\.\.\."),  # a long bad value is quoted in part
    ],
)
def test_gold_that_does_not_parse_is_an_error(name, gold, message):
    with pytest.raises(GoldAnswerError, match=message):
        verdict(name, "#### 5", gold)


def test_gold_error_comes_before_judging_an_empty_completion():
    with pytest.raises(GoldAnswerError):
        verdict("gsm8k", "", "#### n/a")


@pytest.mark.parametrize("name", ["gsm8k", "numeric", "math"])
def test_fallback_last_number_is_an_option_off_by_default(name):
    assert verdict(name, "She sold 7 clips, then 72.", "72") == Verdict(0.0, "no_answer", None)
    assert verdict(name, "She sold 7 clips, then 72.", "72", fallback_last_number=True) == Verdict(1.0, "correct", "72")


@pytest.mark.parametrize(
    ("options", "completion", "gold", "expected"),
    [
        ({"pattern": r"ANSWER: (\S+)"}, "ANSWER: 5.0", "5", Verdict(1.0, "correct", "5")),
        ({"pattern": r"ANSWER: (\S+)"}, "ANSWER: 5 and ANSWER: 6", "6", Verdict(0.0, "conflicting_answers", None)),
        ({"pattern": r"ANSWER: (\S+)"}, "ANSWER: 5 and ANSWER: 5", "5", Verdict(1.0, "correct", "5")),
        ({"pattern": r"ANSWER: (\S+)"}, "no match", "5", Verdict(0.0, "no_answer", None)),
        ({"pattern": r"ANSWER: (\w+)"}, "ANSWER: Paris", "paris", Verdict(1.0, "correct", "paris")),
        ({"pattern": r"ANSWER: (\S+)", "compare": "exact"}, "ANSWER: 5.0", "5", Verdict(0.0, "wrong", "5.0")),
        ({"pattern": r"= (\S+)$", "compare": "numeric"}, "x = 3.14160", "3.14159", Verdict(1.0, "correct", "3.1416")),
    ],
)
def test_regex_verifier(options, completion, gold, expected):
    assert verdict("regex", completion, gold, **options) == expected


def test_regex_verifier_needs_one_group_and_a_numeric_gold_when_numeric():
    with pytest.raises(ValueError, match="exactly one capture group"):
        build_verifier("regex", {"pattern": r"ANSWER: \S+"})
    with pytest.raises(GoldAnswerError, match="'Paris'"):
        verdict("regex", "ANSWER: Paris", "Paris", pattern=r"ANSWER: (\w+)", compare="numeric")


@pytest.mark.parametrize(
    ("name", "completion", "answer"),
    [
        ("gsm8k", "The answer is $1,234.00.", "1234"),
        ("gsm8k", "#### 1234", "1234"),
        ("math", r"\boxed{\dfrac{1}{2}}", "0.5"),
        ("math", r"\boxed{ \left( 1, 2 \right) }", "(1,2)"),
        ("choice", "The answer is (c)", "C"),
        ("gsm8k", "#### 72 or 73", None),
        ("gsm8k", "", None),
    ],
)
def test_extract_answer_is_canonical_for_majority_voting(name, completion, answer):
    assert build_verifier(name, {}).extract_answer(completion) == answer


def test_call_returns_the_score_alone():
    verifier = build_verifier("gsm8k", {})
    assert verifier("#### 5", "5", {}) == 1.0
    assert verifier("#### 6", "5", {}) == 0.0


ANSWER_VERIFIERS = sorted(set(BUILTIN_VERIFIERS) - {"code"})


@pytest.mark.parametrize("name", ANSWER_VERIFIERS)
def test_verifiers_pickle_and_are_named_by_their_key(name):
    options = {"pattern": r"#### (\S+)"} if name == "regex" else {}
    verifier = pickle.loads(pickle.dumps(build_verifier(name, options)))
    assert verifier.name == name
    assert verifier("#### B", "B", {}) == 1.0 if name == "choice" else verifier("#### 5", "5", {}) == 1.0


def test_math_verifier_without_timeouts():
    expected = Verdict(1.0, "correct", r"2\sqrt{2}")
    assert verdict("math", r"\boxed{2\sqrt{2}}", r"\sqrt{8}", timeout_seconds=None) == expected


def test_math_verifier_works_off_the_main_thread():
    # math-verify's timeouts use signals, which only the main thread may set
    verifier = build_verifier("math", {})
    with ThreadPoolExecutor(max_workers=1) as pool:
        verdict_ = pool.submit(verifier.judge, r"\boxed{x^2+2x+1}", r"(x+1)^2", {}).result()
    assert verdict_ == Verdict(1.0, "correct", "x^2+2x+1")


def test_build_verifier_names_valid_choices_in_its_errors():
    assert ANSWER_VERIFIERS == ["choice", "exact", "gsm8k", "math", "numeric", "regex"]
    with pytest.raises(ValueError, match="gsm8k"):
        build_verifier("no_such_verifier", {})
    with pytest.raises(ValueError, match="tolerance"):
        build_verifier("gsm8k", {"tolerence": 1e-3})
    assert build_verifier("rest.filters.verifiers.NumericVerifier", {"tolerance": 0.5}).tolerance == 0.5


@pytest.mark.skipif(not GSM8K_TRAIN.exists(), reason="GSM8K data (../shared/data) is not in this checkout")
def test_every_gsm8k_reference_solution_is_judged_correct_against_itself():
    verifier = build_verifier("gsm8k", {})
    rows = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()]
    verdicts = [verifier.judge(row["answer"], row["answer"], {}) for row in rows]
    not_correct = [(row["answer"].splitlines()[-2], v.reason) for row, v in zip(rows, verdicts) if v.score != 1.0]
    # The one exception states a calculation after its marker, which the answer rules count as ambiguous.
    assert (len(rows), not_correct) == (
        7473,
        [
            (
                "Since there are 8 pints in a gallon, the final answer is 15 gallons * 8 pints / gallon"
                " = <<15*8=120>>120 pints",
                "ambiguous_answer",
            )
        ],
    )
