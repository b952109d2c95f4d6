"""The run directory: paths of every phase's output, the manifest of finished phases, atomic writes, the lock."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

import rest
from rest.errors import RestError


class RunDirError(RestError, RuntimeError):
    """The run directory cannot be used as asked (locked, or made by a different recipe)."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any) -> None:
    """JSON flavour of :func:`atomic_write_text`."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a Parquet file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a staging directory that replaces ``path`` only when the block finishes without error."""
    staging = path.with_name(f".{path.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    if path.exists():  # a leftover from a run cut off before its phase was recorded
        shutil.rmtree(path)
    os.replace(staging, path)


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[None]:
    """An exclusive advisory lock on ``path``; released when the block ends or the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunDirError(f"{path} is held by another process (pid {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RunDir:
    """Paths and manifest of one run; phases exchange data only through these files."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- paths -------------------------------------------------------------------------------
    def iteration(self, k: int) -> Path:
        """Directory of iteration ``k``."""
        return self.root / f"iter_{k:03d}"

    def samples_dir(self, k: int) -> Path:
        """E-step shards of iteration ``k``."""
        return self.iteration(k) / "samples"

    def verified(self, k: int) -> Path:
        """Every sample with the outcome verifier's verdict."""
        return self.iteration(k) / "verified.parquet"

    def verdicts(self, k: int) -> Path:
        """Every sample with every filter's verdict, dropped ones included."""
        return self.iteration(k) / "verdicts.parquet"

    def prm(self, k: int) -> Path:
        """The implicit PRM after iteration ``k``'s update (a model directory)."""
        return self.iteration(k) / "prm"

    def scored(self, k: int) -> Path:
        """Every verified sample with its implicit-PRM scores (``prm__*`` columns)."""
        return self.iteration(k) / "scored.parquet"

    def kept(self, k: int) -> Path:
        """The M-step's training set."""
        return self.iteration(k) / "kept.parquet"

    def repaired(self, k: int) -> Path:
        return self.iteration(k) / "repair" / "repaired.parquet"

    def pav_dir(self, k: int) -> Path:
        """The pav phase's plan, rollouts and step values."""
        return self.iteration(k) / "pav"

    def pav_values(self, k: int) -> Path:
        """One row of step values per labelled sample (rest/pav/values.py's columns)."""
        return self.pav_dir(k) / "values.parquet"

    def model(self, k: int) -> Path:
        """The policy after iteration ``k``'s M-step (standalone model directory)."""
        return self.iteration(k) / "model"

    def adapter(self, k: int) -> Path:
        """The LoRA adapter of iteration ``k``'s M-step (when the recipe trains one)."""
        return self.iteration(k) / "adapter"

    def eval_dir(self, k: int) -> Path:
        """Evaluation results of iteration ``k``."""
        return self.iteration(k) / "eval"

    def stats(self, k: int, phase: str) -> Path:
        """A phase's summary numbers (what MLflow and ``rest status`` show)."""
        return self.iteration(k) / "stats" / f"{phase}.json"

    def progress(self, k: int, phase: str) -> Path:
        """A running phase's progress bar state (gone when the phase ends)."""
        return self.iteration(k) / "logs" / f"{phase}.progress.json"

    @property
    def running_path(self) -> Path:
        """Which phase runs now, in which process (gone when it ends; left behind by a killed run)."""
        return self.root / "running.json"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    # ---- manifest ----------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest, or an empty one for a new run."""
        if not self.manifest_path.is_file():
            return {"iterations": {}, "mlflow": {}}
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the manifest atomically."""
        atomic_write_json(self.manifest_path, manifest)

    def is_done(self, k: int, phase: str) -> bool:
        """Whether ``phase`` of iteration ``k`` finished (its outputs are complete and in place)."""
        return phase in self.manifest()["iterations"].get(str(k), {})

    def mark_done(self, k: int, phase: str, wall_s: float) -> None:
        """Record that ``phase`` of iteration ``k`` finished."""
        manifest = self.manifest()
        manifest["iterations"].setdefault(str(k), {})[phase] = {
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_s": round(wall_s, 3),
        }
        self.write_manifest(manifest)

    def read_stats(self, k: int, phase: str) -> dict[str, Any]:
        """A phase's stats, or {} when it has none."""
        path = self.stats(k, phase)
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_stats(self, k: int, phase: str, stats: dict[str, Any]) -> None:
        """Record a phase's stats atomically."""
        atomic_write_json(self.stats(k, phase), stats)

    def initialise(self, recipe: Any, allow_recipe_change: bool = False) -> None:
        """Create the run directory for ``recipe`` or check that an existing one was made by it."""
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.manifest()
        recorded = manifest.get("recipe_hash")
        if recorded and recorded != recipe.hash():
            if not allow_recipe_change:
                raise RunDirError(
                    f"{self.root} was created by a different recipe (hash {recorded}, now {recipe.hash()}); "
                    "use a new run directory, or pass --allow-recipe-change to continue with the new recipe"
                )
            manifest.setdefault("recipe_changes", []).append(
                {"from": recorded, "to": recipe.hash(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            )
        manifest.update(
            recipe_hash=recipe.hash(),
            recipe_name=recipe.name,
            package_version=rest.__version__,
            git_commit=git_commit(),
        )
        atomic_write_text(self.recipe_path, recipe.to_yaml())
        self.write_manifest(manifest)


def git_commit() -> str | None:
    """The commit of the rest-em source in use, when it runs from a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
