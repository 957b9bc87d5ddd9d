"""The clustering stage of one PPLR epoch, stage by stage and timed.

features (X_g, X_p) -> kNN in every space -> k-reciprocal encoding -> Jaccard
distance -> DBSCAN pseudo-labels; and cross-agreement scores from the same kNN
lists. Both backends run the same stages, so their timings compare stage by
stage (``benchmarks/cluster_stage.py``):

``knn_global``  kNN of X_g (k = max(k1, k + 1))
``knn_parts``   kNN in every part space (k + 1)
``encoding``    reciprocal sets, expansion, V and query expansion V'
``jaccard``     pairwise Jaccard distances (dense for reference, sparse for fast)
``dbscan``      DBSCAN on the distances
``cross_agreement``  the neighbourhood intersections
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .backend import resolve_backend
from .checks import ClusterInputError, check_k, ensure_fits
from .cross_agreement import agreement, check_part_features
from .dbscan import dbscan, dbscan_reference
from .jaccard import (check_jaccard_args, encode, expansion_mask, jaccard_from_encoding,
                      query_expand)
from .knn import pairwise_sq_distance, reference_dense_bytes, sorted_neighbours

STAGES = ("knn_global", "knn_parts", "encoding", "jaccard", "dbscan", "cross_agreement")


@dataclass
class ClusterStageResult:
    """Pseudo-labels (-1 = noise) and agreement scores of one epoch."""

    labels: torch.Tensor          # (N,) int64
    scores: torch.Tensor          # (N, N_p) float32
    timings: dict = field(default_factory=dict)   # seconds per stage + "total"
    backend: str = "reference"

    @property
    def num_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    @property
    def num_outliers(self) -> int:
        return int((self.labels < 0).sum())


class _Clock:
    def __init__(self, device: torch.device):
        self.device = device
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


def drop_self(rank: torch.Tensor, k: int) -> torch.Tensor:
    """The first min(k, N-1) entries of each kNN row other than the row itself."""
    n = rank.shape[0]
    size = min(k, n - 1)
    others = rank != torch.arange(n, device=rank.device)[:, None]
    keep = others & (torch.cumsum(others, dim=1) <= size)
    return rank[keep].view(n, size)


def run_cluster_stage(x_g: torch.Tensor, x_p: torch.Tensor, *, eps: float, k1: int = 30,
                      k2: int = 6, min_samples: int = 4, k: int = 20,
                      backend: str = "fast") -> ClusterStageResult:
    """Pseudo-labels of X_g and cross-agreement scores of (X_g, X_p) (SPEC §2).

    Args:
        x_g: (N, D) L2-normalised global features.
        x_p: (N, D, N_p) part features, each part L2-normalised over D.
        eps, min_samples: DBSCAN parameters; k1, k2: Jaccard; k: cross-agreement.
        backend: ``"reference"`` or ``"fast"`` (the fast path falls back to the
            reference, saying so once, where its kernels are unavailable).
    """
    check_part_features(x_g, x_p)
    check_jaccard_args(k1, k2, None)
    check_k("k", k)
    check_k("min_samples", min_samples)
    if not 0 < eps < 1:
        raise ClusterInputError(f"eps must lie in (0, 1) for Jaccard distances, got {eps}")
    chosen = resolve_backend(backend, x_g.device, "cluster stage")
    clock = _Clock(x_g.device)
    start = time.perf_counter()
    if chosen == "reference":
        labels, scores = _reference_stage(x_g, x_p, eps, k1, k2, min_samples, k, clock)
    else:
        labels, scores = _fast_stage(x_g, x_p, eps, k1, k2, min_samples, k, clock)
    clock.timings["total"] = time.perf_counter() - start
    return ClusterStageResult(labels, scores, clock.timings, chosen)


def _reference_stage(x_g, x_p, eps, k1, k2, min_samples, k, clock):
    n = x_g.shape[0]
    ensure_fits(reference_dense_bytes(n, matrices=5), x_g.device,
                f"the reference clustering stage of N={n} (five dense N x N matrices)",
                "use --backend fast (sparse, O(N·k) memory)")
    with clock("knn_global"):
        dist = pairwise_sq_distance(x_g, x_g)
        _, rank = sorted_neighbours(dist, max(k1, k + 1))
    with clock("knn_parts"):
        rank_p = [sorted_neighbours(pairwise_sq_distance(x_p[:, :, p], x_p[:, :, p]), k + 1)[1]
                  for p in range(x_p.shape[2])]
    with clock("encoding"):
        rank_k1 = rank[:, :min(k1, n)]
        vq = query_expand(encode(dist, expansion_mask(rank_k1, k1)), rank_k1, k2)
        del dist
    with clock("jaccard"):
        jaccard = jaccard_from_encoding(vq)
        del vq
    with clock("dbscan"):
        labels = dbscan_reference(jaccard, eps, min_samples)
    with clock("cross_agreement"):
        neigh_g = drop_self(rank, k)
        scores = torch.stack([agreement(neigh_g, drop_self(r, k)) for r in rank_p], dim=1)
    return labels, scores


def _fast_stage(x_g, x_p, eps, k1, k2, min_samples, k, clock):
    from .fast_cross_agreement import cross_agreement_from_lists
    from .fast_jaccard import encode_cpu, jaccard_from_neighbours, jaccard_pairs_cpu
    from .fast_knn import nearest_neighbours_fast
    n = x_g.shape[0]
    with clock("knn_global"):
        _, rank = nearest_neighbours_fast(x_g, max(k1, k + 1))
    with clock("knn_parts"):
        rank_p = [nearest_neighbours_fast(x_p[:, :, p].contiguous(), k + 1)[1]
                  for p in range(x_p.shape[2])]
    rank_k1 = rank[:, :min(k1, n)]
    if x_g.is_cuda:   # one fused Triton pipeline: reported under "jaccard"
        clock.timings["encoding"] = 0.0
        with clock("jaccard"):
            distance = jaccard_from_neighbours(x_g, rank_k1, k1, k2, eps)
    else:
        with clock("encoding"):
            encoding = encode_cpu(x_g, rank_k1, k1, k2)
        with clock("jaccard"):
            distance = jaccard_pairs_cpu(encoding, n, eps)
    with clock("dbscan"):
        labels = dbscan(distance, eps, min_samples, backend="fast")
    with clock("cross_agreement"):
        scores = cross_agreement_from_lists(rank, rank_p, k)
    return labels, scores
