"""Completion-token logprobs from vLLM's prefill: ``prompt_logprobs=0`` on prompt + completion, one token out.

One model at a time: its engine starts, scores every request, and stops before the next model's starts,
so two models never hold memory at once. Engine settings come from the recipe's ``engine`` section
(``enforce_eager`` and the CPU KV cache included); the dtype is the PRM's (``prm.dtype``), and the
context grows to the longest prompt + completion when the recipe's is shorter. With ``engine.replicas > 1``
each replica prefills a contiguous part of the requests.
"""
from __future__ import annotations

import time
from functools import partial
from typing import Any, Sequence

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
    from rest.engines.generation import is_pool, start_engine, stop_engine
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
        with phase_progress(label, total=len(todo)) as bar:
            pairs = [(list(map(int, requests[i][0])), list(map(int, requests[i][1]))) for i in todo]
            if is_pool(llm):  # each replica prefills a contiguous part; the bar moves when all have finished
                scored = llm.map(prefill_logprobs, pairs)
                bar.advance(len(pairs))
            else:
                scored = prefill_logprobs(llm, pairs, bar)
    finally:
        stop_engine(llm)
    for i, logprobs in zip(todo, scored):
        out[i] = logprobs
    return out, {"startup_s": loaded - started, "scoring_s": time.perf_counter() - loaded}


def prefill_logprobs(llm: Any, pairs: Sequence[tuple[list[int], list[int]]], bar: Any = None) -> list[np.ndarray]:
    """One engine's prefill of each (prompt ids, completion ids): the completion tokens' logprobs."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from rest.engines.generation import _progress_factory

    prompts = [TokensPrompt(prompt_token_ids=[*prompt, *completion]) for prompt, completion in pairs]
    # max_tokens=1: the generated token is thrown away; prompt_logprobs=0 returns the given tokens' own.
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    progress = partial(_progress_factory, bar) if bar is not None else False
    results = llm.generate(prompts, params, use_tqdm=progress)
    return [np.array([float(pos[int(t)].logprob) for pos, t in zip(result.prompt_logprobs[len(prompt):], completion)],
                     dtype=np.float32) for (prompt, completion), result in zip(pairs, results)]
