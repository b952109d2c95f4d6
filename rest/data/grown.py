"""The grown set the filters judge: the E-step's samples, the dataset's reference solutions when asked, repairs.

ReST (Gulcehre et al. 2023, sec. 3) grows "the samples plus the original data": with ``loop.mix_original``
each sampled prompt's reference solution (``data.reference_template``) joins the set as one more row
(``sample_index`` -1, ``policy`` "original"). It is verified, scored and filtered like any sample, so a
reference whose answer does not check out is not trained on either. With a ``repair`` section the repair
phase's verified repairs join the set after verification (:func:`judged_set`). Every row says where it
comes from in its ``origin`` column.
"""
from __future__ import annotations

import pandas as pd

from rest.recipe.schema import Recipe
from rest.run.rundir import RunDir

ORIGINAL_POLICY = "original"
ORIGINAL_INDEX = -1
# Where a row of the judged set comes from (its ``origin`` column).
ORIGIN_SAMPLED = "sampled"  # the policy's own sample (E-step)
ORIGIN_ORIGINAL = ORIGINAL_POLICY  # a reference solution from the data (loop.mix_original)
ORIGIN_RATIONALIZED = "rationalized"  # repaired with the gold answer as a hint (repair.method rationalize)
ORIGIN_REFLECTED = "reflected"  # repaired from a failed attempt and its feedback (repair.method reflect)


def grown_set(recipe: Recipe, run: RunDir, iteration: int) -> pd.DataFrame:
    """Iteration ``iteration``'s samples, with the reference rows appended when ``loop.mix_original``."""
    from rest.phases.sample import read_samples

    samples = read_samples(run, iteration).assign(origin=ORIGIN_SAMPLED)
    if not recipe.loop.mix_original:
        return samples
    from rest.data.problems import load_splits

    originals = original_rows(samples, load_splits(recipe).train, _tokenizer(recipe))
    return pd.concat([samples, originals], ignore_index=True)


def with_origin(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``origin`` column (run directories written before it existed lack it)."""
    if "origin" in frame.columns:
        return frame
    return frame.assign(origin=is_original(frame).map({True: ORIGIN_ORIGINAL, False: ORIGIN_SAMPLED}))


def judged_rows(run: RunDir, iteration: int) -> pd.DataFrame:
    """The verified grown set of ``iteration`` (verify's output), with its ``origin`` column."""
    return with_origin(pd.read_parquet(run.verified(iteration)))


def judged_set(recipe: Recipe, run: RunDir, iteration: int) -> pd.DataFrame:
    """What the PRM and the selection judge: the verified grown set plus, with a ``repair`` section, the
    repair phase's verified repairs."""
    judged = judged_rows(run, iteration)
    if recipe.repair is None:
        return judged
    repaired = pd.read_parquet(run.repaired(iteration))
    return pd.concat([judged, repaired], ignore_index=True) if len(repaired) else judged


def original_rows(samples: pd.DataFrame, problems: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """One row per sampled prompt that has a reference solution (``data.reference_size``), holding it as the
    completion.

    The prompt fields are copied from the prompt's first sample (the exact text and ids the sampler used),
    the completion is the reference tokenised without special tokens, as if the model had written it and
    stopped.
    """
    if "reference" not in problems.columns:
        raise ValueError("the training problems carry no reference solutions: set data.reference_template")
    reference = problems.set_index("prompt_id")["reference"]
    missing = sorted(set(samples["prompt_id"]) - set(reference.index))
    if missing:
        raise ValueError(f"{len(missing)} sampled prompts are not in the training split (e.g. {missing[0]}): "
                         "the data or data.* changed since the E-step")
    rows = samples.drop_duplicates("prompt_id")
    rows = rows[rows["prompt_id"].map(reference).notna()].copy()  # data.reference_size: answer-only problems
    texts = [str(reference[p]) for p in rows["prompt_id"]]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = rows.assign(
        sample_index=ORIGINAL_INDEX, policy=ORIGINAL_POLICY, completion=texts, completion_token_ids=ids,
        completion_tokens=[len(i) for i in ids], finish_reason="stop", truncated=False, origin=ORIGIN_ORIGINAL,
    )
    if "logprobs" in rows.columns:
        rows["logprobs"] = None
    return rows.reset_index(drop=True)


def is_original(frame: pd.DataFrame) -> pd.Series:
    """Which rows are mixed-in reference solutions rather than samples of the policy."""
    if "policy" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["policy"].eq(ORIGINAL_POLICY)


def _tokenizer(recipe: Recipe):
    from transformers import AutoTokenizer

    from rest.engines.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(recipe.model))
