"""What this machine multiplies fast: the precision rule behind ``engine.dtype: auto`` and the M-step's autocast.

bfloat16 where the hardware multiplies it natively (CUDA GPUs with bf16, CPUs with AMX), float16 on CUDA
GPUs without bf16, float32 on other CPUs: there bf16 matrix products are emulated or only partly native
and run slower than float32 (experiments/README.md, bench_sampling.py and bench_train.py).
"""
from __future__ import annotations


def native_bf16() -> bool:
    """Does this machine multiply bf16 matrices in hardware (a CUDA GPU with bf16, or a CPU with AMX)?"""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu.get_capabilities().get("amx_bf16"))
    except AttributeError:  # torch builds without the capability query
        return False


def fast_dtype() -> str:
    """The fastest accurate dtype for inference here (see the module docstring)."""
    import torch

    if native_bf16():
        return "bfloat16"
    return "float16" if torch.cuda.is_available() else "float32"


def resolve_dtype(requested: str) -> str:
    """A recipe's dtype with ``auto`` resolved on this machine."""
    return fast_dtype() if requested == "auto" else requested
