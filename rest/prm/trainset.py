"""What the implicit PRM is trained on: usable labelled samples, a seeded class-balanced cap, DPO pairs."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class PrmTrainSet:
    """Rows to train on (``frame``), the (correct, incorrect) row pairs for DPO, and how they were chosen."""

    frame: pd.DataFrame  # columns input_ids, prompt_len, label (1.0 correct / 0.0 incorrect), prompt_id
    pairs: list[tuple[int, int]] = field(default_factory=list)  # positions in ``frame``: (correct, incorrect)
    counts: dict = field(default_factory=dict)
    skip_reason: str | None = None  # set when there is nothing usable to train on


def usable_rows(verified: pd.DataFrame, max_length: int) -> tuple[pd.DataFrame, dict]:
    """Rows with a judged outcome, a non-empty completion and at most ``max_length`` tokens in all.

    Returns them with ``input_ids`` (prompt + completion ids as sampled), ``prompt_len`` and ``label``,
    and the counts of rows left out for each reason.
    """
    judged = verified["correct"].notna()
    completion_len = verified["completion_token_ids"].map(len)
    total_len = verified["prompt_token_ids"].map(len) + completion_len
    empty = judged & completion_len.eq(0)
    too_long = judged & ~empty & total_len.gt(max_length)
    keep = judged & ~empty & ~too_long
    rows = verified[keep]
    frame = pd.DataFrame({
        "prompt_id": rows["prompt_id"].to_numpy(),
        "input_ids": [list(p) + list(c) for p, c in zip(rows["prompt_token_ids"], rows["completion_token_ids"])],
        "prompt_len": rows["prompt_token_ids"].map(len).to_numpy(),
        "label": rows["correct"].astype(bool).astype(float).to_numpy(),
    })
    counts = {"rows": len(verified), "unjudged": int((~judged).sum()), "empty_completion": int(empty.sum()),
              "too_long": int(too_long.sum()), "usable": len(frame)}
    return frame, counts


def balanced_cap(frame: pd.DataFrame, max_samples: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_samples`` rows, half from each class where both have enough; the smaller class is
    kept whole and the larger fills the rest. Rows are drawn at random with ``seed``; order is kept."""
    if max_samples is None or len(frame) <= max_samples:
        return frame
    rng = np.random.default_rng(seed)
    positive = np.flatnonzero(frame["label"].to_numpy() == 1.0)
    negative = np.flatnonzero(frame["label"].to_numpy() == 0.0)
    take_pos = min(len(positive), max(max_samples // 2, max_samples - len(negative)))
    take_neg = min(len(negative), max_samples - take_pos)
    chosen = np.concatenate([rng.choice(positive, take_pos, replace=False),
                             rng.choice(negative, take_neg, replace=False)])
    return frame.iloc[np.sort(chosen)].reset_index(drop=True)


def prompt_outcomes(frame: pd.DataFrame) -> dict:
    """Prompts whose usable samples are all correct, all wrong, or mixed (only mixed ones give DPO pairs)."""
    share = frame.groupby("prompt_id")["label"].mean()
    return {"prompts": int(share.size), "prompts_all_correct": int((share == 1.0).sum()),
            "prompts_all_wrong": int((share == 0.0).sum()),
            "prompts_mixed": int(((share > 0) & (share < 1)).sum())}


def dpo_pairs(frame: pd.DataFrame, max_pairs: int | None, seed: int) -> list[tuple[int, int]]:
    """(correct, incorrect) position pairs within each prompt: max(c, w) pairs for a prompt with c correct
    and w wrong samples (the smaller side is reused in turn, so every sample is in a pair); then at most
    ``max_pairs`` of them, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    pairs: list[tuple[int, int]] = []
    labels = frame["label"].to_numpy()
    for _, positions in frame.groupby("prompt_id", sort=True).indices.items():
        right = rng.permutation([p for p in positions if labels[p] == 1.0])
        wrong = rng.permutation([p for p in positions if labels[p] == 0.0])
        if len(right) and len(wrong):
            pairs += [(int(right[i % len(right)]), int(wrong[i % len(wrong)]))
                      for i in range(max(len(right), len(wrong)))]
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = [pairs[i] for i in np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
    return pairs


def build_train_set(verified: pd.DataFrame, loss: str, max_samples: int | None, max_length: int,
                    seed: int) -> PrmTrainSet:
    """The PRM's training data for ``loss`` (ce or dpo), or a skip reason when nothing is usable.

    CE needs both classes (with one class the only lesson is "raise (or lower) every reward"); DPO needs
    a prompt with a correct and an incorrect sample. ``max_samples`` caps CE samples (class-balanced)
    and DPO samples (``max_samples // 2`` pairs, each one correct and one incorrect).
    """
    frame, counts = usable_rows(verified, max_length)
    counts.update(prompt_outcomes(frame) if len(frame) else
                  {"prompts": 0, "prompts_all_correct": 0, "prompts_all_wrong": 0, "prompts_mixed": 0})
    counts["usable_correct"] = int(frame["label"].sum()) if len(frame) else 0
    counts["usable_incorrect"] = len(frame) - counts["usable_correct"]
    # Prompts with one outcome only give no DPO pair; counted for either loss, so the logs show it.
    counts["prompts_without_pairs"] = counts["prompts_all_correct"] + counts["prompts_all_wrong"]
    if not len(frame):
        return PrmTrainSet(frame, counts=counts, skip_reason=_no_rows_reason(counts))
    if loss == "ce":
        if not counts["usable_correct"] or not counts["usable_incorrect"]:
            only = "correct" if counts["usable_correct"] else "incorrect"
            return PrmTrainSet(frame, counts=counts,
                               skip_reason=f"all {len(frame)} usable samples are {only}: CE needs both classes")
        frame = balanced_cap(frame, max_samples, seed)
        pairs: list[tuple[int, int]] = []
    else:
        pairs = dpo_pairs(frame, None if max_samples is None else max(max_samples // 2, 1), seed)
        if not pairs:
            return PrmTrainSet(frame, counts=counts, skip_reason=(
                f"no prompt has both a correct and an incorrect sample ({counts['prompts_all_correct']} all "
                f"correct, {counts['prompts_all_wrong']} all wrong): DPO needs pairs"))
        used = sorted({p for pair in pairs for p in pair})
        remap = {old: new for new, old in enumerate(used)}
        frame = frame.iloc[used].reset_index(drop=True)
        pairs = [(remap[w], remap[lo]) for w, lo in pairs]
    counts["samples_correct"] = int(frame["label"].sum())
    counts["samples_incorrect"] = len(frame) - counts["samples_correct"]
    counts["pairs"] = len(pairs)
    return PrmTrainSet(frame, pairs=pairs, counts=counts)


def _no_rows_reason(counts: dict) -> str:
    return (f"no usable sample among {counts['rows']} ({counts['unjudged']} unjudged, "
            f"{counts['empty_completion']} with an empty completion, {counts['too_long']} over prm.max_length)")
