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

TRITON = "triton"

# The one table of ops: op -> the modules its fast path needs, on a CPU (the compiled
# kernels of csrc/cpu) and on a GPU (Triton; the GPU DBSCAN needs no CuPy, see
# ``fast_cuda.dbscan``). An op that computes kNN lists from features needs ``_knn`` too.
# The classification loss needs nothing compiled on a CPU (torch.compile of its twin).
# Adding an op: one row here (docs/architecture.md walks through the rest).
OP_MODULES: dict[str, dict[str, tuple[str, ...]]] = {
    "knn": {"cpu": ("pplr_fast._knn",), "cuda": (TRITON,)},
    "jaccard": {"cpu": ("pplr_fast._knn", "pplr_fast._jaccard"), "cuda": (TRITON,)},
    "dbscan": {"cpu": ("pplr_fast._dbscan",), "cuda": (TRITON,)},
    "cross_agreement": {"cpu": ("pplr_fast._knn", "pplr_fast._cross_agreement"),
                        "cuda": (TRITON,)},
    "cluster stage": {"cpu": ("pplr_fast._knn", "pplr_fast._jaccard", "pplr_fast._dbscan",
                              "pplr_fast._cross_agreement"), "cuda": (TRITON,)},
    "rerank": {"cpu": ("pplr_fast._rerank",), "cuda": (TRITON,)},
    "classification_loss": {"cpu": (), "cuda": (TRITON,)},
}
# the clustering ops: each is a function of every path module (cluster/ops.py)
CLUSTER_OPS = ("knn", "jaccard", "dbscan", "cross_agreement", "cluster stage")

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


def _modules_of(op: str, device_type: str) -> tuple[str, ...]:
    if op not in OP_MODULES:
        raise ValueError(f"unknown op {op!r}: pplr_fast.backend.OP_MODULES lists {sorted(OP_MODULES)}")
    return OP_MODULES[op][device_type]


def _missing_cpu_kernels(op: str) -> str | None:
    """Why the fast CPU path of ``op`` cannot run here (the first of its compiled modules
    that does not import), or None."""
    for name in _modules_of(op, "cpu"):
        try:
            importlib.import_module(name)
        except ImportError as err:
            return f"{name} ({err})"
    return None


def _missing_gpu_kernels(op: str) -> str | None:
    """Why the fast GPU path of ``op`` cannot run here, or None. (DBSCAN needs no CuPy:
    without it, label propagation in torch ops runs instead, see ``fast_cuda.dbscan``.)"""
    for name in _modules_of(op, "cuda"):
        try:
            importlib.import_module(name)
        except ImportError:
            if name == TRITON:
                return "triton is not installed (pip install triton, or pip install -e '.[gpu-cuda12]')"
            return f"{name} does not import"
    return None


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Return the implementation that will run ``op`` on ``device``.

    ``op`` names what runs, a key of :data:`OP_MODULES` (``"knn"``, ``"jaccard"``,
    ``"dbscan"``, ``"cross_agreement"``, ``"cluster stage"``, ``"rerank"``,
    ``"classification_loss"``); its row says which fast pieces must be present,
    and it keys the warning.
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
