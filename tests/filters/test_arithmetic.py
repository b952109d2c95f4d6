"""The true_arithmetic filter: which written equations hold, on literal completions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rest.filters.arithmetic import TrueArithmetic, equations, false_equations
from rest.filters.registry import build_filter


@pytest.mark.parametrize("text, found, false", [
    (" 6 * 8 = 48\n48 + 15 = 63\n#### 63", ["6 * 8 = 48", "48 + 15 = 63"], []),
    (" 17 + 23 = 38\n#### 38", ["17 + 23 = 38"], ["17 + 23 = 38"]),  # the hint's answer, false working
    (" 2.46 = 37.38\n#### 37.38", ["2.46 = 37.38"], ["2.46 = 37.38"]),  # a bare number that is all its side
    ("He had 10 - 4 = 5 left", ["10 - 4 = 5"], ["10 - 4 = 5"]),
    ("6 * 8 = 48 + 15 = 63", ["6 * 8 = 48", "48 + 15 = 63"], []),  # a running chain: two steps
    ("Step 1: 5 + 5 = 10, then 10 - 3 = 7", ["5 + 5 = 10", "10 - 3 = 7"], []),
    ("$1,200 x 3 = $3,600", ["1200 * 3 = 3600"], []),
    ("(4 + 5) * 2 = 18", ["(4 + 5) * 2 = 18"], []),
    ("10 / 3 = 3.33 and 2/3 = 0.66", ["10 / 3 = 3.33", "2/3 = 0.66"], []),  # to the written precision
    ("100 * 3 = 301", ["100 * 3 = 301"], ["100 * 3 = 301"]),
    ("half of 20 = 10", [], []),  # a number ending a phrase is not the whole left side
    ("x = 5 + 3 = 8", ["5 + 3 = 8"], []),
    ("2 ** 1000 = 3 and 9 / 0 = 1", [], []),  # only the four operations; nothing undefined
    (" 45\n#### 45", [], []),
])
def test_equations_and_which_are_false(text, found, false):
    assert [eq.text for eq in equations(text)] == found
    assert false_equations(text) == false


def test_the_filter_drops_false_working_and_optionally_missing_working():
    samples = pd.DataFrame({
        "prompt_id": ["a"] * 4,
        "completion": [" 6 * 8 = 48\n#### 48", " 6 * 8 = 46\n#### 46", " 48\n#### 48", " 55 - 10 = 55\n#### 55"],
        "origin": ["sampled", "sampled", "rationalized", "rationalized"],
    })
    keep = pd.Series(True, index=samples.index)
    result = TrueArithmetic().apply(samples, keep, seed=0)
    assert result.keep.tolist() == [True, False, True, False]
    assert result.reason.tolist() == ["arithmetic_holds", "false_equation", "arithmetic_holds", "false_equation"]
    assert result.score.tolist()[:2] == [1.0, 0.0] and np.isnan(result.score.iloc[2])
    strict = TrueArithmetic(require_equation=True, origins=("rationalized",)).apply(samples, keep, seed=0)
    assert strict.reason.tolist() == ["not_judged", "not_judged", "no_equation", "false_equation"]
    assert strict.keep.tolist() == [True, True, False, False]
    assert build_filter("true_arithmetic", {"require_equation": True}) == TrueArithmetic(require_equation=True)
    with pytest.raises(ValueError, match="origins must be a non-empty list"):
        TrueArithmetic(origins="rationalized")
