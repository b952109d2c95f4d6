"""Name resolution for verifiers and filters: built-in names, else a dotted import path, else an error."""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from .arithmetic import TrueArithmetic
from .code_verifier import CodeVerifier
from .pav_filter import ProcessAdvantageFilter
from .prm_filter import ImplicitPRMFilter
from .selection import Dedup, DifficultyBand, DropTruncated, KeepCorrect, KeepWhere, PerPromptCap
from .verifiers import (
    ExactMatchVerifier,
    GSM8KVerifier,
    MathAnswerVerifier,
    MultipleChoiceVerifier,
    NumericVerifier,
    RegexVerifier,
)

# Every built-in verifier and filter by the name recipes use; anything else is named by dotted path.
BUILTIN_VERIFIERS: dict[str, Callable[..., Any]] = {
    "math": MathAnswerVerifier,
    "gsm8k": GSM8KVerifier,
    "numeric": NumericVerifier,
    "exact": ExactMatchVerifier,
    "regex": RegexVerifier,
    "choice": MultipleChoiceVerifier,
    "code": CodeVerifier,
}

BUILTIN_FILTERS: dict[str, Callable[..., Any]] = {
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


def resolve(name: str, builtins: dict[str, Callable[..., Any]], kind: str) -> Callable[..., Any]:
    """A built-in by name, else ``package.module:attr`` / ``package.module.attr``; else a clear error."""
    if name in builtins:
        return builtins[name]
    if "." in name or ":" in name:
        module_name, _, attr = name.replace(":", ".").rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"{kind} '{name}' could not be imported: {err}") from err
    valid = ", ".join(sorted(builtins))
    raise ValueError(f"unknown {kind} '{name}'; built-in {kind}s: {valid} (or give a dotted import path)")


def build(name: str, options: dict[str, Any], builtins: dict[str, Callable[..., Any]], kind: str) -> Any:
    """Resolve ``name`` and construct it with ``options``, naming bad options clearly."""
    factory = resolve(name, builtins, kind)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as err:
        params = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise ValueError(f"{kind} '{name}': {err}; its options are: {', '.join(params) or '(none)'}") from None
    return factory(**options)


def build_verifier(name: str, options: dict[str, Any]) -> Any:
    """The recipe's outcome verifier."""
    return build(name, options, BUILTIN_VERIFIERS, "verifier")


def build_filter(name: str, options: dict[str, Any]) -> Any:
    """One filter of the recipe's pipeline."""
    return build(name, options, BUILTIN_FILTERS, "filter")


def check_recipe_components(recipe: Any) -> None:
    """Construct the recipe's verifier and filters once, so bad names or options fail at validation."""
    build_verifier(recipe.verifier.name, recipe.verifier.options)
    for flt in recipe.filters:
        build_filter(flt.name, flt.options)
