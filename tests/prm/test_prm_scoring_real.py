"""Implicit-PRM rewards on the real built-in model, both backends, against a direct transformers computation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import direct_logprobs

from rest.prm.score import score_frame
from rest.recipe.schema import EngineConfig, PrmConfig

pytestmark = pytest.mark.integration

TEXTS = ["3 + 4 = 7.\n\n7 × 2 = 14 😀\n\n#### 14<|im_end|>", "Café: 7 * 2 = 14.\n\n#### 14<|im_end|>",
         "First add.\n\nThen multiply: 14<|im_end|>"]


@pytest.fixture(scope="module")
def perturbed_prm(builtin_model, tmp_path_factory) -> str:
    """The built-in model with its final norm's weights scaled: a different model that tokenises the same."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path_factory.mktemp("prm") / "model"
    model = AutoModelForCausalLM.from_pretrained(builtin_model, dtype=torch.float32)
    with torch.no_grad():
        model.base_model.norm.weight.mul_(1.3)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(builtin_model).save_pretrained(target)
    return str(target)


@pytest.fixture(scope="module")
def samples_and_expected(builtin_model, perturbed_prm):
    """Two completions of one prompt and one of another, with the directly computed log-ratios."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_model)
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False)["input_ids"]
               for q in ("What is 3 + 4, times 2?", "Compute (3 + 4) * 2.")]
    samples = pd.DataFrame({
        "prompt_token_ids": [prompts[0], prompts[0], prompts[1]],
        "completion_token_ids": [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS],
    })
    expected = [direct_logprobs(perturbed_prm, list(p), list(c)) - direct_logprobs(builtin_model, list(p), list(c))
                for p, c in zip(samples["prompt_token_ids"], samples["completion_token_ids"])]
    assert max(np.abs(e).max() for e in expected) > 1e-2  # the PRM really differs
    return samples, expected


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_builtin_model_rewards_match_direct_computation(backend, builtin_model, perturbed_prm, samples_and_expected):
    samples, expected = samples_and_expected
    engine = EngineConfig(dtype="float32", enforce_eager=True, max_model_len=256, cpu_kvcache_gib=1)
    frame, stats = score_frame(samples, perturbed_prm, builtin_model, PrmConfig(beta=1.0, backend=backend),
                               engine=engine)
    assert stats["backend"] == backend and stats["models_run"] == 2
    assert stats["tokens_per_s"] > 0 and stats["startup_s"] > 0
    for rewards, want in zip(frame["prm__token_rewards"], expected):
        np.testing.assert_allclose(rewards, want, atol=1e-4)
    assert list(frame["prm__steps"]) == [3, 2, 2]
    for row in frame.itertuples():
        assert sum(row.prm__step_rewards) == pytest.approx(sum(row.prm__token_rewards), abs=1e-9)
