"""A tiny real `rest run` logging to a real `mlflow server` on 127.0.0.1; the run tree read back with MlflowClient.

The run and the server: tests/integration/conftest.py (tiny_run, mlflow_server).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import rest

pytestmark = pytest.mark.integration


def download(client, run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst)))


def test_parent_and_one_nested_run_per_iteration(tiny_run):
    manifest = json.loads((tiny_run["dir"] / "manifest.json").read_text())
    assert not (tiny_run["work"] / "mlflow.db").exists(), "everything went to the server"
    assert len(tiny_run["parents"]) == 1, "the rerun continued the same parent run"
    parent = tiny_run["parents"][0]
    assert parent.info.run_id == manifest["mlflow"]["parent_run_id"] and parent.info.status == "FINISHED"
    tags, params = parent.data.tags, parent.data.params
    assert tags["rest.recipe_hash"] == manifest["recipe_hash"]
    assert tags["rest.package_version"] == rest.__version__ == manifest["package_version"]
    assert tags["rest.git_commit"] == str(manifest["git_commit"]) and tags["rest.seed"] == "0"
    assert (params["sampling.n"], params["data.eval_size"], params["eval.k"]) == ("6", "8", "4")
    assert params["filters.0.name"] == "keep_correct" and params["filters.1.options.max_per_prompt"] == "10"
    recipe = download(tiny_run["client"], parent.info.run_id, "recipe.yaml", tiny_run["work"] / "dl")
    assert recipe.read_text() == (tiny_run["dir"] / "recipe.yaml").read_text()
    children = tiny_run["children"]
    assert sorted(children) == ["0", "1"] == sorted(manifest["mlflow"]["iterations"])
    for k, child in children.items():
        assert child.info.run_id == manifest["mlflow"]["iterations"][k] and child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["mlflow.runName"] == f"iter_{int(k):03d}"
        assert child.data.tags["rest.phases_done"].split(",") == [
            p for p in ("sample", "verify", "select", "train", "eval") if p in manifest["iterations"][k]]
    assert children["1"].data.params["seed.train"] == "1" and children["1"].data.params["seed.sample_engine"] == "1"


def test_metrics_equal_the_run_directorys_stats(tiny_run, phase_stats):
    from rest.report.tracking import history_metrics, numeric_items

    run, client = tiny_run["dir"], tiny_run["client"]
    manifest = json.loads((run / "manifest.json").read_text())
    checked = 0
    for k, phases in manifest["iterations"].items():
        child = tiny_run["children"][k]
        for phase in phases:
            expected = numeric_items(phase_stats(run, int(k), phase), phase)
            assert expected, f"{phase} of iteration {k} has numbers"
            for name, value in expected.items():
                assert child.data.metrics[name] == pytest.approx(value), name
                checked += 1
            assert child.data.metrics[f"{phase}/wall_s"] > 0
            for step, values in history_metrics(phase, phase_stats(run, int(k), phase).get("history", [])):
                for name, value in values.items():
                    logged = {m.step: m.value for m in client.get_metric_history(child.info.run_id, name)}
                    assert logged[step] == pytest.approx(value)
    assert checked > 40
    assert tiny_run["children"]["1"].data.metrics["select/kept"] == len(pd.read_parquet(run / "iter_001" / "kept.parquet"))
    parent_pass1 = client.get_metric_history(tiny_run["parents"][0].info.run_id, "eval/pass_at_1")
    assert {m.step: m.value for m in parent_pass1} == {k: phase_stats(run, k, "eval")["pass@1"] for k in (0, 1)}


def test_kept_set_is_a_dataset_input(tiny_run):
    import mlflow.data

    run, client = tiny_run["dir"], tiny_run["client"]
    child = tiny_run["children"]["1"]
    kept = pd.read_parquet(run / "iter_001" / "kept.parquet")
    assert len(kept) > 0, "the tiny run must keep something or this test proves nothing"
    (dataset_input,) = child.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "kept_iter_001"
    tags = {t.key: t.value for t in dataset_input.tags}
    assert tags == {"mlflow.data.context": "training", "rest.artifact": "data/kept.parquet"}
    assert json.loads(dataset.profile)["num_rows"] == len(kept)
    assert dataset.digest == mlflow.data.from_pandas(kept, source="x").digest
    assert dataset.source_type == "local" and json.loads(dataset.source)["uri"] == str(run / "iter_001" / "kept.parquet")
    copy = download(client, child.info.run_id, tags["rest.artifact"], tiny_run["work"] / "dl_kept")
    assert pd.read_parquet(copy).equals(kept)
    assert not tiny_run["children"]["0"].inputs.dataset_inputs, "the base evaluation trains on nothing"


def test_sample_tables_and_plots(tiny_run):
    run, client = tiny_run["dir"], tiny_run["client"]
    child, parent = tiny_run["children"]["1"], tiny_run["parents"][0]
    path = download(client, child.info.run_id, "tables/samples.json", tiny_run["work"] / "dl_tables")
    table = json.loads(path.read_text())
    rows = pd.DataFrame(table["data"], columns=table["columns"])
    verdicts = pd.read_parquet(run / "iter_001" / "verdicts.parquet")
    assert len(rows) == len(verdicts) == 72, "72 samples are under the 200-row cap: all of them"
    assert {"prompt", "completion", "correct", "reward", "kept", "verify__reason", "keep_correct__reason"} <= set(rows)
    merged = rows.merge(verdicts, on=["prompt_id", "sample_index"], suffixes=("", "_disk"))
    assert len(merged) == 72 and (merged["kept"] == merged["kept_disk"]).all()
    assert (merged["completion"] == merged["completion_disk"]).all() and (merged["prompt"] == merged["question"]).all()
    for k in ("0", "1"):
        artifacts = {a.path for a in client.list_artifacts(tiny_run["children"][k].info.run_id, "tables")}
        assert "tables/eval_samples.json" in artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/metrics_by_iteration.png", "plots/kept_fraction_by_iteration.png"}
    png = download(client, parent.info.run_id, "plots/metrics_by_iteration.png", tiny_run["work"] / "dl_plots")
    assert png.read_bytes()[:4] == b"\x89PNG"
    kept = str(len(pd.read_parquet(run / "iter_001" / "kept.parquet")))
    assert f"| 1 | 72 | {kept} |" in parent.data.tags["mlflow.note.content"]


def test_system_metrics_per_iteration(tiny_run):
    client = tiny_run["client"]
    for k in ("0", "1"):
        run_id = tiny_run["children"][k].info.run_id
        cpu = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
        memory = client.get_metric_history(run_id, "system/system_memory_usage_megabytes")
        assert len(cpu) >= 3 and all(0 <= m.value <= 100 for m in cpu)
        assert memory and all(m.value > 100 for m in memory)


def test_end_of_run_summary_points_to_the_runs(tiny_run):
    out, parent = tiny_run["first"].stdout, tiny_run["parents"][0]
    assert "rest-em iterations" in out and "wall time per phase" in out
    assert "stopped: finished all iterations" in out
    assert f"run directory: {tiny_run['dir']}" in out
    assert f"MLflow: {tiny_run['url']}  parent run {parent.info.run_id}" in out


def test_history_prm_plots_and_scores_reach_the_iteration_run(mlflow_server, tmp_path):
    """What the real tiny run has no phase for yet: a stats history, the PRM filter's plots and prm__min."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rest.recipe.schema import validate_recipe
    from rest.report.tracking import Tracker
    from rest.run.rundir import RunDir

    recipe = validate_recipe({"name": "handmade", "data": {"train_size": 4},
                              "tracking": {"tracking_uri": mlflow_server, "system_metrics_interval_s": 0}})
    run = RunDir(tmp_path / "run")
    run.initialise(recipe)
    verdicts = pd.DataFrame({"prompt_id": ["a", "a", "b"], "sample_index": [0, 1, 0], "question": ["q1", "q1", "q2"],
                             "completion": ["x", "y", "z"], "correct": [True, False, True], "reward": [1.0, 0.0, 1.0],
                             "kept": [True, False, False], "prm__min": [0.3, -0.2, 0.1],
                             "implicit_prm__reason": ["kept", "not_correct", "below_threshold"]})
    (run.iteration(1) / "plots").mkdir(parents=True)
    verdicts.to_parquet(run.verdicts(1))
    verdicts[verdicts["kept"]].to_parquet(run.kept(1))
    plt.hist([0.3, -0.2, 0.1])
    plt.savefig(run.iteration(1) / "plots" / "prm_min_hist.png")
    tracker = Tracker(recipe, run)
    history = [{"step": 1, "loss": 0.69, "learning_rate": 1e-5}, {"step": 2, "loss": 0.55, "learning_rate": 1e-5}]
    tracker.log_phase(1, "prm_update", {"final_loss": 0.55, "history": history})
    tracker.log_phase(1, "select", {"kept": 1})
    tracker.finish("FINISHED", "test")
    client, run_id = tracker.client, tracker.iteration_run(1)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "prm_update/loss")] == [(1, 0.69), (2, 0.55)]
    assert client.get_run(run_id).data.metrics["prm_update/final_loss"] == 0.55
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/prm_min_hist.png"}
    table = json.loads(download(client, run_id, "tables/samples.json", tmp_path / "dl").read_text())
    rows = pd.DataFrame(table["data"], columns=table["columns"])
    assert list(rows["prm__min"]) == [0.3, -0.2, 0.1]
    assert list(rows["implicit_prm__reason"]) == ["kept", "not_correct", "below_threshold"]
    assert client.get_run(tracker.parent_id).data.tags["rest.stopped_because"] == "test"
