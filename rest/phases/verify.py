"""Outcome verification: set every sample's canonical ``correct`` and ``reward`` with the recipe's verifier.

Samples are judged in a pool of worker processes (``judge_frame``), because verification is CPU-bound
Python (answer parsing, math-verify's sympy, the code sandbox's interpreters) and one process uses one
core. Small jobs stay in this process: it judges for a moment first and starts a pool only when the
work left would outlast the pool's start; while the workers start, it judges chunks from the other end.
Workers are forks of this process when it runs no other thread, else forks of a clean fork server
(``pool_start_method``). Each worker runs its tasks in its main thread, so the math verifier's SIGALRM
timeouts work there as they do in-process. Verdicts and their order do not depend on which process
judged a row.
"""
from __future__ import annotations

import collections
import math
import multiprocessing
import os
import pickle
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from rest.filters.base import GoldAnswerError, Verdict
from rest.phases.stats import VerifyStats

if TYPE_CHECKING:
    from rest.recipe.schema import Recipe
    from rest.run.rundir import RunDir

# A pool pays off only when the work it takes over outlasts its start, by start method: forked
# workers are up in tens of milliseconds; a fork server and workers that import the verifier take
# about a second on 2 cores. The work is estimated by judging in this process for up to _PROBE_S first.
POOL_START_S = {"fork": 0.25, "forkserver": 1.0}
_PROBE_S = 0.1
# Automatic chunks: _TASKS_PER_WORKER per worker, at most _MAX_CHUNK rows. Few enough that a task's
# round trip (pickling, and the GIL hand-offs between this process's judging and the pool's threads)
# is noise; many enough that the last ones leave little idle time. A per-row time from the probe is
# no basis: the first rows pay for cold caches and it overestimated tenfold, giving tiny chunks.
_TASKS_PER_WORKER = 16
_MAX_CHUNK = 64

Outcome = tuple[Verdict, str | None]  # the verdict, and the data error when the gold did not parse


def judge_frame(
    verifier: Any,
    samples: pd.DataFrame,
    workers: int | None = None,
    chunk_size: int | None = None,
    pool_start_s: float | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Judge every row (in ``workers`` processes, default one per core); a bad gold gives ``correct=None``.

    Returns the samples with ``correct``, ``reward``, ``verify__reason`` and ``answer`` added, in the
    input order, and the data errors by prompt id (a gold that does not parse is never a reward).
    ``workers=1`` judges in this process; ``pool_start_s`` (default: ``POOL_START_S`` of the start
    method) is the least work, in seconds, worth a pool; 0 sends all the work to the pool. A script
    that calls this while running threads needs the ``if __name__ == "__main__":`` guard (a fork
    server's workers import it again).
    """
    rows = samples.to_dict("records")
    workers = available_cores() if workers is None else workers
    return _with_verdicts(samples, judge_rows(verifier, rows, workers, chunk_size, pool_start_s))


def judge_rows(
    verifier: Any,
    rows: list[Mapping[str, Any]],
    workers: int,
    chunk_size: int | None = None,
    pool_start_s: float | None = None,
) -> list[Outcome]:
    """Every row's outcome, in order: here while that is cheaper than starting a pool, else in the pool."""
    outcomes: list[Outcome] = []
    if workers > 1 and not _picklable(verifier):
        warnings.warn(f"verifier {verifier!r} cannot be sent to worker processes; judging in one process")
        workers = 1
    if pool_start_s is None:
        pool_start_s = POOL_START_S[pool_start_method()]
    probe_s = _PROBE_S if pool_start_s > 0 else 0.0
    started = first_done = time.perf_counter()
    while len(outcomes) < len(rows) and (workers <= 1 or time.perf_counter() - started < probe_s):
        outcomes.append(judge_row(verifier, rows[len(outcomes)]))
        if len(outcomes) == 1:  # the first row pays one-time costs (imports): leave it out of the rate
            first_done = time.perf_counter()
    remaining = rows[len(outcomes):]
    # Seconds per row; with one row or none probed, unknown (inf: start the pool).
    per_row = (time.perf_counter() - first_done) / (len(outcomes) - 1) if len(outcomes) > 1 else math.inf
    if len(remaining) < 2 or per_row * len(remaining) < pool_start_s:
        return outcomes + [judge_row(verifier, row) for row in remaining]
    return outcomes + judge_in_pool(verifier, remaining, workers, chunk_size)


def judge_row(verifier: Any, row: Mapping[str, Any]) -> Outcome:
    """One sample's verdict; a GoldAnswerError becomes an unjudged verdict plus its message."""
    try:
        return verifier.judge(row["completion"], row["gold"], row), None
    except GoldAnswerError as err:
        return Verdict(None, "gold_parse_error", None), str(err)


def judge_in_pool(
    verifier: Any, rows: list[Mapping[str, Any]], workers: int, chunk_size: int | None = None
) -> list[Outcome]:
    """``judge_row`` on every row, ``chunk_size`` rows per task, by a process pool and this process; in order.

    Workers take chunks from the front; while some are still starting, this process judges chunks
    from the back. A chunk goes to the pool only once a worker is up and warm (its start-up task, one
    throwaway judgement, came back), so none waits for a worker that is still starting while this
    process could judge it, and a job that turns out smaller than the pool's start ends without it.
    """
    workers = max(1, min(workers, len(rows)))
    size = chunk_size or max(1, min(_MAX_CHUNK, math.ceil(len(rows) / (workers * _TASKS_PER_WORKER))))
    chunks = [rows[start:start + size] for start in range(0, len(rows), size)]
    untaken = collections.deque(range(len(chunks)))
    done: dict[int, list[Outcome]] = {}
    context = _pool_context(verifier)
    # The verifier travels once per worker (initializer), not once per task.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(verifier,))
    starting: list[Future] = []
    finished = threading.Event()
    starter = threading.Thread(target=_start_pool, args=(pool, starting, rows[0], workers, finished), daemon=True)
    if context.get_start_method() == "fork":
        starter.run()  # forks take milliseconds, and must not happen while another thread of ours runs
    else:
        # The first submit waits for the fork server to start and import its preloads (about a
        # second): a thread does that while this one judges.
        starter.start()
    try:
        running: dict[Future, int] = {}
        while len(done) < len(chunks):
            up = sum(future.done() for future in list(starting))
            for future in [future for future in running if future.done()]:
                done[running.pop(future)] = future.result()
            # Two chunks per worker that is up: one it runs, one queued behind it, so that it never
            # waits for this process to hand it the next.
            while untaken and len(running) < 2 * up:
                index = untaken.popleft()
                running[pool.submit(_judge_in_worker, chunks[index])] = index
            if untaken and up < workers:
                # Until every worker is up, this process judges too. Not after: its judging would
                # hold the GIL that the pool's threads need to pass chunks and results (1,600 math
                # samples on 2 cores: 1.7 s when it judged throughout, 1.6 s like this).
                index = untaken.pop()
                done[index] = [judge_row(verifier, row) for row in chunks[index]]
            elif running:
                wait(running, return_when=FIRST_COMPLETED)
    finally:
        finished.set()
        if not starter.is_alive():  # else the starter shuts the pool down once its submits return
            _shut_down(pool, starting)
    return [outcome for index in range(len(chunks)) for outcome in done[index]]


def _start_pool(pool: ProcessPoolExecutor, starting: list[Future], row: Mapping[str, Any], workers: int,
                finished: threading.Event) -> None:
    """Submit one warm-up task per worker; if the job finished meanwhile, shut the pool down."""
    try:
        for _ in range(workers):
            if finished.is_set():
                break
            starting.append(pool.submit(_warm_up, row))
    except RuntimeError:  # shut down by the other thread in the meantime
        pass
    finally:
        if finished.is_set():
            _shut_down(pool, starting)


def _shut_down(pool: ProcessPoolExecutor, starting: list[Future]) -> None:
    # Idle workers exit at once; a job done before some worker was up does not wait for it (it exits
    # once its start-up task is done).
    pool.shutdown(wait=all(future.done() for future in starting), cancel_futures=True)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pool_start_method() -> str:
    """How workers start: ``fork`` while this process runs no other thread, else ``forkserver``.

    A fork copies this process as it is, imports and all, in milliseconds; with no other thread there
    is no lock another thread could hold mid-operation in the copy. With threads (an engine, MLflow)
    the workers fork from a clean server process instead, which costs its start and imports.
    """
    return "fork" if threading.active_count() == 1 else "forkserver"


def _pool_context(verifier: Any) -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context(pool_start_method())
    if context.get_start_method() == "forkserver":
        # The server imports these once and each worker forks from it with them loaded, instead of
        # every worker importing pandas and the verifier again. A verifier may name the modules it
        # imports lazily (``preload_modules``). Takes effect when the server first starts.
        lazy = list(getattr(verifier, "preload_modules", ()))
        context.set_forkserver_preload(["__main__", __name__, type(verifier).__module__, *lazy])
    return context


_worker_verifier: Any = None


def _start_worker(verifier: Any) -> None:
    global _worker_verifier
    _worker_verifier = verifier


def _warm_up(row: Mapping[str, Any]) -> None:
    # One throwaway judgement pays the verifier's lazy imports (math-verify: ~1 s) before the worker
    # counts as up; an error here shows again when the row is judged for real.
    try:
        judge_row(_worker_verifier, row)
    except Exception:
        pass


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
    judged["verify__detail"] = [v.detail for v in verdicts]
    return judged, data_errors


def verify_iteration(recipe: Recipe, run: RunDir, iteration: int) -> VerifyStats:
    """Verify iteration ``iteration``'s samples and write ``verified.parquet``; returns stats."""
    from rest.data.grown import grown_set, is_original
    from rest.filters.registry import build_verifier
    from rest.run.rundir import atomic_write_parquet

    samples = grown_set(recipe, run, iteration)
    verifier = build_verifier(recipe.verifier.name, recipe.verifier.options)
    judged, data_errors = judge_frame(verifier, samples)
    atomic_write_parquet(judged, run.verified(iteration))
    originals = is_original(judged)
    stats = verification_stats(judged[~originals], data_errors)  # the policy's accuracy: samples only
    if recipe.loop.mix_original:
        stats["original_rows"] = int(originals.sum())
        stats["original_correct"] = int(judged.loc[originals, "correct"].eq(True).sum())
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
