"""The trained PAV head on the held-out split: predicted step values of the evaluation's sampled answers.

No rollouts and no gold answer: each answer is cut into steps (the pav section's splitter), the head
predicts Q of every prefix p_0 .. p_T from the base model's hidden states, and the answer's predicted
worst advantage is its score. Metrics: ``pav_auroc`` (that score against correctness, Hanley-McNeil
standard error) and ``best_of_n_pav`` (per problem, the answer with the highest predicted Q of the whole).
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from rest.metrics import mean_stderr
from rest.pav.head import (
    ValueHead,
    hidden_features,
    load_feature_model,
    predicted_values,
    prefix_positions,
)
from rest.prm.quality import auroc, best_of_n_prm, hanley_mcneil_stderr
from rest.prm.steps import StepSplitter, step_ends
from rest.recipe.schema import Recipe
from rest.run.rundir import RunDir

PREDICTED_Q = "pav__predicted_q"
PREDICTED_MIN_ADVANTAGE = "pav__predicted_min_advantage"


def head_after(run: RunDir, iteration: int) -> Path | None:
    """The PAV head in force after ``iteration``: the latest one trained at or before it (None before any)."""
    for k in range(iteration, 0, -1):
        directory = run.pav_dir(k) / "head"
        if (directory / "head.npz").is_file():
            return directory
    return None


def score_heldout(recipe: Recipe, run: RunDir, iteration: int, judged: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The evaluation's rows with the head's predictions on the sampled ones, and its metrics ({} without a head)."""
    from transformers import AutoTokenizer

    directory = head_after(run, iteration)
    if directory is None:
        return judged, {}
    started = time.perf_counter()
    head = ValueHead.load(directory)
    tokenizer = AutoTokenizer.from_pretrained(head.features_model)
    splitter = StepSplitter.from_config(recipe.pav)
    rows = judged[(judged["mode"] == "sampled") & judged["correct"].notna()
                  & judged["completion_token_ids"].map(len).gt(0)]
    sequences, positions, prompt_lens = [], [], []
    for prompt, completion in zip(rows["prompt_token_ids"], rows["completion_token_ids"]):
        prompt, completion = [int(t) for t in prompt], [int(t) for t in completion]
        sequences.append(prompt + completion)
        positions.append(prefix_positions(len(prompt), step_ends(tokenizer, completion, splitter)))
        prompt_lens.append(len(prompt))
    model = load_feature_model(head.features_model)
    values = predicted_values(head, hidden_features(model, sequences, positions, prompt_lens))
    scored = rows.assign(**{PREDICTED_Q: [q for q, _ in values], PREDICTED_MIN_ADVANTAGE: [min(a) for _, a in values]})
    merged = judged.copy()
    for column in (PREDICTED_Q, PREDICTED_MIN_ADVANTAGE):  # None on greedy rows
        merged[column] = scored[column].reindex(judged.index)
    labels = scored["correct"].astype(bool).tolist()
    positives, negatives = sum(labels), len(labels) - sum(labels)
    metrics: dict = {"pav_head": str(directory), "pav_eval_samples": len(scored), "pav_eval_correct": positives}
    if positives and negatives:
        auc = auroc(scored[PREDICTED_MIN_ADVANTAGE].tolist(), labels)
        metrics["pav_auroc"], metrics["pav_auroc_stderr"] = auc, hanley_mcneil_stderr(auc, positives, negatives)
    else:
        metrics["pav_auroc"] = metrics["pav_auroc_stderr"] = None
    picks = [best_of_n_prm([q[-1] for q in group[PREDICTED_Q]], group["correct"].tolist())
             for _, group in scored.groupby("prompt_id", sort=False)]
    metrics["best_of_n_pav"], metrics["best_of_n_pav_stderr"] = mean_stderr(picks)
    metrics["pav_scoring_s"] = time.perf_counter() - started
    return merged, metrics
