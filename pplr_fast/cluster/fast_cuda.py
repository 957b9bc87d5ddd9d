"""The fast clustering path on a GPU: host code around the Triton kernels and the CUDA C DBSCAN.

The kernels live in ``kernels/`` (installed as ``pplr_fast.kernels``; they take
and return plain tensors) and ``csrc/cuda`` (compiled at run time by CuPy);
this module launches them and wraps their results (e.g. a
:class:`SparseDistance`). The results equal the reference path's
(``reference.py``); the public entry points with input checks and backend
choice are in ``api.py``. Apart from DBSCAN every function runs on any device
(the tests run them on CPU tensors with the Triton interpreter).

kNN, exact: ``kernels/knn.py`` (``knn_topk``): a fused fp16 Triton GEMM that
keeps a running per-row threshold and candidate list (no score matrix, no host
sync per block), then the fp64 re-rank; its docstring has the error bound and
the throughput arithmetic.

Jaccard: ``kernels/jaccard.py`` (sparse, O(N·k) memory). Cross-agreement:
``kernels/cross_agreement.py`` (all parts in one batched pass).

DBSCAN: ``csrc/cuda/dbscan_cuda.cu`` (hooking with atomicMin + pointer
jumping; its union-find has no natural Triton form). CuPy compiles the
sources with NVRTC (no compiler needed at install time), caches the modules
and launches them on torch's current stream; tensors are shared zero-copy
through DLPack. Where CuPy cannot run, ``dbscan_propagation.py`` (plain torch
ops, the same labels) takes its place, announced loudly
(``pplr_fast.gpu_fallback``), never the reference's Python loop.
"""
from __future__ import annotations

import functools
import importlib.resources
from typing import Callable

import torch

from pplr_fast.kernels.cross_agreement import cross_agreement_from_neighbours_cuda
from pplr_fast.kernels.jaccard import jaccard_from_neighbours_cuda
from pplr_fast.kernels.knn import ACCUMULATE_ROUNDOFF, knn_topk
from pplr_fast.gpu_fallback import cupy_install_hint, report_gpu_fallback

from pplr_fast.utils.errors import one_line
from pplr_fast.utils.memory import available_memory

from .common import Timer, neighbour_lists, no_timer, rounding_error_bounds
from .dbscan_propagation import dbscan_propagation
from .sparse_distance import SparseDistance

# ---------------------------------------------------------------- kNN
def nearest_neighbours(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN, rows sorted by (fp64 distance, index). Returns (dist, index)."""
    x = x.float().contiguous()
    bounds = rounding_error_bounds(x, x.half(), ACCUMULATE_ROUNDOFF)
    return knn_topk(x, min(k, x.shape[0]), bounds)


# ---------------------------------------------------------------- Jaccard
def jaccard_from_neighbours(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                            max_distance: float | None, timer: Timer = no_timer
                            ) -> SparseDistance:
    """Sparse Jaccard distances from kNN lists ``rank`` (N, >= min(k1, N)).

    One pass of kernels, timed as a whole under "jaccard" (no "encoding").
    """
    n = x.shape[0]
    with timer("jaccard"):
        crow, col, val = jaccard_from_neighbours_cuda(
            x, rank[:, :min(k1, n)], k1, k2, max_distance, available_memory(x.device))
        return SparseDistance(n, crow, col, val, cutoff=max_distance)


def jaccard_distance(x: torch.Tensor, k1: int, k2: int,
                     max_distance: float | None) -> SparseDistance:
    """Sparse Jaccard distances of the rows of ``x``: exact kNN, then the kernels."""
    _, rank = nearest_neighbours(x, k1)
    return jaccard_from_neighbours(x, rank, k1, k2, max_distance)


# ---------------------------------------------------------------- cross-agreement
def cross_agreement_from_neighbours(rank_g: torch.Tensor, ranks_p: list[torch.Tensor],
                                    k: int) -> torch.Tensor:
    """(N, N_p) scores from kNN lists sorted by (d, index), self included, each with
    at least min(k + 1, N) columns."""
    size = min(k + 1, rank_g.shape[0])
    stacked = (torch.stack([r[:, :size] for r in ranks_p]) if ranks_p else
               torch.empty(0, rank_g.shape[0], size, dtype=torch.int64, device=rank_g.device))
    return cross_agreement_from_neighbours_cuda(rank_g, stacked, k)


def cross_agreement(x_g: torch.Tensor, x_p: torch.Tensor, k: int) -> torch.Tensor:
    """(N, N_p) scores from the features: exact kNN in every space, then the kernel."""
    size = min(k + 1, x_g.shape[0])
    rank_g = nearest_neighbours(x_g, size)[1]
    ranks_p = [nearest_neighbours(x_p[:, :, p], size)[1] for p in range(x_p.shape[2])]
    return cross_agreement_from_neighbours(rank_g, ranks_p, k)


# ---------------------------------------------------------------- DBSCAN (CUDA C via CuPy)
THREADS = 256
MAX_BLOCKS = 65535

# launch(kernel_name, items, *args): run a kernel over `items` work items
# (grid-stride loops); args are tensors and Python ints.
Launcher = Callable[..., None]


@functools.lru_cache(maxsize=None)
def compiled_module(source_name: str):
    """A ``cupy.RawModule`` of one ``.cu`` file of ``pplr_fast.csrc_cuda`` (compiled once)."""
    import cupy

    source = importlib.resources.files("pplr_fast.csrc_cuda").joinpath(source_name).read_text()
    return cupy.RawModule(code=source)


def torch_stream_in_cupy(index: int):
    """torch's current stream on device ``index`` as a CuPy stream (a context manager)."""
    import cupy

    stream = torch.cuda.current_stream(index)
    if hasattr(cupy.cuda.Stream, "from_external"):      # CuPy >= 14
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, index)


def cupy_launcher(device: torch.device, source_name: str) -> Launcher:
    """Launch the kernels of ``source_name`` on ``device``, on torch's current stream."""
    import cupy
    import numpy as np

    module = compiled_module(source_name)
    index = device.index if device.index is not None else torch.cuda.current_device()

    def launch(kernel: str, items: int, *args) -> None:
        blocks = max(1, min(MAX_BLOCKS, -(-items // THREADS)))
        with cupy.cuda.Device(index), torch_stream_in_cupy(index):
            # inside the stream context, DLPack exchange needs no cross-stream sync
            cupy_args = tuple(cupy.from_dlpack(a) if isinstance(a, torch.Tensor) else np.int64(a)
                              for a in args)
            module.get_function(kernel)((blocks,), (THREADS,), cupy_args)

    return launch


def dbscan_labels(launch: Launcher, crow: torch.Tensor, col: torch.Tensor,
                  min_samples: int) -> torch.Tensor:
    """The host side of ``dbscan_cuda.cu``: init, hook/compress until stable, number, borders.

    ``launch`` runs the kernels: CuPy on a GPU, or the host emulation of the
    tests (tests/dbscan_emulation.cpp), so this loop is the one both exercise.
    """
    n = crow.numel() - 1
    device = crow.device
    core = torch.empty(n, dtype=torch.int32, device=device)
    parent = torch.empty(n, dtype=torch.int64, device=device)
    changed = torch.zeros(1, dtype=torch.int32, device=device)
    if n == 0:
        return parent
    launch("dbscan_init", n, crow, n, min_samples, core, parent)
    while True:                                  # hooking until a pass changes nothing
        changed.zero_()
        launch("dbscan_hook", n, crow, col, n, core, parent, changed)
        if not changed.item():
            break
        while True:                              # pointer jumping until every tree is flat
            changed.zero_()
            launch("dbscan_jump", n, n, parent, changed)
            if not changed.item():
                break
    is_core = core.bool()
    is_root = is_core & (parent == torch.arange(n, device=device))
    cluster_of_root = torch.cumsum(is_root, 0) - 1
    labels = torch.where(is_core, cluster_of_root[parent], -1).contiguous()
    launch("dbscan_border", n, crow, col, n, core, labels)
    return labels


def dbscan_cuda(crow: torch.Tensor, col: torch.Tensor, min_samples: int) -> torch.Tensor:
    """DBSCAN labels (int64, on the graph's device) of a symmetric CSR eps-neighbour graph."""
    crow = crow.to(torch.int64).contiguous()
    col = col.to(torch.int64).contiguous()
    return dbscan_labels(cupy_launcher(crow.device, "dbscan_cuda.cu"), crow, col, min_samples)


def dbscan(dist, eps: float, min_samples: int) -> torch.Tensor:
    """DBSCAN labels of a symmetric distance matrix (dense, or a SparseDistance) on a GPU.

    The CUDA C kernels when CuPy runs here; else label propagation in torch ops
    (the same labels), reported as a substitute in the log and metrics.jsonl.
    """
    crow, col = neighbour_lists(dist, eps)
    problem = cupy_problem() if crow.is_cuda else "the graph is not on a CUDA device"
    if problem is None:
        return dbscan_cuda(crow, col, min_samples)
    report_gpu_fallback("dbscan", crow.device, problem, cupy_install_hint(),
                        substitute="torch label propagation (dbscan_propagation.py)")
    return dbscan_propagation(crow, col, min_samples)


@functools.lru_cache(maxsize=None)
def cupy_problem() -> str | None:
    """None when CuPy compiles and runs the DBSCAN kernels here, else a one-line reason."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return f"CuPy is not installed ({cupy_install_hint()})"
    except Exception as err:     # a broken CuPy install raises more than ImportError
        return (f"CuPy fails to import ({one_line(err, 400, with_type=True)}); "
                f"reinstall it: {cupy_install_hint()}")
    try:
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
        crow = torch.tensor([0, 2, 4], dtype=torch.int64, device="cuda")
        col = torch.tensor([0, 1, 0, 1], dtype=torch.int64, device="cuda")
        labels = dbscan_cuda(crow, col, 2).tolist()
    except Exception as err:     # NVRTC errors, driver/toolkit mismatches, missing libraries
        return ("CuPy cannot compile or launch the CUDA kernels here "
                f"({one_line(err, 400, with_type=True)})")
    if labels != [0, 0]:
        return f"the CUDA DBSCAN self-check gave {labels} instead of [0, 0]"
    return None
