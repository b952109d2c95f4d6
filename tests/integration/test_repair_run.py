"""Repair (STaR rationalisation) end to end on the real stack: vLLM CPU, the built-in model, TRL's input.

A few dozen built-in prompts (tests/data/repair.yaml: few-shot prompt, short answers), two samples each;
every prompt with at most one correct sample is asked again, three times, with its gold answer as a hint. The repaired samples must exist, be verified, carry their
provenance, and reach the M-step with the plain training prompt: no token of the hint in any example.
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
RECIPE = REPO / "tests" / "data" / "repair.yaml"


@pytest.fixture(scope="module")
def repair_run(tmp_path_factory, builtin_model):
    work = tmp_path_factory.mktemp("repair")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "rest.cli.app", "run", str(RECIPE), "--run-dir", str(work / "run")]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    again = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return work / "run"


def test_repaired_samples_are_verified_and_carry_their_provenance(repair_run, phase_stats):
    verified = pd.read_parquet(repair_run / "iter_001" / "verified.parquet")
    repaired = pd.read_parquet(repair_run / "iter_001" / "repair" / "repaired.parquet")
    right = verified["correct"].eq(True).groupby(verified["prompt_id"]).sum()
    eligible = set(right.index[right <= 1])
    stats = phase_stats(repair_run, 1, "repair")
    assert stats["eligible_prompts"] == len(eligible) > 0
    assert set(repaired["prompt_id"]) == eligible and len(repaired) == 3 * len(eligible) == stats["attempts"]
    assert set(repaired["origin"]) == {"rationalized"} and repaired["repairs"].isna().all()
    plain = verified.drop_duplicates("prompt_id").set_index("prompt_id")
    for row in repaired.itertuples():
        assert row.repair_prompt.count("(Hint: the answer is ") == 1 and f"answer is {row.gold}.)" in row.repair_prompt
        assert row.prompt_text == plain.loc[row.prompt_id, "prompt_text"] and "Hint" not in row.prompt_text
        assert list(row.prompt_token_ids) == list(plain.loc[row.prompt_id, "prompt_token_ids"])
        assert row.sample_index >= 2  # after the policy's own two samples
    assert repaired["correct"].notna().all()  # every repair went through the verifier
    assert stats["verified"] == int(repaired["correct"].eq(True).sum()) > 0, repaired["verify__reason"].value_counts()
    copied = repaired["verify__reason"].isin(["quotes_hint", "answer_without_working"])
    assert stats["rejected_copies"] == int(copied.sum()) and not repaired.loc[copied, "correct"].any()


def test_every_stats_file_has_only_declared_keys(repair_run):
    assert (repair_run / "iter_001" / "stats" / "repair.json").is_file()
    assert undeclared_stats(repair_run) == {}


def test_the_trainer_input_holds_no_hint(repair_run, phase_stats, builtin_model):
    from transformers import AutoTokenizer

    from rest.phases.train import training_examples

    kept = pd.read_parquet(repair_run / "iter_001" / "kept.parquet")
    repaired_kept = kept[kept["origin"] == "rationalized"]
    assert len(repaired_kept) > 0 and repaired_kept["correct"].all()
    assert phase_stats(repair_run, 1, "select")["kept_by_origin"] == kept["origin"].value_counts().to_dict()
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    examples, _ = training_examples(kept, tokenizer.eos_token_id, max_length=384)
    hint = tokenizer("Hint: the answer is", add_special_tokens=False)["input_ids"]
    for example, row in zip(examples, kept.iloc[[e["kept_row"] for e in examples]].itertuples()):
        ids = example["input_ids"]
        assert not any(ids[i:i + len(hint)] == hint for i in range(len(ids) - len(hint) + 1))
        assert "Hint" not in tokenizer.decode(ids)
        assert ids[:len(row.prompt_token_ids)] == list(row.prompt_token_ids)
    assert phase_stats(repair_run, 1, "train")["train_loss"] > 0
