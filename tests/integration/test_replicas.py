"""Data-parallel E-step on a real local Ray cluster: 2 vLLM CPU replicas of the built-in model, 1 core each."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from rest.engines.generation import Completion
from rest.phases.sample import sample_row
from tests.integration.test_sampling import BATCH_RECIPE, check_complete_e_step, digest, rest, write_recipe

pytestmark = pytest.mark.integration

REPLICAS = {**BATCH_RECIPE, "engine": {**BATCH_RECIPE["engine"], "replicas": 2, "cpu_kvcache_gib": 1}}


def ray_processes() -> list[str]:
    """Command lines of Ray's own processes on this machine (a local cluster left behind would show here)."""
    out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout.splitlines()
    alive = [line.split(None, 1) for line in out if not line.lstrip().startswith("Z")]  # zombies have exited
    return [args for _, args in alive if "raylet" in args or "gcs_server" in args]


def test_two_replicas_resume_after_a_kill_and_survive_a_dead_replica(tmp_path, builtin_model):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    assert not ray_processes(), "another Ray cluster runs on this machine"
    recipe_path = write_recipe(tmp_path, REPLICAS)
    run = tmp_path / "run"
    samples_dir = run / "iter_001" / "samples"

    # The phase's process dies after writing its second shard: the replicas' shards so far stay, nothing else.
    killed = rest("sample", str(recipe_path), "--iteration", "1", "--run-dir", str(run),
                  env={"REST_EM_KILL_AT": "sample:after_shard#2"}, cwd=tmp_path)
    assert killed.returncode != 0
    assert "sample of iteration 1 failed" in killed.stderr
    before = {p.name: digest(p) for p in samples_dir.glob("shard-*.parquet")}
    assert len(before) == 2
    assert not ray_processes(), "the killed phase left its local Ray cluster running"

    # The rerun samples the two missing shards, one per replica; replica 1 dies before returning its shard,
    # so replica 0 samples it too.
    resumed = rest("sample", str(recipe_path), "--iteration", "1", "--run-dir", str(run),
                   env={"REST_EM_KILL_AT": "replica1:group"}, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "vLLM replica 1 died" in resumed.stdout + resumed.stderr
    assert all(digest(samples_dir / name) == h for name, h in before.items())
    check_complete_e_step(run, builtin_model)  # 256 prompts x exactly 4 samples, no duplicate, counts agree
    stats = json.loads((run / "iter_001" / "stats" / "sample.json").read_text())
    assert (stats["replicas"], stats["replicas_lost"]) == (2, 1)
    assert not ray_processes(), "the phase did not stop its local Ray cluster"

    samples = pd.concat(pd.read_parquet(p) for p in sorted(samples_dir.glob("shard-*.parquet")))
    one_engine_row = sample_row(SimpleNamespace(prompt_id="p", question="q", prompt_text="t", prompt_token_ids=[1],
                                                gold="1"), Completion(0, "x", [2], "stop", None), 1, builtin_model)
    assert list(samples.columns) == list(one_engine_row)
    # Two replicas with distinct engine seeds: each prompt's samples are not one replica's copy of another's.
    assert samples.groupby("prompt_id")["completion"].nunique().gt(1).mean() > 0.9


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"replicas": 2, "cpu_cores_per_replica": os.cpu_count()},
         f"engine.replicas=2 x {os.cpu_count()} CPU cores needs {2 * os.cpu_count()} cores but the Ray cluster has"),
        ({"replicas": 2, "ray_address": "127.0.0.1:9"}, "cannot reach the Ray cluster at '127.0.0.1:9'"),
    ],
    ids=["more-replicas-than-cores", "unreachable-cluster"],
)
def test_replica_errors_say_what_is_wrong(tmp_path, builtin_model, overrides, expected):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    recipe = {**REPLICAS, "engine": {**REPLICAS["engine"], **overrides}}
    recipe_path = write_recipe(tmp_path, recipe)
    failed = rest("sample", str(recipe_path), "--iteration", "1", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert failed.returncode != 0
    assert expected in failed.stderr, failed.stderr[-3000:]
    assert not list((tmp_path / "run" / "iter_001" / "samples").glob("shard-*.parquet"))
    assert not ray_processes()


REPLICA_EQUIVALENCE = '''
import json, sys
from rest.data.problems import load_splits
from rest.engines.generation import generate, sampling_params, start_engine, stop_engine
from rest.phases.sample import build_prompts
from rest.prm.vllm_scoring import vllm_completion_logprobs
from rest.recipe.schema import validate_recipe

if __name__ == "__main__":
    config, model = json.loads(sys.argv[1]), sys.argv[2]
    out, requests = {}, None
    for replicas in (1, 2):
        recipe = validate_recipe({**config, "engine": {**config["engine"], "replicas": replicas}})
        prompts = build_prompts(recipe, load_splits(recipe).train.head(40), model)
        ids = list(prompts["prompt_token_ids"])
        llm = start_engine(recipe.engine, model, 0)
        try:
            greedy = generate(llm, ids, sampling_params(recipe.sampling, n=1, temperature=0.0))
        finally:
            stop_engine(llm)
        requests = requests or [(p, c[0].token_ids) for p, c in zip(ids, greedy)]  # one engine's answers, scored twice
        logprobs, _ = vllm_completion_logprobs(model, requests, recipe.engine, "float32", "score")
        out[replicas] = {"texts": [c[0].text for c in greedy], "logprobs": [lp.tolist() for lp in logprobs]}
    print(json.dumps(out))
'''


def test_replicas_generate_and_score_exactly_as_one_engine(tmp_path, builtin_model):
    """Greedy answers and prefill logprobs do not depend on how prompts are split over replicas."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    script = tmp_path / "equivalence.py"
    script.write_text(REPLICA_EQUIVALENCE)
    done = subprocess.run([sys.executable, str(script), json.dumps(REPLICAS), builtin_model], capture_output=True,
                          text=True, timeout=1800, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = result["1"], result["2"]
    assert len(one["texts"]) == 40 and all(one["texts"])
    # Batches differ (40 prompts in one engine, 20 in each replica), so float32 sums may differ in the last
    # bits; a greedy tie could flip on that, nothing else.
    assert sum(a == b for a, b in zip(one["texts"], two["texts"])) >= 38
    assert [len(x) for x in two["logprobs"]] == [len(x) for x in one["logprobs"]]  # the same requests, in order
    assert sum(map(len, one["logprobs"])) > 100
    assert max(abs(a - b) for x, y in zip(one["logprobs"], two["logprobs"]) for a, b in zip(x, y)) < 1e-3
    assert not ray_processes()
