"""M-step on the real stack: crash and resume from a trainer checkpoint, 2 CPU ranks (gloo), reward weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

PAIRS = [(2, 3), (4, 1), (5, 5), (7, 2), (3, 6), (8, 1), (6, 3), (9, 0)]
QUESTIONS = [f"Ava has {a} apples and gets {b} more. How many now?" for a, b in PAIRS]


def base_recipe(**train) -> dict:
    return {
        "name": "mstep", "seed": 3, "data": {"source": "synthetic", "train_size": 8, "eval_size": 2},
        "train": {"epochs": 1, "learning_rate": 1e-4, "lr_scheduler": "constant", "batch_size": 2,
                  "max_length": 128, "dtype": "bfloat16", **train},
        "tracking": {"enabled": False},
    }


def prepare_run(tmp_path: Path, model: str, raw: dict, rewards: list[float] | None = None):
    """A run directory whose iteration 1 is ready for `train`: a kept set of real token ids, written by hand."""
    from transformers import AutoTokenizer

    from rest.data.prompts import render_prompt
    from rest.recipe.schema import validate_recipe
    from rest.run.rundir import RunDir, atomic_write_parquet

    recipe = validate_recipe(raw)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = []
    for i, (question, (a, b)) in enumerate(zip(QUESTIONS, PAIRS)):
        prompt = render_prompt(tokenizer, recipe.prompt, question)
        answer = a + b
        completion = f"That makes {answer}.\n#### {answer}"
        rows.append({
            "prompt_id": f"p{i}", "sample_index": 0, "iteration": 1, "prompt_text": prompt,
            "prompt_token_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"],
            "completion_token_ids": tokenizer(completion, add_special_tokens=False)["input_ids"]
            + [tokenizer.eos_token_id],
            "completion": completion, "finish_reason": "stop", "truncated": False, "correct": True,
            "reward": 1.0 if rewards is None else rewards[i], "kept": True,
        })
    run = RunDir(tmp_path / "run")
    run.initialise(recipe)
    atomic_write_parquet(pd.DataFrame(rows), run.kept(1))
    for phase in ("sample", "verify", "select"):
        run.mark_done(1, phase, 0.0)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text("# rest train recipe.yaml --iteration 1\n" + recipe.to_yaml())
    return run, recipe_file


def rest_train(run, recipe_file: Path, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rest.cli.app", "train", str(recipe_file), "--iteration", "1",
           "--run-dir", str(run.root)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, **env))


def test_a_killed_m_step_resumes_from_its_last_checkpoint(tmp_path, builtin_model):
    from rest.run.faults import KILL_ENV

    run, recipe_file = prepare_run(tmp_path, builtin_model, base_recipe(
        save_steps=2, eval_fraction=0.25, overlong="truncate"))
    first = rest_train(run, recipe_file, **{KILL_ENV: "train_checkpoint_saved#1"})
    assert first.returncode != 0, "the kill point must end the first attempt"
    assert "exit code -9" in first.stdout + first.stderr, (first.stdout + first.stderr)[-3000:]
    checkpoints = sorted(p.name for p in (run.iteration(1) / "train").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"]
    assert not run.is_done(1, "train") and not run.model(1).exists()

    again = rest_train(run, recipe_file)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    stats = json.loads(run.stats(1, "train").read_text())
    assert stats["resumed_from_step"] == 2, "the rerun started from the checkpoint, not from step 0"
    assert stats["resumed_from"] == "iter_001/train/checkpoint-2"
    assert (stats["examples"], stats["eval_examples"]) == (6, 2)
    assert stats["steps"] == 3, "6 training samples at batch 2 is 3 steps, whether or not the run was cut"
    assert [row["step"] for row in stats["history"]] == [1, 2, 3]
    assert "interval_tokens_per_s" in stats["history"][2], "tokens/s of steps trained in this process"
    assert "interval_tokens_per_s" not in stats["history"][0], "steps before the crash have no timing here"
    assert stats["tokens"] > 0 and stats["tokens_per_s"] > 0
    assert 0 < stats["eval_loss"] < 20
    assert not list((run.iteration(1) / "train").glob("checkpoint-*")), "checkpoints go once the model is saved"
    assert (run.model(1) / "model.safetensors").is_file()


def test_two_cpu_ranks_share_the_data_and_rank_0_saves_a_model_that_generates(tmp_path, builtin_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, recipe_file = prepare_run(tmp_path, builtin_model, base_recipe(
        launcher="torchrun", num_processes=2, ddp_backend="gloo", dtype="float32"))
    done = rest_train(run, recipe_file)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    shares = [json.loads((run.iteration(1) / "train" / f"data_rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["rank"] for s in shares] == [0, 1] and all(s["world_size"] == 2 for s in shares)
    seen = [set(s["samples"]) for s in shares]
    assert all(len(s) == 4 for s in seen), "8 samples over 2 ranks: 4 each"
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == {f"p{i}/0" for i in range(8)}
    stats = json.loads(run.stats(1, "train").read_text())
    assert stats["num_processes"] == 2 and stats["steps"] == 2, "8 samples / (2 ranks x batch 2)"
    assert stats["tokens"] == sum(s["tokens"] for s in shares), "tokens/s counts both ranks"

    tokenizer = AutoTokenizer.from_pretrained(str(run.model(1)))
    model = AutoModelForCausalLM.from_pretrained(str(run.model(1)), dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > prompt["input_ids"].shape[1] and text.strip()


def test_reward_weighting_zero_rewards_leave_the_weights_untouched(tmp_path, builtin_model):
    from safetensors.torch import load_file

    raw = base_recipe(reward_weighting=True, max_steps=1, dtype="float32")
    run, recipe_file = prepare_run(tmp_path, builtin_model, raw, rewards=[0.0] * 8)
    done = rest_train(run, recipe_file)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    stats = json.loads(run.stats(1, "train").read_text())
    assert stats["history"][0]["loss"] == 0.0, "reward 0 weighs every token's loss to zero"
    trained = load_file(str(run.model(1) / "model.safetensors"))
    base = load_file(str(Path(builtin_model) / "model.safetensors"))
    assert all(torch_equal(trained[name], base[name]) for name in base if name in trained)


def torch_equal(a, b) -> bool:
    return bool((a.float() == b.float()).all())


def test_train_stats_reach_mlflow_with_history_paths_and_the_model(tmp_path):
    from mlflow.tracking import MlflowClient

    from rest.recipe.schema import validate_recipe
    from rest.report.tracking import Tracker
    from rest.run.rundir import RunDir

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = validate_recipe({**base_recipe(log_model=True), "tracking": {"enabled": True, "tracking_uri": uri}})
    run = RunDir(tmp_path / "run")
    run.initialise(recipe)
    run.model(1).mkdir(parents=True)
    (run.model(1) / "config.json").write_text("{}")
    stats = {"train_loss": 1.5, "tokens_per_s": 90.0, "trainable_params": 1000, "train_wall_s": 12.0,
             "loss_curve": [2.0, 1.0], "checkpoint_dir": "iter_001/train", "model_path": "iter_001/model",
             "log_model": True,
             "history": [{"step": 1, "loss": 2.0, "learning_rate": 1e-4, "interval_tokens_per_s": 80.0},
                         {"step": 2, "loss": 1.0, "learning_rate": 5e-5, "interval_tokens_per_s": 100.0}]}
    tracker = Tracker(recipe, run)
    tracker.log_phase(1, "train", stats)
    client = MlflowClient(uri)
    run_id = tracker.iteration_run(1)
    rates = client.get_metric_history(run_id, "train/learning_rate")
    assert [(m.step, m.value) for m in rates] == [(1, 1e-4), (2, 5e-5)]
    assert [m.value for m in client.get_metric_history(run_id, "train/interval_tokens_per_s")] == [80.0, 100.0]
    assert [m.value for m in client.get_metric_history(run_id, "train/tokens_per_s")] == [90.0]
    logged = client.get_run(run_id).data
    assert logged.metrics["train/trainable_params"] == 1000 and logged.metrics["train/train_wall_s"] == 12.0
    assert logged.tags["rest.train.checkpoint_dir"] == "iter_001/train"
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/config.json"]
