"""DBSCAN on a precomputed distance matrix, with scikit-learn's exact semantics (SPEC §2.2).

- Neighbours of i: every j with ``d(i, j) <= eps``, i itself included when
  ``d(i, i) <= eps`` (always, for a Jaccard matrix).
- Core point: at least ``min_samples`` neighbours.
- Clusters: connected components of core points, numbered 0, 1, ... in
  increasing order of their lowest-index core point.
- A non-core point within eps of a core point joins the lowest-numbered
  neighbouring cluster; every other point is noise (-1).

The input is a dense (N, N) tensor or a :class:`SparseDistance`. A pair stored
with ``d`` exactly equal to ``eps`` is a neighbour pair in every backend; the
backends can only disagree where two Jaccard implementations round the same
pair to different sides of eps (|d - eps| below ~1e-6).
"""
from __future__ import annotations

import torch

from .checks import ClusterInputError, check_k, ensure_fits
from .sparse_distance import SparseDistance


def check_dbscan_args(dist, eps: float, min_samples: int) -> None:
    if not isinstance(dist, (torch.Tensor, SparseDistance)):
        raise ClusterInputError("dist must be a dense (N, N) torch.Tensor or a SparseDistance, "
                                f"got {type(dist).__name__}")
    if isinstance(dist, torch.Tensor):
        if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
            raise ClusterInputError(f"dist must be square (N, N), got shape {tuple(dist.shape)}")
        if bool(torch.isnan(dist).any()):
            raise ClusterInputError("dist contains NaN values; the distances were computed "
                                    "from non-finite features")
    if not eps > 0:
        raise ClusterInputError(f"eps must be > 0, got {eps}")
    check_k("min_samples", min_samples)


def neighbour_lists(dist, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``(crow, col)`` of the pairs with ``d <= eps``, columns sorted per row."""
    if isinstance(dist, SparseDistance):
        return dist.within(eps)
    n = dist.shape[0]
    rows, cols = torch.nonzero(dist <= eps, as_tuple=True)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=dist.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    return crow, cols


def dbscan_reference(dist, eps: float, min_samples: int = 4) -> torch.Tensor:
    """scikit-learn's DBSCAN loop, transcribed: expand clusters in index order."""
    if isinstance(dist, torch.Tensor):
        n = dist.shape[0]
        ensure_fits(n * n, dist.device, f"the reference DBSCAN of N={n} (a dense N x N mask)",
                    "pass a SparseDistance and use backend='fast'")
    crow, col = neighbour_lists(dist, eps)
    crow, col = crow.tolist(), col.tolist()
    n = len(crow) - 1
    is_core = [crow[i + 1] - crow[i] >= min_samples for i in range(n)]
    labels = [-1] * n
    cluster = 0
    for seed in range(n):
        if labels[seed] != -1 or not is_core[seed]:
            continue
        labels[seed] = cluster
        stack = [seed]
        while stack:
            p = stack.pop()
            if not is_core[p]:
                continue
            for q in col[crow[p]:crow[p + 1]]:
                if labels[q] == -1:
                    labels[q] = cluster
                    stack.append(q)
        cluster += 1
    device = dist.device
    return torch.tensor(labels, dtype=torch.int64, device=device)


def dbscan(dist, eps: float, min_samples: int = 4, backend: str = "fast") -> torch.Tensor:
    """DBSCAN labels (int64, -1 for noise) of a precomputed distance matrix.

    Args:
        dist: dense (N, N) tensor or :class:`SparseDistance` (e.g. from
            :func:`pplr_fast.cluster.jaccard_distance`).
        eps: neighbourhood radius; pairs with ``d <= eps`` are neighbours.
        min_samples: neighbours (self included) that make a core point.
        backend: ``"reference"`` or ``"fast"``.
    """
    check_dbscan_args(dist, eps, min_samples)
    from .backend import resolve_backend
    if resolve_backend(backend, dist.device, "dbscan") == "reference":
        return dbscan_reference(dist, eps, min_samples)
    from .fast_dbscan import dbscan_fast
    return dbscan_fast(dist, eps, min_samples)
