"""Benchmark: verification throughput of rest-em's worker pool vs one sample at a time in one process.

    .venv/bin/python experiments/bench_verify.py [--data ../shared/data] [--math 1600] [--code 328]

Builds a realistic mix from the shared data: GSM8K solutions turned into completions (right, wrong,
conflicting, unmarked; plain numbers and LaTeX such as ``\\frac{144}{2}`` that needs math-verify), judged by
the ``math`` verifier, and HumanEval solutions (canonical, fenced whole functions, broken ones), judged by
the ``code`` verifier in its sandbox. Each family is one ``judge_frame`` call, as the verify phase makes
one per iteration: in this process (``workers=1``), in the pool with forked workers (``pool``: a caller
that runs no other thread) and in the pool with fork-server workers (``pool_forkserver``: a caller that
does). The pool's time includes its start (workers, their imports and warm-up). Every pass must give
identical verdicts. The last line of output is one JSON object with every figure measured;
``ratio_pool_vs_single`` is the headline.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import pandas as pd

from rest.filters.code_verifier import CodeVerifier
from rest.filters.verifiers import MathAnswerVerifier
from rest.phases.verify import available_cores, judge_frame

REPO = Path(__file__).resolve().parents[1]
VERDICT_COLUMNS = ["correct", "reward", "verify__reason", "answer"]


def gsm8k_completions(path: Path, count: int, seed: int) -> pd.DataFrame:
    """``count`` completions of GSM8K problems (4 per problem), each in one of several answer styles."""
    rng = random.Random(seed)
    problems = [json.loads(line) for line in path.read_text().splitlines()]
    rows = []
    for problem in rng.sample(problems, (count + 3) // 4):
        work, _, gold = problem["answer"].rpartition("####")
        gold = gold.strip().replace(",", "")
        work = re.sub(r"<<[^>]*>>", "", work).strip()  # GSM8K's calculator annotations
        for index in range(4):
            rows.append({"prompt_id": problem["question"][:40], "sample_index": index,
                         "completion": f"{work}\n{math_ending(gold, rng)}", "gold": gold})
    return pd.DataFrame(rows[:count])


def math_ending(gold: str, rng: random.Random) -> str:
    """A final-answer sentence: right or wrong, plain or LaTeX, sometimes conflicting or missing."""
    value = int(gold) if gold.lstrip("-").isdigit() else None
    if value is None:
        return f"#### {gold}"
    styles = [
        f"#### {value}",
        f"The answer is $\\boxed{{{value}}}$.",
        f"So the total is $\\boxed{{\\frac{{{2 * value}}}{{2}}}}$.",
        f"The answer is $\\boxed{{{value}.0}}$",
        f"Hence $\\boxed{{\\dfrac{{{3 * value}}}{{3}}}}$ in all.",
        # Forms only math-verify (sympy) can compare: units in \text, a radical, sums, powers of ten.
        f"So she has $\\boxed{{{value}\\text{{ in total}}}}$.",
        f"That gives $\\boxed{{\\sqrt{{{value * value}}}}}$.",
        f"In all: $\\boxed{{{value - 7} + 7}}$",
        f"Total: $\\boxed{{{value / 10:g} \\times 10^{{1}}}}$",
        f"The answer is $\\boxed{{{value + 1}}}$.",  # wrong
        f"So the answer is $\\boxed{{\\frac{{{value + 1}}}{{2}}}}$.",  # wrong, LaTeX
        f"That gives $\\boxed{{\\sqrt{{{value * value + 1}}}}}$.",  # wrong, needs sympy
        f"#### {value}\nWait, actually the answer is {value + 2}.",  # conflicting answers
        f"I think it is about {value}.",  # no marked answer
    ]
    return rng.choice(styles)


def humaneval_completions(path: Path, count: int, seed: int) -> pd.DataFrame:
    """``count`` completions of HumanEval problems: canonical bodies, fenced whole functions, broken ones."""
    rng = random.Random(seed)
    problems = [json.loads(line) for line in path.read_text().splitlines()]
    rows = []
    for index in range(count):
        problem = problems[index % len(problems)]
        gold = {key: problem[key] for key in ("prompt", "test", "entry_point")}
        rows.append({"prompt_id": problem["task_id"], "sample_index": index // len(problems),
                     "completion": code_variant(problem, rng), "gold": gold})
    return pd.DataFrame(rows)


def code_variant(problem: dict, rng: random.Random) -> str:
    """One completion: right (body or fenced function) or broken (wrong result, early return, syntax)."""
    body, name = problem["canonical_solution"], problem["entry_point"]
    whole = problem["prompt"] + body
    renamed = whole.replace(f"def {name}(", "def _canonical(")
    return rng.choice([
        body,
        f"Here is the function:\n```python\n{whole}```\n",
        f"{renamed}\n\ndef {name}(*args, **kwargs):\n    return [_canonical(*args, **kwargs)]\n",  # wrong type
        "    return None\n" + body,
        body.replace(":", "", 1),  # a syntax error
    ])


def build_family(name: str, data: Path, count: int, seed: int) -> tuple[object, pd.DataFrame]:
    """The verifier and the samples of one family."""
    if name == "math":
        return MathAnswerVerifier(), gsm8k_completions(data / "gsm8k" / "train.jsonl", count, seed)
    return CodeVerifier(), humaneval_completions(data / "humaneval" / "HumanEval.jsonl", count, seed)


MODES = ("single", "pool", "pool_forkserver")


def measure(args: argparse.Namespace) -> dict:
    """One timed ``judge_frame`` call in this (fresh) process, after a warm-up on other samples.

    ``single``: ``workers=1``. ``pool``: the pool as this thread-free process gets it (forked workers).
    ``pool_forkserver``: the pool while another thread runs, as in ``rest run`` once MLflow or tqdm has
    started one, so its workers come from a fork server.
    """
    verifier, frame = build_family(args.family, args.data, args.count, args.seed)
    # One-time costs of this process (imports, the sandbox's compiled launcher) are not charged to the
    # single-process figure; the pool's own start (workers, their imports and warm-up) is charged to it.
    judge_frame(*build_family(args.family, args.data, 4, args.seed + 1), workers=1)
    workers = 1 if args.measure == "single" else args.workers
    other_thread = threading.Event()
    if args.measure == "pool_forkserver":
        threading.Thread(target=other_thread.wait, daemon=True).start()
    cpu_before, started = cpu_jiffies(), time.perf_counter()
    judged, errors = judge_frame(verifier, frame, workers=workers)
    seconds, cpu_after = time.perf_counter() - started, cpu_jiffies()
    other_thread.set()
    verdicts = json.dumps([judged[VERDICT_COLUMNS].astype(str).values.tolist(), errors])
    busy, total = (after - before for before, after in zip(cpu_before, cpu_after))
    return {"seconds": seconds, "samples": len(frame), "accuracy": float(judged["correct"].eq(True).mean()),
            "verdicts_sha256": hashlib.sha256(verdicts.encode()).hexdigest(),
            "machine_busy_share": busy / total if total else 0.0}


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (idle and iowait are not busy)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def run_pass(args: argparse.Namespace, family: str, count: int, mode: str) -> dict:
    """``measure`` in a fresh interpreter, so no cache or fork server carries over between passes."""
    command = [sys.executable, __file__, "--measure", mode, "--family", family, "--count", str(count),
               "--data", str(args.data), "--workers", str(args.workers), "--seed", str(args.seed)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--math", type=int, default=1600, help="math samples (GSM8K-based)")
    parser.add_argument("--code", type=int, default=328, help="code samples (HumanEval-based)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="pool size (default: cores)")
    parser.add_argument("--repeats", type=int, default=3, help="passes of each kind; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)  # one pass (internal)
    parser.add_argument("--family", choices=["math", "code"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return

    figures: dict[str, object] = {
        "date": date.today().isoformat(), "cores": available_cores(), "workers": args.workers,
        "repeats": args.repeats, "loadavg_1min_before": round(os.getloadavg()[0], 2),
    }
    totals = dict.fromkeys(MODES, 0.0)
    samples = 0
    for family, count in (("math", args.math), ("code", args.code)):
        if count < 1:
            continue
        passes: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits every mode alike
            for mode in MODES:
                passes[mode].append(run_pass(args, family, count, mode))
        seconds = {mode: statistics.median(p["seconds"] for p in runs) for mode, runs in passes.items()}
        identical = len({p["verdicts_sha256"] for runs in passes.values() for p in runs}) == 1
        figures |= {f"{family}_samples": count, f"{family}_accuracy": round(passes["single"][0]["accuracy"], 4),
                    f"{family}_verdicts_identical": identical}
        for mode, runs in passes.items():
            busy = statistics.median(p["machine_busy_share"] for p in runs)
            figures |= {
                f"{family}_{mode}_s": round(seconds[mode], 3),
                f"{family}_{mode}_s_all": [round(p["seconds"], 3) for p in runs],
                f"{family}_{mode}_samples_per_s": round(count / seconds[mode], 2),
                # Share of the whole machine's CPU busy during the passes, ours and anyone else's
                # (median): how many cores a pass really kept busy, and whether others were running.
                f"{family}_{mode}_machine_busy_share": round(busy, 3),
            }
            totals[mode] += seconds[mode]
        for mode in MODES[1:]:
            figures[f"{family}_ratio_{mode}_vs_single"] = round(seconds["single"] / seconds[mode], 3)
        print(f"{family}: {count} samples, " + ", ".join(f"{mode} {seconds[mode]:.2f} s" for mode in MODES)
              + f", identical verdicts: {identical}", flush=True)
        samples += count
    figures["samples"] = samples
    for mode in MODES:
        figures |= {f"{mode}_s": round(totals[mode], 3), f"{mode}_samples_per_s": round(samples / totals[mode], 2)}
    for mode in MODES[1:]:
        figures[f"ratio_{mode}_vs_single"] = round(totals["single"] / totals[mode], 3)
    figures["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":  # the pool's workers import this file again; only the parent runs the benchmark
    main()
