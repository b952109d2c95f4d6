"""LoRA M-step: the merged policy vLLM samples from really carries the adapter (not the base model)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

RECIPE = {
    "name": "lora",
    "seed": 1,
    "data": {"source": "synthetic", "train_size": 8, "eval_size": 2},
    "engine": {"dtype": "float32", "enforce_eager": True, "max_model_len": 256, "cpu_kvcache_gib": 1},
    "train": {"epochs": 3, "learning_rate": 1e-3, "batch_size": 4, "max_length": 256,
              "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}},
    "tracking": {"enabled": False},
}
PROBE_COMPLETION = "Ava has 7 + 5 = 12 apples.\n#### 12"

VLLM_LOGPROBS = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
if __name__ == "__main__":
    ids = json.loads(sys.argv[2])
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256, seed=0)
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, prompt_logprobs=0))
    lp = out[0].prompt_logprobs
    print("LOGPROBS", json.dumps([lp[i][ids[i]].logprob for i in range(1, len(ids))]))
    llm.llm_engine.engine_core.shutdown()
"""


def kept_set(tokenizer, prompt_text: str) -> pd.DataFrame:
    """A kept set written by hand: the same correct solution for every prompt, so the adapter learns it."""
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(PROBE_COMPLETION, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return pd.DataFrame([{
        "prompt_id": f"p{i}", "sample_index": 0, "iteration": 1, "prompt_text": prompt_text,
        "prompt_token_ids": prompt_ids, "completion_token_ids": completion_ids, "completion": PROBE_COMPLETION,
        "finish_reason": "stop", "truncated": False, "correct": True, "reward": 1.0, "kept": True,
    } for i in range(8)])


def vllm_logprobs(model: str, ids: list[int]) -> list[float]:
    out = subprocess.run([sys.executable, "-c", VLLM_LOGPROBS, model, json.dumps(ids)], capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1",
                                                          VLLM_CPU_NUM_OF_RESERVED_CPU="0"))
    line = next((l for l in out.stdout.splitlines() if l.startswith("LOGPROBS ")), None)
    assert line, out.stderr[-3000:]
    return json.loads(line[len("LOGPROBS "):])


def hf_logprobs(model, ids: list[int]) -> list[float]:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def test_lora_m_step_merges_and_vllm_samples_the_adapter(tmp_path, builtin_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rest.data.prompts import render_prompt
    from rest.recipe.schema import validate_recipe
    from rest.run.rundir import RunDir, atomic_write_parquet

    recipe = validate_recipe(RECIPE)
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    prompt_text = render_prompt(tokenizer, recipe.prompt, "Ava has 7 apples and gets 5 more. How many now?")
    run = RunDir(tmp_path / "run")
    run.initialise(recipe)
    atomic_write_parquet(kept_set(tokenizer, prompt_text), run.kept(1))
    for phase in ("sample", "verify", "select"):
        run.mark_done(1, phase, 0.0)
    (tmp_path / "recipe.yaml").write_text("# rest run recipe.yaml\n" + recipe.to_yaml())
    trained = subprocess.run(
        [sys.executable, "-m", "rest.cli.app", "train", str(tmp_path / "recipe.yaml"), "--iteration", "1",
         "--run-dir", str(run.root)], capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    stats = json.loads(run.stats(1, "train").read_text())
    assert 0 < stats["trainable_params"] < 1_000_000, "only the adapter trains"
    assert (run.adapter(1) / "adapter_config.json").is_file()
    assert not list(run.model(1).glob("adapter_*")), "model/ is a standalone merged model"

    ids = tokenizer(prompt_text + PROBE_COMPLETION, add_special_tokens=False)["input_ids"]
    completion = slice(len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"]) - 1, None)
    base = AutoModelForCausalLM.from_pretrained(builtin_model, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(run.adapter(1))).eval()
    expected = hf_logprobs(adapted, ids)[completion]
    sampled_policy = vllm_logprobs(str(run.model(1)), ids)[completion]
    base_policy = vllm_logprobs(builtin_model, ids)[completion]

    assert max(abs(a - b) for a, b in zip(sampled_policy, expected)) < 1e-3, "vLLM matches the adapter"
    assert sum(sampled_policy) - sum(base_policy) > 1.0, "training on this completion made it more likely"
    assert all(math.isfinite(x) for x in sampled_policy)
