"""Fast DBSCAN on the eps-neighbour graph (scikit-learn numbering and tie rule).

Core points are linked by union-find whose root is the lowest index of its
set, so numbering the roots in index order numbers the clusters exactly as
scikit-learn does; a border point takes the smallest label among its core
neighbours. CPU: ``csrc/cpu/dbscan_cpu.cpp``. CUDA: ``csrc/cuda/dbscan_cuda.cu``
(hooking with atomicMin + pointer jumping), compiled at run time by CuPy.
"""
from __future__ import annotations

import torch

from .backend import warn_once
from .dbscan import dbscan_reference, neighbour_lists


def dbscan_fast(dist, eps: float, min_samples: int) -> torch.Tensor:
    if isinstance(dist, torch.Tensor):
        within = dist <= eps
        if not torch.equal(within, within.T):
            warn_once("dbscan:asymmetric",
                      "pplr_fast: dbscan got a distance matrix that is not symmetric within eps; "
                      "the fast kernels need a symmetric graph, so scikit-learn's row-wise "
                      "semantics run on the reference path instead")
            return dbscan_reference(dist, eps, min_samples)
    crow, col = neighbour_lists(dist, eps)
    if crow.is_cuda:
        from .cuda_modules import dbscan_cuda
        return dbscan_cuda(crow, col, min_samples)
    from pplr_fast import _dbscan
    return torch.from_numpy(_dbscan.dbscan(crow.numpy(), col.numpy(), min_samples))
