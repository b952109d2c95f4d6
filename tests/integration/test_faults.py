"""Crash anywhere, rerun, get the same result: SIGKILL during the E-step, the PRM update, the filter and the
M-step of one tiny real run (vLLM CPU, PRM, TRL, MLflow sqlite), each rerun with the same command.

Kill points (``REST_EM_KILL_AT``, rest/run/faults.py) sit inside each phase, after part of its work is on
disk; every step asserts the phase really was cut off before rerunning. A second run directory redoes
the phases after the E-step without interruption, on the same samples, for comparison.

The same run is the implicit PRM's end-to-end test (one real run costs minutes, so it serves both): the
PRM update on the outcome labels, scoring, the implicit_prm filter and the held-out PRM metrics.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import undeclared_stats

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "tests" / "data" / "prm_tiny.yaml"
# Each prompt's reference solution joins the grown set (loop.mix_original): how many samples come out correct
# depends on the CPU's kernels, and the PRM update and the killed M-step need correct rows on every machine.
OVERRIDES = ["sampling.prompts_per_shard=4", "train.save_steps=1", "train.batch_size=2", "eval.max_tokens=48",
             "prm.max_samples=16", "loop.mix_original=true", "data.reference_template='{answer}'"]
PROMPTS, N, EVAL_PROMPTS, EVAL_SAMPLES, PRM_CAP = 12, 6, 16, 4, 16


def rest(work: Path, *args: str, kill: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    env.pop("REST_EM_KILL_AT", None)
    if kill:
        env["REST_EM_KILL_AT"] = kill
    cmd = [sys.executable, "-m", "rest.cli.app", *args]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)


def run_cmd(run_dir: Path) -> list[str]:
    return ["run", str(RECIPE), *OVERRIDES, "--run-dir", str(run_dir)]


def done(run_dir: Path, k: int = 1) -> set[str]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return set(manifest["iterations"].get(str(k), {}))


def shard_hashes(run_dir: Path) -> dict[str, str]:
    shards = sorted((run_dir / "iter_001" / "samples").glob("shard-*.parquet"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, builtin_model):
    """The run, killed once in each phase and rerun each time; what each crash left behind."""
    work = tmp_path_factory.mktemp("faults")
    run_dir, seen = work / "run", {}

    killed = rest(work, *run_cmd(run_dir), kill="sample:after_shard#2")
    assert killed.returncode != 0
    seen["sample"] = (done(run_dir), shard_hashes(run_dir))

    killed = rest(work, *run_cmd(run_dir), kill="prm_update:before_save")
    assert killed.returncode != 0, killed.stdout[-2000:] + killed.stderr[-3000:]
    seen["prm_update"] = (done(run_dir), shard_hashes(run_dir), (run_dir / "iter_001" / "prm").exists())

    killed = rest(work, *run_cmd(run_dir), kill="select:after_verdicts")
    assert killed.returncode == -9  # the filter runs inside `rest run` itself
    seen["select"] = (done(run_dir), (run_dir / "iter_001" / "verdicts.parquet").is_file(),
                      (run_dir / "iter_001" / "kept.parquet").is_file())

    killed = rest(work, *run_cmd(run_dir), kill="train_checkpoint_saved#1")
    assert killed.returncode != 0, killed.stdout[-2000:] + killed.stderr[-3000:]
    seen["train"] = (done(run_dir), sorted(p.name for p in (run_dir / "iter_001" / "train").glob("checkpoint-*")))

    final = rest(work, *run_cmd(run_dir))
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-5000:]
    return {"work": work, "dir": run_dir, "seen": seen}


def test_each_kill_left_its_phase_unfinished(crashed):
    seen = crashed["seen"]
    phases, shards = seen["sample"]
    assert "sample" not in phases and len(shards) == 2  # 2 of 3 shards written, phase not recorded
    phases, _, prm_saved = seen["prm_update"]
    assert {"sample", "verify"} <= phases and "prm_update" not in phases and not prm_saved
    phases, verdicts, kept = seen["select"]
    assert {"prm_update", "prm_score"} <= phases and "select" not in phases and verdicts and not kept
    phases, checkpoints = seen["train"]
    assert "select" in phases and "train" not in phases and checkpoints == ["checkpoint-1"]


def test_rerun_completes_with_exactly_n_samples_and_unchanged_shards(crashed):
    run_dir = crashed["dir"]
    assert done(run_dir) == {"sample", "verify", "prm_update", "prm_score", "select", "train", "eval"}
    hashes = shard_hashes(run_dir)
    assert len(hashes) == 3
    first_two = crashed["seen"]["sample"][1]
    assert {name: hashes[name] for name in first_two} == first_two  # finished shards never rewritten
    verified = pd.read_parquet(run_dir / "iter_001" / "verified.parquet")
    samples = verified[verified["sample_index"] >= 0]
    assert len(verified) - len(samples) == PROMPTS, "one reference row per prompt"
    assert len(samples) == PROMPTS * N
    assert samples.groupby("prompt_id").size().eq(N).all() and samples["prompt_id"].nunique() == PROMPTS
    assert not samples.duplicated(["iteration", "prompt_id", "sample_index"]).any()


def test_killed_m_step_resumed_from_its_checkpoint(crashed):
    train = json.loads((crashed["dir"] / "iter_001" / "stats" / "train.json").read_text())
    assert train["resumed_from_step"] == 1 and train["steps"] > 1


def test_one_nested_mlflow_run_per_iteration(crashed):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{crashed['work'] / 'mlflow.db'}")
    manifest = json.loads((crashed["dir"] / "manifest.json").read_text())
    parent = manifest["mlflow"]["parent_run_id"]
    experiment = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(run.data.tags["rest.iteration"] for run in children) == ["0", "1"]
    assert len(client.search_runs([experiment], "tags.`rest.iteration` = '1'")) == 1


def test_kept_set_and_training_data_equal_an_uninterrupted_run_on_the_same_samples(crashed):
    """Everything after the E-step is deterministic: redo it without crashes on a copy of the samples."""
    work, run_dir = crashed["work"], crashed["dir"]
    fresh = work / "uninterrupted"
    fresh.mkdir()
    shutil.copy(run_dir / "recipe.yaml", fresh / "recipe.yaml")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["iterations"] = {"0": manifest["iterations"]["0"], "1": {"sample": manifest["iterations"]["1"]["sample"]}}
    manifest["mlflow"] = {}
    (fresh / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(run_dir / "iter_001" / "samples", fresh / "iter_001" / "samples")
    shutil.copytree(run_dir / "iter_001" / "stats", fresh / "iter_001" / "stats")
    for command in ("verify", "prm-train", "prm-score", "filter"):
        result = rest(work, command, str(RECIPE), *OVERRIDES, "--iteration", "1", "--run-dir", str(fresh))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    key = ["prompt_id", "sample_index"]
    crashed_kept = pd.read_parquet(run_dir / "iter_001" / "kept.parquet").sort_values(key).reset_index(drop=True)
    clean_kept = pd.read_parquet(fresh / "iter_001" / "kept.parquet").sort_values(key).reset_index(drop=True)
    assert len(crashed_kept) > 0
    assert crashed_kept[key + ["completion"]].equals(clean_kept[key + ["completion"]])
    assert crashed_kept["prm__min"].tolist() == pytest.approx(clean_kept["prm__min"].tolist(), abs=1e-5)
    # The resumed M-step trained on exactly that set (its record covers the batches after the resume).
    train = json.loads((run_dir / "iter_001" / "stats" / "train.json").read_text())
    assert train["examples"] == len(clean_kept)
    trained_on = json.loads((run_dir / "iter_001" / "train" / "data_rank0.json").read_text())["samples"]
    assert trained_on and set(trained_on) <= {f"{p}/{i}" for p, i in zip(clean_kept["prompt_id"], clean_kept["sample_index"])}


def test_the_prm_phases_ran_in_order(crashed):
    manifest = json.loads((crashed["dir"] / "manifest.json").read_text())
    finished = manifest["iterations"]["1"]
    order = sorted(finished, key=lambda phase: finished[phase]["finished"])
    assert order.index("verify") < order.index("prm_update") < order.index("prm_score") < order.index("select")


def test_the_prm_update_learned_from_the_outcome_labels(crashed, builtin_model, phase_stats):
    import math

    run = crashed["dir"]
    update = phase_stats(run, 1, "prm_update")
    verified = pd.read_parquet(run / "iter_001" / "verified.parquet")
    correct, incorrect = int(verified["correct"].eq(True).sum()), int(verified["correct"].eq(False).sum())
    assert update["skipped"] is False, update.get("skip_reason")
    assert update["init"] == update["reference"] == builtin_model
    assert correct > 0 and update["usable"] == len(verified) == correct + incorrect
    # Class-balanced cap: half from each class where both have enough, the smaller class whole.
    assert update["samples_correct"] == min(correct, max(PRM_CAP // 2, PRM_CAP - incorrect))
    assert update["samples_correct"] + update["samples_incorrect"] == min(PRM_CAP, len(verified))
    assert update["first_loss"] == pytest.approx(math.log(2), abs=1e-5), "the untrained PRM is its reference"
    assert update["margin_before"] == 0.0 and update["margin_after"] > 0
    assert len(update["history"]) == update["steps"] >= 1
    assert (run / "iter_001" / "prm" / "config.json").is_file()


def test_prm_scores_filter_and_plots(crashed, phase_stats):
    run = crashed["dir"]
    scored = pd.read_parquet(run / "iter_001" / "scored.parquet")
    assert scored["prm__sum"].abs().gt(0).all(), "a trained PRM differs from its reference on every sample"
    assert phase_stats(run, 1, "prm_score")["prm"].endswith("iter_001/prm")
    verdicts = pd.read_parquet(run / "iter_001" / "verdicts.parquet")
    judged = verdicts[verdicts["implicit_prm__reason"] != "not_considered"]
    assert len(judged) == int(verdicts["keep_correct__keep"].sum()) > 0
    cut = judged["prm__min"].quantile(0.25)  # prm_tiny.yaml: keep the correct samples above the 25% quantile
    assert judged["implicit_prm__keep"].tolist() == judged["prm__min"].ge(cut).tolist()
    kept = pd.read_parquet(run / "iter_001" / "kept.parquet")
    assert kept["correct"].all() and kept["implicit_prm__keep"].all() and len(kept) < len(judged)
    assert (run / "iter_001" / "plots" / "implicit_prm_scores.png").stat().st_size > 1000


def test_every_stats_file_has_only_declared_keys(crashed):
    assert len(list(crashed["dir"].glob("iter_*/stats/prm_*.json"))) >= 2
    assert undeclared_stats(crashed["dir"]) == {}


def test_heldout_prm_metrics(crashed):
    from rest.prm.quality import auroc, hanley_mcneil_stderr, prm_weighted_vote

    run = crashed["dir"]
    base = json.loads((run / "iter_000" / "eval" / "results.json").read_text())
    assert base["prm_auroc"] in (None, 0.5), "before any update the PRM scores 0 everywhere"
    results = json.loads((run / "iter_001" / "eval" / "results.json").read_text())
    samples = pd.read_parquet(run / "iter_001" / "eval" / "samples.parquet")
    sampled = samples[samples["mode"] == "sampled"]
    assert len(sampled) == EVAL_PROMPTS * EVAL_SAMPLES and sampled["prm__min"].notna().all()
    assert samples.loc[samples["mode"] == "greedy", "prm__min"].isna().all()
    judged = sampled[sampled["correct"].notna()]
    assert results["prm_auroc"] == pytest.approx(auroc(judged["prm__min"].tolist(), judged["correct"].tolist()))
    for key in ("best_of_n_prm", "prm_weighted_vote", "best_of_n_majority", "best_of_n_random"):
        assert 0 <= results[key] <= 1
    votes = [prm_weighted_vote(list(g["answer"]), g["prm__min"].tolist(), g["correct"].tolist())
             for _, g in sampled.groupby("prompt_id")]
    assert results["prm_weighted_vote"] == pytest.approx(sum(votes) / EVAL_PROMPTS)
    assert results["best_of_n_random"] == pytest.approx(results["pass@1_sampled"])
    positives = int(judged["correct"].sum())
    assert results["prm_auroc_stderr"] == pytest.approx(
        hanley_mcneil_stderr(results["prm_auroc"], positives, len(judged) - positives))
    # Not asserted here: AUROC > 0.5 + stderr. This tiny budget's update sees a handful of correct samples
    # (measured 2026-11-21: 5 of 72 correct, held-out AUROC 0.44 +- 0.085 on 64 samples);
    # test_prm_heldout.py asserts it with enough held-out samples to resolve it.
    print("held-out PRM:", {k: v for k, v in results.items() if k.startswith(("prm_auroc", "best_of_n"))})
