"""Recipe validation: every shipped recipe is valid; typos and bad overrides fail with clear messages."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rest.recipe.schema import RecipeError, load_recipe, validate_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.y*ml"))


def test_recipes_folder_is_not_empty():
    assert RECIPES, "recipes/ holds no recipe"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# rest run "), "a recipe's first line is the command that runs it"


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_typo_names_the_key_the_file_and_the_valid_keys(tmp_path):
    path = write(tmp_path, "name: x\ndata: {train_size: 4}\nsampling:\n  temprature: 0.5\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message
    assert "unknown key 'sampling.temprature'" in message
    assert "temperature" in message and "max_tokens" in message


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, "name: x\ndata: {train_size: 4}\niteratons: 3\n")
    with pytest.raises(RecipeError, match=r"unknown key 'iteratons'.*loop"):
        load_recipe(path)


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, "name: x\ndata: {train_size: 4}\n")
    recipe = load_recipe(path, ["sampling.n=16", "train.learning_rate=3e-6", "engine.enforce_eager=true"])
    assert recipe.sampling.n == 16
    assert recipe.train.learning_rate == pytest.approx(3e-6)
    assert recipe.engine.enforce_eager is True
    with pytest.raises(RecipeError, match="sampling.n"):
        load_recipe(path, ["sampling.n=many"])
    with pytest.raises(RecipeError, match="unknown key 'sampling.nn'"):
        load_recipe(path, ["sampling.nn=3"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(path, ["sampling.n"])


def test_override_into_a_list(tmp_path):
    path = write(tmp_path, "name: x\ndata: {train_size: 4}\n")
    recipe = load_recipe(path, ["filters.1.options.max_per_prompt=3"])
    assert recipe.filters[1].options == {"max_per_prompt": 3}
    with pytest.raises(RecipeError, match="not an index"):
        load_recipe(path, ["filters.7.name=dedup"])


def test_bad_filter_and_verifier_names_list_valid_ones(tmp_path):
    path = write(tmp_path, "name: x\ndata: {train_size: 4}\nfilters: [{name: keep_corect}]\n")
    with pytest.raises(RecipeError, match=r"unknown filter 'keep_corect'.*keep_correct"):
        load_recipe(path)
    good = write(tmp_path, "name: x\ndata: {train_size: 4}\n", name="good.yaml")
    with pytest.raises(RecipeError, match=r"per_prompt_cap.*max_per_prompt"):
        load_recipe(good, ["filters=[{name: per_prompt_cap, options: {cap: 2}}]"])
    with pytest.raises(RecipeError, match=r"unknown verifier 'gsm9k'.*gsm8k"):
        load_recipe(good, ["verifier.name=gsm9k"])


def test_synthetic_data_needs_a_size_and_files_need_a_path():
    with pytest.raises(RecipeError, match="train_size is required"):
        validate_recipe({"name": "x"})
    with pytest.raises(RecipeError, match="data.path is required"):
        validate_recipe({"name": "x", "data": {"source": "file"}})


def test_hash_ignores_key_order_and_tracks_values():
    a = validate_recipe({"name": "x", "seed": 1, "data": {"train_size": 4}})
    b = validate_recipe({"data": {"train_size": 4}, "seed": 1, "name": "x"})
    c = validate_recipe({"name": "x", "seed": 2, "data": {"train_size": 4}})
    assert a.hash() == b.hash() != c.hash()


def test_fields_added_later_change_the_hash_only_when_set():
    base = {"name": "x", "data": {"train_size": 4}}
    plain = validate_recipe(base)
    default = validate_recipe({**base, "engine": {"replicas": 1}})
    replicated = validate_recipe({**base, "engine": {"replicas": 2}})
    assert plain.hash() == default.hash() != replicated.hash()


def test_resolved_recipe_round_trips_through_yaml():
    recipe = validate_recipe({"name": "x", "data": {"train_size": 4}, "sampling": {"n": 3}})
    again = validate_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe and again.hash() == recipe.hash()


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="YAML mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))
