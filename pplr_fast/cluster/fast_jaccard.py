"""Fast k-reciprocal Jaccard distance: sparse and exact, O(N·k) memory.

After query expansion each row of V' has a few hundred non-zeros at most, and
pairs whose supports do not meet have distance exactly 1, so only pairs that
share a support column are computed (an inverted index over V'), each once
(j >= i) and mirrored. No N x N array is ever built.

CPU: ``csrc/cpu/jaccard_cpu.cpp`` (OpenMP). CUDA: ``kernels/jaccard.py`` (Triton).
"""
from __future__ import annotations

import torch

from .fast_knn import nearest_neighbours_fast
from .sparse_distance import SparseDistance


def jaccard_from_neighbours(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                            max_distance: float | None) -> SparseDistance:
    """Jaccard distance from a precomputed kNN list ``rank`` (N, min(k1, N))."""
    n = x.shape[0]
    if x.is_cuda:
        from pplr_fast.kernels.jaccard import jaccard_from_neighbours_cuda
        return jaccard_from_neighbours_cuda(x, rank, k1, k2, max_distance)
    from pplr_fast import _jaccard
    crow, col, val = _jaccard.encode(x.float().contiguous().numpy(), rank.contiguous().numpy(),
                                     k1, round(k1 / 2), k2)
    cutoff = -1.0 if max_distance is None else float(max_distance)
    crow, col, val = _jaccard.jaccard(crow, col, val, cutoff)
    return SparseDistance(n, torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(val),
                          cutoff=max_distance)


def jaccard_distance_fast(x: torch.Tensor, k1: int, k2: int,
                          max_distance: float | None) -> SparseDistance:
    _, rank = nearest_neighbours_fast(x, k1)
    return jaccard_from_neighbours(x, rank, k1, k2, max_distance)
