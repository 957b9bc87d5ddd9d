"""The public clustering ops: check the input, pick the backend once, call it.

Every op takes ``backend="reference"`` (plain PyTorch, ``reference.py``) or
``backend="fast"`` (``fast_cpu.py`` for CPU tensors, ``fast_cuda.py`` for
CUDA tensors); both give the same results. Where a fast piece is missing the
op falls back to the reference path and says so once
(:func:`pplr_fast.backend.resolve_backend`).

Two ways in: from the features (:func:`nearest_neighbours`,
:func:`jaccard_distance`, :func:`cross_agreement`), and from kNN lists that
were computed once and are shared (:func:`jaccard_from_neighbours`,
:func:`cross_agreement_from_neighbours`), as the clustering stage does.
:func:`dbscan` takes the distances.
"""
from __future__ import annotations

import torch

from pplr_fast.backend import DEFAULT_BACKEND, resolve_backend, warn_once

from . import fast_cpu, reference
from .checks import (ClusterInputError, check_features, check_jaccard_args, check_k,
                     check_neighbour_lists, check_part_features)
from .common import Timer, no_timer
from .sparse_distance import SparseDistance


def _fast_module(device: torch.device):
    """The fast path of ``device``: ``fast_cuda`` (imported on first use: it needs Triton)
    or ``fast_cpu``."""
    if device.type == "cuda":
        from . import fast_cuda
        return fast_cuda
    return fast_cpu


def _implementation(backend: str, device: torch.device, op: str):
    """The module that runs ``op`` on ``device``: reference, fast_cpu or fast_cuda."""
    if resolve_backend(backend, device, op) == "reference":
        return reference
    return _fast_module(device)


# ---------------------------------------------------------------- kNN
def nearest_neighbours(x: torch.Tensor, k: int, backend: str = DEFAULT_BACKEND, *,
                       check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every row of ``x`` among the rows of ``x``.

    Args:
        x: (N, D) L2-normalised features.
        k: neighbours per row, the row itself included; clamped to N.
        backend: ``"reference"`` or ``"fast"``.
        check: validate ``x`` (finite, L2-normalised rows: a pass over it);
            ``False`` when the caller already has (the clustering stage).

    Returns:
        ``(dist, index)``, both (N, min(k, N)): float64 squared distances and
        int64 indices, each row sorted by ``(dist, index)``.
    """
    if check:
        check_features(x)
    check_k("k", k)
    return _implementation(backend, x.device, "knn").nearest_neighbours(x, k)


# ---------------------------------------------------------------- Jaccard
def _as_fast_result(dense: torch.Tensor, max_distance: float | None) -> SparseDistance:
    """The reference's dense result as the :class:`SparseDistance` every public Jaccard op returns."""
    return SparseDistance.from_dense(dense).truncated(max_distance)


def jaccard_distance(x: torch.Tensor, k1: int = 30, k2: int = 6, backend: str = DEFAULT_BACKEND,
                     max_distance: float | None = None) -> SparseDistance:
    """k-reciprocal Jaccard distance between the rows of ``x``, as a :class:`SparseDistance`
    whatever the backend (``.to_dense()`` gives the (N, N) float32 matrix).

    Args:
        x: (N, D) L2-normalised features.
        k1, k2: neighbourhood sizes (defaults 30 and 6, docs/method.md §2.1); k2 <= k1 <= N
            (a k1 above N is refused: every neighbourhood would hold all N images).
        backend: ``"reference"`` computes the dense matrix and stores its pairs;
            ``"fast"`` builds the sparse result without any N x N array.
        max_distance: keep just the pairs with ``d <= max_distance`` (e.g. the DBSCAN
            eps), which is all DBSCAN needs.
    """
    check_features(x)
    check_jaccard_args(k1, k2, max_distance, n=x.shape[0])
    implementation = _implementation(backend, x.device, "jaccard")
    if implementation is reference:
        return _as_fast_result(reference.jaccard_distance(x, k1, k2), max_distance)
    return implementation.jaccard_distance(x, k1, k2, max_distance)


def jaccard_from_neighbours(x: torch.Tensor, rank: torch.Tensor, k1: int = 30, k2: int = 6,
                            max_distance: float | None = None, backend: str = DEFAULT_BACKEND,
                            *, timer: Timer = no_timer, check: bool = True) -> SparseDistance:
    """:func:`jaccard_distance` from precomputed kNN lists.

    Args:
        x: (N, D) L2-normalised features.
        rank: (N, K) indices of :func:`nearest_neighbours` of ``x`` (any
            backend: they are equal), K >= min(k1, N); only the first
            min(k1, N) columns are used.
        k1, k2, max_distance, backend: as in :func:`jaccard_distance`.
        timer: ``timer(stage)`` is a context manager that times the block it
            wraps; the encoding (V') runs under ``"encoding"``, the pairwise
            distances under ``"jaccard"`` (a backend that does both in one
            pass times it all as ``"jaccard"``).
        check: validate ``x`` (as in :func:`nearest_neighbours`).
    """
    distance = path_jaccard_from_neighbours(x, rank, k1, k2, max_distance, backend,
                                            timer=timer, check=check)
    return _as_fast_result(distance, max_distance) if isinstance(distance, torch.Tensor) else distance


def path_jaccard_from_neighbours(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                                 max_distance: float | None, backend: str, *,
                                 timer: Timer = no_timer, check: bool = True
                                 ) -> torch.Tensor | SparseDistance:
    """:func:`jaccard_from_neighbours` in the form the chosen path computes it: the
    reference's dense (N, N) matrix, the fast paths' :class:`SparseDistance`. The
    clustering stages hand it to :func:`dbscan` as it is, so the reference stage stays
    the plain dense computation."""
    if check:
        check_features(x)
    n = x.shape[0]
    check_jaccard_args(k1, k2, max_distance, n=n)
    check_neighbour_lists(rank, n, min(k1, n), x.device)
    implementation = _implementation(backend, x.device, "jaccard")
    if implementation is reference:
        dense = reference.jaccard_from_neighbours(x, rank, k1, k2, timer)
        return _as_fast_result(dense, max_distance) if backend == "fast" else dense
    return implementation.jaccard_from_neighbours(x, rank, k1, k2, max_distance, timer)


# ---------------------------------------------------------------- DBSCAN
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


def dbscan(dist, eps: float, min_samples: int = 4, backend: str = DEFAULT_BACKEND
           ) -> torch.Tensor:
    """DBSCAN labels (int64, -1 for noise) of a precomputed distance matrix.

    scikit-learn's semantics exactly (see ``reference.py``). A pair stored
    with ``d`` exactly equal to ``eps`` is a neighbour pair in every backend;
    the backends can only disagree where two Jaccard implementations round the
    same pair to different sides of eps (|d - eps| below ~1e-6).

    Args:
        dist: dense (N, N) tensor or :class:`SparseDistance` (e.g. from
            :func:`jaccard_distance`).
        eps: neighbourhood radius; pairs with ``d <= eps`` are neighbours.
        min_samples: neighbours (self included) that make a core point.
        backend: ``"reference"`` or ``"fast"``. The fast kernels need a graph
            that is symmetric within eps; a dense matrix that is not runs
            scikit-learn's row-wise semantics on the reference path, with a
            warning.
    """
    check_dbscan_args(dist, eps, min_samples)
    implementation = _implementation(backend, dist.device, "dbscan")
    if implementation is not reference and isinstance(dist, torch.Tensor):
        within = dist <= eps
        if not torch.equal(within, within.T):
            warn_once("dbscan:asymmetric",
                      "pplr_fast: dbscan got a distance matrix that is not symmetric within eps; "
                      "the fast kernels need a symmetric graph, so scikit-learn's row-wise "
                      "semantics run on the reference path instead")
            implementation = reference
    return implementation.dbscan(dist, eps, min_samples)


# ---------------------------------------------------------------- cross-agreement
def cross_agreement(x_g: torch.Tensor, x_p: torch.Tensor, k: int = 20,
                    backend: str = DEFAULT_BACKEND) -> torch.Tensor:
    """(N, N_p) float32 cross-agreement scores in [0, 1] (docs/method.md §2.3).

    ``A[i, n] = |N_g(i) ∩ N_n(i)| / |N_g(i) ∪ N_n(i)|``, the k nearest
    neighbours of i in the global space and in part space n, i itself excluded.

    Args:
        x_g: (N, D) L2-normalised global features.
        x_p: (N, D, N_p) part features, each part L2-normalised over D.
        k: neighbourhood size (docs/method.md §2.3: 20).
        backend: ``"reference"`` or ``"fast"``.
    """
    check_part_features(x_g, x_p)
    check_k("k", k)
    return _implementation(backend, x_g.device, "cross_agreement").cross_agreement(x_g, x_p, k)


def cross_agreement_from_neighbours(rank_g: torch.Tensor, ranks_p: list[torch.Tensor],
                                    k: int = 20, backend: str = DEFAULT_BACKEND) -> torch.Tensor:
    """:func:`cross_agreement` from precomputed kNN lists.

    Args:
        rank_g: (N, K) indices of :func:`nearest_neighbours` of the global
            features, self included, K >= min(k + 1, N).
        ranks_p: the same for every part space (a list of N_p tensors).
        k, backend: as in :func:`cross_agreement`.
    """
    check_k("k", k)
    if not isinstance(rank_g, torch.Tensor):
        raise ClusterInputError(f"rank_g must be a tensor of neighbour indices, got "
                                f"{type(rank_g).__name__}")
    n = rank_g.shape[0] if rank_g.dim() else 0
    check_neighbour_lists(rank_g, n, min(k + 1, n), rank_g.device, "rank_g")
    for p, rank_p in enumerate(ranks_p):
        check_neighbour_lists(rank_p, n, min(k + 1, n), rank_g.device, f"ranks_p[{p}]")
    implementation = _implementation(backend, rank_g.device, "cross_agreement")
    return implementation.cross_agreement_from_neighbours(rank_g, list(ranks_p), k)
