"""Recipe errors: command-line overrides applied to a raw recipe, and validation errors made readable."""
from __future__ import annotations

import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rest.errors import RestError


class RecipeError(RestError, ValueError):
    """A recipe (or an override) is invalid; the message names the file, the key and what is allowed."""


def apply_override(raw: dict[str, Any], override: str, source: str = "<recipe>") -> None:
    """Apply one ``key.path=value`` override (value parsed as YAML) to a raw recipe mapping."""
    if "=" not in override:
        raise RecipeError(f"override {override!r}: expected key.path=value")
    key_path, value_text = override.split("=", 1)
    keys = key_path.strip().split(".")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as err:
        raise RecipeError(f"override {override!r}: value is not valid YAML: {err}") from err
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        node = _step_into(node, key, keys[: depth + 1], override)
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, override)] = value
    else:
        node[last] = value


def _step_into(node: Any, key: str, walked: list[str], override: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, key, override)]
    if not isinstance(node, dict):
        raise RecipeError(f"override {override!r}: '{'.'.join(walked[:-1])}' is not a mapping")
    child = node.get(key)
    if child is None:
        child = node[key] = {}
    return child


def _list_index(node: list, key: str, override: str) -> int:
    if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
        raise RecipeError(f"override {override!r}: '{key}' is not an index of a list of {len(node)}")
    return int(key)


def explain_validation_error(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    """One line per problem: where it is, what is wrong, and for an unknown key the valid keys there."""
    lines = [f"{source}: invalid recipe"]
    for problem in err.errors():
        loc = [str(part) for part in problem["loc"]]
        where = ".".join(loc) or "(top level)"
        if problem["type"] == "extra_forbidden":
            valid = ", ".join(sorted(_fields_at(root, problem["loc"][:-1])))
            lines.append(f"  unknown key '{where}'; valid keys here: {valid}")
        elif problem["type"] == "missing":
            lines.append(f"  missing required key '{where}'")
        else:
            lines.append(f"  {where}: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the section a validation error location points into."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return []
        current = _model_in(field.annotation)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside an annotation such as ``list[FilterConfig]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, (types.UnionType, typing._GenericAlias)) or typing.get_origin(annotation):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
