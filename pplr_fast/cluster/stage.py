"""The clustering stage of one PPLR epoch, stage by stage and timed.

features (X_g, X_p) -> kNN in every space -> k-reciprocal encoding -> Jaccard
distance -> DBSCAN pseudo-labels; and cross-agreement scores from the same kNN
lists. Both backends run the same stages, so their timings compare stage by
stage (``benchmarks/cluster_stage.py``):

``knn_global``  kNN of X_g (k = max(k1, k + 1))
``knn_parts``   kNN in every part space (k + 1)
``encoding``    reciprocal sets, expansion, V and query expansion V' (the reference
                recomputes its dense distance matrix here)
``jaccard``     pairwise Jaccard distances (dense in the reference stage, sparse for fast;
                on a GPU the encoding too, which then reads 0)
``dbscan``      DBSCAN on the distances
``cross_agreement``  the neighbourhood intersections
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pplr_fast.backend import DEFAULT_BACKEND, resolve_backend
from pplr_fast.utils.memory import ensure_fits
from pplr_fast.utils.timing import StageClock

from .api import (cross_agreement_from_neighbours, dbscan, nearest_neighbours,
                  path_jaccard_from_neighbours)
from .checks import check_part_features, check_stage_args
from .common import reference_dense_bytes

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


def run_cluster_stage(x_g: torch.Tensor, x_p: torch.Tensor, *, eps: float, k1: int = 30,
                      k2: int = 6, min_samples: int = 4, k: int = 20,
                      backend: str = DEFAULT_BACKEND) -> ClusterStageResult:
    """Pseudo-labels of X_g and cross-agreement scores of (X_g, X_p) (docs/method.md §2).

    Args:
        x_g: (N, D) L2-normalised global features.
        x_p: (N, D, N_p) part features, each part L2-normalised over D.
        eps, min_samples: DBSCAN parameters; k1, k2: Jaccard; k: cross-agreement.
        backend: ``"reference"`` or ``"fast"`` (the fast path falls back to the
            reference, saying so once, where its kernels are unavailable).
    """
    check_part_features(x_g, x_p)
    check_stage_args(x_g.shape[0], eps=eps, k1=k1, k2=k2, min_samples=min_samples, k=k)
    chosen = resolve_backend(backend, x_g.device, "cluster stage")
    n = x_g.shape[0]
    if chosen == "reference":
        ensure_fits(reference_dense_bytes(n, matrices=5), x_g.device,
                    f"the reference clustering stage of N={n} (five dense N x N matrices)",
                    "use --backend fast (sparse, O(N·k) memory)")
    clock = StageClock(x_g.device)
    start = time.perf_counter()
    # the features were checked above, once: the ops skip their own pass over them
    with clock("knn_global"):
        _, rank = nearest_neighbours(x_g, max(k1, k + 1), chosen, check=False)
    with clock("knn_parts"):
        ranks_p = [nearest_neighbours(x_p[:, :, p].contiguous(), k + 1, chosen, check=False)[1]
                   for p in range(x_p.shape[2])]
    # times "encoding" and "jaccard" (the GPU path does both in one pass: "jaccard")
    distance = path_jaccard_from_neighbours(x_g, rank, k1, k2, eps, chosen, timer=clock, check=False)
    with clock("dbscan"):
        labels = dbscan(distance, eps, min_samples, chosen)
    with clock("cross_agreement"):
        scores = cross_agreement_from_neighbours(rank, ranks_p, k, chosen)
    timings = {stage: clock.timings.get(stage, 0.0) for stage in STAGES}
    timings["total"] = time.perf_counter() - start
    return ClusterStageResult(labels, scores, timings, chosen)
