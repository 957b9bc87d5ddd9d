"""Exact k-nearest-neighbour search (SPEC §2.1 step 1, §2.3).

Distance between L2-normalised rows: ``d(i, j) = 2 - 2 <x_i, x_j>`` (the squared
Euclidean distance), evaluated in float64: the product of two fp32 numbers is
exact in fp64, so every backend gets the dot product right to ~1e-16 and two
backends can only order a pair differently if it is tied to that precision —
never in practice, except for exact ties. In fp32 (~1e-7) a Market-size kNN
has a handful of such near-ties per run. Neighbour lists are sorted by
``(d, j)``: equal distances (duplicated images) are ordered by index, in every
backend. Each row's list includes the row itself (normally first).

Backends
--------
reference
    the full N x N distance matrix and a stable sort of every row.
fast
    a low-precision GEMM (bf16 on CPUs with native bf16, fp16 on GPUs) finds,
    per row, every candidate that can still be among the k nearest under a
    rigorous error bound; the candidates are re-ranked with fp64 distances.
    The result is the exact top-k (see ``pplr_fast.cluster.fast_knn``).
"""
from __future__ import annotations

import torch

from .checks import check_features, check_k, ensure_fits

SORT_CHUNK_BYTES = 256 * 1024 ** 2


def pairwise_sq_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``2 - 2 a b^T`` for L2-normalised rows, in float64."""
    return 2 - 2 * (a.double() @ b.double().T)


def reference_dense_bytes(n: int, matrices: int = 1) -> int:
    """Bytes of ``matrices`` dense fp64 N x N matrices plus the sort's chunk buffers."""
    return 8 * n * n * matrices + min(3 * SORT_CHUNK_BYTES, 16 * n * n)


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


def nearest_neighbours_reference(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference exact kNN: dense distances + stable sort. Returns (dist, index)."""
    n = x.shape[0]
    ensure_fits(reference_dense_bytes(n), x.device,
                f"the reference kNN of N={n} (a dense N x N matrix)",
                "use backend='fast', which never builds the N x N matrix")
    return sorted_neighbours(pairwise_sq_distance(x, x), k)


def nearest_neighbours(x: torch.Tensor, k: int, backend: str = "fast"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every row of ``x`` among the rows of ``x``.

    Args:
        x: (N, D) L2-normalised features.
        k: neighbours per row, the row itself included; clamped to N.
        backend: ``"reference"`` or ``"fast"``.

    Returns:
        ``(dist, index)``, both (N, min(k, N)): float64 squared distances and
        int64 indices, each row sorted by ``(dist, index)``.
    """
    check_features(x)
    check_k("k", k)
    from .backend import resolve_backend
    if resolve_backend(backend, x.device, "knn") == "reference":
        return nearest_neighbours_reference(x, k)
    from .fast_knn import nearest_neighbours_fast
    return nearest_neighbours_fast(x, k)
