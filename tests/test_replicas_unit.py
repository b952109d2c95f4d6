"""Replica placement, grouping and seeds (rest/engines/replicas.py); the real pool runs in tests/integration."""
from __future__ import annotations

import builtins
import os

import pytest

from rest.engines import replicas
from rest.engines.generation import EngineError
from rest.engines.replicas import even_groups, replica_options, round_robin
from rest.recipe.schema import EngineConfig, validate_recipe
from rest.recipe.seeds import iteration_seeds, replica_seed


def test_even_groups_cover_every_prompt_once_in_order():
    assert even_groups(10, 4) == [3, 3, 2, 2]
    assert even_groups(3, 8) == [1, 1, 1]
    assert even_groups(0, 4) == []
    assert sum(even_groups(1001, 16)) == 1001


def test_round_robin_spreads_groups_over_replicas():
    assert round_robin([0, 1, 2, 3, 4], [0, 1]) == {0: [0, 2, 4], 1: [1, 3]}
    assert round_robin([5, 7], [1]) == {1: [5, 7]}  # the survivor of a dead replica takes its groups


def test_replica_seeds_are_distinct_and_replica_zero_keeps_the_phase_seed():
    recipe = validate_recipe({"name": "x", "data": {"source": "synthetic", "train_size": 8, "eval_size": 4},
                              "loop": {"iterations": 50}})
    all_iteration_seeds = {s for k in range(51) for s in iteration_seeds(recipe, k).values()}
    assert replica_seed(7, 0) == 7
    replica_seeds = {replica_seed(s, r) for s in all_iteration_seeds for r in range(1, 64)}
    assert not replica_seeds & all_iteration_seeds
    assert len({replica_seed(7, r) for r in range(64)}) == 64


def test_cpu_replicas_get_their_own_cores_pinned_on_a_local_cluster(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    opts = replica_options(EngineConfig(replicas=2, cpu_kvcache_gib=1), {"CPU": 4.0}, local=True)
    assert [o["num_cpus"] for o in opts] == [2, 2]
    assert [o["runtime_env"]["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] for o in opts] == ["0,1", "2,3"]
    assert opts[0]["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    remote = replica_options(EngineConfig(replicas=2), {"CPU": 4.0}, local=False)
    assert all("VLLM_CPU_OMP_THREADS_BIND" not in o["runtime_env"]["env_vars"] for o in remote)


def test_gpu_replicas_take_tensor_parallel_size_gpus_each():
    opts = replica_options(EngineConfig(replicas=2, tensor_parallel_size=2), {"CPU": 32.0, "GPU": 4.0}, local=True)
    assert [o["num_gpus"] for o in opts] == [2, 2]
    with pytest.raises(EngineError, match="needs 6 GPUs but the Ray cluster has 4"):
        replica_options(EngineConfig(replicas=3, tensor_parallel_size=2), {"CPU": 32.0, "GPU": 4.0}, local=True)


def test_more_cpu_replicas_than_cores_is_refused():
    with pytest.raises(EngineError, match="engine.replicas=3 x 1 CPU cores needs 3 cores but the Ray cluster has 2"):
        replica_options(EngineConfig(replicas=3), {"CPU": 2.0}, local=True)


def test_missing_ray_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(EngineError, match=r"pip install 'rest-em\[ray\]'"):
        replicas.ray_module()


def test_an_address_where_nothing_listens_fails_fast():
    with pytest.raises(EngineError, match="cannot reach the Ray cluster at 'ray://127.0.0.1:9'"):
        replicas.check_reachable("ray://127.0.0.1:9", timeout_s=2)
    with pytest.raises(EngineError, match="cannot reach the Ray cluster at 'head-without-port'"):
        replicas.check_reachable("head-without-port", timeout_s=2)


def test_a_dead_replica_counts_once_and_the_last_one_ends_the_phase():
    pool = object.__new__(replicas.ReplicaPool)
    pool.alive, pool.lost = {0, 1}, []
    died = RuntimeError("actor died")
    pool._lose(1, died)
    pool._lose(1, died)  # a second stream of the same replica reports it again
    assert (pool.alive, pool.lost) == ({0}, [1])
    with pytest.raises(EngineError, match="every vLLM replica died .* rerun to resume"):
        pool._lose(0, died)


def test_completed_groups_yield_each_group_in_prompt_order_when_its_last_prompt_finishes():
    from rest.engines.generation import completed_groups

    stream = [(3, ["d"]), (0, ["a"]), (2, ["c"]), (1, ["b"])]  # prompts finish out of order
    assert list(completed_groups(stream, [2, 0, 2])) == [(2, [["c"], ["d"]]), (0, [["a"], ["b"]])]
