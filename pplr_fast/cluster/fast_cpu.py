"""The fast clustering path on a CPU: the compiled C++/OpenMP kernels of ``csrc/cpu``.

Each op is an extension module ``pplr_fast._<op>`` (pybind11, built by
``pip install -e .``); this module feeds them numpy views of torch tensors.
The results equal the reference path's (``reference.py``); the public entry
points with input checks and backend choice are in ``api.py``.

kNN: exact, from a low-precision GEMM filter and an fp64 re-rank. A bf16 GEMM
(oneDNN/MKL; on CPUs with native bf16 much faster than fp32, see ``benchmarks/results/``) over the upper
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
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

from . import common
from .common import (Timer, block_rows, ieee_matmul, neighbour_lists, no_timer,
                     rounding_error_bounds, rounding_maxima)
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
    """V' (SPEC §2.1 steps 1-5) as numpy CSR arrays ``(crow, col, val)``."""
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


# ---------------------------------------------------------------- row blocks (distributed stage)
class NeighbourStrips:
    """The fast kNN split into strips, for ranks that share the work.

    A strip is rows [r0, r1) against columns [r0, N): one GEMM block of the
    upper triangle, which serves its rows and, transposed, its columns (as in
    :func:`nearest_neighbours`). Each rank consumes its strips, hands every
    other rank what it saw of that rank's rows (:meth:`take_rows`, a sparse set
    of (column, score) candidates per row), takes what the others saw of its
    own rows (:meth:`give_rows`), and finishes them (:meth:`finish_rows`): the
    exact kNN rows of its block, equal to :func:`nearest_neighbours`' rows bit
    for bit, whichever rank consumed which strip.
    """

    def __init__(self, x: torch.Tensor, k: int):
        from pplr_fast import _knn
        self.x = x.float().contiguous()
        self.n = self.x.shape[0]
        self.k = min(k, self.n)
        self.x_low, roundoff, self.score_bytes = low_precision(self.x)
        bounds = rounding_error_bounds(self.x, self.x_low, 2.0 ** -24).numpy()
        self.selection = _knn.SymmetricTopK(self.n, self.k, bounds, roundoff)

    def add_strip(self, r0: int, r1: int) -> None:
        """Consume rows [r0, r1) x columns [r0, N), in blocks of at most BLOCK_BYTES."""
        block = block_rows(self.n, self.score_bytes)
        for b0 in range(r0, r1, block):
            b1 = min(r1, b0 + block)
            consume_scores(self.selection, self.x_low[b0:b1], self.x_low[b0:], self.score_bytes, b0)

    def take_rows(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidates of rows [a, b) as CSR ``(ptr int64, col int32, score float32)``; the
        rows are released here."""
        return tuple(torch.from_numpy(t) for t in self.selection.take_rows(a, b))

    def give_rows(self, a: int, b: int, ptr: torch.Tensor, col: torch.Tensor,
                  score: torch.Tensor) -> None:
        """Offer candidates of rows [a, b) that another rank took."""
        self.selection.give_rows(a, b, ptr.numpy(), col.numpy(), score.numpy())

    def finish_rows(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``(dist, index)`` of rows [a, b), as :func:`nearest_neighbours` returns them."""
        dist, index, overflow = self.selection.finish_rows(self.x.numpy(), a, b,
                                                           common.CANDIDATE_CAP)
        return finish_overflowing(self.x, dist, index, overflow, self.k, first_row=a)


def encode_rows(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int, r0: int, r1: int):
    """Rows [r0, r1) of :func:`encode`'s V' (numpy CSR), from the whole kNN lists."""
    from pplr_fast import _jaccard
    return _jaccard.encode_rows(x.float().contiguous().numpy(), rank.contiguous().numpy(),
                                k1, round(k1 / 2), k2, r0, r1)


def jaccard_rows(encoding, r0: int, r1: int, max_distance: float | None):
    """Rows [r0, r1) of :func:`jaccard_pairs`' CSR ``(crow, col, val)`` (numpy), from the
    whole V'."""
    from pplr_fast import _jaccard
    cutoff = -1.0 if max_distance is None else float(max_distance)
    return _jaccard.jaccard_rows(*encoding, r0, r1, cutoff)


def cross_agreement_of_rows(rank_g: torch.Tensor, ranks_p: list[torch.Tensor], k: int,
                            first_row: int, n: int) -> torch.Tensor:
    """Rows [first_row, first_row + len(rank_g)) of :func:`cross_agreement_from_neighbours`,
    from those rows' kNN lists only."""
    from pplr_fast import _cross_agreement
    if not ranks_p:
        return torch.zeros(rank_g.shape[0], 0, dtype=torch.float32)
    g = rank_g.contiguous().numpy()
    return torch.stack([torch.from_numpy(_cross_agreement.cross_agreement_rows(
        g, p.contiguous().numpy(), k, first_row, n)) for p in ranks_p], dim=1)


# ---------------------------------------------------------------- the ring (distributed stage)
def ring_maxima(x: torch.Tensor) -> tuple[float, float]:
    """(M, rho_max) of this block's rows for the filter's error bound
    (``common.rounding_maxima``); the ring uses the largest over all blocks."""
    x = x.float().contiguous()
    return rounding_maxima(x, low_precision(x)[0])


class RingNeighbours:
    """The fast kNN of one block of rows against all N rows, the blocks visiting in turn.

    The same filter as :func:`nearest_neighbours` (a bf16 or fp32 GEMM of the
    block against the visiting block, the rigorous error bound with M and
    rho_max over all rows) feeds ``_knn.RingTopK``; while a block visits, its
    columns still above each row's floor are re-ranked with the fp64
    distances the single process computes and merged into the running exact
    top-k by (distance, index). After every block has visited, :meth:`finish`
    gives the rows of :func:`nearest_neighbours`. There is no candidate cap:
    a row the single process finishes from an fp64 GEMM row (more than
    ``CANDIDATE_CAP`` candidates: nearly equidistant data) gets the same
    ranking here but from the C++ fp64 dot products, whose last bit may differ
    (a GEMM for some blocks and not others would untie exact copies).
    """

    def __init__(self, x: torch.Tensor, k: int, n: int, maxima: tuple[float, float]):
        from pplr_fast import _knn
        self.x = x.float().contiguous()
        self.k = min(k, n)
        self.x_low, roundoff, self.score_bytes = low_precision(self.x)
        bounds = rounding_error_bounds(self.x, self.x_low, 2.0 ** -24, maxima).numpy()
        self.selection = _knn.RingTopK(self.x.shape[0], self.k, bounds, roundoff)

    def visit(self, x_cols: torch.Tensor, c0: int) -> None:
        """The block of rows [c0, c0 + len(x_cols)) visits: score, filter, re-rank."""
        rows, width = self.x.shape[0], x_cols.shape[0]
        if not rows or not width:
            return
        x_cols = x_cols.float().contiguous()
        cols_low = low_precision(x_cols)[0]
        step = block_rows(width, self.score_bytes)
        for a in range(0, rows, step):
            consume_scores(self.selection, self.x_low[a:a + step], cols_low, self.score_bytes, a, c0)
        self.selection.rerank(self.x.numpy(), x_cols.numpy(), c0)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``(dist, index)`` of the block's rows, as :func:`nearest_neighbours` gives them."""
        dist, index = self.selection.finish()
        return torch.from_numpy(dist), torch.from_numpy(index)


def expansion_sets(rank: torch.Tensor, k1: int, r0: int, r1: int):
    """E(i) of rows [r0, r1) (the columns of V's rows) as numpy CSR ``(crow, col)``, from
    the whole kNN lists (N, min(k1, N))."""
    from pplr_fast import _jaccard
    return _jaccard.expansion_sets(rank.contiguous().numpy(), k1, round(k1 / 2), r0, r1)


def pair_distances(x_a: torch.Tensor, i_a: np.ndarray, x_b: torch.Tensor, i_b: np.ndarray
                   ) -> np.ndarray:
    """fp64 distances of rows ``x_a[i_a[t]]`` and ``x_b[i_b[t]]``, the encoding's numbers."""
    from pplr_fast import _jaccard
    return _jaccard.pair_distances(x_a.float().contiguous().numpy(), i_a,
                                   x_b.float().contiguous().numpy(), i_b)


def weigh_rows(crow: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """V's float32 values of CSR rows from their distances d(i, e)."""
    from pplr_fast import _jaccard
    return _jaccard.weigh_rows(crow, dist)


def expand_rows(v, rank: torch.Tensor, k2: int, r0: int, r1: int):
    """Rows [r0, r1) of V' (numpy CSR) from the whole V (CSR of N rows) and kNN lists."""
    from pplr_fast import _jaccard
    return _jaccard.expand_rows(*(np.ascontiguousarray(t) for t in v),
                                rank.contiguous().numpy(), k2, r0, r1)
