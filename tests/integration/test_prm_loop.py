"""One real iteration with the implicit PRM through `rest run`: vLLM CPU E-step, PRM update on the outcome
labels, PRM scoring, the implicit_prm filter, TRL M-step, and held-out evaluation of the PRM."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# Not yet seen green end to end by the lead (its PRM update ran 20+ min on the overloaded machine): pending.
pytestmark = [pytest.mark.integration, pytest.mark.pending]

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "tests" / "data" / "prm_tiny.yaml"


@pytest.fixture(scope="module")
def prm_run(tmp_path_factory, builtin_model):
    work = tmp_path_factory.mktemp("prm")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "rest.cli.app", "run", str(RECIPE), "--run-dir", str(work / "run")]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {"dir": work / "run", "base": builtin_model}


def stats(run: Path, k: int, phase: str) -> dict:
    return json.loads((run / f"iter_{k:03d}" / "stats" / f"{phase}.json").read_text())


def test_the_prm_phases_ran_in_order(prm_run):
    manifest = json.loads((prm_run["dir"] / "manifest.json").read_text())
    done = manifest["iterations"]["1"]
    assert set(done) == {"sample", "verify", "prm_update", "prm_score", "select", "train", "eval"}
    order = sorted(done, key=lambda phase: done[phase]["finished"])
    assert order.index("verify") <= order.index("prm_update") <= order.index("prm_score") <= order.index("select")


def test_the_update_learned_from_the_outcome_labels(prm_run):
    import math

    run = prm_run["dir"]
    update = stats(run, 1, "prm_update")
    verified = pd.read_parquet(run / "iter_001" / "verified.parquet")
    assert update["skipped"] is False, update.get("skip_reason")
    assert update["init"] == update["reference"] == prm_run["base"]
    assert update["samples_correct"] == int(verified["correct"].eq(True).sum()) > 0
    assert update["usable"] == len(verified)
    assert update["samples_correct"] + update["samples_incorrect"] == min(48, len(verified))  # prm.max_samples
    assert update["first_loss"] == pytest.approx(math.log(2), abs=1e-5), "the untrained PRM is its reference"
    assert update["margin_before"] == 0.0 and update["margin_after"] > 0
    assert len(update["history"]) == update["steps"] >= 1
    assert (run / "iter_001" / "prm" / "config.json").is_file()


def test_scores_filter_and_plots(prm_run):
    run = prm_run["dir"]
    scored = pd.read_parquet(run / "iter_001" / "scored.parquet")
    assert scored["prm__sum"].abs().gt(0).all(), "a trained PRM differs from its reference on every sample"
    assert stats(run, 1, "prm_score")["prm"].endswith("iter_001/prm")
    verdicts = pd.read_parquet(run / "iter_001" / "verdicts.parquet")
    judged = verdicts[verdicts["implicit_prm__reason"] != "not_considered"]
    assert len(judged) == int(verdicts["keep_correct__keep"].sum()) > 0
    cut = judged["prm__min"].quantile(0.25)
    assert judged["implicit_prm__keep"].tolist() == judged["prm__min"].ge(cut).tolist()
    kept = pd.read_parquet(run / "iter_001" / "kept.parquet")
    assert kept["correct"].all() and kept["implicit_prm__keep"].all() and len(kept) < len(judged)
    assert (run / "iter_001" / "plots" / "implicit_prm_scores.png").stat().st_size > 1000


def test_heldout_prm_metrics(prm_run):
    from rest.prm.metrics import auroc, hanley_mcneil_stderr

    run = prm_run["dir"]
    base = json.loads((run / "iter_000" / "eval" / "results.json").read_text())
    assert base["prm_auroc"] in (None, 0.5), "before any update the PRM scores 0 everywhere"
    results = json.loads((run / "iter_001" / "eval" / "results.json").read_text())
    samples = pd.read_parquet(run / "iter_001" / "eval" / "samples.parquet")
    sampled = samples[samples["mode"] == "sampled"]
    assert len(sampled) == 64 and sampled["prm__min"].notna().all()
    assert samples.loc[samples["mode"] == "greedy", "prm__min"].isna().all()
    judged = sampled[sampled["correct"].notna()]
    assert results["prm_auroc"] == pytest.approx(auroc(judged["prm__min"].tolist(), judged["correct"].tolist()))
    for key in ("best_of_n_prm", "best_of_n_majority", "best_of_n_random"):
        assert 0 <= results[key] <= 1
    assert results["best_of_n_random"] == pytest.approx(results["pass@1_sampled"])
    positives = int(judged["correct"].sum())
    assert results["prm_auroc_stderr"] == pytest.approx(
        hanley_mcneil_stderr(results["prm_auroc"], positives, len(judged) - positives))
    # Not asserted: AUROC > 0.5 + stderr. With this budget the update sees ~5 correct samples (measured
    # 2026-11-21: 5 of 72 correct, held-out AUROC 0.44 +- 0.085 on 64 samples); experiments/prm_defaults.py
    # measures the PRM's ranking on more data (0.67 +- 0.06 at lr 1e-4).
    print("held-out PRM:", {k: v for k, v in results.items() if k.startswith(("prm_auroc", "best_of_n"))})
