"""Scale-out keys: docs/scaling.md's recipe fragments validate, and reach vLLM's options and the M-step launcher."""
from __future__ import annotations

import ast
import copy
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

import rest.engines.generation
from rest.engines.generation import EngineError, engine_options
from rest.engines.launch import launch_command
from rest.engines.replicas import replica_options
from rest.recipe.schema import validate_recipe
from rest.run.rundir import RunDir

DOC = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
BASE = {"name": "scale", "data": {"train_size": 4}}
REPLICA_KEYS = {"replicas", "ray_address", "cpu_cores_per_replica"}


@lru_cache(maxsize=1)
def vllm_engine_arg_names() -> frozenset[str]:
    """EngineArgs' fields, read from the installed vLLM's source (importing vLLM takes ~30 s on this machine)."""
    package = Path(importlib.util.find_spec("vllm").submodule_search_locations[0])
    tree = ast.parse((package / "engine" / "arg_utils.py").read_text())
    engine_args = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EngineArgs")
    return frozenset(n.target.id for n in engine_args.body
                     if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))


@pytest.fixture(autouse=True)
def gpu_machine(monkeypatch):
    """The real vLLM option names; a GPU present, as on the machines this page is about."""
    monkeypatch.setattr(rest.engines.generation, "engine_arg_names", lambda: set(vllm_engine_arg_names()))
    monkeypatch.setattr(rest.engines.generation, "_has_gpu", lambda: True)


def merged(fragment: dict) -> dict:
    recipe = copy.deepcopy(BASE)
    for section, values in fragment.items():
        recipe.setdefault(section, {}).update(values)
    return recipe


def doc_fragments() -> list[dict]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)]


def test_engine_arg_names_from_source_know_the_distributed_options():
    assert {"distributed_executor_backend", "pipeline_parallel_size", "tensor_parallel_size",
            "data_parallel_size", "enable_prefix_caching"} <= vllm_engine_arg_names()
    assert len(vllm_engine_arg_names()) > 100


def test_parallel_keys_reach_the_engine_options():
    recipe = validate_recipe(merged({"engine": {
        "tensor_parallel_size": 2, "data_parallel_size": 2, "max_num_seqs": 128,
        "engine_kwargs": {"distributed_executor_backend": "ray", "pipeline_parallel_size": 2}}}))
    options = engine_options(recipe.engine, "model-dir", seed=5)
    assert (options["tensor_parallel_size"], options["data_parallel_size"], options["max_num_seqs"]) == (2, 2, 128)
    assert (options["distributed_executor_backend"], options["pipeline_parallel_size"]) == ("ray", 2)
    assert "data_parallel_size" not in engine_options(validate_recipe(merged({})).engine, "m", seed=0)
    with pytest.raises(EngineError, match="unknown vLLM engine options: distributed_backend"):
        engine_options(validate_recipe(merged({"engine": {"engine_kwargs": {"distributed_backend": "ray"}}})).engine,
                       "m", seed=0)
    with pytest.raises(EngineError, match="sets tensor_parallel_size: use the engine"):
        engine_options(validate_recipe(merged({"engine": {"engine_kwargs": {"tensor_parallel_size": 4}}})).engine,
                       "m", seed=0)


def test_overrides_reach_the_engine_and_the_launcher(tmp_path):
    from rest.recipe.schema import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    recipe = load_recipe(path, ["engine.tensor_parallel_size=4", "engine.engine_kwargs.distributed_executor_backend=ray",
                                "train.launcher=torchrun", "train.num_processes=4"])
    assert engine_options(recipe.engine, "m", seed=0)["distributed_executor_backend"] == "ray"
    command = launch_command(recipe.train, RunDir(tmp_path / "run"), 2)
    assert command[command.index("--nproc_per_node") + 1] == "4"


def test_every_fragment_in_the_scaling_doc_is_a_valid_recipe(tmp_path):
    fragments = doc_fragments()
    assert len(fragments) >= 5
    for fragment in fragments:
        recipe = validate_recipe(merged(fragment), source=f"{DOC.name}: {fragment}")
        options = engine_options(recipe.engine, "m", seed=0)
        for key, value in fragment.get("engine", {}).items():
            if key == "engine_kwargs":
                assert all(options[k] == v for k, v in value.items())
            elif key in REPLICA_KEYS:  # Ray's actor options, not vLLM's
                assert getattr(recipe.engine, key) == value, key
            elif key != "data_parallel_size" or value > 1:
                assert options[key] == value, key
        if recipe.engine.replicas > 1:
            gpus = recipe.engine.replicas * recipe.engine.tensor_parallel_size
            actors = replica_options(recipe.engine, {"CPU": 64.0, "GPU": float(gpus)}, local=False)
            assert [a["num_gpus"] for a in actors] == [recipe.engine.tensor_parallel_size] * recipe.engine.replicas
        train = fragment.get("train", {})
        if train.get("launcher"):
            command = launch_command(recipe.train, RunDir(tmp_path), 1)
            assert str(train["num_processes"]) in command
            assert all(arg in command for arg in train.get("launcher_args", []))
            if train.get("accelerate_config"):
                assert command[command.index("--config_file") + 1] == train["accelerate_config"]
