"""Repair phase: turn failures into training data when the policy is too weak to find enough correct samples.

After verification, every prompt with at most ``repair.max_correct`` correct samples is eligible. With
``rationalize`` (STaR, Zelikman et al. 2022) the repairer is asked the question again with the gold answer
as a hint; with ``reflect`` (Re-ReST, Dou et al. 2024) it sees a failed attempt and the verifier's
feedback and writes a corrected solution. Repairs are generated with vLLM (this phase runs in its own
process), verified by the recipe's verifier, and stored with their provenance: ``origin``, the failed
sample they repair (``repairs``), the exact prompt the repairer saw (``repair_prompt``). Their
``prompt_text`` / ``prompt_token_ids`` are the plain training prompt, so the M-step trains on the question
alone, as if the repair had been written without help.

A rationalisation that copies its hint instead of working the problem out is rejected (``correct`` false,
``verify__reason`` names the rule): see :func:`copies_hint`.
"""
from __future__ import annotations

import re
import time

import pandas as pd

from rest.data.grown import ORIGIN_RATIONALIZED, ORIGIN_REFLECTED, ORIGIN_SAMPLED, judged_rows
from rest.data.problems import load_splits
from rest.data.prompts import encode_prompt, render_prompt
from rest.engines.generation import generate, sampling_params, start_engine, stop_engine
from rest.engines.hardware import resolve_dtype
from rest.engines.models import resolve_model
from rest.errors import RestError
from rest.filters.answers import parse_number
from rest.filters.registry import build_verifier
from rest.phases.sample import build_prompts, policy_after, sample_row
from rest.phases.stats import RepairStats
from rest.phases.verify import judge_frame
from rest.recipe.schema import Recipe, RepairConfig
from rest.recipe.seeds import seed_for
from rest.report.progress import phase_progress
from rest.run.rundir import RunDir, atomic_write_parquet

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FINAL_MARKERS = ("####", "\\boxed")
# The reasons copies_hint gives (a rejected rationalisation's verify__reason).
QUOTES_HINT, NO_WORKING = "quotes_hint", "answer_without_working"


class RepairError(RestError, ValueError):
    """The repair section cannot work on these samples (e.g. rationalisation of a gold that is not text)."""


def eligible(verified: pd.DataFrame, max_correct: int) -> pd.DataFrame:
    """The policy's samples of every prompt with at most ``max_correct`` correct ones (wrong rows first)."""
    sampled = verified[verified["origin"] == ORIGIN_SAMPLED] if "origin" in verified.columns else verified
    correct = sampled["correct"].eq(True).groupby(sampled["prompt_id"]).sum()
    prompts = correct.index[correct <= max_correct]
    rows = sampled[sampled["prompt_id"].isin(prompts)]
    return rows.assign(_right=rows["correct"].eq(True)).sort_values(
        ["prompt_id", "_right", "sample_index"], kind="stable").drop(columns="_right")


def feedback(row: pd.Series) -> str:
    """The verifier's verdict on a failed sample, in words a reflector can act on."""
    answer, detail = row.get("answer"), row.get("verify__detail")
    if isinstance(answer, str) and answer:
        return f"The final answer {answer} is wrong."
    if isinstance(detail, str) and detail:
        return f"It is wrong: {detail}"
    reason = row.get("verify__reason")
    return f"It was rejected: {reason}." if isinstance(reason, str) and reason else "It was rejected."


def repair_questions(cfg: RepairConfig, failed: pd.DataFrame) -> pd.DataFrame:
    """One row per repair request: the failed sample it starts from and the question the repairer sees."""
    if cfg.method == "rationalize":
        firsts = failed.drop_duplicates("prompt_id")
        texts = []
        for row in firsts.itertuples(index=False):
            if not isinstance(row.gold, str) or row.gold.lstrip().startswith("{"):
                raise RepairError("repair.method rationalize hints the gold answer, but the gold of prompt "
                                  f"{row.prompt_id} is not a plain answer; use method: reflect for code problems")
            texts.append(cfg.hint_template.replace("{question}", row.question).replace("{answer}", row.gold))
        return firsts.assign(repairs=None, repair_question=texts)
    attempts = failed[failed["correct"].ne(True)].groupby("prompt_id", sort=False).head(cfg.attempts)
    texts = [cfg.reflect_template.replace("{question}", str(row["question"])).replace(
        "{attempt}", str(row["completion"]).strip()).replace("{feedback}", feedback(row))
        for _, row in attempts.iterrows()]
    keys = [f"{row.iteration}/{row.prompt_id}/{row.sample_index}" for row in attempts.itertuples(index=False)]
    return attempts.assign(repairs=keys, repair_question=texts)


def copies_hint(completion: str, gold: str, hint_template: str) -> str | None:
    """Why a rationalisation only restates its hint, or None when it works the problem out.

    Rejected: (1) it quotes the hint: the word "hint", or the hint's own words with the answer filled in
    (for the default template: "the answer is 504"; case and punctuation ignored); (2) nothing before its
    final answer is a number other than the gold: it states the answer without working it out from the
    question's numbers.
    """
    text = _words(completion)
    hint = _words(hint_template.replace("{question}", " ").replace("{answer}", gold))
    hint = re.sub(r"^hint\b", "", hint).strip()
    if re.search(r"\bhint", text) or (hint and f" {hint} " in f" {text} "):
        return QUOTES_HINT
    cut = min([i for i in (completion.find(m) for m in _FINAL_MARKERS) if i >= 0], default=len(completion))
    gold_value = parse_number(gold)
    working = [parse_number(n) for n in _NUMBER.findall(completion[:cut])]
    if not any(n is not None and n != gold_value for n in working):
        return NO_WORKING
    return None


def _words(text: str) -> str:
    """Lower-case words and numbers separated by single spaces (punctuation between words dropped)."""
    return " ".join(re.findall(r"\d+(?:\.\d+)?|[^\W\d_]+", text.casefold()))


def repair_iteration(recipe: Recipe, run: RunDir, iteration: int) -> RepairStats:
    """Repair iteration ``iteration``'s failed prompts; writes ``repair/repaired.parquet`` (verified)."""
    cfg, sampling = recipe.repair, recipe.sampling
    verified = judged_rows(run, iteration)
    failed = eligible(verified, cfg.max_correct)
    stats = {"method": cfg.method, "eligible_prompts": int(failed["prompt_id"].nunique())}
    policy = policy_after(recipe, run, iteration - 1)
    repairer = resolve_model(cfg.model) if cfg.model else policy
    if failed.empty:  # nothing to repair: no engine is started
        repaired = pd.DataFrame()
    else:
        requests = repair_questions(cfg, failed)
        # The training prompt in the policy's tokens: the M-step trains the policy, not the repairer.
        training = build_prompts(recipe, load_splits(recipe).train, policy).set_index("prompt_id", drop=False)
        tokenizer = _tokenizer(repairer)
        shown = [render_prompt(tokenizer, recipe.prompt, q) for q in requests["repair_question"]]
        ids = [encode_prompt(tokenizer, t) for t in shown]
        params = sampling_params(sampling, n=cfg.samples, temperature=cfg.temperature, max_tokens=cfg.max_tokens)
        started = time.perf_counter()
        llm = start_engine(recipe.engine, repairer, seed_for(recipe, iteration, "sample_engine"))
        try:
            with phase_progress(f"repair iter {iteration} ({cfg.method})", total=len(ids)) as bar:
                outputs = generate(llm, ids, params, bar=bar)
        finally:
            stop_engine(llm)
        stats.update(generate_s=time.perf_counter() - started, engine_dtype=resolve_dtype(recipe.engine.dtype))
        frame = repaired_rows(requests, shown, outputs, training, iteration, repairer, cfg, sampling.n)
        if repairer != policy:  # another model's token ids mean nothing to the policy: its own tokens of the text
            frame = in_tokens_of(_tokenizer(policy), frame)
        judged, data_errors = judge_frame(build_verifier(recipe.verifier.name, recipe.verifier.options), frame)
        repaired = reject_copies(judged, cfg)
        stats["data_errors"] = data_errors
    atomic_write_parquet(repaired, run.repaired(iteration))
    stats.update(repair_counts(repaired))
    run.write_stats(iteration, "repair", stats)
    return stats


def repair_counts(repaired: pd.DataFrame) -> dict[str, int]:
    """Attempts, verified repairs, prompts with one, verified copies rejected, tokens generated."""
    if repaired.empty:
        return dict.fromkeys(("attempts", "verified", "prompts_repaired", "rejected_copies", "generated_tokens"), 0)
    correct = repaired["correct"].eq(True)
    return {
        "attempts": len(repaired),
        "verified": int(correct.sum()),
        "prompts_repaired": int(repaired.loc[correct, "prompt_id"].nunique()),
        "rejected_copies": int(repaired["verify__reason"].isin([QUOTES_HINT, NO_WORKING]).sum()),
        "generated_tokens": int(repaired["completion_tokens"].sum()),
    }


def repaired_rows(requests: pd.DataFrame, shown: list[str], outputs: list, training: pd.DataFrame,
                  iteration: int, policy: str, cfg: RepairConfig, first_index: int) -> pd.DataFrame:
    """Sample-shaped rows: the plain training prompt + the repair, with provenance columns."""
    origin = ORIGIN_RATIONALIZED if cfg.method == "rationalize" else ORIGIN_REFLECTED
    rows, per_prompt = [], {}
    for request, prompt, outs in zip(requests.itertuples(index=False), shown, outputs):
        plain = training.loc[request.prompt_id]
        for out in outs:
            # Indices continue after the policy's own samples of the prompt, so (prompt, index) stays a key.
            index = first_index + per_prompt.get(request.prompt_id, 0)
            per_prompt[request.prompt_id] = per_prompt.get(request.prompt_id, 0) + 1
            rows.append({**sample_row(plain, out, iteration, policy, sample_index=index),
                         "origin": origin, "repairs": request.repairs, "repair_prompt": prompt})
    return pd.DataFrame(rows)


def in_tokens_of(tokenizer, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each completion's token ids (and count) from ``tokenizer``'s encoding of its text."""
    ids = [tokenizer(str(text), add_special_tokens=False)["input_ids"] for text in frame["completion"]]
    return frame.assign(completion_token_ids=ids, completion_tokens=[len(i) for i in ids])


def reject_copies(judged: pd.DataFrame, cfg: RepairConfig) -> pd.DataFrame:
    """Rationalisations that restate their hint lose their verdict: ``correct`` false, reward 0, the rule
    that caught them as ``verify__reason``."""
    judged = judged.copy()
    if cfg.method != "rationalize" or judged.empty:
        return judged
    reasons = [copies_hint(str(c), str(g), cfg.hint_template) if ok is True else None
               for c, g, ok in zip(judged["completion"], judged["gold"], judged["correct"])]
    copied = pd.Series([r is not None for r in reasons], index=judged.index)
    judged.loc[copied, "correct"] = False
    judged.loc[copied, "reward"] = 0.0
    judged.loc[copied, "verify__reason"] = [r for r in reasons if r is not None]
    return judged


def _tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)
