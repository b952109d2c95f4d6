"""End to end: `rest run` on the tiny recipe with the real vLLM CPU build, TRL and MLflow; the run directory.

The run (tests/integration/conftest.py: tiny_run) logs to a real `mlflow server`; test_mlflow_server.py
reads the same run back through MlflowClient.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rest.phases.table import PHASE_TABLE
from tests.conftest import undeclared_stats

pytestmark = pytest.mark.integration


def test_every_phase_finished_and_outputs_exist(tiny_run):
    run = tiny_run["dir"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["iterations"]["0"]) == {"eval"}
    assert set(manifest["iterations"]["1"]) == {"sample", "verify", "select", "train", "eval"}
    for path in ("recipe.yaml", "iter_000/eval/results.json", "iter_001/verdicts.parquet",
                 "iter_001/kept.parquet", "iter_001/model/config.json", "iter_001/eval/samples.parquet"):
        assert (run / path).is_file(), path
    assert list((run / "iter_001" / "samples").glob("shard-*.parquet"))


def test_sample_counts_agree(tiny_run, phase_stats):
    run = tiny_run["dir"]
    samples = pd.concat(pd.read_parquet(p) for p in sorted((run / "iter_001" / "samples").glob("*.parquet")))
    assert len(samples) == 12 * 6
    assert samples.groupby("prompt_id").size().eq(6).all()
    assert not samples.duplicated(["iteration", "prompt_id", "sample_index"]).any()
    assert set(samples["sample_index"]) == set(range(6))
    first = samples.iloc[0]
    assert first["prompt_text"].startswith("<|im_start|>system")
    assert len(first["completion_token_ids"]) > 0 and first["completion"]
    assert samples["truncated"].eq(samples["finish_reason"].eq("length")).all()
    assert phase_stats(run, 1, "sample")["samples"] == len(samples)


def test_selection_kept_correct_samples_and_counts_agree(tiny_run, phase_stats):
    run = tiny_run["dir"]
    verdicts = pd.read_parquet(run / "iter_001" / "verdicts.parquet")
    kept = pd.read_parquet(run / "iter_001" / "kept.parquet")
    assert len(verdicts) == 72, "dropped samples stay on disk"
    assert len(kept) > 0, "the tiny run must keep something or the test proves nothing"
    assert len(kept) == int(verdicts["kept"].sum()) == phase_stats(run, 1, "select")["kept"]
    assert kept["correct"].eq(True).all()
    assert kept.groupby("prompt_id").size().max() <= 10
    assert int(verdicts["correct"].eq(True).sum()) == phase_stats(run, 1, "verify")["correct"]
    assert {"keep_correct__keep", "per_prompt_cap__keep", "keep_correct__reason"} <= set(verdicts.columns)


def test_positive_control_gold_as_completion_verifies(tiny_run):
    from rest.filters.registry import build_verifier

    verdicts = pd.read_parquet(tiny_run["dir"] / "iter_001" / "verdicts.parquet")
    verifier = build_verifier("gsm8k", {})
    for row in verdicts.drop_duplicates("prompt_id").to_dict("records"):
        assert verifier(f"Let me think.\n#### {row['gold']}", row["gold"], row) == 1.0
        assert verifier(f"#### {int(row['gold']) + 1}", row["gold"], row) == 0.0


def test_training_logged_a_loss_and_changed_the_weights(tiny_run, phase_stats):
    from safetensors.torch import load_file

    run = tiny_run["dir"]
    train = phase_stats(run, 1, "train")
    assert train["steps"] >= 1 and 0 < train["train_loss"] < 20
    assert train["init"] == tiny_run["base"], "ReST-EM trains from the base model"
    trained = load_file(str(run / "iter_001" / "model" / "model.safetensors"))
    base = load_file(str(Path(tiny_run["base"]) / "model.safetensors"))
    changed = [name for name in base if name in trained and not (trained[name].float() - base[name].float()).abs().max() == 0]
    assert len(changed) > len(base) // 2, "most weight tensors must have moved"


def test_trainer_sees_prompt_plus_completion_exactly_as_sampled(tiny_run, phase_stats):
    run = tiny_run["dir"]
    first = pd.read_parquet(run / "iter_001" / "kept.parquet").iloc[0]
    prompt, completion = list(first["prompt_token_ids"]), list(first["completion_token_ids"])
    seen = phase_stats(run, 1, "train")["trainer_example_0"]
    eos = 2  # SmolLM2's <|im_end|>; the sampler returns it when the completion ended on it
    assert first["finish_reason"] != "stop" or completion[-1] == eos
    assert seen["input_ids"] == prompt + completion
    assert seen["labels"] == [-100] * len(prompt) + completion, "loss on completion tokens only"


def test_evaluation_of_base_and_trained_policy(tiny_run):
    from rest.metrics import majority_correct, pass_at_k

    run = tiny_run["dir"]
    for k in (0, 1):
        results = json.loads((run / f"iter_{k:03d}" / "eval" / "results.json").read_text())
        assert results["prompts"] == 8
        samples = pd.read_parquet(run / f"iter_{k:03d}" / "eval" / "samples.parquet")
        greedy, sampled = samples[samples["mode"] == "greedy"], samples[samples["mode"] == "sampled"]
        assert (len(greedy), len(sampled)) == (8, 32)
        assert results["pass@1"] == pytest.approx(greedy["correct"].eq(True).mean())
        groups = [g for _, g in sampled.groupby("prompt_id")]
        expected_pass4 = sum(pass_at_k(4, int(g["correct"].eq(True).sum()), 4) for g in groups) / 8
        expected_maj4 = sum(majority_correct(list(g["answer"]), list(g["correct"])) for g in groups) / 8
        assert results["pass@4"] == pytest.approx(expected_pass4)
        assert results["maj@4"] == pytest.approx(expected_maj4)
        assert results["pass@1_sampled"] == pytest.approx(sampled["correct"].eq(True).mean())
        assert results["maj@4"] <= results["pass@4"] and results["pass@1_sampled"] <= results["pass@4"]
        assert results["pass@4_stderr"] >= 0
    assert json.loads((run / "iter_001" / "eval" / "results.json").read_text())["policy"].endswith("iter_001/model")


def test_every_stats_file_has_only_declared_keys(tiny_run):
    assert len(list(tiny_run["dir"].glob("iter_*/stats/*.json"))) >= 6
    assert undeclared_stats(tiny_run["dir"]) == {}


def test_rerun_resumes_without_redoing_work_and_prints_the_table(tiny_run):
    manifest = json.loads((tiny_run["dir"] / "manifest.json").read_text())
    assert manifest["iterations"] == tiny_run["manifest_after_first"]["iterations"]
    assert tiny_run["logs_after_first"], "isolated phases write logs"
    assert tiny_run["logs_after_again"] == tiny_run["logs_after_first"], "the rerun started no phase"
    for out in (tiny_run["first"].stdout, tiny_run["again"].stdout):
        assert "rest-em iterations" in out and "pass@1" in out
    status = subprocess.run([sys.executable, "-m", "rest.cli.app", "status", str(tiny_run["dir"])],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "rest-em iterations" in status.stdout
    kept = str(len(pd.read_parquet(tiny_run["dir"] / "iter_001" / "kept.parquet")))
    assert kept in status.stdout


def test_the_terminal_shows_rest_ems_lines_and_the_logs_hold_the_rest(tiny_run, phase_stats):
    """Output captured as under nohup (no tty): one line per phase with its figures, plain progress lines,
    and none of vLLM's, torch's, Triton's or TRL's output, which stays in the phase logs."""
    terminal = tiny_run["first"].stdout + tiny_run["first"].stderr
    for noise in ("Triton", "WARNING", "LD_PRELOAD", "Loading safetensors", "Building labels", "FutureWarning"):
        assert noise not in terminal, noise
    assert "\x1b" not in terminal and "\r" not in terminal  # no control characters without a terminal
    run = tiny_run["dir"]
    logs = "".join((run / "iter_001" / "logs" / f"{p}.log").read_text() for p in ("sample", "train", "eval"))
    assert "WARNING" in logs  # the third-party output went there
    sample, select = phase_stats(run, 1, "sample"), phase_stats(run, 1, "select")
    assert f"sample     iter 1  {sample['samples']:,} samples  {sample['generated_tokens']:,} tokens" in terminal
    assert f"select     iter 1  kept {select['kept']:,}  of {select['samples']:,}" in terminal
    base = phase_stats(run, 0, "eval")
    assert f"eval       iter 0  pass@1 {base['pass@1']:.3f}" in terminal
    assert "E-step iter 1: " in terminal  # a plain progress line


def test_status_shows_the_running_phase_and_its_progress_while_the_run_goes_on(tiny_run):
    seen = tiny_run["status_seen"]
    phases = "|".join(p.name for p in PHASE_TABLE)
    assert any(re.fullmatch(rf"running: ({phases}) of iteration \d for \d:\d\d:\d\d", line) for line in seen), seen
    assert any(re.match(r"  .+: \d+/\d+ \(\d+%\) .*elapsed \d:\d\d:\d\d.* s ago\)$", line) for line in seen), seen
    cli = next(line for line in seen if line.startswith("rest status:"))
    assert re.search(r"running: \w+ of iteration \d", cli) and re.search(r"\d+/\d+ \(\d+%\)", cli), cli
    assert not (tiny_run["dir"] / "running.json").exists()
    assert not list(tiny_run["dir"].glob("iter_*/logs/*.progress.json"))
