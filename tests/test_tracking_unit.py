"""The pure parts of MLflow tracking: names, flattening, step metrics from a history, the sample table's rows."""
from __future__ import annotations

import pandas as pd

from rest.recipe.schema import validate_recipe
from rest.report.tracking import flatten, history_metrics, metric_key, numeric_items, pick_rows, sample_table


def test_flatten_expands_mappings_and_lists_of_mappings_for_params():
    data = {"a": {"b": 1, "c": {"d": "x"}}, "filters": [{"name": "keep_correct", "options": {}},
                                                        {"name": "cap", "options": {"max": 3}}], "stop": ["\n"]}
    assert flatten(data) == {"a.b": 1, "a.c.d": "x", "filters": data["filters"], "stop": ["\n"]}
    assert flatten(data, lists=True) == {"a.b": 1, "a.c.d": "x", "filters.0.name": "keep_correct",
                                         "filters.1.name": "cap", "filters.1.options.max": 3, "stop": ["\n"]}


def test_recipe_params_name_every_filter_and_option():
    recipe = validate_recipe({"name": "x", "data": {"train_size": 4}})
    params = flatten(recipe.model_dump(mode="json"), lists=True)
    assert params["filters.1.options.max_per_prompt"] == 10 and params["filters.0.name"] == "keep_correct"
    assert params["sampling.n"] == 4 and params["seed"] == 0 and params["prm"] is None


def test_numeric_items_keeps_numbers_only_and_sanitises_names():
    stats = {"pass@1": 0.5, "ok": True, "nan": float("nan"), "policy": "p", "curve": [1.0],
             "filter_metrics": {"filter/keep_correct/kept": 3}}
    assert numeric_items(stats, "eval") == {"eval/pass_at_1": 0.5, "eval/filter_metrics.filter/keep_correct/kept": 3.0}
    assert metric_key("maj@4 (x)") == "maj_at_4 _x_"


def test_history_becomes_step_metrics_named_by_phase():
    history = [{"step": 1, "loss": 2.0, "learning_rate": 1e-5, "note": "warm"}, {"loss": 9.0},
               {"step": 2, "loss": 1.5, "grad_norm": None}, "junk", {"step": 3}]
    assert history_metrics("train", history) == [
        (1, {"train/loss": 2.0, "train/learning_rate": 1e-5}), (2, {"train/loss": 1.5})]


def frame(n: int, kept_every: int) -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": [f"p{i // 4}" for i in range(n)], "sample_index": [i % 4 for i in range(n)],
        "iteration": 1, "question": [f"q{i // 4}" for i in range(n)], "prompt_text": "<chat>",
        "completion": [f"c{i}" for i in range(n)], "correct": [i % kept_every == 0 for i in range(n)],
        "reward": [float(i % kept_every == 0) for i in range(n)], "kept": [i % kept_every == 0 for i in range(n)],
        "verify__reason": "wrong", "keep_correct__reason": "below_threshold", "prm__min": [i / n for i in range(n)],
        "completion_token_ids": [[1, 2]] * n,
    })


def test_pick_rows_is_bounded_seeded_and_half_kept_when_possible():
    samples = frame(1000, kept_every=10)  # 100 kept, 900 dropped
    picked = pick_rows(samples, 200, seed=3, balance="kept")
    assert len(picked) == 200 and picked["kept"].sum() == 100
    assert picked.equals(pick_rows(samples, 200, seed=3, balance="kept"))
    assert not picked.equals(pick_rows(samples, 200, seed=4, balance="kept"))
    assert list(picked["completion"]) == sorted(picked["completion"], key=lambda c: int(c[1:])), "file order kept"
    few_kept = pick_rows(frame(1000, kept_every=100), 200, seed=3, balance="kept")
    assert few_kept["kept"].sum() == 10 and len(few_kept) == 200, "all 10 kept, the rest dropped"
    few_dropped = pick_rows(frame(300, kept_every=1).assign(kept=[i < 290 for i in range(300)]), 200, 0, "kept")
    assert (~few_dropped["kept"]).sum() == 10 and len(few_dropped) == 200
    assert len(pick_rows(samples.head(50), 200, seed=0)) == 50


def test_sample_table_has_the_columns_people_read():
    table = sample_table(frame(40, kept_every=3), 10, seed=0, balance="kept")
    assert list(table.columns) == ["iteration", "prompt_id", "sample_index", "prompt", "completion", "correct",
                                   "reward", "kept", "prm__min", "verify__reason", "keep_correct__reason"]
    assert len(table) == 10 and table["prompt"].str.startswith("q").all()
    no_question = sample_table(frame(4, 2).drop(columns=["question", "prm__min"]), 10, seed=0)
    assert list(no_question["prompt"]) == ["<chat>"] * 4 and "prm__min" not in no_question


def test_every_seed_derives_from_the_recipe_in_one_place():
    from rest.recipe.schema import validate_recipe
    from rest.recipe.seeds import iteration_seeds, seed_for

    recipe = validate_recipe({"name": "x", "seed": 7, "data": {"train_size": 4}, "train": {"seed": 100}, "prm": {}})
    assert iteration_seeds(recipe, 0) == {"eval_engine": 7}
    assert iteration_seeds(recipe, 2) == {"eval_engine": 7, "sample_engine": 9, "select": 9, "train": 100,
                                          "prm_update": 9}
    assert seed_for(recipe.model_copy(update={"prm": None}), 1, "sample_engine") == 8


def test_runs_the_store_does_not_have_are_replaced_not_a_crash(tmp_path):
    """A run directory copied, or resumed from another working directory (the default store is a relative
    sqlite file), names runs its store never had."""
    from mlflow.tracking import MlflowClient

    from rest.recipe.schema import validate_recipe
    from rest.report.tracking import Tracker
    from rest.run.rundir import RunDir

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = validate_recipe({"name": "moved", "data": {"train_size": 4}, "tracking": {"tracking_uri": uri}})
    run = RunDir(tmp_path / "run")
    run.initialise(recipe)
    first = Tracker(recipe, run).parent_id
    assert Tracker(recipe, run).parent_id == first  # in its store: the same run continues
    manifest = run.manifest()
    manifest["mlflow"].update(parent_run_id="0" * 32, iterations={"1": "1" * 32})  # runs of another store
    run.write_manifest(manifest)
    moved = Tracker(recipe, run)
    assert moved.parent_id not in (first, "0" * 32)
    assert run.manifest()["mlflow"] == {"parent_run_id": moved.parent_id, "tracking_uri": uri, "iterations": {}}
    assert MlflowClient(uri).get_run(moved.parent_id).info.run_name == "moved"


def test_an_empty_kept_set_is_logged_as_a_dataset_not_a_crash(tmp_path):
    """Parquet reads text columns back as pandas' string dtype; MLflow's dataset digest compared an empty
    (or all-missing) one with ``str`` and raised NotImplementedError, which ended the run at selection
    instead of letting the M-step say that nothing was kept."""
    from mlflow.tracking import MlflowClient

    from rest.report.tracking import Tracker
    from rest.run.rundir import RunDir

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = validate_recipe({"name": "empty", "data": {"train_size": 4}, "tracking": {"tracking_uri": uri}})
    run = RunDir(tmp_path / "run")
    run.initialise(recipe)
    tracker = Tracker(recipe, run)
    path = tmp_path / "kept.parquet"
    pd.DataFrame({"prompt_id": ["a"], "completion": ["x"], "dedup__reason": [None], "reward": [1.0]}).iloc[:0] \
        .to_parquet(path)
    empty = pd.read_parquet(path)
    for name, frame in [("empty", empty), ("no_reasons", pd.DataFrame({"dedup__reason": pd.Series([None, None],
                                                                                                   dtype="str")}))]:
        tracker.log_dataset(tracker.parent_id, frame, name, str(path), {"mlflow.data.context": "training"})
    inputs = MlflowClient(uri).get_run(tracker.parent_id).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["empty", "no_reasons"]
    assert {i.dataset.name: i.dataset.profile for i in inputs}["empty"] == '{"num_rows": 0, "num_elements": 0}'
