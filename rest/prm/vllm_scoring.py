"""Completion-token logprobs from vLLM's prefill: ``prompt_logprobs=0`` on prompt + completion, one token out.

One model at a time: its engine starts, scores every request, and stops before the next model's starts,
so two models never hold memory at once. Engine settings come from the recipe's ``engine`` section
(``enforce_eager`` and the CPU KV cache included); the dtype is the PRM's (``prm.dtype``), and the
context grows to the longest prompt + completion when the recipe's is shorter.
"""
from __future__ import annotations

import time
from functools import partial
from typing import Sequence

import numpy as np

from rest.recipe.schema import EngineConfig


def vllm_completion_logprobs(
    model: str,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    engine: EngineConfig,
    dtype: str,
    label: str,
    seed: int = 0,
) -> tuple[list[np.ndarray], dict[str, float]]:
    """log pi(y_t | x, y_<t) per completion token of each (prompt ids, completion ids), and timings."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from rest.engines.generation import _progress_factory, start_engine, stop_engine
    from rest.report.progress import phase_progress

    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(requests)
    todo = [i for i, (_, c) in enumerate(requests) if len(c)]
    if any(not len(requests[i][0]) for i in todo):
        raise ValueError("a sample has an empty prompt_token_ids: the first completion token has no context")
    if not todo:
        return out, {"startup_s": 0.0, "scoring_s": 0.0}
    longest = max(len(requests[i][0]) + len(requests[i][1]) for i in todo)
    settings = engine.model_copy(update={"dtype": dtype, "max_model_len": max(engine.max_model_len, longest + 1)})
    started = time.perf_counter()
    llm = start_engine(settings, model, seed)
    loaded = time.perf_counter()
    try:
        prompts = [TokensPrompt(prompt_token_ids=[*map(int, requests[i][0]), *map(int, requests[i][1])]) for i in todo]
        # max_tokens=1: the generated token is thrown away; prompt_logprobs=0 returns the given tokens' own.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        with phase_progress(label, total=len(prompts)) as bar:
            results = llm.generate(prompts, params, use_tqdm=partial(_progress_factory, bar))
    finally:
        stop_engine(llm)
    for i, result in zip(todo, results):
        prompt, completion = requests[i]
        positions = result.prompt_logprobs[len(prompt):]
        out[i] = np.array([float(pos[int(t)].logprob) for pos, t in zip(positions, completion)], dtype=np.float32)
    return out, {"startup_s": loaded - started, "scoring_s": time.perf_counter() - loaded}
