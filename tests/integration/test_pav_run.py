"""PAV step values end to end on the real stack: vLLM CPU, the built-in model, the verifier, selection.

A dozen built-in prompts (tests/data/pav.yaml), two samples each, phase by phase through the CLI: sample,
verify, pav (with a PAV head), filter, train, eval (the head scores the held-out answers). Every step value
must be the share of verified rollouts from its prefix, as the rollout file shows.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import undeclared_stats

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "tests" / "data" / "pav.yaml"


def rest(work: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "rest.cli.app", args[0], str(RECIPE), *args[1:], "--run-dir", str(work / "run"),
           "--iteration", "1"]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pav_run(tmp_path_factory, builtin_model):
    work = tmp_path_factory.mktemp("pav")
    for phase in ("sample", "verify"):
        done = rest(work, phase)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    pav = rest(work, "pav")
    assert pav.returncode == 0, pav.stdout[-3000:] + pav.stderr[-5000:]
    for phase in ("filter", "train", "eval"):
        done = rest(work, phase)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return work / "run", pav


def test_the_cost_is_stated_before_the_rollouts_run(pav_run, phase_stats):
    run, pav = pav_run
    stats = phase_stats(run, 1, "pav")
    output = pav.stdout + pav.stderr
    line = (f"pav iter 1: {stats['samples']} samples, {stats['steps']} steps -> {stats['prefixes']} distinct "
            f"prefixes x 2 rollouts = {stats['planned_rollouts']} rollouts")
    assert line in output
    assert output.index(line) < output.index("pav iter 1 (rollouts)")  # before the progress of the rollouts
    assert stats["planned_rollouts"] == 2 * stats["prefixes"] == stats["rollouts"]


def test_step_values_are_the_shares_of_verified_rollouts(pav_run, phase_stats):
    run, _ = pav_run
    verified = pd.read_parquet(run / "iter_001" / "verified.parquet")
    rollouts = pd.read_parquet(run / "iter_001" / "pav" / "rollouts.parquet")
    values = pd.read_parquet(run / "iter_001" / "pav" / "values.parquet")
    judged = verified[verified["correct"].notna() & verified["completion_token_ids"].map(len).gt(0)]
    assert len(values) == len(judged) == phase_stats(run, 1, "pav")["samples"] > 0
    assert (rollouts["completion"] == rollouts["prefix_text"] + rollouts["rollout"]).all()
    assert rollouts["correct"].notna().all() and rollouts.groupby("prefix").size().eq(2).all()
    share = rollouts["correct"].eq(True).groupby(rollouts["prefix"]).mean()
    samples = verified.set_index(["prompt_id", "sample_index"])
    for row in values.itertuples():
        sample = samples.loc[(row.prompt_id, row.sample_index)]
        q, advantage = list(row.pav__q), list(row.pav__advantage)
        assert len(q) == row.pav__steps + 1 == len(advantage) + 1 and row.pav__steps >= 1
        assert q[-1] == (1.0 if sample["correct"] else 0.0)
        assert q[:-1] == [c / n for c, n in zip(row.pav__verified, row.pav__rollouts)]
        assert advantage == pytest.approx([b - a for a, b in zip(q, q[1:])])
        # Each prefix's value is its rollouts' share; p_0 is the prompt's, shared by its samples.
        prefixes = rollouts[rollouts["prompt_id"] == row.prompt_id]
        first = prefixes[prefixes["prefix_tokens"] == 0]["prefix"].unique()
        assert len(first) == 1 and q[0] == share[first[0]]
        for t in range(1, row.pav__steps):
            text = prefixes[prefixes["prefix_text"].map(lambda p: sample["completion"].startswith(p))
                            & prefixes["prefix_tokens"].gt(0)]
            assert q[t] in set(share[text["prefix"].unique()])
    stats = phase_stats(run, 1, "pav")
    assert stats["verified_rollouts"] == int(rollouts["correct"].eq(True).sum())


def test_selection_keeps_correct_samples_without_a_step_that_loses_ground(pav_run, phase_stats):
    run, _ = pav_run
    verdicts = pd.read_parquet(run / "iter_001" / "verdicts.parquet")
    kept = pd.read_parquet(run / "iter_001" / "kept.parquet")
    considered = verdicts[verdicts["keep_correct__keep"]]
    assert (considered["process_advantage__score"] == considered["pav__min_advantage"]).all()
    dropped = considered[~considered["process_advantage__keep"]]
    assert (dropped["pav__min_advantage"] < 0).all()
    assert (dropped["process_advantage__reason"] == "below_threshold").all()
    assert len(kept) > 0 and (kept["pav__min_advantage"] >= 0).all() and kept["correct"].all()
    assert phase_stats(run, 1, "select")["kept"] == len(kept)
    assert undeclared_stats(run) == {}


def test_a_pav_head_is_fitted_to_every_prefix_and_predicts_values(pav_run, phase_stats, builtin_model):
    from transformers import AutoTokenizer

    from rest.pav.head import ValueHead, hidden_features, load_feature_model, prefix_positions

    run, _ = pav_run
    stats = phase_stats(run, 1, "pav")
    values = pd.read_parquet(run / "iter_001" / "pav" / "values.parquet")
    assert stats["head_prefixes"] == int((values["pav__steps"] + 1).sum())
    assert 0 < stats["head_loss"] < 0.7  # below a constant guess of 0.5 for every prefix (log 2)
    head = ValueHead.load(run / "iter_001" / "pav" / "head")
    assert head.features_model == builtin_model and head.weight.shape == (576,)
    # Its prediction for a labelled answer's prefixes: one value in (0, 1) per prefix.
    verified = pd.read_parquet(run / "iter_001" / "verified.parquet").set_index(["prompt_id", "sample_index"])
    row = values.iloc[0]
    sample = verified.loc[(row.prompt_id, row.sample_index)]
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    assert tokenizer.decode(list(sample["completion_token_ids"]))  # the answer the head is asked about
    ids = [*sample["prompt_token_ids"], *sample["completion_token_ids"]]
    ends = [len(sample["completion_token_ids"])] if row.pav__steps == 1 else None
    if ends is None:  # the first line's tokens end where the completion's first newline token is
        first = next(i for i, t in enumerate(sample["completion_token_ids"]) if "\n" in tokenizer.decode([t]))
        ends = [first + 1, len(sample["completion_token_ids"])]
    (features,) = hidden_features(load_feature_model(builtin_model), [ids],
                                  [prefix_positions(len(sample["prompt_token_ids"]), ends)])
    predicted = head.predict(features)
    assert predicted.shape == (row.pav__steps + 1,) and ((predicted > 0) & (predicted < 1)).all()


def test_evaluation_scores_the_held_out_answers_with_the_head(pav_run, phase_stats):
    run, _ = pav_run
    results = phase_stats(run, 1, "eval")
    samples = pd.read_parquet(run / "iter_001" / "eval" / "samples.parquet")
    sampled = samples[(samples["mode"] == "sampled") & samples["correct"].notna()
                      & samples["completion_token_ids"].map(len).gt(0)]
    assert results["pav_head"].endswith("iter_001/pav/head") and results["pav_eval_samples"] == len(sampled) > 0
    assert sampled["pav__predicted_q"].map(len).ge(2).all()  # p_0 and at least the whole answer
    assert samples.loc[samples["mode"] == "greedy", "pav__predicted_q"].isna().all()
    assert (sampled["pav__predicted_min_advantage"]
            == sampled["pav__predicted_q"].map(lambda q: min(b - a for a, b in zip(q, q[1:])))).all()
    assert 0.0 <= results["best_of_n_pav"] <= 1.0 and results["pav_eval_correct"] == int(sampled["correct"].sum())
    if 0 < results["pav_eval_correct"] < len(sampled):
        assert 0.0 <= results["pav_auroc"] <= 1.0
    else:
        assert results["pav_auroc"] is None


def test_evaluation_searches_with_the_head_and_gives_best_of_n_the_same_tokens(pav_run, phase_stats):
    run, _ = pav_run
    results = phase_stats(run, 1, "eval")
    table = pd.read_parquet(run / "iter_001" / "eval" / "search.parquet")
    assert len(table) == results["pav_search_problems"] == 4
    assert table["search_tokens"].gt(0).all()
    # best-of-N takes whole answers while they fit the search's tokens (always at least one)
    assert (table["best_of_n_tokens"].le(table["search_tokens"]) | table["best_of_n_samples"].eq(1)).all()
    assert table["best_of_n_samples"].between(1, 4).all()
    assert results["pav_search"] == table["search_correct"].mean()
    assert results["pav_search_best_of_n"] == table["best_of_n_correct"].mean()
    assert results["pav_search_minus_best_of_n"] == pytest.approx(results["pav_search"] - results["pav_search_best_of_n"])
    assert results["pav_search_tokens_per_problem"] == table["search_tokens"].mean()
    assert table["search_answer"].notna().all()
