"""The fast clustering path on a CPU: the compiled C++/OpenMP kernels of ``csrc/cpu``.

Each op is an extension module ``pplr_fast._<op>`` (pybind11, built by
``pip install -e .``); this module feeds them numpy views of torch tensors.
The results equal the reference path's (``reference.py``); the public entry
points with input checks and backend choice are in ``api.py``.

kNN: exact, from a low-precision GEMM filter and an fp64 re-rank. A bf16 GEMM
(oneDNN/MKL; faster than fp32 on CPUs with native bf16, ``benchmarks/results/``) over the upper
triangle only — each block of scores serves its rows and, transposed, its
columns — is streamed into the C++ selection of ``csrc/cpu/knn_cpu.cpp`` (a
running top-k threshold per row and the columns that can still reach it under
the rigorous error bound ``common.rounding_error_bounds``); every surviving
column is re-ranked with fp64 distances, as the reference ranks. Without
native bf16 (AVX2-only CPUs, where bf16 GEMMs are emulated and slow) the
filter is the fp32 GEMM over the same upper triangle (x~ = x, so rho = 0 and
only the accumulation bound remains). A row whose candidate set is unusually
large (nearly equidistant data) is finished from its fp64 distances to every row,
computed by the same C++ loop as the re-rank.

Jaccard: sparse and exact, O(N·k) memory (``csrc/cpu/jaccard_cpu.cpp``).
After query expansion each row of V' has a few hundred non-zeros at most, and
pairs whose supports do not meet have distance exactly 1, so only pairs that
share a support column are computed (an inverted index over V'), each once
(j >= i) and mirrored. No N x N array is ever built.

DBSCAN (``csrc/cpu/dbscan_cpu.cpp``): core points are linked by union-find
whose root is the lowest index of its set, so numbering the roots in index
order numbers the clusters exactly as scikit-learn does; a border point takes
the smallest label among its core neighbours.

Cross-agreement: ``csrc/cpu/cross_agreement_cpu.cpp`` on the kNN lists.

The same kernels for a block of rows (what the distributed stage shares out) are in
``row_blocks.py``.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

from . import common
from .common import (Timer, block_rows, ieee_matmul, neighbour_lists, no_timer,
                     rounding_error_bounds)
from .sparse_distance import SparseDistance


# ---------------------------------------------------------------- kNN
@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512-BF16 or AMX)."""
    override = os.environ.get("PPLR_FAST_KNN_PRECISION")
    if override in ("bf16", "fp32"):
        return override == "bf16"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def exact_rows_topk(x: torch.Tensor, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of the given rows from their fp64 distances to every row: the C++
    distance of the re-rank (``sq_distance``), so exact copies stay tied."""
    from pplr_fast import _knn
    return _knn.exact_rows_topk(x.numpy(), np.ascontiguousarray(rows, dtype=np.int64), k)


def low_precision(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """The filter GEMM's operand of ``x``, its output roundoff and bytes per score: bf16
    scores (2 bytes, rounded to bf16: u = 2^-8) on CPUs with native bf16, else fp32 (the
    fp32 accumulator itself: no output rounding)."""
    if cpu_has_native_bf16():
        return x.bfloat16(), 2.0 ** -8, 2
    return x, 0.0, 4


def consume_scores(selection, rows_low: torch.Tensor, cols_low: torch.Tensor, score_bytes: int,
                   *offsets: int) -> None:
    """The filter GEMM ``rows_low @ cols_low.T`` (IEEE fp32 accumulation) fed to the C++
    ``selection`` (``consume_bf16`` or ``consume_fp32``, with ``offsets``: where the block
    starts)."""
    with ieee_matmul():
        scores = rows_low @ cols_low.T
    if score_bytes == 2:
        selection.consume_bf16(scores.view(torch.int16).numpy().view(np.uint16), *offsets)
    else:
        selection.consume_fp32(scores.numpy(), *offsets)


def finish_overflowing(x: torch.Tensor, dist: np.ndarray, index: np.ndarray,
                       overflow: np.ndarray, k: int, first_row: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dist, index)`` as tensors, the rows flagged in ``overflow`` (more than
    ``CANDIDATE_CAP`` candidates: nearly equidistant data) finished by
    :func:`exact_rows_topk`; row t of the arrays is row ``first_row + t`` of ``x``."""
    overflowing = np.flatnonzero(overflow)
    if overflowing.size:
        dist[overflowing], index[overflowing] = exact_rows_topk(x, overflowing + first_row, k)
    return torch.from_numpy(dist), torch.from_numpy(index)


def nearest_neighbours(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN, rows sorted by (fp64 distance, index). Returns (dist, index)."""
    from pplr_fast import _knn
    x = x.float().contiguous()
    n = x.shape[0]
    k = min(k, n)
    dist = np.empty((n, k), dtype=np.float64)
    index = np.empty((n, k), dtype=np.int64)
    x_low, output_roundoff, score_bytes = low_precision(x)
    bounds = rounding_error_bounds(x, x_low, 2.0 ** -24).numpy()
    selection = _knn.SymmetricTopK(n, k, bounds, output_roundoff)
    # Block rows [r0, r1) x columns [r0, n): the blocks cover the upper triangle,
    # half the GEMM. ~6 blocks is enough; memory caps the block at BLOCK_BYTES.
    block = min(block_rows(n, score_bytes), max(512, -(-n // 6)))
    for r0 in range(0, n, block):
        consume_scores(selection, x_low[r0:r0 + block], x_low[r0:], score_bytes, r0)
    dist[:], index[:], overflow = selection.finish(x.numpy(), common.CANDIDATE_CAP)
    return finish_overflowing(x, dist, index, overflow, k)


# ---------------------------------------------------------------- Jaccard
def encode(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int):
    """V' (docs/method.md §2.1 steps 1-5) as numpy CSR arrays ``(crow, col, val)``."""
    from pplr_fast import _jaccard
    return _jaccard.encode(x.float().contiguous().numpy(), rank.contiguous().numpy(),
                           k1, round(k1 / 2), k2)


def jaccard_pairs(encoding, n: int, max_distance: float | None) -> SparseDistance:
    """Jaccard distances of the pairs of V' rows that share a column."""
    from pplr_fast import _jaccard
    cutoff = -1.0 if max_distance is None else float(max_distance)
    crow, col, val = _jaccard.jaccard(*encoding, cutoff)
    return SparseDistance(n, torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(val),
                          cutoff=max_distance)


def jaccard_from_neighbours(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                            max_distance: float | None, timer: Timer = no_timer
                            ) -> SparseDistance:
    """Sparse Jaccard distances from kNN lists ``rank`` (N, >= min(k1, N)).

    ``timer`` times the encoding V' as "encoding" and the pairs as "jaccard".
    """
    n = x.shape[0]
    with timer("encoding"):
        encoding = encode(x, rank[:, :min(k1, n)], k1, k2)
    with timer("jaccard"):
        return jaccard_pairs(encoding, n, max_distance)


def jaccard_distance(x: torch.Tensor, k1: int, k2: int,
                     max_distance: float | None) -> SparseDistance:
    """Sparse Jaccard distances of the rows of ``x``: exact kNN, then the pairs."""
    _, rank = nearest_neighbours(x, k1)
    return jaccard_from_neighbours(x, rank, k1, k2, max_distance)


# ---------------------------------------------------------------- DBSCAN
def dbscan(dist, eps: float, min_samples: int) -> torch.Tensor:
    """DBSCAN labels of a symmetric distance matrix (dense, or a SparseDistance)."""
    from pplr_fast import _dbscan
    crow, col = neighbour_lists(dist, eps)
    return torch.from_numpy(_dbscan.dbscan(crow.numpy(), col.numpy(), min_samples))


# ---------------------------------------------------------------- cross-agreement
def cross_agreement_from_neighbours(rank_g: torch.Tensor, ranks_p: list[torch.Tensor],
                                    k: int) -> torch.Tensor:
    """(N, N_p) scores from kNN lists sorted by (d, index), self included, each with
    at least min(k + 1, N) columns."""
    from pplr_fast import _cross_agreement
    if not ranks_p:
        return torch.zeros(rank_g.shape[0], 0, dtype=torch.float32)
    g = rank_g.contiguous().numpy()
    return torch.stack([torch.from_numpy(_cross_agreement.cross_agreement(g, p.contiguous().numpy(), k))
                        for p in ranks_p], dim=1)


def cross_agreement(x_g: torch.Tensor, x_p: torch.Tensor, k: int) -> torch.Tensor:
    """(N, N_p) scores from the features: exact kNN in every space, then the intersections."""
    size = min(k + 1, x_g.shape[0])
    rank_g = nearest_neighbours(x_g, size)[1]
    ranks_p = [nearest_neighbours(x_p[:, :, p], size)[1] for p in range(x_p.shape[2])]
    return cross_agreement_from_neighbours(rank_g, ranks_p, k)
