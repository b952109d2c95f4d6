"""Per-token log-probabilities of sampled completions under a causal LM, with transformers.

What makes it cheaper than a plain forward pass per sample (all measured in experiments/bench_prm.py):
- the prompt, shared by the n samples of a prompt, runs once; its KV cache serves every completion;
- the start every prompt shares (a system prompt, few-shot examples) runs once for all of them;
- completions of a prompt are batched only with others of similar length (little padding);
- only the sampled token's logprob is computed, ``logit[y] - logsumexp(logits)``, a few rows at a
  time, never the full ``[batch, length, vocab]`` log-softmax.
Right padding needs no attention mask: with causal attention a real token never sees the padding after it.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np

Request = tuple[Sequence[int], Sequence[int]]  # (prompt token ids, completion token ids)

# Rows of hidden states sent through the output head at once: bounds the [rows, vocab] logits block.
_HEAD_ROWS = 512
# A batch of completions may pad at most this share of its area.
_MAX_PADDING = 0.2


def load_scoring_model(path: str, dtype: str) -> Any:
    """A causal LM in evaluation mode with weights in ``dtype`` (float32 or bfloat16), on the GPU when there is one.
    Every tensor below is made on ``model.device``."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def completion_logprobs(
    model: Any,
    requests: Sequence[Request],
    batch_tokens: int = 4096,
    share_prompt: bool = True,
    bar: Any = None,
) -> list[np.ndarray]:
    """log pi(y_t | x, y_<t) of every completion token, per request (float32 arrays, in request order).

    ``share_prompt=False`` runs prompt + completion of each request on its own (the plain way; the
    results agree to float rounding and tests compare both).
    """
    import torch

    out: list[np.ndarray | None] = [None] * len(requests)
    with torch.inference_mode():
        if not share_prompt:
            for i, (prompt, completion) in enumerate(requests):
                out[i] = _plain(model, list(prompt), list(completion))
                if bar is not None:
                    bar.advance(1, tokens=len(completion))
            return out  # type: ignore[return-value]
        groups = _by_prompt(requests)
        shared = shared_start(list(groups))
        start: tuple[int, Any] = (0, None)
        if shared:
            head = torch.tensor([shared], device=model.device)
            start = (len(shared), model.base_model(input_ids=head, use_cache=True).past_key_values)
        for prompt, members in groups.items():
            for i, lp in _score_group(model, list(prompt), [(i, list(requests[i][1])) for i in members],
                                      batch_tokens, bar, start):
                out[i] = lp
    return out  # type: ignore[return-value]


def _by_prompt(requests: Sequence[Request]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt, _) in enumerate(requests):
        groups.setdefault(tuple(int(t) for t in prompt), []).append(i)
    return groups


# A start shared by every prompt is run once when it is at least this long (shorter ones save nothing).
_MIN_SHARED_START = 16


def shared_start(prompts: Sequence[Sequence[int]]) -> list[int]:
    """The longest start common to every prompt but its last token (which each completion batch feeds), or []
    when there is one prompt or the start is shorter than ``_MIN_SHARED_START``."""
    if len(prompts) < 2:
        return []
    heads = [p[:-1] for p in prompts]
    length = 0
    for column in zip(*heads):
        if any(t != column[0] for t in column):
            break
        length += 1
    return list(heads[0][:length]) if length >= _MIN_SHARED_START else []


def _score_group(
    model: Any, prompt: list[int], members: list[tuple[int, list[int]]], batch_tokens: int, bar: Any,
    start: tuple[int, Any] = (0, None),
) -> list[tuple[int, np.ndarray]]:
    """Score the completions of one prompt: the prompt (but its last token) runs once, then batches.
    ``start``: (length, KV cache) of a start of the prompt already run, which the prompt continues."""
    import torch

    if not prompt:
        raise ValueError("a sample has an empty prompt_token_ids: the first completion token has no context")
    results = [(i, np.zeros(0, np.float32)) for i, c in members if not c]
    members = sorted([(i, c) for i, c in members if c], key=lambda m: -len(m[1]))
    done, cache = start[0], copy.deepcopy(start[1]) if start[1] is not None else None
    if len(prompt) - 1 > done:
        head = torch.tensor([prompt[done:-1]], device=model.device)
        cache = model.base_model(input_ids=head, past_key_values=cache, use_cache=True).past_key_values
    # Each completion is fed as [last prompt token, y_1 .. y_{T-1}], so position t predicts y_t.
    for batch in _batches([len(c) for _, c in members], batch_tokens):
        rows = [members[j] for j in batch]
        width = len(rows[0][1])
        ids = torch.zeros((len(rows), width), dtype=torch.long, device=model.device)
        for r, (_, c) in enumerate(rows):
            ids[r, : len(c)] = torch.tensor([prompt[-1]] + c[:-1], device=model.device)
        past = None
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(rows))
        hidden = model.base_model(input_ids=ids, past_key_values=past, use_cache=cache is not None).last_hidden_state
        lengths = [len(c) for _, c in rows]
        mask = torch.arange(width, device=model.device)[None, :] < torch.tensor(lengths, device=model.device)[:, None]
        targets = torch.tensor([t for _, c in rows for t in c], device=model.device)
        lp = _gather_logprobs(model, hidden[mask], targets)
        for (i, _), piece in zip(rows, np.split(lp, np.cumsum(lengths)[:-1])):
            results.append((i, piece))
        if bar is not None:
            bar.advance(len(rows), tokens=sum(lengths))
    return results


def _batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Consecutive runs of (descending) lengths whose padded area fits the budget and wastes little."""
    batches: list[list[int]] = []
    for j, n in enumerate(lengths):
        if batches:
            current = batches[-1]
            width = lengths[current[0]]
            area = width * (len(current) + 1)
            real = sum(lengths[k] for k in current) + n
            if area <= batch_tokens and area - real <= _MAX_PADDING * area:
                current.append(j)
                continue
        batches.append([j])
    return batches


def _plain(model: Any, prompt: list[int], completion: list[int]) -> np.ndarray:
    """One request, prompt and completion in one forward pass."""
    import torch

    if not completion:
        return np.zeros(0, np.float32)
    if not prompt:
        raise ValueError("a sample has an empty prompt_token_ids: the first completion token has no context")
    ids = torch.tensor([prompt + completion[:-1]], device=model.device)
    hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, len(prompt) - 1 :]
    return _gather_logprobs(model, hidden, torch.tensor(completion, device=model.device))


def _gather_logprobs(model: Any, hidden: Any, targets: Any) -> np.ndarray:
    """``token_logprobs`` as a float32 array."""
    return token_logprobs(model, hidden, targets).cpu().numpy().astype(np.float32)


def token_logprobs(model: Any, hidden: Any, targets: Any) -> Any:
    """logit[target] - logsumexp(logits) per row of hidden states, through the model's output head a block of
    rows at a time (float32; differentiable when ``hidden`` is)."""
    import torch

    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    pieces = []
    for start in range(0, hidden.shape[0], _HEAD_ROWS):
        logits = head(hidden[start : start + _HEAD_ROWS]).float()
        if cap:  # models such as Gemma-2 squash their logits; the distribution is the squashed one
            logits = torch.tanh(logits / cap) * cap
        picked = logits.gather(1, targets[start : start + _HEAD_ROWS, None])[:, 0]
        pieces.append(picked - torch.logsumexp(logits, dim=1))
    return torch.cat(pieces) if pieces else torch.zeros(0, device=hidden.device)
