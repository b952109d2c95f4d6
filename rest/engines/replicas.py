"""Data-parallel vLLM on Ray: ``engine.replicas`` engines, each a Ray actor holding one ``vllm.LLM``.

Each replica gets its own resources (``tensor_parallel_size`` GPUs, or CPU cores pinned on a local cluster)
and its own engine seed (:func:`rest.recipe.seeds.replica_seed`). Prompts arrive in groups (the E-step's
shards); group ``g`` goes to replica ``g % replicas``, which queues all of its groups in its engine at once
and streams each group back as it finishes, so the caller writes results group by group exactly as with one
engine. A replica that dies hands its unfinished groups to the survivors; the phase fails only when none is
left, and then the groups already returned are kept (a rerun resumes from them).

Ray is started here (a local cluster, stopped again by :meth:`ReplicaPool.stop`) unless ``engine.ray_address``
or ``RAY_ADDRESS`` names a running cluster.
"""
from __future__ import annotations

import os
import socket
from itertools import accumulate
from typing import Any, Callable, Iterator, Sequence

from rest.engines.generation import (
    Completion,
    EngineError,
    completed_groups,
    generate_stream,
    start_engine,
    stop_engine,
)
from rest.recipe.schema import EngineConfig
from rest.recipe.seeds import replica_seed
from rest.report.progress import console
from rest.run.faults import KILL_ENV, kill_point

# Groups per replica when the caller does not group its prompts: enough for progress and for a dead
# replica's leftovers to spread over the survivors, few enough that each call stays one big batch.
GROUPS_PER_REPLICA = 8


def ray_module() -> Any:
    """The ``ray`` package, or an error that names the extra to install."""
    try:
        import ray
    except ImportError as err:
        raise EngineError("engine.replicas > 1 runs the engines on Ray, which is not installed: "
                          "pip install 'rest-em[ray]'") from err
    return ray


class Replica:
    """The actor: one vLLM engine (``engine.replicas`` of them run as Ray actors)."""

    def __init__(self, cfg: EngineConfig, model: str, seed: int, index: int):
        self.index = index
        self.llm = start_engine(cfg, model, seed)

    def ready(self) -> int:
        return self.index

    def stream(self, groups: list[tuple[int, list[list[int]]]], params: Any, lora_request: Any = None
               ) -> Iterator[tuple[int, list[list[Completion]]]]:
        """Yields ``(group number, completions per prompt)`` as each group finishes; all are queued at once."""
        flat = [ids for _, prompts in groups for ids in prompts]
        stream = generate_stream(self.llm, flat, params, lora_request)
        for k, completions in completed_groups(stream, [len(prompts) for _, prompts in groups]):
            kill_point(f"replica{self.index}:group")
            yield groups[k][0], completions

    def call(self, fn: Callable[[Any, Any], Any], items: Any) -> Any:
        """``fn(llm, items)`` on this replica's engine."""
        return fn(self.llm, items)

    def stop(self) -> None:
        stop_engine(self.llm)


class ReplicaPool:
    """``cfg.replicas`` engines of ``model`` on Ray; :func:`rest.engines.generation.start_engine` returns one."""

    def __init__(self, cfg: EngineConfig, model: str, seed: int):
        self.ray = ray_module()
        self.owns_cluster = connect(self.ray, cfg)
        try:
            options = replica_options(cfg, self.ray.cluster_resources(), local=self.owns_cluster)
            actor = self.ray.remote(Replica)
            single = cfg.model_copy(update={"replicas": 1})
            self.actors = [actor.options(**opts).remote(single, model, replica_seed(seed, r), r)
                           for r, opts in enumerate(options)]
            self._get([a.ready.remote() for a in self.actors], "start")
        except BaseException:
            self.stop()
            raise
        self.alive = set(range(len(self.actors)))
        self.lost: list[int] = []

    def stream(self, prompt_token_ids: Sequence[list[int]], params: Any, groups: Sequence[int] | None = None,
               lora_request: Any = None, bar: Any = None) -> Iterator[tuple[int, list[Completion]]]:
        """Yields ``(position, completions)`` for every prompt, a group at a time as replicas finish them.

        ``groups`` are consecutive group sizes summing to the number of prompts (default: even groups).
        """
        sizes = list(groups) if groups is not None else even_groups(len(prompt_token_ids),
                                                                    len(self.actors) * GROUPS_PER_REPLICA)
        if sum(sizes) != len(prompt_token_ids):
            raise ValueError(f"groups sum to {sum(sizes)} but there are {len(prompt_token_ids)} prompts")
        starts = list(accumulate([0, *sizes]))
        group_ids = {g: [list(map(int, ids)) for ids in prompt_token_ids[starts[g]:starts[g] + sizes[g]]]
                     for g in range(len(sizes)) if sizes[g]}
        streams: dict[Any, tuple[int, set[int]]] = {}

        def launch(assigned: dict[int, list[int]]) -> None:
            for r, gs in assigned.items():
                if gs:
                    call = self.actors[r].stream.options(num_returns="streaming")
                    streams[call.remote([(g, group_ids[g]) for g in gs], params, lora_request)] = (r, set(gs))

        launch(round_robin(sorted(group_ids), sorted(self.alive)))
        while streams:
            ready, _ = self.ray.wait(list(streams), num_returns=1)
            stream = ready[0]
            replica, remaining = streams[stream]
            try:
                g, completions = self.ray.get(next(stream))
            except StopIteration:
                del streams[stream]
                continue
            except self.ray.exceptions.RayActorError as err:
                del streams[stream]
                self._lose(replica, err)
                launch(round_robin(sorted(remaining), sorted(self.alive)))
                continue
            except self.ray.exceptions.RayTaskError as err:
                raise EngineError(f"replica {replica} failed: {err}") from err
            remaining.discard(g)
            if bar is not None:
                bar.advance(len(completions), samples=sum(map(len, completions)),
                            tokens=sum(len(c.token_ids) for cs in completions for c in cs))
            for k, completion in enumerate(completions):
                yield starts[g] + k, completion

    def map(self, fn: Callable[[Any, list], list], items: Sequence[Any]) -> list:
        """``fn(llm, part)`` on a contiguous part of ``items`` per replica; the results in ``items``' order."""
        replicas = sorted(self.alive)
        sizes = even_groups(len(items), len(replicas))
        starts = accumulate([0, *sizes])
        calls = [self.actors[r].call.remote(fn, list(items[s:s + n])) for r, s, n in zip(replicas, starts, sizes) if n]
        return [result for part in self._get(calls, "call") for result in part]

    def stop(self) -> None:
        """Stop every engine and the actors; a local cluster started here is shut down too."""
        for actor in getattr(self, "actors", []):
            try:
                self.ray.get(actor.stop.remote(), timeout=60)
            except Exception:  # a dead replica has nothing left to stop
                pass
            self.ray.kill(actor)
        if self.owns_cluster:
            self.ray.shutdown()

    def _lose(self, replica: int, err: BaseException) -> None:
        if replica in self.alive:  # each of a dead replica's streams reports it
            self.alive.discard(replica)
            self.lost.append(replica)
        if not self.alive:
            raise EngineError(f"every vLLM replica died (the last, replica {replica}: {first_line(err)}); "
                              "the finished groups are kept: rerun to resume") from err
        console().print(f"vLLM replica {replica} died ({first_line(err)}); replicas {sorted(self.alive)} take over "
                        "its prompts", markup=False, highlight=False)

    def _get(self, refs: list, what: str) -> list:
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayError as err:
            raise EngineError(f"a vLLM replica failed to {what}: {err}") from err


def connect(ray: Any, cfg: EngineConfig) -> bool:
    """Join the recipe's (or ``RAY_ADDRESS``'s) cluster, or start a local one; True when started here."""
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except Exception as err:  # ConnectionError, TimeoutError, RuntimeError, depending on how it fails
            raise EngineError(f"cannot reach the Ray cluster at {address!r} (engine.ray_address or RAY_ADDRESS): "
                              f"{first_line(err)}") from err
        return False
    ray.init(include_dashboard=False, log_to_driver=True)
    return True


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast where nothing listens at ``address`` (``ray.init`` would retry for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        raise EngineError(f"cannot reach the Ray cluster at {address!r} (engine.ray_address or RAY_ADDRESS): "
                          f"{first_line(err)}") from err


def replica_options(cfg: EngineConfig, resources: dict[str, float], local: bool) -> list[dict[str, Any]]:
    """Ray actor options per replica: GPUs where the cluster has them, else CPU cores (pinned when local)."""
    n = cfg.replicas
    if resources.get("GPU", 0) > 0:
        need, have = n * cfg.tensor_parallel_size, resources["GPU"]
        if need > have:
            raise EngineError(f"engine.replicas={n} x tensor_parallel_size={cfg.tensor_parallel_size} needs {need} "
                              f"GPUs but the Ray cluster has {have:g}")
        return [{"num_gpus": cfg.tensor_parallel_size, "num_cpus": 1} for _ in range(n)]
    have = int(resources.get("CPU", 0))
    cores = cfg.cpu_cores_per_replica or have // n
    if cores < 1 or n * cores > have:
        raise EngineError(f"engine.replicas={n} x {max(cores, 1)} CPU cores needs {n * max(cores, 1)} cores but the "
                          f"Ray cluster has {have}: lower engine.replicas or engine.cpu_cores_per_replica")
    options = []
    usable = sorted(os.sched_getaffinity(0)) if local else []
    for r in range(n):
        env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(cfg.cpu_kvcache_gib))),
               "VLLM_CPU_NUM_OF_RESERVED_CPU": str(cfg.cpu_reserved_cores)}
        if os.environ.get(KILL_ENV):  # fault injection reaches the replicas on any cluster
            env[KILL_ENV] = os.environ[KILL_ENV]
        if local and len(usable) >= n * cores:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, usable[r * cores:(r + 1) * cores]))
        options.append({"num_cpus": cores, "runtime_env": {"env_vars": env}})
    return options


def even_groups(total: int, parts: int) -> list[int]:
    """``parts`` consecutive sizes summing to ``total``, differing by at most one (empty ones dropped)."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (k < extra) for k in range(parts)] if total else []


def round_robin(groups: Sequence[int], replicas: Sequence[int]) -> dict[int, list[int]]:
    """Group k of ``groups`` goes to ``replicas[k % len(replicas)]``."""
    assigned: dict[int, list[int]] = {r: [] for r in replicas}
    for k, g in enumerate(groups):
        assigned[replicas[k % len(replicas)]].append(g)
    return assigned


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
