"""Exact kNN on a GPU: fp16 GEMM filter + fp64 re-rank (the CUDA twin of ``fast_knn``).

Per block of rows:

1. fp16 scores ``s = x~_r x~^T`` (cuBLAS, fp32 accumulation; fp32 output when
   ``torch.mm(..., out_dtype=torch.float32)`` exists, else fp16 output whose
   unit roundoff 2^-11 enters the bound);
2. t = the k-th best score per row (``torch.topk``), and the candidate floor of
   ``csrc/cpu/knn_cpu.cpp`` (``candidate_floor``) with the rigorous per-row
   bound c_i of ``fast_knn.rounding_error_bounds``, taken with an accumulation
   roundoff of 2^-22 (tensor-core fp32 accumulation does not round to nearest);
3. every column scoring >= the floor gets its exact fp64 distance
   (``kernels/pair_distance.py``), and the k smallest by ``(d, index)`` are kept
   (stable sorts by d, then by row: a segmented sort);
4. rows with more than ``fast_knn.CANDIDATE_CAP`` candidates (near-equidistant
   data) are finished with an fp64 GEMM row and a stable sort instead.

Any device works (the tests run it on CPU tensors with the Triton interpreter).
"""
from __future__ import annotations

import functools

import torch

from pplr_fast.kernels.pair_distance import pair_sq_distance

from . import fast_knn
from .knn import pairwise_sq_distance, sorted_neighbours

ACCUMULATE_ROUNDOFF = 2.0 ** -22
FP16_ROUNDOFF = 2.0 ** -11


@functools.lru_cache(maxsize=None)
def has_fp32_output_mm(device_type: str) -> bool:
    """Whether ``torch.mm(fp16, fp16, out_dtype=torch.float32)`` runs on this device type."""
    a = torch.zeros(2, 2, dtype=torch.float16, device=device_type)
    try:
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def candidate_floor(t: torch.Tensor, c: torch.Tensor, u: float) -> torch.Tensor:
    """``candidate_floor`` of knn_cpu.cpp, row-wise: float64 arithmetic, fp32 result."""
    t = t.double()
    lowest = t - u * t.abs() - 2 * c
    s = torch.where(lowest >= 0, lowest / (1 + u), lowest / (1 - u))
    return (s - 1e-6).float()


def smallest_per_row(rows: torch.Tensor, cols: torch.Tensor, dist: torch.Tensor, n_rows: int,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest ``(dist, col)`` of each row of a COO list whose cols ascend per row.

    Returns (n_rows, k) dist and col; rows holding fewer than k entries are left unset.
    """
    order = torch.sort(dist, stable=True).indices            # ties keep ascending cols
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, cols, dist = rows[order], cols[order], dist[order]
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    keep = slot < k
    out_dist = torch.empty(n_rows, k, dtype=torch.float64, device=rows.device)
    out_index = torch.empty(n_rows, k, dtype=torch.int64, device=rows.device)
    out_dist[rows[keep], slot[keep]] = dist[keep]
    out_index[rows[keep], slot[keep]] = cols[keep]
    return out_dist, out_index


def nearest_neighbours_cuda(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN, rows sorted by (fp64 distance, index). Returns (dist, index)."""
    x = x.float().contiguous()
    n = x.shape[0]
    k = min(k, n)
    x_low = x.half()
    fp32_scores = has_fp32_output_mm(x.device.type)
    output_roundoff = 0.0 if fp32_scores else FP16_ROUNDOFF
    bounds = fast_knn.rounding_error_bounds(x, x_low, ACCUMULATE_ROUNDOFF)
    dist = torch.empty(n, k, dtype=torch.float64, device=x.device)
    index = torch.empty(n, k, dtype=torch.int64, device=x.device)
    step = fast_knn.block_rows(n, 4)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        with fast_knn.ieee_matmul():
            if fp32_scores:
                scores = torch.mm(x_low[r0:r1], x_low.T, out_dtype=torch.float32)
            else:
                scores = torch.mm(x_low[r0:r1], x_low.T).float()
        kth = torch.topk(scores, k, dim=1, sorted=False).values.min(dim=1).values
        floor = candidate_floor(kth, bounds[r0:r1], output_roundoff)
        candidate = scores >= floor[:, None]
        del scores
        overflow = candidate.sum(dim=1) > fast_knn.CANDIDATE_CAP
        candidate[overflow] = False
        rows, cols = torch.nonzero(candidate, as_tuple=True)    # cols ascend within a row
        del candidate
        d_pairs = pair_sq_distance(x, rows + r0, cols)
        dist[r0:r1], index[r0:r1] = smallest_per_row(rows, cols, d_pairs, r1 - r0, k)
        if bool(overflow.any()):
            over = r0 + torch.nonzero(overflow).flatten()
            with fast_knn.ieee_matmul():
                dist[over], index[over] = sorted_neighbours(pairwise_sq_distance(x[over], x), k)
    return dist, index
