"""MLflow tracking: one parent run per experiment run, one nested run per iteration, resumable by run id."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from rest.recipe import Recipe
from rest.rundir import RunDir

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(recipe: Recipe) -> str:
    """Recipe setting, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite store in the working directory."""
    return recipe.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def metric_key(name: str) -> str:
    """An MLflow-safe metric or param name (``pass@1`` -> ``pass_at_1``)."""
    return re.sub(r"[^\w./\- :]", "_", name.replace("@", "_at_"))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``a.b.c`` keys (lists are kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def numeric_items(stats: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric leaves of a stats mapping, as metrics named ``prefix/key``."""
    metrics = {}
    for key, value in flatten(stats).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            continue
        metrics[metric_key(f"{prefix}/{key}")] = float(value)
    return metrics


class Tracker:
    """Logs a run directory's phases to MLflow; run ids live in the manifest so a rerun continues the same runs."""

    def __init__(self, recipe: Recipe, run: RunDir):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.recipe, self.run = recipe, run
        self.uri = tracking_uri(recipe)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        name = recipe.tracking.experiment or recipe.name
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.parent_id = self._parent()

    def _ids(self) -> dict[str, Any]:
        return self.run.manifest().get("mlflow", {})

    def _save_ids(self, **updates: Any) -> None:
        manifest = self.run.manifest()
        manifest.setdefault("mlflow", {}).update(updates)
        self.run.write_manifest(manifest)

    def _parent(self) -> str:
        ids = self._ids()
        if ids.get("parent_run_id") and ids.get("tracking_uri") == self.uri:
            self.client.update_run(ids["parent_run_id"], status="RUNNING")
            return ids["parent_run_id"]
        manifest = self.run.manifest()
        tags = {
            "mlflow.runName": self.recipe.name,
            "rest.recipe_hash": self.recipe.hash(),
            "rest.package_version": str(manifest.get("package_version")),
            "rest.git_commit": str(manifest.get("git_commit")),
            "rest.run_dir": str(self.run.root),
            "rest.seed": str(self.recipe.seed),
        }
        parent = self.client.create_run(self.experiment_id, tags=tags)
        run_id = parent.info.run_id
        self._save_ids(parent_run_id=run_id, tracking_uri=self.uri, iterations={})
        self._log_params(run_id, flatten(self.recipe.model_dump(mode="json")))
        self.client.log_artifact(run_id, str(self.run.recipe_path))
        return run_id

    def iteration_run(self, k: int) -> str:
        """The nested run of iteration ``k`` (created on first use)."""
        iterations = self._ids().get("iterations", {})
        if str(k) in iterations:
            return iterations[str(k)]
        child = self.client.create_run(
            self.experiment_id,
            tags={"mlflow.parentRunId": self.parent_id, "mlflow.runName": f"iter_{k:03d}", "rest.iteration": str(k)},
        )
        iterations[str(k)] = child.info.run_id
        self._save_ids(iterations=iterations)
        self.client.log_param(child.info.run_id, "iteration", k)
        return child.info.run_id

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(metric_key(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log numeric metrics in one batch."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])

    def log_phase(self, k: int, phase: str, stats: dict[str, Any]) -> None:
        """A finished phase's numbers (and files people look at) into iteration ``k``'s nested run."""
        run_id = self.iteration_run(k)
        self.log_metrics(run_id, numeric_items(stats, phase))
        if phase == "train":
            for step, loss in enumerate(stats.get("loss_curve", []), start=1):
                self.log_metrics(run_id, {"train/loss_curve": loss}, step=step)
        if phase == "select" and self.run.kept(k).is_file():
            self.client.log_artifact(run_id, str(self.run.kept(k)), artifact_path="data")
        if phase == "eval":
            self.client.log_artifact(run_id, str(self.run.eval_dir(k) / "results.json"), artifact_path="eval")
            self.log_metrics(self.parent_id, numeric_items(stats, "eval"), step=k)

    def log_summary(self, rows: list[dict[str, Any]]) -> None:
        """Per-iteration summary metrics on the parent run and a plot of them."""
        for row in rows:
            self.log_metrics(self.parent_id, numeric_items(
                {k: v for k, v in row.items() if k != "iteration"}, "summary"), step=row["iteration"])
        with tempfile.TemporaryDirectory() as tmp:
            plot = Path(tmp) / "pass_at_1_by_iteration.png"
            if plot_summary(rows, plot):
                self.client.log_artifact(self.parent_id, str(plot), artifact_path="plots")

    def finish(self, status: str = "FINISHED") -> None:
        """Close the nested runs and the parent run with ``status``."""
        for run_id in self._ids().get("iterations", {}).values():
            self.client.set_terminated(run_id, status=status)
        self.client.set_terminated(self.parent_id, status=status)


def plot_summary(rows: list[dict[str, Any]], path: Path) -> bool:
    """Held-out pass@1 and kept fraction by iteration, as a PNG; False when there is nothing to plot."""
    points = [(r["iteration"], r["pass@1"]) for r in rows if r.get("pass@1") is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="held-out pass@1 (greedy)")
    kept = [(r["iteration"], r["kept_fraction"]) for r in rows if r.get("kept_fraction") is not None]
    if kept:
        ax.plot([p[0] for p in kept], [p[1] for p in kept], marker="s", linestyle="--", label="kept fraction")
    ax.set_xlabel("iteration")
    ax.set_ylim(0, 1)
    ax.set_xticks([p[0] for p in points])
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
