"""The best iteration's record: in the manifest, as MLflow tags, and as a registered model version."""
from __future__ import annotations

from typing import Any

from rest.recipe.schema import Recipe
from rest.run.rundir import RunDir
from rest.run.stopping import Best


def record_best(recipe: Recipe, run: RunDir, best: Best, tracker: Any = None) -> dict[str, Any]:
    """Write ``best`` into the manifest, tag it in MLflow and register its model when a name is configured.

    Reruns are idempotent: the registered version is remembered in the manifest and not made twice.
    """
    manifest = run.manifest()
    previous = manifest.get("best") or {}
    entry = {"iteration": best.iteration, "metric": best.metric, "value": best.value,
             "model": str(run.model(best.iteration)) if best.iteration else recipe.model}
    if previous.get("iteration") == best.iteration and "registered_version" in previous:
        entry["registered_version"] = previous["registered_version"]
    if tracker is not None:
        _tag(tracker, best, previous.get("iteration"))
        name = recipe.tracking.registered_model
        if name and best.iteration >= 1 and "registered_version" not in entry:
            entry["registered_version"] = _register(tracker, name, run, best)
    manifest = run.manifest()  # re-read: the tracker records new nested runs' ids in it
    manifest["best"] = entry
    run.write_manifest(manifest)
    return entry


def _tag(tracker: Any, best: Best, previous_iteration: int | None) -> None:
    client = tracker.client
    client.set_tag(tracker.parent_id, "rest.best_iteration", str(best.iteration))
    client.set_tag(tracker.parent_id, "rest.best_metric", f"{best.metric}={best.value:.6g}")
    if previous_iteration is not None and previous_iteration != best.iteration:
        client.set_tag(tracker.iteration_run(previous_iteration), "rest.best", "false")
    client.set_tag(tracker.iteration_run(best.iteration), "rest.best", "true")


def _register(tracker: Any, name: str, run: RunDir, best: Best) -> str:
    """Log the best policy's model directory to its nested run and register it as a new version of ``name``."""
    from mlflow.exceptions import MlflowException

    client, run_id = tracker.client, tracker.iteration_run(best.iteration)
    client.log_artifacts(run_id, str(run.model(best.iteration)), artifact_path="model")
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
    source = f"runs:/{run_id}/model"
    version = client.create_model_version(
        name, source, run_id=run_id,
        tags={"rest.iteration": str(best.iteration), "rest.metric": best.metric, "rest.value": f"{best.value:.6g}"},
        description=f"rest-em iteration {best.iteration}: best held-out {best.metric} = {best.value:.4f}",
    )
    return str(version.version)
