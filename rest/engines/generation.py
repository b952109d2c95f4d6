"""The vLLM engine shared by the E-step and evaluation: construction from the recipe and batched generation."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from typing import Any, Iterable, Iterator, Sequence

from rest.engines.hardware import resolve_dtype
from rest.errors import RestError
from rest.recipe.schema import EngineConfig, SamplingConfig

# Options rest-em sets itself from EngineConfig fields; engine_kwargs may not override them silently.
_MANAGED = {
    "model", "dtype", "max_model_len", "enforce_eager", "gpu_memory_utilization", "tensor_parallel_size",
    "data_parallel_size", "max_num_seqs", "seed", "tokenizer",
}


class EngineError(RestError, RuntimeError):
    """The engine could not be configured or started."""


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    sample_index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None


def sampling_params(cfg: SamplingConfig, n: int | None = None, temperature: float | None = None,
                    max_tokens: int | None = None, logprobs: bool = False, stop: list[str] | None = None) -> Any:
    """vLLM's ``SamplingParams`` for the recipe's sampling section; repair and evaluation override some fields.
    ``stop`` adds stop strings that stay in the output (step-by-step generation stops at a step's end)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=cfg.n if n is None else n, temperature=cfg.temperature if temperature is None else temperature,
        top_k=cfg.top_k if cfg.top_k > 0 else -1, top_p=cfg.top_p, max_tokens=max_tokens or cfg.max_tokens,
        stop=[*(stop or []), *cfg.stop] or None, include_stop_str_in_output=bool(stop),
        logprobs=0 if logprobs else None,
    )


def engine_options(cfg: EngineConfig, model: str, seed: int) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``; ``engine_kwargs`` are checked against vLLM's EngineArgs."""
    options: dict[str, Any] = {
        "model": model,
        "dtype": resolve_dtype(cfg.dtype),
        "max_model_len": cfg.max_model_len,
        "enforce_eager": cfg.enforce_eager,
        "seed": seed,
        "tensor_parallel_size": cfg.tensor_parallel_size,
    }
    if cfg.data_parallel_size > 1:
        options["data_parallel_size"] = cfg.data_parallel_size
    if cfg.max_num_seqs is not None:
        options["max_num_seqs"] = cfg.max_num_seqs
    if _has_gpu():
        options["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    overlap = sorted(_MANAGED & set(cfg.engine_kwargs))
    if overlap:
        raise EngineError(f"engine.engine_kwargs sets {', '.join(overlap)}: use the engine.* fields instead")
    unknown = sorted(set(cfg.engine_kwargs) - engine_arg_names()) if cfg.engine_kwargs else []
    if unknown:
        raise EngineError(f"engine.engine_kwargs has unknown vLLM engine options: {', '.join(unknown)}")
    options.update(cfg.engine_kwargs)
    return options


def engine_arg_names() -> set[str]:
    """Every option vLLM's EngineArgs accepts."""
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def start_engine(cfg: EngineConfig, model: str, seed: int) -> Any:
    """A ready ``vllm.LLM``, or with ``engine.replicas > 1`` a :class:`rest.engines.replicas.ReplicaPool` of them
    (:func:`generate`, :func:`generate_stream` and :func:`stop_engine` take either); on CPU the KV-cache size
    comes from the recipe."""
    if cfg.replicas > 1:
        from rest.engines.replicas import ReplicaPool

        return ReplicaPool(cfg, model, seed)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cfg.cpu_kvcache_gib))))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(cfg.cpu_reserved_cores))
    options = engine_options(cfg, model, seed)
    from vllm import LLM

    try:
        return LLM(**options)
    except Exception as err:  # vLLM raises many types; the message plus the log above tell the user why
        raise EngineError(f"vLLM engine failed to start for {model}: {type(err).__name__}: {err}") from err


def stop_engine(llm: Any) -> None:
    """Shut the engine's background processes down now (they otherwise linger, busy, after the phase)."""
    if is_pool(llm):
        llm.stop()
        return
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # best effort: the phase's process group is killed afterwards anyway
        pass


class _ProgressAdapter:
    """The slice of tqdm's interface vLLM's offline loop uses, forwarded to a rest-em progress bar."""

    def __init__(self, bar: Any, **_: Any):
        self._bar, self._started, self.n, self.postfix = bar, time.perf_counter(), 0, ""

    @property
    def format_dict(self) -> dict[str, float]:
        return {"elapsed": max(time.perf_counter() - self._started, 1e-9)}

    def update(self, samples: int = 1) -> None:
        """One request (prompt) finished with ``samples`` completions."""
        self.n += samples
        self._bar.advance(1, samples=samples)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_factory(bar: Any, *iterable: Any, **kwargs: Any) -> Any:
    """vLLM calls its tqdm factory with an iterable while adding requests (passed through unchanged)
    and without one for the generation loop (reported to ``bar``)."""
    return iterable[0] if iterable else _ProgressAdapter(bar, **kwargs)


def generate(
    llm: Any, prompt_token_ids: Sequence[list[int]], params: Any, lora_request: Any = None, bar: Any = None
) -> list[list[Completion]]:
    """Generate for all prompts in one call (vLLM schedules the batch); completions per prompt.

    With ``bar`` (a :class:`rest.report.progress.PhaseBar`), each finished prompt advances it as it happens.
    """
    if is_pool(llm):
        outputs = dict(llm.stream(prompt_token_ids, params, lora_request=lora_request, bar=bar))
        return [outputs[position] for position in range(len(prompt_token_ids))]
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
    progress = partial(_progress_factory, bar) if bar is not None else False
    outputs = llm.generate(prompts, params, use_tqdm=progress, lora_request=lora_request)
    return [[_completion(i, out) for i, out in enumerate(request.outputs)] for request in outputs]


def generate_stream(
    llm: Any, prompt_token_ids: Sequence[list[int]], params: Any, lora_request: Any = None, bar: Any = None,
    groups: Sequence[int] | None = None,
) -> Iterator[tuple[int, list[Completion]]]:
    """Yields ``(position, completions)`` as each prompt finishes; every prompt is queued at once.

    A replica pool yields a group of consecutive prompts at a time (``groups``: their sizes, e.g. the
    E-step's shards), each group from one replica.

    The engine schedules the whole set as ``LLM.generate`` would (experiments/README.md compares the
    two), first come first served, so prompts still finish roughly in order and a
    caller's early shards complete early. ``bar`` advances by one prompt, its samples and tokens. vLLM
    builds without ``LLM.enqueue`` get one ``generate`` call, yielded at the end.
    """
    if is_pool(llm):
        yield from llm.stream(prompt_token_ids, params, groups=groups, lora_request=lora_request, bar=bar)
        return
    if not hasattr(llm, "enqueue"):
        for position, completions in enumerate(generate(llm, prompt_token_ids, params, lora_request, bar)):
            yield position, completions
        return
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
    positions: dict[str, int] = {}
    for position, request_id in enumerate(map(str, llm.enqueue(prompts, params, lora_request=lora_request,
                                                                use_tqdm=False))):
        # vLLM returns its internal id, '<id>-<8 random characters>'; outputs carry '<id>'.
        positions[request_id] = positions[request_id.rsplit("-", 1)[0]] = position
    engine, pending = llm.llm_engine, len(prompts)
    while pending and engine.has_unfinished_requests():
        for output in engine.step():
            if not output.finished:
                continue
            if str(output.request_id) not in positions:
                raise EngineError(f"vLLM returned request {output.request_id!r}, which was not submitted here")
            completions = [_completion(i, out) for i, out in enumerate(output.outputs)]
            pending -= 1
            if bar is not None:
                bar.advance(1, samples=len(completions), tokens=sum(len(c.token_ids) for c in completions))
            yield positions[str(output.request_id)], completions
    if pending:
        raise EngineError(f"the vLLM engine stopped with {pending} of {len(prompts)} prompts unfinished")


def completed_groups(stream: Iterable[tuple[int, list[Completion]]], sizes: Sequence[int]
                     ) -> Iterator[tuple[int, list[list[Completion]]]]:
    """Regroup ``(position, completions)`` over consecutive groups of ``sizes`` prompts: yields ``(group,
    completions per prompt in order)`` as soon as each group's last prompt has finished."""
    starts = list(accumulate([0, *sizes]))
    owner = [g for g, size in enumerate(sizes) for _ in range(size)]
    done: dict[int, dict[int, list[Completion]]] = {g: {} for g, size in enumerate(sizes) if size}
    for position, completions in stream:
        g = owner[position]
        done[g][position - starts[g]] = completions
        if len(done[g]) == sizes[g]:
            finished = done.pop(g)
            yield g, [finished[k] for k in range(sizes[g])]


def _completion(index: int, out: Any) -> Completion:
    logprobs = None
    if out.logprobs is not None:
        logprobs = [float(step[token].logprob) for step, token in zip(out.logprobs, out.token_ids)]
    return Completion(
        sample_index=index,
        text=out.text,
        token_ids=list(out.token_ids),
        finish_reason=str(out.finish_reason),
        logprobs=logprobs,
    )


def is_pool(llm: Any) -> bool:
    """Whether ``llm`` is a replica pool rather than one ``vllm.LLM``."""
    from rest.engines.replicas import ReplicaPool

    return isinstance(llm, ReplicaPool)


def engine_replicas(llm: Any) -> dict[str, Any]:
    """A phase's record of its engines: how many replicas, and how many died on the way (a pool only)."""
    if not is_pool(llm):
        return {"replicas": 1}
    return {"replicas": len(llm.actors), "replicas_lost": len(llm.lost)}


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
