"""The seam between the public ops (``api.py``) and the path modules, written down.

Every path module -- ``reference.py`` (plain PyTorch), ``fast_cpu.py`` (the
compiled kernels of ``csrc/cpu``) and ``fast_cuda.py`` (Triton and CUDA C) --
is a module of functions with these names and signatures; ``api.py`` checks the
input, picks the module (:func:`pplr_fast.backend.resolve_backend`, whose
``OP_MODULES`` table names the compiled pieces each op needs) and calls it.
``tests/test_cluster_seam.py`` holds every path module to this contract.

The path functions take checked input (``api.py`` validates) and return what
the reference returns, bit for bit where ``docs/method.md`` says exact.

The reference path module's Jaccard functions compute the dense (N, N) float32
matrix and take no ``max_distance`` (:class:`DenseJaccardOps`); the fast paths
build a :class:`SparseDistance` (:class:`SparseJaccardOps`). The public ops of
``api.py`` return a :class:`SparseDistance` whatever the backend (they store the
reference's pairs); only the clustering stages read the reference's dense matrix
as it is (``api.path_jaccard_from_neighbours``), so the reference stage stays the
plain dense computation.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .common import Timer, no_timer
from .sparse_distance import SparseDistance


class ClusterPathOps(Protocol):
    """The ops every path module provides with these signatures."""

    def nearest_neighbours(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dist, index)`` (N, min(k, N)): fp64 squared distances, int64 indices, each row
        sorted by (distance, index), the row itself included."""

    def dbscan(self, dist, eps: float, min_samples: int) -> torch.Tensor:
        """(N,) int64 labels, -1 for noise, of a dense matrix or a SparseDistance."""

    def cross_agreement(self, x_g: torch.Tensor, x_p: torch.Tensor, k: int) -> torch.Tensor:
        """(N, N_p) float32 scores from the features."""

    def cross_agreement_from_neighbours(self, rank_g: torch.Tensor, ranks_p: list[torch.Tensor],
                                        k: int) -> torch.Tensor:
        """(N, N_p) float32 scores from kNN lists (self included, >= min(k + 1, N) columns)."""


class DenseJaccardOps(Protocol):
    """The reference's Jaccard ops: the dense (N, N) float32 matrix."""

    def jaccard_distance(self, x: torch.Tensor, k1: int, k2: int) -> torch.Tensor: ...

    def jaccard_from_neighbours(self, x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                                timer: Timer = no_timer) -> torch.Tensor: ...


class SparseJaccardOps(Protocol):
    """The fast paths' Jaccard ops: a SparseDistance, only pairs with d <= max_distance kept
    (all pairs below 1 when None); ``timer`` times "encoding" and "jaccard"."""

    def jaccard_distance(self, x: torch.Tensor, k1: int, k2: int,
                         max_distance: float | None) -> SparseDistance: ...

    def jaccard_from_neighbours(self, x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                                max_distance: float | None, timer: Timer = no_timer
                                ) -> SparseDistance: ...


# each path module and the protocols it follows
PATH_MODULES: dict[str, tuple[type, ...]] = {
    "pplr_fast.cluster.reference": (ClusterPathOps, DenseJaccardOps),
    "pplr_fast.cluster.fast_cpu": (ClusterPathOps, SparseJaccardOps),
    "pplr_fast.cluster.fast_cuda": (ClusterPathOps, SparseJaccardOps),
}

# op of pplr_fast.backend.OP_MODULES -> the path functions that run it
OP_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "knn": ("nearest_neighbours",),
    "jaccard": ("jaccard_distance", "jaccard_from_neighbours"),
    "dbscan": ("dbscan",),
    "cross_agreement": ("cross_agreement", "cross_agreement_from_neighbours"),
}
