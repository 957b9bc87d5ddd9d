"""The clustering stage's pieces for a block of rows: what ``distributed_stage.py`` splits
across processes.

Each piece gives, for rows [r0, r1), exactly the rows its whole-matrix twin of
``api.py`` gives (bit for bit). All but :func:`nearest_neighbours_of_rows` run
the fast CPU path (the compiled kernels of ``csrc/cpu``, as ``fast_cpu.py``):

- strips of the kNN (:class:`NeighbourStrips`): rows [r0, r1) against columns
  [r0, N), the upper-triangle GEMM of ``fast_cpu.nearest_neighbours`` shared out;
- the ring (:class:`RingNeighbours`, ``features="ring"``): each process keeps only
  its block of the features and the other blocks visit in turn;
- rows of the encoding V' and of the Jaccard distances, and of the cross-agreement
  scores.
"""
from __future__ import annotations

import numpy as np
import torch

from pplr_fast.backend import resolve_backend
from pplr_fast.utils.distinct_rows import DistinctRows

from . import common
from .checks import check_features, check_k, check_neighbour_lists
from .common import (block_rows, ieee_matmul, pairwise_sq_distance, rounding_error_bounds,
                     rounding_maxima, sorted_neighbours)
from .fast_cpu import consume_scores, finish_overflowing, low_precision


def splits_rows(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` on ``device`` has the row-block kernels (the fast CPU path):
    strips of the kNN, encoding and Jaccard rows, cross-agreement rows."""
    return device.type == "cpu" and resolve_backend(backend, device, "cluster stage") == "fast"


# ---------------------------------------------------------------- kNN rows
class NeighbourStrips:
    """The fast kNN split into strips, for ranks that share the work.

    A strip is rows [r0, r1) against columns [r0, N): one GEMM block of the
    upper triangle, which serves its rows and, transposed, its columns (as in
    ``fast_cpu.nearest_neighbours``). Each rank consumes its strips, hands every
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


def neighbour_strips(x: torch.Tensor, k: int) -> NeighbourStrips:
    """The fast CPU kNN of ``x`` split into strips (:class:`NeighbourStrips`)."""
    check_features(x)
    check_k("k", k)
    return NeighbourStrips(x, k)


def nearest_neighbours_of_rows(x: torch.Tensor, k: int, r0: int, r1: int
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [r0, r1) of :func:`nearest_neighbours`, on any device: fp64 distances of
    the block to every row and a stable sort (the reference's ranking; no N x N array).
    Exact copies among the columns get bit-equal distances in every row
    (:func:`common.pairwise_sq_distance`), so they tie and are ordered by index."""
    n = x.shape[0]
    k = min(k, n)
    dist = torch.empty(r1 - r0, k, dtype=torch.float64, device=x.device)
    index = torch.empty(r1 - r0, k, dtype=torch.int64, device=x.device)
    columns = DistinctRows.of(x)
    step = block_rows(n, 8)
    with ieee_matmul():
        for b0 in range(r0, r1, step):
            b1 = min(r1, b0 + step)
            dist[b0 - r0:b1 - r0], index[b0 - r0:b1 - r0] = sorted_neighbours(
                pairwise_sq_distance(x[b0:b1], x, rows_b=columns), k)
    return dist, index


# ---------------------------------------------------------------- Jaccard and cross-agreement rows
def encode_rows(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int, r0: int, r1: int):
    """Rows [r0, r1) of the fast path's V' (numpy CSR ``(crow, col, val)``, as
    ``fast_cpu.encode``) from the whole kNN lists ``rank`` (N, >= min(k1, N))."""
    from pplr_fast import _jaccard
    n = x.shape[0]
    check_neighbour_lists(rank, n, min(k1, n), x.device)
    return _jaccard.encode_rows(x.float().contiguous().numpy(),
                                rank[:, :min(k1, n)].contiguous().numpy(),
                                k1, round(k1 / 2), k2, r0, r1)


def jaccard_rows(encoding, r0: int, r1: int, max_distance: float | None):
    """Rows [r0, r1) of the fast path's sparse Jaccard distances (numpy CSR ``(crow, col,
    val)``, as ``fast_cpu.jaccard_pairs``), from the whole V' (``encoding``: the rows of
    :func:`encode_rows` of every block, concatenated)."""
    from pplr_fast import _jaccard
    cutoff = -1.0 if max_distance is None else float(max_distance)
    return _jaccard.jaccard_rows(*encoding, r0, r1, cutoff)


def cross_agreement_of_rows(rank_g: torch.Tensor, ranks_p: list[torch.Tensor], k: int,
                            first_row: int, n: int) -> torch.Tensor:
    """Rows [first_row, first_row + len(rank_g)) of ``cross_agreement_from_neighbours`` of an
    N = ``n`` problem, from those rows' kNN lists only."""
    from pplr_fast import _cross_agreement
    if not ranks_p:
        return torch.zeros(rank_g.shape[0], 0, dtype=torch.float32)
    g = rank_g.contiguous().numpy()
    return torch.stack([torch.from_numpy(_cross_agreement.cross_agreement_rows(
        g, p.contiguous().numpy(), k, first_row, n)) for p in ranks_p], dim=1)


# ---------------------------------------------------------------- the ring (features="ring")
# Each process holds only its block of the features; the other blocks visit in
# turn. The same arithmetic as the pieces above.
def ring_maxima(x: torch.Tensor) -> tuple[float, float]:
    """(M, rho_max) of this block's rows for the filter's error bound
    (``common.rounding_maxima``); the ring uses the largest over all blocks."""
    x = x.float().contiguous()
    return rounding_maxima(x, low_precision(x)[0])


class RingNeighbours:
    """The fast kNN of one block of rows against all N rows, the blocks visiting in turn.

    The same filter as ``fast_cpu.nearest_neighbours`` (a bf16 or fp32 GEMM of the
    block against the visiting block, the rigorous error bound with M and
    rho_max over all rows) feeds ``_knn.RingTopK``; while a block visits, its
    columns still above each row's floor are re-ranked with the fp64
    distances the single process computes and merged into the running exact
    top-k by (distance, index). After every block has visited, :meth:`finish`
    gives the rows of ``fast_cpu.nearest_neighbours``. There is no candidate cap:
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
        """Exact ``(dist, index)`` of the block's rows, as ``fast_cpu.nearest_neighbours`` gives them."""
        dist, index = self.selection.finish()
        return torch.from_numpy(dist), torch.from_numpy(index)


def ring_neighbours(x: torch.Tensor, k: int, n: int, maxima: tuple[float, float]
                    ) -> RingNeighbours:
    """The fast CPU kNN of the block ``x`` against all ``n`` rows, the blocks visiting in
    turn (:class:`RingNeighbours`); ``maxima`` over all rows (:func:`ring_maxima`)."""
    check_k("k", k)
    return RingNeighbours(x, k, n, maxima)


def expansion_sets(rank: torch.Tensor, k1: int, r0: int, r1: int):
    """E(i) of rows [r0, r1) (the columns of V's rows) as numpy CSR ``(crow, col)``, from
    the whole kNN lists (N, >= min(k1, N))."""
    from pplr_fast import _jaccard
    n = rank.shape[0]
    check_neighbour_lists(rank, n, min(k1, n), rank.device)
    return _jaccard.expansion_sets(rank[:, :min(k1, n)].contiguous().numpy(), k1, round(k1 / 2),
                                   r0, r1)


def pair_distances(x_a: torch.Tensor, i_a: np.ndarray, x_b: torch.Tensor, i_b: np.ndarray
                   ) -> np.ndarray:
    """fp64 distances of rows ``x_a[i_a[t]]`` and ``x_b[i_b[t]]``, the encoding's numbers."""
    from pplr_fast import _jaccard
    return _jaccard.pair_distances(x_a.float().contiguous().numpy(), i_a,
                                   x_b.float().contiguous().numpy(), i_b)


def weigh_rows(crow: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """V's float32 values of CSR rows (columns E(i)) from their distances d(i, e)."""
    from pplr_fast import _jaccard
    return _jaccard.weigh_rows(crow, dist)


def expand_rows(v, rank: torch.Tensor, k1: int, k2: int, r0: int, r1: int):
    """Rows [r0, r1) of :func:`encode_rows`' V' from the whole V (numpy CSR of N rows, the
    :func:`weigh_rows` of every block) and the whole kNN lists (N, >= min(k1, N))."""
    from pplr_fast import _jaccard
    n = rank.shape[0]
    check_neighbour_lists(rank, n, min(k1, n), rank.device)
    return _jaccard.expand_rows(*(np.ascontiguousarray(t) for t in v),
                                rank[:, :min(k1, n)].contiguous().numpy(), k2, r0, r1)
