"""A trained PAV: a logistic value head on a frozen model's hidden state, fitted to Monte Carlo step values.

Setlur et al. (2024) train a verifier to predict the prover's values so that step advantages are available
where rollouts are not (held-out problems, search). The smallest such verifier: the last hidden state of a
frozen model (the base model, the same for every iteration) at the last token of a prefix, standardised,
and one logistic unit, fitted with soft targets (the prefix's Monte Carlo Q; the complete answer's own
verdict at its end) by L-BFGS with an L2 penalty. Predicted Q of every prefix of an answer gives its
predicted advantages, without rollouts and without the gold answer.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def prefix_positions(prompt_len: int, step_ends: Sequence[int]) -> list[int]:
    """Position of the last token of p_0 (the prompt) .. p_T (the whole answer), given each step's
    exclusive end in completion tokens."""
    return [prompt_len - 1, *(prompt_len + end - 1 for end in step_ends)]


def hidden_features(model: Any, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
                    prompt_lens: Sequence[int] | None = None, bar: Any = None) -> list[np.ndarray]:
    """The last hidden state at ``positions`` of each token sequence, float32 arrays [len(positions), hidden].

    With ``prompt_lens`` (the length of each sequence's prompt), sequences with the same prompt share one
    forward pass of it: the rest of each runs on a copy of its key-value cache (a few-shot prompt is most
    of the tokens of a short answer). Without, each sequence is one forward pass.
    """
    import torch

    out: list[np.ndarray | None] = [None] * len(sequences)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ids in enumerate(sequences):
        cut = len(ids) if prompt_lens is None else prompt_lens[i]
        groups.setdefault((i,) if prompt_lens is None else tuple(int(t) for t in ids[:cut]), []).append(i)
    with torch.inference_mode():
        for key, members in groups.items():
            prompt = list(sequences[members[0]]) if prompt_lens is None else list(key)
            first = model(input_ids=torch.tensor([prompt]), use_cache=prompt_lens is not None)
            for i in members:
                states = first.last_hidden_state[0]
                rest = list(sequences[i])[len(prompt):]
                if rest:
                    again = model(input_ids=torch.tensor([rest]), past_key_values=copy.deepcopy(first.past_key_values),
                                  use_cache=True)
                    states = torch.cat([states, again.last_hidden_state[0]])
                out[i] = states[list(positions[i])].float().numpy()
                if bar is not None:
                    bar.advance(1, tokens=len(rest) or len(prompt))
    return out  # type: ignore[return-value]


def load_feature_model(path: str) -> Any:
    """The frozen model whose hidden states are the head's input (float32, evaluation mode, no LM head)."""
    import torch
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, dtype=torch.float32).eval()


@dataclass
class ValueHead:
    """sigmoid(weight . (h - mean) / scale + bias): the predicted Q of a prefix from its feature h."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    features_model: str

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "head.npz", mean=self.mean, scale=self.scale, weight=self.weight)
        (directory / "head.json").write_text(json.dumps({"bias": self.bias, "features_model": self.features_model}))

    @classmethod
    def load(cls, directory: Path) -> "ValueHead":
        arrays, meta = np.load(directory / "head.npz"), json.loads((directory / "head.json").read_text())
        return cls(arrays["mean"], arrays["scale"], arrays["weight"], float(meta["bias"]), meta["features_model"])


def fit_head(features: np.ndarray, targets: np.ndarray, features_model: str, l2: float = 1e-2,
             iterations: int = 200) -> tuple[ValueHead, float]:
    """A :class:`ValueHead` minimising mean soft-target BCE + ``l2`` * |weight|^2; and its final loss."""
    import torch

    x = np.asarray(features, dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    inputs = torch.tensor((x - mean) / scale)
    labels = torch.tensor(np.asarray(targets, dtype=np.float64))
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def loss_fn():
        logits = inputs @ weight + bias
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) + l2 * (weight ** 2).sum()

    def closure():
        optimiser.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        final = float(loss_fn())
    head = ValueHead(mean, scale, weight.detach().numpy(), float(bias.detach()), features_model)
    return head, final


def predicted_values(head: ValueHead, features: Sequence[np.ndarray]) -> list[tuple[list[float], list[float]]]:
    """Per answer: predicted Q of p_0 .. p_T and the advantages between them."""
    out = []
    for rows in features:
        q = [float(v) for v in head.predict(rows)]
        out.append((q, [b - a for a, b in zip(q, q[1:])]))
    return out
