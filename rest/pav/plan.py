"""Which samples get step values, their step prefixes, and what rolling them out will cost.

Prefixes are the rollout unit: p_0 (the prompt alone) .. p_{T-1} of each chosen sample, in the policy's
sampled tokens, cut where the step splitter cuts (rest/prm/steps.py). Equal prefixes of one prompt
(every p_0 of a prompt, and steps two samples share word for word) are rolled out once and their counts
shared, so the plan counts distinct prefixes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rest.pav.head import prefix_positions
from rest.prm.steps import StepSplitter, assign_steps, token_end_offsets
from rest.recipe.schema import PavConfig


def labelled_samples(judged: pd.DataFrame, cfg: PavConfig, seed: int) -> pd.DataFrame:
    """The judged rows that get step values: judged ones with a completion (only the correct ones unless
    ``cfg.samples`` is ``all``), at most ``cfg.max_per_prompt`` per prompt, picked in seeded order."""
    rows = judged[judged["correct"].notna() & judged["completion_token_ids"].map(len).gt(0)]
    if cfg.samples == "correct":
        rows = rows[rows["correct"].eq(True)]
    if cfg.max_per_prompt is not None and len(rows):
        order = np.random.default_rng(seed).permutation(len(rows))
        rows = rows.iloc[order].groupby("prompt_id", sort=False).head(cfg.max_per_prompt).sort_index()
    return rows


@dataclass(frozen=True)
class Prefix:
    """One distinct rollout start: a prompt and the first tokens of a completion (none for p_0)."""

    prompt_id: str
    completion_ids: tuple[int, ...]
    text: str  # the decoded completion tokens (rollouts are appended to it before verification)
    source: Any  # index label of a chosen row it comes from: its gold and fields go to the verifier


@dataclass
class Plan:
    """The distinct prefixes to roll out and, per chosen sample, which of them are its p_0 .. p_{T-1}."""

    rollouts: int  # per prefix
    max_tokens: int  # per rollout
    prefixes: list[Prefix] = field(default_factory=list)
    sample_prefixes: dict[Any, list[int]] = field(default_factory=dict)  # row label -> positions in prefixes

    @property
    def samples(self) -> int:
        return len(self.sample_prefixes)

    @property
    def steps(self) -> int:
        return sum(len(p) for p in self.sample_prefixes.values())

    @property
    def planned_rollouts(self) -> int:
        return len(self.prefixes) * self.rollouts

    @property
    def max_new_tokens(self) -> int:
        return self.planned_rollouts * self.max_tokens

    def digest(self, prover: str, cfg: PavConfig) -> str:
        """A hash of what the rollouts depend on: the prefixes in order, the prover and the pav settings."""
        keys = [[p.prompt_id, list(p.completion_ids)] for p in self.prefixes]
        text = json.dumps([keys, prover, cfg.model_dump(mode="json"), self.max_tokens], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def sequences(self, chosen: pd.DataFrame, prompts: pd.Series) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """Per labelled sample, in plan order: its prompt (``prompts``, by prompt id) + completion token ids,
        the position of the last token of each prefix p_0 .. p_T in them, and the prompt's length."""
        sequences, positions, prompt_lens = [], [], []
        for row, prefixes in self.sample_prefixes.items():
            sample = chosen.loc[row]
            prompt = [int(t) for t in prompts[sample["prompt_id"]]]
            completion = [int(t) for t in sample["completion_token_ids"]]
            ends = [len(self.prefixes[p].completion_ids) for p in prefixes[1:]] + [len(completion)]
            sequences.append(prompt + completion)
            positions.append(prefix_positions(len(prompt), ends))
            prompt_lens.append(len(prompt))
        return sequences, positions, prompt_lens

    def describe(self, iteration: int) -> str:
        """The cost, in words, before anything runs."""
        return (f"pav iter {iteration}: {self.samples:,} samples, {self.steps:,} steps -> {len(self.prefixes):,} "
                f"distinct prefixes x {self.rollouts} rollouts = {self.planned_rollouts:,} rollouts, "
                f"at most {self.max_new_tokens:,} new tokens")


def make_plan(chosen: pd.DataFrame, tokenizer: Any, splitter: StepSplitter, rollouts: int, max_tokens: int) -> Plan:
    """Cut every chosen sample into steps and collect the distinct prefixes before its last step."""
    plan = Plan(rollouts=rollouts, max_tokens=max_tokens)
    positions: dict[tuple[str, tuple[int, ...]], int] = {}
    for label, row in chosen.iterrows():
        ids = [int(t) for t in row["completion_token_ids"]]
        text, ends = token_end_offsets(tokenizer, ids)
        step_ends = assign_steps(ends, splitter.cuts(text))
        mine = []
        for end in [0, *step_ends[:-1]]:  # p_0 .. p_{T-1}: the tokens before each step
            key = (str(row["prompt_id"]), tuple(ids[:end]))
            if key not in positions:
                positions[key] = len(plan.prefixes)
                plan.prefixes.append(Prefix(key[0], key[1], text[: ends[end - 1]] if end else "", label))
            mine.append(positions[key])
        plan.sample_prefixes[label] = mine
    return plan
