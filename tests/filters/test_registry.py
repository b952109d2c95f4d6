"""Name resolution of verifiers and filters: built-in names, dotted import paths, clear errors."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from rest.filters.arithmetic import TrueArithmetic
from rest.filters.code_verifier import CodeVerifier
from rest.filters.pav_filter import ProcessAdvantageFilter
from rest.filters.prm_filter import ImplicitPRMFilter
from rest.filters.registry import BUILTIN_FILTERS, build_filter, build_verifier, check_recipe_components, resolve
from rest.filters.selection import Dedup, DifficultyBand, DropTruncated, KeepCorrect, KeepWhere, PerPromptCap
from rest.filters.verifiers import GSM8KVerifier, MathAnswerVerifier


def test_builtin_filter_names():
    assert BUILTIN_FILTERS == {
        "keep_correct": KeepCorrect,
        "per_prompt_cap": PerPromptCap,
        "dedup": Dedup,
        "drop_truncated": DropTruncated,
        "difficulty_band": DifficultyBand,
        "keep_where": KeepWhere,
        "implicit_prm": ImplicitPRMFilter,
        "true_arithmetic": TrueArithmetic,
        "process_advantage": ProcessAdvantageFilter,
    }
    assert build_filter("difficulty_band", {"lo": 0.25, "hi": 0.75}) == DifficultyBand(0.25, 0.75)
    assert build_filter("keep_correct", {"threshold": [0.0, 0.7, 0.8, 0.9]}).threshold == (0.0, 0.7, 0.8, 0.9)
    assert build_filter("dedup", {"by": "prm__min"}) == Dedup(by="prm__min")
    assert build_filter("drop_truncated", {}) == DropTruncated()
    assert build_filter("keep_where", {"column": "policy", "values": ["original"]}) == KeepWhere("policy", ("original",))


def test_the_code_verifier_has_a_name():
    assert build_verifier("code", {"time_s": 3.0}) == CodeVerifier(time_s=3.0)
    assert build_verifier("math", {}) == MathAnswerVerifier()


@pytest.mark.parametrize("path", ["rest.filters.selection.PerPromptCap", "rest.filters.selection:PerPromptCap"])
def test_a_dotted_import_path_names_user_code(path):
    assert build_filter(path, {"max_per_prompt": 3}) == PerPromptCap(max_per_prompt=3)


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        build_filter("keep_corect", {})
    assert str(err.value) == (
        "unknown filter 'keep_corect'; built-in filters: dedup, difficulty_band, drop_truncated, implicit_prm, "
        "keep_correct, keep_where, per_prompt_cap, process_advantage, true_arithmetic (or give a dotted import path)")
    with pytest.raises(ValueError, match="unknown verifier 'gsm9k'; built-in verifiers: choice, code, exact"):
        build_verifier("gsm9k", {})


def test_a_dotted_path_that_does_not_import_is_a_clear_error():
    with pytest.raises(ValueError, match="filter 'no_such_module.Filter' could not be imported"):
        resolve("no_such_module.Filter", BUILTIN_FILTERS, "filter")
    with pytest.raises(ValueError, match="filter 'rest.filters.selection.Nope' could not be imported"):
        resolve("rest.filters.selection.Nope", BUILTIN_FILTERS, "filter")


def test_a_bad_option_names_the_valid_options():
    with pytest.raises(ValueError, match="filter 'difficulty_band': .*'low'.*its options are: lo, hi"):
        build_filter("difficulty_band", {"low": 0.1})
    with pytest.raises(ValueError, match="its options are: threshold, strict"):
        build_filter("keep_correct", {"tau": 0.5})


def test_check_recipe_components_builds_everything_once():
    def recipe(verifier, filters):
        return SimpleNamespace(
            verifier=SimpleNamespace(name=verifier, options={}),
            filters=[SimpleNamespace(name=name, options=options) for name, options in filters],
        )

    check_recipe_components(recipe("gsm8k", [("drop_truncated", {}), ("difficulty_band", {"lo": 0.2, "hi": 0.8}),
                                             ("keep_correct", {"threshold": [0.0, 0.7]}), ("dedup", {}),
                                             ("per_prompt_cap", {"max_per_prompt": 10})]))
    with pytest.raises(ValueError, match="lo <= hi"):
        check_recipe_components(recipe("gsm8k", [("difficulty_band", {"lo": 0.9, "hi": 0.1})]))
    with pytest.raises(ValueError, match="threshold"):
        check_recipe_components(recipe("gsm8k", [("keep_correct", {"threshold": []})]))


def test_a_recipe_validates_the_new_filters():
    from rest.recipe.schema import RecipeError, validate_recipe

    raw = {"name": "prime", "data": {"train_size": 4}, "verifier": {"name": "gsm8k"},
           "filters": [{"name": "drop_truncated"}, {"name": "difficulty_band"},
                       {"name": "keep_correct", "options": {"threshold": [0.0, 0.7, 0.8, 0.9]}},
                       {"name": "dedup"}, {"name": "per_prompt_cap"}]}
    recipe = validate_recipe(raw)
    assert [f.column for f in recipe.filters] == [
        "drop_truncated", "difficulty_band", "keep_correct", "dedup", "per_prompt_cap"]
    assert build_verifier(recipe.verifier.name, recipe.verifier.options) == GSM8KVerifier()
    raw["filters"][1]["options"] = {"lo": 2}
    with pytest.raises(RecipeError, match="difficulty_band"):
        validate_recipe(raw)
