"""E-step throughput: rest-em's sample phase vs raw vLLM vs transformers ``generate`` on the same prompts.

    .venv/bin/python experiments/bench_sampling.py [--prompts 256] [--n 8] [--max-tokens 256] [--prompts-per-shard 64]
        [--arms rest,vllm,transformers] [--dtype float32]

(a) rest-em's ``sample_iteration`` (shards, Parquet, progress, stats) in its own process, (b) raw
``vllm.LLM.generate`` with the same engine options (compiled: ``enforce_eager=False``) and the same
SamplingParams in its own process, (c) transformers ``generate`` at batch sizes 8, 16, 32, 64 on the first
``--hf-prompts`` prompts (a rate: its fastest batch size is what is compared). Every arm samples GSM8K
training questions with the built-in model in ``--dtype`` (float32 by default); generated tokens/s excludes engine start-up, which
is reported separately. The last line is one JSON object with every figure, including
``ratio_vs_raw_vllm`` (a/b) and ``ratio_vs_transformers`` (a/c).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def recipe_dict(args: argparse.Namespace, run_dir: str) -> dict:
    """The benchmark's recipe: GSM8K prompts, n samples, compiled vLLM in ``args.dtype``."""
    return {
        "name": "bench_sampling", "seed": 0, "model": "smollm2-135m-instruct",
        "data": {"source": "file", "path": str(args.data), "train_size": args.prompts, "eval_size": 1},
        "prompt": {"system": "Solve the math problem step by step. End with a line '#### <number>'."},
        "sampling": {"n": args.n, "temperature": 0.7, "top_k": 40, "max_tokens": args.max_tokens,
                     "prompts_per_shard": args.prompts_per_shard},
        "engine": {"dtype": args.dtype, "enforce_eager": False, "max_model_len": 1024, "cpu_kvcache_gib": 4},
        "run": {"dir": run_dir}, "tracking": {"enabled": False},
    }


def arm_rest(config: dict) -> dict:
    """(a) rest-em's E-step phase, as `rest sample` runs it."""
    from rest.phases.sample import sample_iteration
    from rest.recipe.schema import validate_recipe
    from rest.run.rundir import RunDir

    recipe = validate_recipe(config)
    run = RunDir(recipe.run_dir())
    run.initialise(recipe)
    stats = sample_iteration(recipe, run, 1)
    return {"tokens": stats["generated_tokens"], "generate_s": stats["generate_s"],
            "startup_s": stats["engine_start_s"], "samples": stats["samples"]}


def arm_vllm(config: dict) -> dict:
    """(b) raw ``LLM.generate`` on the same prompt token ids with the same engine options and params."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from rest.data.problems import load_splits
    from rest.engines.generation import engine_options
    from rest.engines.models import resolve_model
    from rest.phases.sample import build_prompts
    from rest.recipe.schema import validate_recipe

    recipe = validate_recipe(config)
    model = resolve_model(recipe.model)
    prompts = build_prompts(recipe, load_splits(recipe).train, model)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(recipe.engine.cpu_kvcache_gib)))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(recipe.engine.cpu_reserved_cores))
    started = time.perf_counter()
    llm = LLM(**engine_options(recipe.engine, model, recipe.seed + 1))
    startup = time.perf_counter() - started
    cfg = recipe.sampling
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                            max_tokens=cfg.max_tokens)
    started = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts["prompt_token_ids"]],
                           params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    return {"tokens": tokens, "generate_s": seconds, "startup_s": startup,
            "samples": sum(len(out.outputs) for out in outputs)}


def arm_transformers(config: dict, hf_prompts: int, batch_sizes: list[int]) -> dict:
    """(c) transformers ``generate`` (sampling, same temperature/top-k/max tokens) per batch size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rest.data.problems import load_splits
    from rest.engines.models import resolve_model
    from rest.phases.sample import build_prompts
    from rest.recipe.schema import validate_recipe

    recipe = validate_recipe(config)
    model_dir = resolve_model(recipe.model)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, recipe.engine.dtype)).eval()
    startup = time.perf_counter() - started
    prompts = build_prompts(recipe, load_splits(recipe).train.head(hf_prompts), model_dir)
    cfg = recipe.sampling
    # Every prompt n times, as vLLM's n does; batches are cut from this list.
    requests = [list(ids) for ids in prompts["prompt_token_ids"] for _ in range(cfg.n)]
    torch.manual_seed(0)
    results = {"startup_s": startup}
    for size in batch_sizes:
        tokens, begun = 0, time.perf_counter()
        for start in range(0, len(requests), size):
            batch = tokenizer.pad({"input_ids": requests[start:start + size]}, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(**batch, do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k,
                                     max_new_tokens=cfg.max_tokens, pad_token_id=tokenizer.pad_token_id)
            new = out[:, batch["input_ids"].shape[1]:]
            tokens += int(sum(_length(row, tokenizer.eos_token_id, tokenizer.pad_token_id) for row in new.tolist()))
        seconds = time.perf_counter() - begun
        results[f"batch_{size}"] = {"tokens": tokens, "generate_s": seconds, "tokens_per_s": tokens / seconds}
    return results


def _length(row: list[int], eos: int, pad: int) -> int:
    """Generated tokens of one row: up to and including its EOS (what vLLM counts), padding excluded."""
    for i, token in enumerate(row):
        if token == eos:
            return i + 1
    return sum(1 for token in row if token != pad)


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    """Run one arm in a fresh interpreter (so no engine or cache carries over) and return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--arm", arm, "--out", str(out), "--prompts", str(args.prompts),
               "--n", str(args.n), "--max-tokens", str(args.max_tokens), "--hf-prompts", str(args.hf_prompts),
               "--prompts-per-shard", str(args.prompts_per_shard), "--dtype", args.dtype,
               "--data", str(args.data), "--workdir", tmp]
        subprocess.run(cmd, check=True, env=dict(os.environ, VLLM_LOGGING_LEVEL="WARNING"))
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--hf-prompts", type=int, default=32, help="prompts for the transformers arm (a rate)")
    parser.add_argument("--prompts-per-shard", type=int, default=64, help="rest-em's shard size (arm a)")
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--arms", default="rest,vllm,transformers",
                        help="which arms to run; a ratio is printed when both of its arms ran")
    parser.add_argument("--data", type=Path, default=GSM8K)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights, every arm")
    parser.add_argument("--arm", choices=["rest", "vllm", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        config = recipe_dict(args, str(Path(args.workdir or ".") / "run"))
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        result = {"rest": lambda: arm_rest(config), "vllm": lambda: arm_vllm(config),
                  "transformers": lambda: arm_transformers(config, args.hf_prompts, sizes)}[args.arm]()
        args.out.write_text(json.dumps(result))
        return
    figures = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "prompts": args.prompts, "n": args.n,
               "prompts_per_shard": args.prompts_per_shard, "dtype": args.dtype,
               "max_tokens": args.max_tokens, "loadavg_1min_before": os.getloadavg()[0]}
    arms = [arm for arm in ("rest", "vllm", "transformers") if arm in args.arms.split(",")]
    for arm in arms:
        result = run_arm(arm, args)
        if arm == "transformers":
            best = max((k for k in result if k.startswith("batch_")), key=lambda k: result[k]["tokens_per_s"])
            figures["transformers_startup_s"] = result["startup_s"]
            for key, value in result.items():
                if key.startswith("batch_"):
                    figures[f"transformers_{key}_tokens_per_s"] = round(value["tokens_per_s"], 2)
            figures["transformers_best_batch"] = int(best.split("_")[1])
            figures["transformers_tokens_per_s"] = round(result[best]["tokens_per_s"], 2)
        else:
            figures[f"{arm}_tokens"] = result["tokens"]
            figures[f"{arm}_samples"] = result["samples"]
            figures[f"{arm}_generate_s"] = round(result["generate_s"], 2)
            figures[f"{arm}_startup_s"] = round(result["startup_s"], 2)
            figures[f"{arm}_tokens_per_s"] = round(result["tokens"] / result["generate_s"], 2)
        print(f"{arm}: {json.dumps(result)}", flush=True)
    if {"rest", "vllm"} <= set(arms):
        figures["ratio_vs_raw_vllm"] = round(figures["rest_tokens_per_s"] / figures["vllm_tokens_per_s"], 3)
    if {"rest", "transformers"} <= set(arms):
        figures["ratio_vs_transformers"] = round(figures["rest_tokens_per_s"] / figures["transformers_tokens_per_s"], 3)
    figures["loadavg_1min_after"] = os.getloadavg()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
