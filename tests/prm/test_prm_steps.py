"""Step splitting and the token-to-step mapping, on hand-made strings with the built-in model's tokenizer."""
from __future__ import annotations

import pytest

from rest.prm.steps import StepSplitter, assign_steps, decode_walk_ends, step_ends, token_end_offsets


@pytest.fixture(scope="module")
def tok(builtin_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model)


def step_texts(tok, ids, ends):
    """The decoded text of each step's tokens."""
    starts = [0] + list(ends[:-1])
    return [tok.decode(ids[a:b], skip_special_tokens=False) for a, b in zip(starts, ends)]


def split(text, delimiter="\n\n", regex=False):
    """Step texts of ``text`` by character cuts alone."""
    cuts = StepSplitter(delimiter, regex).cuts(text)
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("text, steps", [
    ("a\n\nb", ["a\n\n", "b"]),
    ("no delimiter here", ["no delimiter here"]),
    ("\n\na\n\nb", ["\n\na\n\n", "b"]),  # a leading delimiter joins the first step
    ("a\n\nb\n\n", ["a\n\n", "b\n\n"]),  # a trailing one ends the last step
    ("a\n\n\n\n\n\nb", ["a\n\n\n\n\n\n", "b"]),  # consecutive delimiters make no empty steps
    ("a\n\n \n\nb", ["a\n\n \n\n", "b"]),  # nor do delimiters with only whitespace between them
    ("\n\n", ["\n\n"]),
    ("", [""]),
])
def test_cuts_literal(text, steps):
    assert split(text) == steps


def test_cuts_regex_lookahead_starts_steps_and_plain_regex_ends_them():
    text = "Step 1: 3+4=7. Step 2: 7*2=14. #### 14"
    assert split(text, r"(?=Step \d+:)", True) == ["Step 1: 3+4=7. ", "Step 2: 7*2=14. #### 14"]
    # Without the lookahead a match ends its step; the leading header alone is no step.
    assert split(text, r"Step \d+:", True) == ["Step 1: 3+4=7. Step 2:", " 7*2=14. #### 14"]


def test_bad_delimiters_are_clear_errors():
    with pytest.raises(ValueError, match="not a valid regex"):
        StepSplitter("Step (", True)
    with pytest.raises(ValueError, match="must not be empty"):
        StepSplitter("")


def test_assign_steps_literal():
    # tokens end at chars 2, 5, 5 (completes nothing: part of a multi-byte char), 7, 9; cut at 5 and 7
    assert assign_steps([2, 5, 5, 7, 9], [5, 7]) == [2, 4, 5]
    assert assign_steps([2, 5, 9], []) == [3]
    assert assign_steps([], [3]) == []


@pytest.mark.parametrize("text, expected", [
    ("😀 first\n\n中文 second\n\ncafé third 🎉", ["😀 first\n\n", "中文 second\n\n", "café third 🎉"]),
    ("\n\nStart\n\n", ["\n\nStart\n\n"]),
    ("Ünïcödé only, no delimiter 🚀", ["Ünïcödé only, no delimiter 🚀"]),
    ("x\n\n\n\n\n\ny<|im_end|>", ["x\n\n\n\n\n\n", "y<|im_end|>"]),
])
def test_step_ends_canonical_ids(tok, text, expected):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ends = step_ends(tok, ids, StepSplitter())
    assert ends[-1] == len(ids)
    assert step_texts(tok, ids, ends) == expected


def test_both_offset_paths_give_the_same_steps(tok):
    text = "😀 a\n\n中文 b\n\ncafé 🎉\n\nend"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    decoded, offset_ends = token_end_offsets(tok, ids)
    assert decoded == text
    walk = decode_walk_ends(tok, ids, text)
    assert walk[-1] == len(text)
    cuts = StepSplitter().cuts(text)
    assert assign_steps(offset_ends, cuts) == assign_steps(walk, cuts)
    assert len(assign_steps(walk, cuts)) == 4


def test_non_canonical_ids_use_the_decode_walk(tok):
    # The sampler may pick a tokenisation the tokenizer would not: here each piece encoded on its own.
    pieces = ["Caf", "é", " 😀", "\n", "\n", "中", "文", "\n\n", "done"]
    ids = [t for p in pieces for t in tok(p, add_special_tokens=False)["input_ids"]]
    text = "".join(pieces)
    assert tok(text, add_special_tokens=False)["input_ids"] != ids  # really non-canonical
    decoded, ends = token_end_offsets(tok, ids)
    assert decoded == text
    assert ends == sorted(ends) and ends[-1] == len(text)
    assert step_texts(tok, ids, step_ends(tok, ids, StepSplitter())) == ["Café 😀\n\n", "中文\n\n", "done"]


def test_token_straddling_a_cut_belongs_to_the_later_step(tok):
    # "\n\n\n" is one token; the cut falls after its second newline, so the token is in step 2.
    newlines = tok.convert_tokens_to_ids("ĊĊĊ")
    ids = [*tok("x", add_special_tokens=False)["input_ids"], newlines, *tok("y", add_special_tokens=False)["input_ids"]]
    assert [tok.decode([t]) for t in ids] == ["x", "\n\n\n", "y"]
    assert step_ends(tok, ids, StepSplitter()) == [1, 3]


def test_empty_completion_has_no_steps(tok):
    assert step_ends(tok, [], StepSplitter()) == []


def test_recipe_rejects_a_bad_step_regex_before_anything_runs():
    from rest.recipe.schema import RecipeError, validate_recipe

    with pytest.raises(RecipeError, match="step_delimiter 'Step \\(' is not a valid regex"):
        validate_recipe({"name": "x", "data": {"train_size": 2}, "prm": {"step_delimiter": "Step (", "step_regex": True}})
