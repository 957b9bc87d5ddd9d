"""Fast cross-agreement: exact kNN in every space, then the set intersections.

CPU: ``csrc/cpu/cross_agreement_cpu.cpp``. CUDA: ``kernels/cross_agreement.py``
(all parts in one batched Triton pass).
"""
from __future__ import annotations

import torch

from .fast_knn import nearest_neighbours_fast


def cross_agreement_from_lists(neigh_g: torch.Tensor, neigh_p: list[torch.Tensor],
                               k: int) -> torch.Tensor:
    """Scores (N, N_p) from kNN lists sorted by (d, index), self included, each
    with at least min(k + 1, N) columns."""
    if neigh_g.is_cuda:
        from pplr_fast.kernels.cross_agreement import cross_agreement_from_neighbours
        size = min(k + 1, neigh_g.shape[0])
        return cross_agreement_from_neighbours(
            neigh_g, torch.stack([p[:, :size] for p in neigh_p]), k)
    from pplr_fast import _cross_agreement
    g = neigh_g.contiguous().numpy()
    return torch.stack([torch.from_numpy(_cross_agreement.cross_agreement(g, p.contiguous().numpy(), k))
                        for p in neigh_p], dim=1)


def cross_agreement_fast(x_g: torch.Tensor, x_p: torch.Tensor, k: int) -> torch.Tensor:
    size = min(k + 1, x_g.shape[0])
    neigh_g = nearest_neighbours_fast(x_g, size)[1]
    neigh_p = [nearest_neighbours_fast(x_p[:, :, p].contiguous(), size)[1]
               for p in range(x_p.shape[2])]
    return cross_agreement_from_lists(neigh_g, neigh_p, k)
