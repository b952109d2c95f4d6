"""MLflow tracking: one parent run per experiment run, one nested run per iteration, resumable by run id."""
from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from rest.phases.table import PHASES
from rest.phases.table import phase as declared
from rest.recipe.schema import Recipe
from rest.run.rundir import RunDir

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Columns of the per-iteration sample table, when the samples have them (plus every verdict reason).
TABLE_COLUMNS = ("iteration", "prompt_id", "sample_index", "mode", "prompt", "completion", "gold", "answer",
                 "correct", "reward", "kept", "prm__min")


def tracking_uri(recipe: Recipe) -> str:
    """Recipe setting, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite store in the working directory."""
    return recipe.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def metric_key(name: str) -> str:
    """An MLflow-safe metric or param name (``pass@1`` -> ``pass_at_1``)."""
    return re.sub(r"[^\w./\- :]", "_", name.replace("@", "_at_"))


def flatten(data: dict[str, Any], prefix: str = "", lists: bool = False) -> dict[str, Any]:
    """Nested mapping -> ``a.b.c`` keys; with ``lists``, lists of mappings too (``filters.0.name``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + ".", lists))
        elif lists and isinstance(value, list) and any(isinstance(item, dict) for item in value):
            flat.update(flatten({str(i): item for i, item in enumerate(value)}, name + ".", lists))
        else:
            flat[name] = value
    return flat


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def numeric_items(stats: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric leaves of a stats mapping, as metrics named ``prefix/key``."""
    return {metric_key(f"{prefix}/{key}"): float(value) for key, value in flatten(stats).items() if _number(value)}


def history_metrics(phase: str, history: list[Any]) -> list[tuple[int, dict[str, float]]]:
    """``(step, {"<phase>/<key>": value})`` for each entry of a stats ``history`` that has an integer ``step``."""
    points = []
    for entry in history:
        if not isinstance(entry, dict) or not _number(entry.get("step")):
            continue
        values = {metric_key(f"{phase}/{k}"): float(v) for k, v in entry.items() if k != "step" and _number(v)}
        if values:
            points.append((int(entry["step"]), values))
    return points


def pick_rows(frame: pd.DataFrame, limit: int, seed: int, balance: str | None = None) -> pd.DataFrame:
    """At most ``limit`` rows chosen with ``seed``; with ``balance``, half where that column is true when possible."""
    if len(frame) <= limit:
        return frame.reset_index(drop=True)
    rng = random.Random(seed)
    positions = list(range(len(frame)))
    if balance is None or balance not in frame:
        chosen = rng.sample(positions, limit)
    else:
        flag = frame[balance].eq(True).tolist()
        yes, no = [i for i in positions if flag[i]], [i for i in positions if not flag[i]]
        take_yes = min(len(yes), max(limit // 2, limit - len(no)))
        chosen = rng.sample(yes, take_yes) + rng.sample(no, limit - take_yes)
    return frame.iloc[sorted(chosen)].reset_index(drop=True)


def sample_table(frame: pd.DataFrame, limit: int, seed: int, balance: str | None = None) -> pd.DataFrame:
    """The rows people read in MLflow: prompt, completion, outcome, every verdict reason, kept, PRM score."""
    picked = pick_rows(frame, limit, seed, balance)
    if "question" in picked:
        picked = picked.assign(prompt=picked["question"])
    elif "prompt_text" in picked:
        picked = picked.assign(prompt=picked["prompt_text"])
    reasons = [c for c in picked.columns if c.endswith("__reason")]
    columns = [c for c in TABLE_COLUMNS if c in picked] + reasons
    return picked[columns]


class Tracker:
    """Logs a run directory's phases to MLflow; run ids live in the manifest so a rerun continues the same runs."""

    def __init__(self, recipe: Recipe, run: RunDir):
        import logging

        import mlflow
        from mlflow.tracking import MlflowClient

        from rest.report.progress import VERBOSE_ENV

        if os.environ.get(VERBOSE_ENV) != "1":  # its INFO lines (database set-up, ...) are noise on the terminal
            logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.recipe, self.run = recipe, run
        self.uri = tracking_uri(recipe)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        name = recipe.tracking.experiment or recipe.name
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self._monitor: Any = None
        self._monitored_run: str | None = None
        self.parent_id = self._parent()

    def _ids(self) -> dict[str, Any]:
        return self.run.manifest().get("mlflow", {})

    def _save_ids(self, **updates: Any) -> None:
        manifest = self.run.manifest()
        manifest.setdefault("mlflow", {}).update(updates)
        self.run.write_manifest(manifest)

    def _parent(self) -> str:
        ids, manifest = self._ids(), self.run.manifest()
        tags = {
            "rest.recipe_hash": self.recipe.hash(),
            "rest.package_version": str(manifest.get("package_version")),
            "rest.git_commit": str(manifest.get("git_commit")),
            "rest.run_dir": str(self.run.root),
            "rest.seed": str(self.recipe.seed),
            "rest.recipe_changes": str(len(manifest.get("recipe_changes", []))),
        }
        if ids.get("parent_run_id") and ids.get("tracking_uri") == self.uri and not self._missing(ids["parent_run_id"]):
            run_id = ids["parent_run_id"]
            self.client.update_run(run_id, status="RUNNING")
            # A resumed run may be on a newer commit or (with --allow-recipe-change) a changed recipe.
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
        else:
            run_id = self.client.create_run(self.experiment_id, tags={"mlflow.runName": self.recipe.name,
                                                                      **tags}).info.run_id
            self._save_ids(parent_run_id=run_id, tracking_uri=self.uri, iterations={})
            self._log_params(run_id, flatten(self.recipe.model_dump(mode="json"), lists=True))
        self.client.log_artifact(run_id, str(self.run.recipe_path))
        return run_id

    def _missing(self, run_id: str) -> bool:
        """Whether the store lacks a run the manifest names (a copied run directory, or a relative store
        URI such as the default sqlite file read from another working directory): new runs replace it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return False
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        from rest.report.progress import console
        from rest.report.summary import public_uri

        console().print(f"MLflow: run {run_id} of this run directory is not in the store at {public_uri(self.uri)}; "
                        "logging to new runs", markup=False, highlight=False, soft_wrap=True)
        return True

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
        self._log_params(child.info.run_id, {"iteration": k, **self.iteration_seeds(k)})
        return child.info.run_id

    def iteration_seeds(self, k: int) -> dict[str, int]:
        """The seeds iteration ``k``'s phases use (each ``None`` in the recipe derives from the master seed)."""
        from rest.recipe.seeds import iteration_seeds

        return {f"seed.{use}": seed for use, seed in iteration_seeds(self.recipe, k).items()}

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

    def start_phase(self, k: int, phase: str) -> None:
        """A phase of iteration ``k`` begins: system metrics now go to that iteration's run."""
        run_id = self.iteration_run(k)
        self.client.set_tag(run_id, "rest.phase", phase)
        self._watch(run_id)

    def log_phase(self, k: int, phase: str, stats: dict[str, Any]) -> None:
        """A finished phase's numbers, and the files its declaration names, into iteration ``k``'s nested run."""
        run_id = self.iteration_run(k)
        self.log_metrics(run_id, numeric_items(stats, phase))
        if isinstance(stats.get("engine_dtype"), str):  # engine.dtype as resolved on this machine
            self.client.set_tag(run_id, f"rest.{phase}.engine_dtype", stats["engine_dtype"])
        for step, values in history_metrics(phase, stats.get("history") or []):
            self.log_metrics(run_id, values, step=step)
        hook = declared(phase).logs
        if hook:
            getattr(self, hook)(run_id, k, stats)
        plots = self.run.iteration(k) / "plots"
        if plots.is_dir() and any(plots.iterdir()):  # e.g. the PRM filter's score histograms
            self.client.log_artifacts(run_id, str(plots), artifact_path="plots")
        done = self.run.manifest()["iterations"].get(str(k), {})
        self.client.set_tag(run_id, "rest.phases_done", ",".join(p for p in PHASES if p in done))

    def log_training(self, run_id: str, k: int, stats: dict[str, Any]) -> None:
        """The M-step's loss curve, where its checkpoints and model are, and the model itself if asked."""
        for step, loss in enumerate(stats.get("loss_curve", []), start=1):
            self.log_metrics(run_id, {"train/loss_curve": loss}, step=step)
        for key in ("checkpoint_dir", "resumed_from", "model_path"):  # paths inside the run directory
            if stats.get(key):
                self.client.set_tag(run_id, f"rest.train.{key}", str(stats[key]))
        if stats.get("log_model") and self.run.model(k).is_dir():  # train.log_model: the policy itself
            self.client.log_artifacts(run_id, str(self.run.model(k)), artifact_path="model")

    def log_selection(self, run_id: str, k: int, stats: dict[str, Any]) -> None:
        """The kept set and a table of verdicts."""
        if self.run.verdicts(k).is_file():
            self._log_kept(run_id, k)

    def log_evaluation(self, run_id: str, k: int, stats: dict[str, Any]) -> None:
        """The held-out results and samples; the metrics also go to the parent run at step k, then the plots."""
        self.client.log_artifact(run_id, str(self.run.eval_dir(k) / "results.json"), artifact_path="eval")
        samples = self.run.eval_dir(k) / "samples.parquet"
        if samples.is_file():
            self._log_table(run_id, pd.read_parquet(samples), "tables/eval_samples.json", k, "correct")
        searched = self.run.eval_dir(k) / "search.parquet"  # pav.search: one row per searched problem
        if searched.is_file():
            self.client.log_artifact(run_id, str(searched), artifact_path="eval")
        self.log_metrics(self.parent_id, numeric_items(stats, "eval"), step=k)
        self.log_plots()

    def _log_kept(self, run_id: str, k: int) -> None:
        """The kept set as a file and as an MLflow dataset input (context "training"); a sample table of verdicts."""
        kept = self.run.kept(k)
        if kept.is_file():
            self.client.log_artifact(run_id, str(kept), artifact_path="data")
            # The source is the run directory's file: MLflow has no dataset source for its own
            # artifact URIs (mlflow-artifacts:, runs:), so the copy is named in a tag instead.
            self.log_dataset(run_id, pd.read_parquet(kept), f"kept_iter_{k:03d}", str(kept.resolve()),
                             {"mlflow.data.context": "training", "rest.artifact": f"data/{kept.name}"})
        self._log_table(run_id, pd.read_parquet(self.run.verdicts(k)), "tables/samples.json", k, "kept")

    def log_dataset(self, run_id: str, frame: pd.DataFrame, name: str, source: str, tags: dict[str, str]) -> None:
        """Record ``frame`` as a dataset input of the run (name, digest, schema, row count; the data stays a file)."""
        import mlflow.data
        from mlflow.entities import Dataset, DatasetInput, InputTag

        # MLflow's digest compares each cell's type with ``str``, which pandas' string dtype (how Parquet text
        # columns read back) cannot do for a column with no strings in it: an empty kept set, or a reason
        # column that no kept row fills. As Python objects the values and the schema stay the same.
        texts = {column: object for column, dtype in frame.dtypes.items() if isinstance(dtype, pd.StringDtype)}
        with warnings.catch_warnings():  # source-resolution and integer-schema hints, not problems here
            warnings.simplefilter("ignore")
            described = mlflow.data.from_pandas(frame.astype(texts), source=source, name=name).to_dict()
        entity = Dataset(**{key: described.get(key) for key in
                            ("name", "digest", "source_type", "source", "schema", "profile")})
        self.client.log_inputs(run_id, [DatasetInput(entity, [InputTag(k, v) for k, v in tags.items()])])

    def _log_table(self, run_id: str, frame: pd.DataFrame, artifact: str, k: int, balance: str) -> None:
        limit = self.recipe.tracking.table_rows
        if limit and len(frame):
            table = sample_table(frame, limit, seed=self.recipe.seed + k, balance=balance)
            self.client.log_table(run_id, table, artifact)

    def log_plots(self, rows: list[dict[str, Any]] | None = None) -> None:
        """Metric-by-iteration and kept-fraction plots of the run so far, on the parent run."""
        from rest.report.plots import plot_kept, plot_metrics
        from rest.report.summary import iteration_rows

        rows = iteration_rows(self.run) if rows is None else rows
        with tempfile.TemporaryDirectory() as tmp:
            made = [plot(rows, Path(tmp) / name) for plot, name in (
                (plot_metrics, "metrics_by_iteration.png"), (plot_kept, "kept_fraction_by_iteration.png"))]
            if any(made):
                self.client.log_artifacts(self.parent_id, tmp, artifact_path="plots")

    def log_summary(self, rows: list[dict[str, Any]]) -> None:
        """Per-iteration summary metrics and plots on the parent run; the table becomes its description."""
        from rest.report.summary import markdown

        for row in rows:
            numbers = {k: v for k, v in row.items() if k not in ("iteration", "phases_done")}
            self.log_metrics(self.parent_id, numeric_items(numbers, "summary"), step=row["iteration"])
        self.log_plots(rows)
        self.client.set_tag(self.parent_id, "mlflow.note.content", markdown(rows))

    def _watch(self, run_id: str) -> None:
        """System metrics (CPU, memory, disk, network, GPU when pynvml is present) of this machine into ``run_id``."""
        interval = self.recipe.tracking.system_metrics_interval_s
        if not interval or self._monitored_run == run_id:
            return
        self._unwatch()
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # It announces every start and stop at INFO, twice per phase; keep the terminal for the phases.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

        self._monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=True,
                                             tracking_uri=self.uri)
        self._monitor.start()
        self._monitored_run = run_id

    def _unwatch(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
        self._monitor, self._monitored_run = None, None

    def finish(self, status: str = "FINISHED", stopped_because: str | None = None) -> None:
        """Close the nested runs and the parent run with ``status`` (and why the loop stopped, as a tag)."""
        self._unwatch()
        if stopped_because:
            self.client.set_tag(self.parent_id, "rest.stopped_because", stopped_because)
        for run_id in self._ids().get("iterations", {}).values():
            self.client.set_terminated(run_id, status=status)
        self.client.set_terminated(self.parent_id, status=status)
