"""Which implementation runs: ``reference`` (plain PyTorch) or ``fast``.

``fast`` means the compiled C++/OpenMP kernels (``csrc/cpu``) for CPU tensors
and Triton (``kernels/``) + CUDA C (``csrc/cuda``, compiled at run time by
CuPy) for CUDA tensors. When a fast piece is missing, the op falls back to the
reference path and says so once, with the fix; it never fails with a trace.
"""
from __future__ import annotations

import importlib
import warnings

import torch

BACKENDS = ("reference", "fast")

_CPU_MODULES = ("pplr_fast._knn", "pplr_fast._jaccard", "pplr_fast._dbscan",
                "pplr_fast._cross_agreement")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _missing_cpu_kernels() -> str | None:
    for name in _CPU_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            return f"{name} ({err})"
    return None


def _missing_gpu_kernels(op: str) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton, or pip install -e '.[gpu]')"
    if op == "dbscan":
        from .cuda_modules import cupy_problem
        return cupy_problem()
    return None


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Return the implementation that will run ``op`` on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    if device.type == "cuda":
        problem = _missing_gpu_kernels(op)
        fix = "pip install -e '.[gpu]'"
    elif device.type == "cpu":
        problem = _missing_cpu_kernels()
        fix = "rebuild the CPU kernels with: pip install -e ."
    else:
        problem, fix = f"no fast kernels for device type {device.type!r}", "use a CPU or CUDA tensor"
    if problem is None:
        return "fast"
    warn_once(f"{device.type}:{op}",
              f"pplr_fast: the fast {op} kernels are unavailable on {device.type}: {problem}; "
              f"falling back to the reference path ({fix}).")
    return "reference"
