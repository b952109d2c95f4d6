"""Benchmark: one whole iteration of a recipe, phase by phase, against each phase's floor measured in the same run.

    .venv/bin/python experiments/bench_iteration.py [--recipe experiments/mawps_smollm2/prm.yaml] [--prompts 300]
        [--n 4] [--eval-size 300] [--work DIR] [--baseline "KEY=VALUE ..."] [OVERRIDE ...]

The iteration is rest-em's own: ``rest eval --iteration 0`` first (the base model's evaluation, not timed), then
``rest run RECIPE loop.iterations=1`` timed from the outside, so the iteration's wall time includes the
driver (recipe, manifest, MLflow, one process per phase). Each phase's wall time comes from the manifest and
its work from its stats: generated tokens (sample, eval), scored completion tokens (prm_score, and the PRM
scoring of the evaluation's samples), trained tokens (prm_update, train).

Floors, measured after the iteration on the same machine, each the bare operation on the same work with the
recipe's engine options (model loading and engine start-up excluded):
- sample, eval: one raw ``LLM.generate`` of the phase's prompts with the phase's sampling parameters;
- prm_score: one vLLM prefill (``prompt_logprobs``) of every scored sample per model the phase ran;
- train, prm_update: a bare forward + backward + AdamW loop over batches of the phase's own examples
  (the kept set; the iteration's samples), ``--train-steps`` steps, its time per step times the phase's steps.
``ratio_vs_floor`` = floor seconds / phase seconds (1.0 = as fast as the bare operation with start-up free).
The loop's overhead is the iteration's wall time outside its phases.

``--baseline "KEY=VALUE ..."`` first times the same iteration with those overrides (e.g. the recipe as it ran
before a speed change) in its own run directory, and reports ``speedup_vs_baseline``; ``--baseline-commit SHA``
runs that baseline with rest-em's code as it was at that commit (exported with ``git archive``, installed
without dependencies under ``--work``, and put first on the baseline's ``PYTHONPATH``; the same environment
otherwise). Both iterations run from ``--work`` with absolute recipe and data paths, so neither sees the
checkout's ``rest/`` as the current directory. Run directories and the MLflow store go under ``--work``
(default: a temporary directory); rerun with the same ``--work`` to resume (a timed iteration is not timed
again; one stopped part-way is run again from its start). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
REST = str(Path(sys.executable).with_name("rest"))


def token_lists(column: pd.Series) -> list[list[int]]:
    """Token ids from Parquet (numpy arrays) as lists of Python ints, as vLLM takes them."""
    return [[int(t) for t in ids] for ids in column]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def code_at(commit: str, work: Path) -> Path:
    """rest-em at ``commit``, installed without dependencies under ``work``: on ``PYTHONPATH`` it shadows the
    checkout's editable install."""
    site = work / f"code-{commit}"
    if (site / "rest").is_dir():
        return site
    tree, partial = work / f"tree-{commit}", site.with_suffix(".partial")
    for stale in (tree, partial):  # left by an interrupted earlier call
        shutil.rmtree(stale, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(partial), str(tree)], check=True)
    shutil.rmtree(tree)
    partial.rename(site)
    return site


def timed_iteration(recipe: str, overrides: list[str], run_dir: Path, env: dict) -> float:
    """Iteration 0 (untimed), then iteration 1 by ``rest run``: its wall time in seconds (kept beside the run
    directory, so that a rerun measures the floors without timing a resumed iteration)."""
    timing = run_dir.with_name(f"{run_dir.name}.iteration_s")
    if timing.is_file():
        return float(timing.read_text())
    if run_dir.exists():  # an iteration stopped part-way: resuming it would time only its remainder
        shutil.rmtree(run_dir)
    common = [*overrides, "loop.iterations=1", "--run-dir", str(run_dir)]
    subprocess.run([REST, "eval", recipe, "--iteration", "0", *common], check=True, env=env, cwd=run_dir.parent)
    started = time.perf_counter()
    subprocess.run([REST, "run", recipe, *common], check=True, env=env, cwd=run_dir.parent)
    seconds = time.perf_counter() - started
    timing.write_text(f"{seconds:.3f}\n")
    return seconds


def phase_rows(run_dir: Path) -> dict[str, dict]:
    """Per phase of iteration 1: wall seconds (manifest) and stats."""
    walls = json.loads((run_dir / "manifest.json").read_text())["iterations"]["1"]
    return {phase: {"wall_s": entry["wall_s"], "stats": json.loads((run_dir / "iter_001" / "stats" / f"{phase}.json")
                                                                     .read_text())}
            for phase, entry in walls.items()}


def engine(recipe, model: str, dtype: str | None = None):
    """One ``vllm.LLM`` with the recipe's engine options (a floor is one engine, whatever ``engine.replicas``)."""
    from rest.engines.generation import start_engine

    return start_engine(recipe.engine.model_copy(update={"replicas": 1, **({"dtype": dtype} if dtype else {})}),
                        model, recipe.seed)


def generate_floor(recipe, model: str, prompts: list[list[int]], requests: list) -> tuple[float, int]:
    """Seconds and generated tokens of raw ``LLM.generate`` calls (one per sampling parameters)."""
    from vllm.inputs import TokensPrompt

    from rest.engines.generation import stop_engine

    llm = engine(recipe, model)
    try:
        seconds = tokens = 0
        for params in requests:
            started = time.perf_counter()
            outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
            seconds += time.perf_counter() - started
            tokens += sum(len(c.token_ids) for out in outputs for c in out.outputs)
    finally:
        stop_engine(llm)
    return seconds, tokens


def prefill_floor(recipe, models: list[str], pairs: list[tuple[list[int], list[int]]], dtype: str) -> float:
    """Seconds of one vLLM prefill with ``prompt_logprobs`` of every (prompt, completion), per model."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from rest.engines.generation import stop_engine

    prompts = [TokensPrompt(prompt_token_ids=[*p, *c]) for p, c in pairs]
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    seconds = 0.0
    for model in models:
        llm = engine(recipe, model, dtype)
        try:
            started = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            seconds += time.perf_counter() - started
        finally:
            stop_engine(llm)
    return seconds


def train_floor(model: str, sequences: list[list[int]], batch_size: int, lr: float, autocast: bool,
                steps: int) -> float:
    """Seconds per optimiser step of a bare forward + backward + AdamW loop over ``sequences`` (padded batches
    of ``batch_size``; the first step, a warm-up, not counted)."""
    import torch
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    net.train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr)
    batches = [sequences[i: i + batch_size] for i in range(0, len(sequences), batch_size)]
    batches = (batches * (steps // max(len(batches), 1) + 1))[: steps + 1]
    seconds = 0.0
    for step, batch in enumerate(batches):
        width = max(map(len, batch))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        labels = ids.masked_fill(mask == 0, -100)
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = net(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        if step:  # the first step warms up (allocations, kernels)
            seconds += time.perf_counter() - started
    return seconds / max(len(batches) - 1, 1)


def floors(recipe, run_dir: Path, rows: dict[str, dict], train_steps: int) -> dict[str, float]:
    """Each phase's floor in seconds, on the work the phase did."""
    from transformers import AutoTokenizer

    from rest.data.prompts import with_training_prompts
    from rest.engines.generation import sampling_params
    from rest.engines.models import resolve_model
    from rest.phases.train import training_examples

    base, it = resolve_model(recipe.model), run_dir / "iter_001"
    samples = pd.read_parquet(it / "verified.parquet")
    prompts = token_lists(samples.drop_duplicates("prompt_id")["prompt_token_ids"])
    logprobs = "logprobs" in samples.columns and samples["logprobs"].notna().any()
    out = {"sample": generate_floor(recipe, base, prompts, [sampling_params(recipe.sampling, logprobs=logprobs)])[0]}
    judged = pd.read_parquet(it / "eval" / "samples.parquet")
    max_tokens = recipe.eval.max_tokens or recipe.sampling.max_tokens
    requests = [sampling_params(recipe.sampling, n=1, temperature=0.0, max_tokens=max_tokens)]
    if recipe.eval.samples:
        requests.append(sampling_params(recipe.sampling, n=recipe.eval.samples, temperature=recipe.eval.temperature,
                                        max_tokens=max_tokens))
    eval_prompts = token_lists(judged.drop_duplicates("prompt_id")["prompt_token_ids"])
    out["eval"] = generate_floor(recipe, str(it / "model"), eval_prompts, requests)[0]
    if "prm_score" in rows:
        stats = rows["prm_score"]["stats"]
        models = [str(it / "prm")] + ([] if stats.get("reference_from_sampler") else [base])
        pairs = list(zip(token_lists(samples["prompt_token_ids"]), token_lists(samples["completion_token_ids"])))
        out["prm_score"] = prefill_floor(recipe, models, pairs, recipe.prm.dtype)
        if rows["eval"]["stats"].get("prm_scoring_wall_s"):  # the evaluation scores its samples with the PRM too
            sampled = judged[judged["mode"] == "sampled"]
            pairs = list(zip(token_lists(sampled["prompt_token_ids"]), token_lists(sampled["completion_token_ids"])))
            out["eval"] += prefill_floor(recipe, [str(it / "prm"), base], pairs, recipe.prm.dtype)
    tokenizer = AutoTokenizer.from_pretrained(base)
    kept = with_training_prompts(tokenizer, recipe.prompt, pd.read_parquet(it / "kept.parquet"))
    examples, _ = training_examples(kept, tokenizer.eos_token_id, recipe.train.max_length, recipe.train.overlong)
    train = rows["train"]["stats"]
    step_s = train_floor(base, [e["input_ids"] for e in examples], recipe.train.batch_size,
                         recipe.train.learning_rate, bool(train.get("bf16_autocast")), train_steps)
    out["train"] = train["steps"] * step_s
    update = rows.get("prm_update", {}).get("stats", {})
    if update.get("steps"):
        sequences = [[*p, *c] for p, c in zip(token_lists(samples["prompt_token_ids"]),
                                               token_lists(samples["completion_token_ids"]))]
        step_s = train_floor(base, sequences, recipe.prm.batch_size, recipe.prm.learning_rate, False, train_steps)
        out["prm_update"] = update["steps"] * step_s
    return out


WORK_KEYS = {"sample": "generated_tokens", "eval": "generated_tokens", "prm_score": "completion_tokens",
             "prm_update": "trained_tokens", "train": "tokens"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--recipe", default="experiments/mawps_smollm2/prm.yaml")
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--eval-size", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=20, help="steps of each bare training loop")
    parser.add_argument("--work", type=Path, help="run directories and MLflow store (default: a temporary one)")
    parser.add_argument("--baseline", default="", help="overrides of the baseline iteration, timed first")
    parser.add_argument("--baseline-commit", help="run the baseline iteration with the code of this commit")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from rest.recipe.schema import load_recipe

    work = (args.work or Path(tempfile.mkdtemp(prefix="bench-iteration-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    sized = [f"data.train_size={args.prompts}", f"sampling.n={args.n}", f"data.eval_size={args.eval_size}"]
    figures: dict = {"date": date.today().isoformat(), "cpu": cpu_name(), "cores": os.cpu_count(),
                     "recipe": args.recipe, "overrides": sized + args.overrides}
    recipe_path = str(REPO / args.recipe)
    data_path = load_recipe(recipe_path, args.overrides).data.path
    if data_path and (REPO / data_path).exists():  # relative to the project root: absolute for runs from --work
        sized.append(f"data.path={(REPO / data_path).resolve()}")
    if args.baseline or args.baseline_commit:
        baseline = shlex.split(args.baseline)
        figures["baseline_overrides"] = baseline
        baseline_env = env
        if args.baseline_commit:
            figures["baseline_commit"] = args.baseline_commit
            baseline_env = dict(env, PYTHONPATH=str(code_at(args.baseline_commit, work)))
        figures["baseline_iteration_s"] = round(timed_iteration(recipe_path, sized + args.overrides + baseline,
                                                                work / "baseline", baseline_env), 1)
        figures["baseline_phase_s"] = {p: round(r["wall_s"], 1) for p, r in phase_rows(work / "baseline").items()}
    run_dir = work / "run"
    iteration_s = timed_iteration(recipe_path, sized + args.overrides, run_dir, env)
    rows = phase_rows(run_dir)
    if "eval" not in rows:
        sys.exit(f"iteration 1 of {run_dir} did not reach its evaluation (kept nothing?): use more --prompts or --n")
    recipe = load_recipe(REPO / args.recipe, sized + args.overrides)
    floor_s = floors(recipe, run_dir, rows, args.train_steps)
    phases = {}
    for name, row in rows.items():
        work_done = row["stats"].get(WORK_KEYS.get(name, ""), None)
        phases[name] = {"wall_s": round(row["wall_s"], 1), "work_tokens": work_done,
                        "tokens_per_s": round(work_done / row["wall_s"], 1) if work_done else None}
        if name in floor_s:
            phases[name].update(floor_s=round(floor_s[name], 1),
                                ratio_vs_floor=round(floor_s[name] / row["wall_s"], 3))
    overhead = iteration_s - sum(r["wall_s"] for r in rows.values())
    figures.update(iteration_s=round(iteration_s, 1), overhead_s=round(overhead, 1),
                   overhead_share=round(overhead / iteration_s, 3), phases=phases)
    if "prm_score" in phases and phases["prm_score"]["tokens_per_s"] and phases["sample"]["tokens_per_s"]:
        figures["scored_vs_generated_tokens_per_s"] = round(phases["prm_score"]["tokens_per_s"]
                                                            / phases["sample"]["tokens_per_s"], 2)
    if "baseline_iteration_s" in figures:
        figures["speedup_vs_baseline"] = round(figures["baseline_iteration_s"] / iteration_s, 3)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":  # vLLM spawns its engine process and needs this guard
    sys.exit(main())
