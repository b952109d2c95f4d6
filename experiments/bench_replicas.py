"""E-step with Ray replicas against one engine, on the same prompts: what data parallelism costs or gains here.

    .venv/bin/python experiments/bench_replicas.py [--prompts 200] [--n 4] [--replicas 2] [--recipe PATH]

Two arms, each rest-em's own E-step phase (``sample_iteration``) in a fresh process on the same recipe,
prompts and sampling settings: (1) one vLLM engine with every core of the machine, (2) ``--replicas``
engines on a local Ray cluster with ``cores / replicas`` cores each. Reported per arm: engine start-up
(for (2): Ray's start plus the replicas' engines, started at once) and generated tokens/s; the last line is
one JSON object with both and ``ratio_replicas_vs_one`` (tokens/s, start-up excluded) and
``ratio_wall_replicas_vs_one`` (the phase's wall time, start-up included); above 1, the replicas are faster.
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

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "experiments" / "mawps_smollm2" / "outcome.yaml"


def arm(recipe_path: str, replicas: int, prompts: int, n: int, run_dir: str) -> dict:
    """One E-step of the recipe with ``replicas`` engines; its stats and wall time."""
    from rest.phases.sample import sample_iteration
    from rest.recipe.schema import validate_recipe
    from rest.run.rundir import RunDir

    config = yaml.safe_load(Path(recipe_path).read_text())
    config["data"]["path"] = str((REPO / config["data"]["path"]).resolve())
    config["data"]["train_size"] = prompts
    config["sampling"]["n"] = n
    config["engine"].update(replicas=replicas, cpu_kvcache_gib=max(1, 4 // replicas))
    config["tracking"] = {"enabled": False}
    recipe = validate_recipe(config)
    run = RunDir(Path(run_dir))
    run.initialise(recipe)
    started = time.perf_counter()
    stats = sample_iteration(recipe, run, 1)
    return {"replicas": replicas, "wall_s": time.perf_counter() - started, "startup_s": stats["engine_start_s"],
            "generate_s": stats["generate_s"], "tokens": stats["generated_tokens"], "samples": stats["samples"],
            "tokens_per_s": stats["generated_tokens"] / stats["generate_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--arm", type=int, help=argparse.SUPPRESS)  # internal: run one arm, print its JSON
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm is not None:
        print(json.dumps(arm(args.recipe, args.arm, args.prompts, args.n, args.run_dir)))
        return
    results = {}
    for replicas in (1, args.replicas):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--recipe", args.recipe, "--prompts", str(args.prompts),
                   "--n", str(args.n), "--arm", str(replicas), "--run-dir", str(Path(tmp) / "run")]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ))
            if out.returncode != 0:
                sys.exit(f"arm with {replicas} replica(s) failed:\n{out.stderr[-3000:]}")
            results[replicas] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{replicas} engine(s): start-up {results[replicas]['startup_s']:.0f} s, "
                  f"{results[replicas]['tokens_per_s']:.0f} generated tokens/s, wall {results[replicas]['wall_s']:.0f} s")
    one, many = results[1], results[args.replicas]
    assert one["samples"] == many["samples"] == args.prompts * args.n
    print(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "prompts": args.prompts, "n": args.n,
                      "one_engine": one, "replicas": many,
                      "ratio_replicas_vs_one": round(many["tokens_per_s"] / one["tokens_per_s"], 3),
                      "ratio_wall_replicas_vs_one": round(one["wall_s"] / many["wall_s"], 3)}))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
