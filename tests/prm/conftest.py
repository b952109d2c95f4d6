"""Fixtures of the PRM tests: a tiny randomly initialised Llama with a word-level tokenizer (fast, no files needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

VOCAB = 48


def make_tiny_lm(path: Path, seed: int = 0) -> Path:
    """Save a 2-layer LlamaForCausalLM (float32) and a tokenizer of the words "t0".."t47" to ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words, bos_token="t0", eos_token="t1", pad_token="t1").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """Directory of a tiny random causal LM that transformers loads like any model.

    Torch runs single-threaded meanwhile: on a busy 2-core machine a second thread made each step of
    this model ~50x slower (threads waiting for each other), and a model this small gains nothing from it.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield str(make_tiny_lm(tmp_path_factory.mktemp("tiny_lm") / "model"))
    torch.set_num_threads(threads)


def direct_logprobs(model_dir: str, prompt: list[int], completion: list[int]) -> np.ndarray:
    """Independent reference: one plain forward pass, full log-softmax, gather the completion tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1]
    return logp.gather(1, torch.tensor(completion)[:, None])[:, 0].numpy()
