"""ReST-EM and ReST schedules, and the best iteration's record in the manifest and MLflow."""
from __future__ import annotations

import pytest

from rest.recipe.schema import validate_recipe
from rest.run.modes import grow_iteration, improve_step, is_grow, learning_rate


def recipe(**loop):
    return validate_recipe({"name": "x", "data": {"train_size": 4}, "train": {"init": "previous", "learning_rate": 1e-4},
                            "loop": {"iterations": 7, **loop}})


def test_rest_em_grows_every_iteration_at_the_full_learning_rate():
    r = recipe()
    assert [is_grow(r, k) for k in range(1, 5)] == [True] * 4
    assert [grow_iteration(r, k) for k in range(1, 5)] == [1, 2, 3, 4]
    assert [learning_rate(r, k) for k in (1, 4)] == [1e-4, 1e-4]


def test_rest_grows_once_per_cycle_and_decays_the_learning_rate_per_improve_step():
    r = recipe(mode="rest", improve_steps=3, improve_lr_decay=0.5)
    assert [is_grow(r, k) for k in range(1, 8)] == [True, False, False, True, False, False, True]
    assert [grow_iteration(r, k) for k in range(1, 8)] == [1, 1, 1, 4, 4, 4, 7]
    assert [improve_step(r, k) for k in range(1, 8)] == [1, 2, 3, 1, 2, 3, 1]
    assert [learning_rate(r, k) for k in range(1, 5)] == pytest.approx([1e-4, 5e-5, 2.5e-5, 1e-4])


def test_best_iteration_is_tagged_and_registered_once(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from rest.report.tracking import Tracker
    from rest.run.best import record_best
    from rest.run.rundir import RunDir
    from rest.run.stopping import Best

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = validate_recipe({"name": "reg", "data": {"train_size": 4},
                         "tracking": {"tracking_uri": uri, "registered_model": "rest-reg"}})
    run = RunDir(tmp_path / "run")
    run.initialise(r)
    (run.model(2)).mkdir(parents=True)
    (run.model(2) / "config.json").write_text("{}")
    tracker = Tracker(r, run)
    first = record_best(r, run, Best(1, "pass@1", 0.4), None)  # no tracker: manifest only
    assert run.manifest()["best"] == first and first["iteration"] == 1 and "registered_version" not in first
    entry = record_best(r, run, Best(2, "pass@1", 0.5), tracker)
    again = record_best(r, run, Best(2, "pass@1", 0.5), tracker)  # a rerun registers nothing new
    assert entry["registered_version"] == again["registered_version"] == "1"
    client = MlflowClient(uri)
    assert client.get_run(tracker.parent_id).data.tags["rest.best_iteration"] == "2"
    assert client.get_run(tracker.iteration_run(2)).data.tags["rest.best"] == "true"
    versions = client.search_model_versions("name='rest-reg'")
    assert [(str(v.version), v.tags["rest.iteration"], v.run_id) for v in versions] == [("1", "2", tracker.iteration_run(2))]
    assert "config.json" in [f.path.split("/")[-1] for f in client.list_artifacts(tracker.iteration_run(2), "model")]
    tracker.finish()
