"""The fast clustering path on a GPU: host code around the Triton kernels and the CUDA C DBSCAN.

The kernels live in ``kernels/`` (installed as ``pplr_fast.kernels``; they take
and return plain tensors) and ``csrc/cuda`` (compiled at run time by CuPy);
this module launches them and wraps their results (e.g. a
:class:`SparseDistance`). The results equal the reference path's
(``reference.py``); the public entry points with input checks and backend
choice are in ``api.py``. Apart from DBSCAN every function runs on any device
(the tests run them on CPU tensors with the Triton interpreter).

kNN, exact: fp16 GEMM filter + fp64 re-rank (the GPU twin of ``fast_cpu``).
Per block of rows:

1. fp16 scores ``s = x~_r x~^T`` (cuBLAS, fp32 accumulation; fp32 output when
   ``torch.mm(..., out_dtype=torch.float32)`` exists, else fp16 output whose
   unit roundoff 2^-11 enters the bound);
2. t = the k-th best score per row (``torch.topk``), and the candidate floor of
   ``csrc/cpu/knn_cpu.cpp`` (``candidate_floor``) with the rigorous per-row
   bound c_i of ``common.rounding_error_bounds``, taken with an accumulation
   roundoff of 2^-22 (tensor-core fp32 accumulation does not round to nearest);
3. every column scoring >= the floor gets its exact fp64 distance
   (``kernels/pair_distance.py``), and the k smallest by ``(d, index)`` are kept
   (stable sorts by d, then by row: a segmented sort);
4. rows with more than ``common.CANDIDATE_CAP`` candidates (near-equidistant
   data) are finished with an fp64 GEMM row and a stable sort instead.

Jaccard: ``kernels/jaccard.py`` (sparse, O(N·k) memory). Cross-agreement:
``kernels/cross_agreement.py`` (all parts in one batched pass).

DBSCAN: ``csrc/cuda/dbscan_cuda.cu`` (hooking with atomicMin + pointer
jumping; its union-find has no natural Triton form). CuPy compiles the
sources with NVRTC (no compiler needed at install time), caches the modules
and launches them on torch's current stream; tensors are shared zero-copy
through DLPack.
"""
from __future__ import annotations

import functools
import importlib.resources
from typing import Callable

import torch

from pplr_fast.kernels.cross_agreement import cross_agreement_from_neighbours_cuda
from pplr_fast.kernels.jaccard import jaccard_from_neighbours_cuda
from pplr_fast.kernels.pair_distance import pair_sq_distance

from . import common
from .checks import available_memory
from .common import (Timer, block_rows, ieee_matmul, neighbour_lists, no_timer,
                     pairwise_sq_distance, rounding_error_bounds, sorted_neighbours)
from .sparse_distance import SparseDistance

ACCUMULATE_ROUNDOFF = 2.0 ** -22
FP16_ROUNDOFF = 2.0 ** -11


# ---------------------------------------------------------------- kNN
@functools.lru_cache(maxsize=None)
def has_fp32_output_mm(device_type: str) -> bool:
    """Whether ``torch.mm(fp16, fp16, out_dtype=torch.float32)`` runs on this device type."""
    a = torch.zeros(2, 2, dtype=torch.float16, device=device_type)
    try:
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def candidate_floor(t: torch.Tensor, c: torch.Tensor, u: float) -> torch.Tensor:
    """``candidate_floor`` of knn_cpu.cpp, row-wise: float64 arithmetic, fp32 result."""
    t = t.double()
    lowest = t - u * t.abs() - 2 * c
    s = torch.where(lowest >= 0, lowest / (1 + u), lowest / (1 - u))
    return (s - 1e-6).float()


def smallest_per_row(rows: torch.Tensor, cols: torch.Tensor, dist: torch.Tensor, n_rows: int,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest ``(dist, col)`` of each row of a COO list whose cols ascend per row.

    Returns (n_rows, k) dist and col; rows holding fewer than k entries are left unset.
    """
    order = torch.sort(dist, stable=True).indices            # ties keep ascending cols
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, cols, dist = rows[order], cols[order], dist[order]
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    keep = slot < k
    out_dist = torch.empty(n_rows, k, dtype=torch.float64, device=rows.device)
    out_index = torch.empty(n_rows, k, dtype=torch.int64, device=rows.device)
    out_dist[rows[keep], slot[keep]] = dist[keep]
    out_index[rows[keep], slot[keep]] = cols[keep]
    return out_dist, out_index


def nearest_neighbours(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN, rows sorted by (fp64 distance, index). Returns (dist, index)."""
    x = x.float().contiguous()
    n = x.shape[0]
    k = min(k, n)
    x_low = x.half()
    fp32_scores = has_fp32_output_mm(x.device.type)
    output_roundoff = 0.0 if fp32_scores else FP16_ROUNDOFF
    bounds = rounding_error_bounds(x, x_low, ACCUMULATE_ROUNDOFF)
    dist = torch.empty(n, k, dtype=torch.float64, device=x.device)
    index = torch.empty(n, k, dtype=torch.int64, device=x.device)
    step = block_rows(n, 4)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        with ieee_matmul():
            if fp32_scores:
                scores = torch.mm(x_low[r0:r1], x_low.T, out_dtype=torch.float32)
            else:
                scores = torch.mm(x_low[r0:r1], x_low.T).float()
        kth = torch.topk(scores, k, dim=1, sorted=False).values.min(dim=1).values
        floor = candidate_floor(kth, bounds[r0:r1], output_roundoff)
        candidate = scores >= floor[:, None]
        del scores
        overflow = candidate.sum(dim=1) > common.CANDIDATE_CAP
        candidate[overflow] = False
        rows, cols = torch.nonzero(candidate, as_tuple=True)    # cols ascend within a row
        del candidate
        d_pairs = pair_sq_distance(x, rows + r0, cols)
        dist[r0:r1], index[r0:r1] = smallest_per_row(rows, cols, d_pairs, r1 - r0, k)
        if bool(overflow.any()):
            over = r0 + torch.nonzero(overflow).flatten()
            with ieee_matmul():
                dist[over], index[over] = sorted_neighbours(pairwise_sq_distance(x[over], x), k)
    return dist, index


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


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:400]}"


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
    """DBSCAN labels of a symmetric distance matrix (dense, or a SparseDistance) on a GPU."""
    crow, col = neighbour_lists(dist, eps)
    return dbscan_cuda(crow, col, min_samples)


@functools.lru_cache(maxsize=None)
def cupy_problem() -> str | None:
    """None when CuPy compiles and runs the DBSCAN kernels here, else a one-line reason."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x, or pip install -e '.[gpu]')"
    except Exception as err:     # a broken CuPy install raises more than ImportError
        return f"CuPy fails to import ({one_line(err)}); reinstall it: pip install cupy-cuda12x"
    try:
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
        crow = torch.tensor([0, 2, 4], dtype=torch.int64, device="cuda")
        col = torch.tensor([0, 1, 0, 1], dtype=torch.int64, device="cuda")
        labels = dbscan_cuda(crow, col, 2).tolist()
    except Exception as err:     # NVRTC errors, driver/toolkit mismatches, missing libraries
        return f"CuPy cannot compile or launch the CUDA kernels here ({one_line(err)})"
    if labels != [0, 0]:
        return f"the CUDA DBSCAN self-check gave {labels} instead of [0, 0]"
    return None
