"""Helpers every clustering backend shares; of pplr_fast it imports only the leaf
:mod:`pplr_fast.utils.distinct_rows`.

Distances between L2-normalised rows are ``d(i, j) = 2 - 2 <x_i, x_j>`` (the
squared Euclidean distance), evaluated in float64: the product of two fp32
numbers is exact in fp64, so every backend gets the dot product right to
~1e-16 and two backends can only order a pair differently if it is tied to
that precision — never in practice, except for exact ties. Exact ties are
exact by construction: the C++ and Triton distances add the products of each
pair in an order fixed by D alone, and the GEMMs of the reference multiply
each distinct row once (:func:`pairwise_sq_distance`), so exact copies of an
image get bit-identical distances to every other image on every machine.
Neighbour lists are sorted by ``(d, j)``: equal distances (duplicated images)
are ordered by index, in every backend. Each row's list includes the row itself (normally
first); :func:`neighbours_without_self` drops it.

Also here: the rounding-error bound and the fp32 GEMM settings that both fast
kNN paths (CPU and GPU) build their exact filter on, and the memory estimates
of the reference path.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch

from pplr_fast.utils.distinct_rows import DistinctRows, tied_matmul

SORT_CHUNK_BYTES = 256 * 1024 ** 2   # sort temporaries of the reference kNN, per chunk
BLOCK_BYTES = 256 * 1024 ** 2        # score block (rows x N) a fast kNN keeps in memory at once
CANDIDATE_CAP = 4096                 # fast kNN candidates per row before the exact fp64 fallback


# A stage timer: ``with timer("encoding"): ...`` adds the block's seconds to that stage.
Timer = Callable[[str], ContextManager]


def no_timer(stage: str) -> ContextManager:
    """The :data:`Timer` that times nothing."""
    return contextlib.nullcontext()


# ------------------------------------------------------------------ distances and neighbours
def pairwise_sq_distance(a: torch.Tensor, b: torch.Tensor, rows_a: DistinctRows | None = None,
                         rows_b: DistinctRows | None = None) -> torch.Tensor:
    """``2 - 2 a b^T`` for L2-normalised rows, in float64.

    Exact copies tie exactly: equal rows of ``a`` get bit-equal rows and equal
    rows of ``b`` bit-equal columns, whatever kernel the BLAS picks for this
    CPU (:func:`pplr_fast.utils.distinct_rows.tied_matmul`). ``rows_a`` /
    ``rows_b``: their :class:`DistinctRows`, when the caller has them.
    """
    return 2 - 2 * tied_matmul(a.double(), b.double(), rows_a, rows_b)


def sorted_neighbours(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``k`` columns of each row of ``dist`` by ``(value, column)``.

    Rows are sorted in chunks so the sort's temporaries stay bounded.
    """
    n_rows, n_cols = dist.shape
    k = min(k, n_cols)
    values = torch.empty(n_rows, k, dtype=dist.dtype, device=dist.device)
    index = torch.empty(n_rows, k, dtype=torch.int64, device=dist.device)
    step = max(1, SORT_CHUNK_BYTES // (16 * max(1, n_cols)))
    for r0 in range(0, n_rows, step):
        s = torch.sort(dist[r0:r0 + step], dim=1, stable=True)
        values[r0:r0 + step] = s.values[:, :k]
        index[r0:r0 + step] = s.indices[:, :k]
    return values, index


def neighbours_without_self(rank: torch.Tensor, k: int) -> torch.Tensor:
    """The first min(k, N-1) entries of each kNN row other than the row itself.

    ``rank`` (N, K) holds distinct indices per row, sorted by ``(d, index)``,
    with K >= min(k + 1, N). Row i is dropped by index, wherever it sorts
    (behind its exact copies, for duplicated images).
    """
    n = rank.shape[0]
    size = min(k, n - 1)
    others = rank != torch.arange(n, device=rank.device)[:, None]
    keep = others & (torch.cumsum(others, dim=1) <= size)
    return rank[keep].view(n, size)


def neighbour_lists(dist, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``(crow, col)`` of the pairs with ``d <= eps``, columns sorted per row.

    ``dist`` is a dense (N, N) tensor, or a sparse matrix with a ``within(eps)``
    method (:class:`~pplr_fast.cluster.SparseDistance`).
    """
    if not isinstance(dist, torch.Tensor):
        return dist.within(eps)
    n = dist.shape[0]
    rows, cols = torch.nonzero(dist <= eps, as_tuple=True)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=dist.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    return crow, cols


# ------------------------------------------------------------------ memory estimates
def reference_dense_bytes(n: int, matrices: int = 1) -> int:
    """Bytes of ``matrices`` dense fp64 N x N matrices plus the sort's chunk buffers."""
    return 8 * n * n * matrices + min(3 * SORT_CHUNK_BYTES, 16 * n * n)


def block_rows(n: int, bytes_per_entry: int) -> int:
    """Rows of an (rows x N) block of ``bytes_per_entry`` entries that fit in BLOCK_BYTES."""
    return max(16, min(n, BLOCK_BYTES // max(1, bytes_per_entry * n)))


# ------------------------------------------------------------------ the fast kNN's exact filter
@contextlib.contextmanager
def ieee_matmul():
    """fp32 GEMMs with plain fp32 arithmetic, whatever the caller's settings.

    The error bounds assume it: on a GPU no TF32, no fp16 accumulation, no
    reduced-precision split-K reductions; on a CPU no bf16/TF32 internal
    arithmetic for fp32 inputs (``torch.backends.mkldnn.matmul.fp32_precision``).
    The caller's settings are restored.
    """
    matmul = torch.backends.cuda.matmul
    names = [name for name in ("allow_tf32", "allow_fp16_accumulation",
                               "allow_fp16_reduced_precision_reduction") if hasattr(matmul, name)]
    saved = {name: getattr(matmul, name) for name in names}
    if hasattr(matmul, "allow_fp16_reduced_precision_reduction_split_k"):
        saved["allow_fp16_reduced_precision_reduction"] = (
            matmul.allow_fp16_reduced_precision_reduction,
            matmul.allow_fp16_reduced_precision_reduction_split_k)
    cpu = getattr(torch.backends.mkldnn, "matmul", None)
    cpu_precision = getattr(cpu, "fp32_precision", None)
    for name in names:
        setattr(matmul, name, False)
    if cpu_precision is not None:
        cpu.fp32_precision = "ieee"
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(matmul, name, value)
        if cpu_precision is not None:
            cpu.fp32_precision = cpu_precision


def rounding_maxima(x: torch.Tensor, x_low: torch.Tensor) -> tuple[float, float]:
    """(M, rho_max) of :func:`rounding_error_bounds` over the rows of ``x`` (0 for no rows)."""
    rho, norm = _scaled_norms(x, x_low)
    return (float(norm.max()) if norm.numel() else 0.0, float(rho.max()) if rho.numel() else 0.0)


def _scaled_norms(x: torch.Tensor, x_low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[1]
    slack = 1 + 2 * (d + 1) * 2.0 ** -24
    rho = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    step = max(1, BLOCK_BYTES // (4 * max(1, x.shape[1])))
    for r0 in range(0, x.shape[0], step):
        rho[r0:r0 + step] = (x_low[r0:r0 + step].float() - x[r0:r0 + step]).norm(dim=1)
    return rho.double() * slack, x.float().norm(dim=1).double() * slack


def rounding_error_bounds(x: torch.Tensor, x_low: torch.Tensor, accumulate_roundoff: float,
                          maxima: tuple[float, float] | None = None) -> torch.Tensor:
    """Per-row c_i (float64) of the fast kNN filter.

    For rows x_i, x_j and their low-precision copies x~, the computed
    low-precision score s_ij differs from the exact similarity a_ij by at most
    ``c_i + u |s_ij|`` where u is the unit roundoff of the score's dtype and

        c_i = rho_i M + |x_i| rho_max + rho_i rho_max + (accumulation rounding)

    with ``rho_i = |x~_i - x_i|`` measured on the data and M = max_j |x_j|
    (Cauchy-Schwarz on ``x~_i x~_j - x_i x_j``). ``x_low - x`` is exact in fp32
    (Sterbenz: a rounding stays within a factor 2 of its input), and an fp32
    norm over D terms is within D * 2^-24 of the true one, so the norms are
    computed in fp32 and inflated by that much.

    ``maxima``: (M, rho_max) over the rows the scores pair ``x`` with, when
    those are not ``x`` itself (:func:`rounding_maxima` of each block, the
    largest of them; the distributed stage's ring).
    """
    d = x.shape[1]
    rho, norm = _scaled_norms(x, x_low)
    big, rho_max = maxima if maxima is not None else (float(norm.max()), float(rho.max()))
    gamma = 1.01 * d * accumulate_roundoff
    accumulation = gamma * ((norm + rho) * (big + rho_max) + norm * big)
    return rho * big + norm * rho_max + rho * rho_max + accumulation + 1e-6
