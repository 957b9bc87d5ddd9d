"""Which implementation runs: ``reference`` (plain PyTorch) or ``fast``.

The one backend vocabulary of the package: the clustering ops, the losses,
``python -m pplr_fast.train --backend`` and the benchmarks all take
:data:`BACKENDS` and default to :data:`DEFAULT_BACKEND`.

``fast`` means, for the clustering ops, the compiled C++/OpenMP kernels
(``csrc/cpu``) for CPU tensors and Triton (``kernels/``) + CUDA C
(``csrc/cuda``, compiled at run time by CuPy) for CUDA tensors; for the
classification loss, ``torch.compile`` of the twin on a CPU and the fused
Triton op on a GPU. When a fast piece is missing, :func:`resolve_backend`
falls back to the reference path and says so once, with the fix; it never
fails with a trace.
"""
from __future__ import annotations

import importlib
import warnings

import torch

BACKENDS = ("reference", "fast")
DEFAULT_BACKEND = "fast"

# The compiled CPU kernels each op needs (the losses need none: torch.compile).
CLUSTER_OPS = ("knn", "jaccard", "dbscan", "cross_agreement", "cluster stage")
CPU_MODULES = ("pplr_fast._knn", "pplr_fast._jaccard", "pplr_fast._dbscan",
               "pplr_fast._cross_agreement")

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """A ``RuntimeWarning`` with ``message``, the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def check_backend(backend: str) -> None:
    """``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _missing_cpu_kernels(op: str) -> str | None:
    if op not in CLUSTER_OPS:
        return None
    for name in CPU_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            return f"{name} ({err})"
    return None


def _missing_gpu_kernels(op: str) -> str | None:
    """Why the fast GPU path of ``op`` cannot run here, or None. (DBSCAN needs no CuPy:
    without it, label propagation in torch ops runs instead, see ``fast_cuda.dbscan``.)"""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton, or pip install -e '.[gpu-cuda12]')"
    return None


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Return the implementation that will run ``op`` on ``device``.

    ``op`` names what runs (``"knn"``, ``"jaccard"``, ``"dbscan"``,
    ``"cross_agreement"``, ``"cluster stage"``, ``"classification_loss"``);
    it decides which fast pieces must be present, and keys the warning.
    """
    check_backend(backend)
    if backend == "reference":
        return "reference"
    if device.type == "cuda":
        problem = _missing_gpu_kernels(op)
        fix = "pip install triton (a CUDA torch on Linux brings it)"
    elif device.type == "cpu":
        problem = _missing_cpu_kernels(op)
        fix = "rebuild the CPU kernels with: pip install -e ."
    else:
        problem, fix = f"no fast kernels for device type {device.type!r}", "use a CPU or CUDA tensor"
    if problem is None:
        return "fast"
    if device.type == "cuda":       # on a GPU the reference is a slow path: say it loudly
        from .gpu_fallback import report_gpu_fallback
        report_gpu_fallback(op, device, problem, fix)
        return "reference"
    warn_once(f"{device.type}:{op}",
              f"pplr_fast: the fast {op} kernels are unavailable on {device.type}: {problem}; "
              f"falling back to the reference path ({fix}).")
    return "reference"
