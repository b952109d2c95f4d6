"""Outcome verification: set every sample's canonical ``correct`` and ``reward`` with the recipe's verifier.

Samples are judged in a pool of worker processes (``judge_frame``), because verification is CPU-bound
Python (answer parsing, math-verify's sympy, the code sandbox's interpreters) and one process uses one
core. Small jobs stay in this process: it judges for a moment first and starts a pool only when the
work left would outlast the pool's start; then it keeps judging chunks the workers have not taken.
Workers come from a fork server, not a fork of this process: the caller may hold threads (an
engine, MLflow) that a plain fork would copy mid-operation. Each worker runs its tasks in its main
thread, so the math verifier's SIGALRM timeouts work there as they do in-process.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from rest.filters.base import GoldAnswerError, Verdict

if TYPE_CHECKING:
    from rest.recipe import Recipe
    from rest.rundir import RunDir

# A pool pays off only when the work it takes over outlasts its start (a fork server, then workers
# that import the verifier: about a second on 2 cores). The work is estimated by judging in this
# process for up to _PROBE_S first.
POOL_START_S = 1.0
_PROBE_S = 0.1
# Automatic chunks hold about _TASK_S of work (as the probe measured it): long enough that a task's
# IPC (~0.2 ms) is noise, short enough that the last ones leave little idle time. Without a probe
# the rows are split into _TASKS_PER_WORKER chunks per worker.
_TASK_S = 0.05
_TASKS_PER_WORKER = 16
_MAX_CHUNK = 64

Outcome = tuple[Verdict, str | None]  # the verdict, and the data error when the gold did not parse


def judge_frame(
    verifier: Any,
    samples: pd.DataFrame,
    workers: int | None = None,
    chunk_size: int | None = None,
    pool_start_s: float = POOL_START_S,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Judge every row (in ``workers`` processes, default one per core); a bad gold gives ``correct=None``.

    Returns the samples with ``correct``, ``reward``, ``verify__reason`` and ``answer`` added, in the
    input order, and the data errors by prompt id (a gold that does not parse is never a reward).
    ``workers=1`` judges in this process; ``pool_start_s=0`` sends all the work to the pool.
    A script that calls this needs the usual ``if __name__ == "__main__":`` guard (workers re-import it).
    """
    rows = samples.to_dict("records")
    workers = available_cores() if workers is None else workers
    return _with_verdicts(samples, judge_rows(verifier, rows, workers, chunk_size, pool_start_s))


def judge_rows(
    verifier: Any,
    rows: list[Mapping[str, Any]],
    workers: int,
    chunk_size: int | None = None,
    pool_start_s: float = POOL_START_S,
) -> list[Outcome]:
    """Every row's outcome, in order: here while that is cheaper than starting a pool, else in the pool."""
    outcomes: list[Outcome] = []
    if workers > 1 and not _picklable(verifier):
        warnings.warn(f"verifier {verifier!r} cannot be sent to worker processes; judging in one process")
        workers = 1
    probe_s = _PROBE_S if pool_start_s > 0 else 0.0
    started = time.perf_counter()
    while len(outcomes) < len(rows) and (workers <= 1 or time.perf_counter() - started < probe_s):
        outcomes.append(judge_row(verifier, rows[len(outcomes)]))
        if len(outcomes) == 1:  # the first row pays one-time costs (imports): leave it out of the rate
            first_done = time.perf_counter()
    rest = rows[len(outcomes):]
    # Seconds per row; with one row or none probed, unknown (inf: start the pool, chunk by count).
    per_row = (time.perf_counter() - first_done) / (len(outcomes) - 1) if len(outcomes) > 1 else math.inf
    if len(rest) < 2 or per_row * len(rest) < pool_start_s:
        return outcomes + [judge_row(verifier, row) for row in rest]
    if chunk_size is None and per_row < math.inf:
        chunk_size = max(1, min(_MAX_CHUNK, int(_TASK_S / max(per_row, 1e-9))))
    return outcomes + judge_in_pool(verifier, rest, workers, chunk_size)


def judge_row(verifier: Any, row: Mapping[str, Any]) -> Outcome:
    """One sample's verdict; a GoldAnswerError becomes an unjudged verdict plus its message."""
    try:
        return verifier.judge(row["completion"], row["gold"], row), None
    except GoldAnswerError as err:
        return Verdict(None, "gold_parse_error", None), str(err)


def judge_in_pool(
    verifier: Any, rows: list[Mapping[str, Any]], workers: int, chunk_size: int | None = None
) -> list[Outcome]:
    """``judge_row`` on every row in a process pool, ``chunk_size`` rows per task; results in input order."""
    workers = max(1, min(workers, len(rows)))
    size = chunk_size or max(1, min(_MAX_CHUNK, math.ceil(len(rows) / (workers * _TASKS_PER_WORKER))))
    chunks = [rows[start:start + size] for start in range(0, len(rows), size)]
    done: list[list[Outcome] | None] = [None] * len(chunks)
    # The verifier travels once per worker (initializer), not once per task.
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=_pool_context(verifier), initializer=_start_worker, initargs=(verifier,)
    ) as pool:
        futures = [pool.submit(_judge_in_worker, chunk) for chunk in chunks]
        # This process would only wait, and the workers take a while to start: it judges chunks from
        # the end, each one the pool has not taken yet, until the two meet.
        for index in reversed(range(len(chunks))):
            if not futures[index].cancel():
                break
            done[index] = [judge_row(verifier, row) for row in chunks[index]]
        return [outcome for index, future in enumerate(futures) for outcome in (done[index] or future.result())]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _pool_context(verifier: Any) -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    # The server imports these once and each worker forks from it with them loaded, instead of every
    # worker importing pandas and the verifier again. Only takes effect when the server first starts.
    context.set_forkserver_preload(["__main__", __name__, type(verifier).__module__])
    return context


_worker_verifier: Any = None


def _start_worker(verifier: Any) -> None:
    global _worker_verifier
    _worker_verifier = verifier


def _judge_in_worker(rows: list[Mapping[str, Any]]) -> list[Outcome]:
    return [judge_row(_worker_verifier, row) for row in rows]


def _picklable(verifier: Any) -> bool:
    try:
        pickle.dumps(verifier)
        return True
    except Exception:  # pickling raises many kinds (PicklingError, TypeError, AttributeError)
        return False


def _with_verdicts(samples: pd.DataFrame, outcomes: list[Outcome]) -> tuple[pd.DataFrame, dict[str, str]]:
    """``samples`` with the verdict columns added, and the data errors by prompt id (first one each)."""
    data_errors: dict[str, str] = {}
    for prompt_id, (_, error) in zip(samples["prompt_id"], outcomes):
        if error is not None:
            data_errors.setdefault(str(prompt_id), error)
    verdicts = [verdict for verdict, _ in outcomes]
    judged = samples.copy()
    judged["correct"] = pd.Series(
        [None if v.score is None else v.score >= 1.0 for v in verdicts], index=samples.index, dtype="object"
    )
    judged["reward"] = pd.Series([v.score for v in verdicts], index=samples.index, dtype="float64")
    judged["verify__reason"] = [v.reason for v in verdicts]
    judged["answer"] = [v.answer for v in verdicts]
    return judged, data_errors


def verify_iteration(recipe: Recipe, run: RunDir, iteration: int) -> dict:
    """Verify iteration ``iteration``'s samples and write ``verified.parquet``; returns stats."""
    from rest.filters.registry import build_verifier
    from rest.rundir import atomic_write_parquet
    from rest.sampling import read_samples

    samples = read_samples(run, iteration)
    verifier = build_verifier(recipe.verifier.name, recipe.verifier.options)
    judged, data_errors = judge_frame(verifier, samples)
    atomic_write_parquet(judged, run.verified(iteration))
    stats = verification_stats(judged, data_errors)
    run.write_stats(iteration, "verify", stats)
    return stats


def verification_stats(judged: pd.DataFrame, data_errors: dict[str, str]) -> dict:
    """Accuracy and reasons over judged samples; data errors are listed by prompt id."""
    correct = judged["correct"]
    per_prompt = judged.assign(ok=correct.eq(True)).groupby("prompt_id")["ok"].any()
    return {
        "samples": len(judged),
        "correct": int(correct.eq(True).sum()),
        "unjudged": int(correct.isna().sum()),
        "accuracy": float(correct.eq(True).mean()) if len(judged) else 0.0,
        "prompts_with_correct": int(per_prompt.sum()),
        "reasons": {str(k): int(v) for k, v in judged["verify__reason"].value_counts().items()},
        "data_errors": data_errors,
    }
