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


def encode_cpu(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int):
    """V' (SPEC §2.1 steps 1-5) as numpy CSR arrays ``(crow, col, val)``."""
    from pplr_fast import _jaccard
    return _jaccard.encode(x.float().contiguous().numpy(), rank.contiguous().numpy(),
                           k1, round(k1 / 2), k2)


def jaccard_pairs_cpu(encoding, n: int, max_distance: float | None) -> SparseDistance:
    """Jaccard distances of the pairs of V' rows that share a column."""
    from pplr_fast import _jaccard
    cutoff = -1.0 if max_distance is None else float(max_distance)
    crow, col, val = _jaccard.jaccard(*encoding, cutoff)
    return SparseDistance(n, torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(val),
                          cutoff=max_distance)


def jaccard_from_neighbours(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                            max_distance: float | None) -> SparseDistance:
    """Jaccard distance from a precomputed kNN list ``rank`` (N, min(k1, N))."""
    if x.is_cuda:
        from pplr_fast.kernels.jaccard import jaccard_from_neighbours_cuda
        return jaccard_from_neighbours_cuda(x, rank, k1, k2, max_distance)
    return jaccard_pairs_cpu(encode_cpu(x, rank, k1, k2), x.shape[0], max_distance)


def jaccard_distance_fast(x: torch.Tensor, k1: int, k2: int,
                          max_distance: float | None) -> SparseDistance:
    _, rank = nearest_neighbours_fast(x, k1)
    return jaccard_from_neighbours(x, rank, k1, k2, max_distance)
