"""Fast cross-agreement: exact kNN in every space, then the set intersections.

CPU: ``csrc/cpu/cross_agreement_cpu.cpp``. CUDA: ``kernels/cross_agreement.py``
(all parts in one batched Triton pass).
"""
from __future__ import annotations

import torch

from .fast_knn import nearest_neighbours_fast


def cross_agreement_fast(x_g: torch.Tensor, x_p: torch.Tensor, k: int,
                         neigh_g: torch.Tensor | None = None) -> torch.Tensor:
    """Scores (N, N_p); ``neigh_g`` may pass a global kNN list already computed
    (sorted by (d, index), self included, at least min(k + 1, N) columns)."""
    n = x_g.shape[0]
    size = min(k + 1, n)
    if neigh_g is None:
        neigh_g = nearest_neighbours_fast(x_g, size)[1]
    neigh_p = [nearest_neighbours_fast(x_p[:, :, p].contiguous(), size)[1]
               for p in range(x_p.shape[2])]
    if x_g.is_cuda:
        from pplr_fast.kernels.cross_agreement import cross_agreement_from_neighbours
        return cross_agreement_from_neighbours(neigh_g, torch.stack(neigh_p), k)
    from pplr_fast import _cross_agreement
    g = neigh_g.contiguous().numpy()
    return torch.stack([torch.from_numpy(_cross_agreement.cross_agreement(g, p.numpy(), k))
                        for p in neigh_p], dim=1)
