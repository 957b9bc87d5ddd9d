"""The sparse stages of k-reciprocal re-ranking on a GPU (CUDA twin of those of ``rerank_cpu.cpp``).

From ``rank`` (N, K), the first K ranks of each row of D sorted by (value,
column), K = min(N, max(k1 + 1, k2)), and D's row maxima:

1. E(i): ``expanded_sets`` of ``kernels/jaccard.py`` with the list lengths of
   re-ranking, L1 = min(k1 + 1, K) and LH = min(round(k1/2) + 1, K) (the
   clustering's Jaccard takes F(i, k1) from k1 entries, re-ranking from k1 + 1);
2. V (:func:`reciprocal_weights`): ``scaled = float32(entry) / rowmax``,
   ``w = exp(-scaled)`` rounded to fp32, ``V = w / sum_row(w)`` with the sum in
   fp64 (``segment_sums``, left to right) and V stored in fp32, as
   ``pplr_fast.rerank._encode`` does on the CPU;
3. V' = mean of V over the first k2 ranks: ``query_expand_cuda`` with fp64
   sums, as ``rerank_cpu.cpp``;
4. the overlaps m(i, j) of the query rows i < Q with the gallery rows j >= Q
   (:func:`query_gallery_overlaps`): ``shared_column_overlaps`` of
   ``kernels/jaccard.py``, whose fp32 left-to-right sums in ascending column
   are the ones ``rerank_cpu.cpp``'s ``overlap_combine`` adds.

The entries D holds at the pairs of E(i) come from the caller (the distance
blocks it was given, or :func:`pair_sq_difference` of the features).

Deterministic by construction, as ``kernels/jaccard.py``: no float atomics, no
``index_add_``; every sum is added left to right by one lane, so every run
gives the same bits whatever order programs run in.

Takes and returns plain tensors; ``pplr_fast.rerank`` builds the output.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pplr_fast.kernels import LAUNCH
from pplr_fast.kernels.jaccard import (expanded_sets, query_expand_cuda, segment_sums,
                                       shared_column_overlaps)
from pplr_fast.kernels.pair_distance import block_sizes


@triton.jit(do_not_specialize=["n_pairs", "n_rows"])
def _pair_sq_difference_kernel(x_ptr, rows_ptr, cols_ptr, out_ptr, n_pairs, n_rows, dim, stride_x,
                               BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[p] = sum_d (x[rows[p], d] - x[cols[p], d])^2 in fp64, for fp32 or fp64 x."""
    pairs = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    valid = pairs < n_pairs
    r = tl.load(rows_ptr + pairs, mask=valid, other=0)
    c = tl.load(cols_ptr + pairs, mask=valid, other=0)
    valid = valid & (r >= 0) & (r < n_rows) & (c >= 0) & (c < n_rows)
    a_rows = x_ptr + r[:, None] * stride_x
    b_rows = x_ptr + c[:, None] * stride_x
    acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float64)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)[None, :]
        mask = valid[:, None] & (d < dim)
        a = tl.load(a_rows + d, mask=mask, other=0.0)
        b = tl.load(b_rows + d, mask=mask, other=0.0)
        diff = a.to(tl.float64) - b.to(tl.float64)
        acc += diff * diff
    tl.store(out_ptr + pairs, tl.sum(acc, axis=1), mask=pairs < n_pairs)


def pair_sq_difference(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(P,) fp64 squared Euclidean distances ``|x[rows[p]] - x[cols[p]]|^2``.

    For any features (``pair_distance.pair_sq_distance`` computes
    ``2 - 2 <x_r, x_c>``, the same only for unit rows), fp32 or fp64, summed in
    fp64 as the CPU's ``_rerank.pair_sq_distance``. The block sizes depend on D
    alone: equal rows give exactly 0, and d(r, c) == d(c, r).
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    x = x.contiguous()
    rows = rows.to(torch.int64).contiguous()
    cols = cols.to(torch.int64).contiguous()
    n_pairs = rows.numel()
    out = torch.empty(n_pairs, dtype=torch.float64, device=x.device)
    if n_pairs == 0:
        return out
    block_p, block_d = block_sizes(x.shape[1])
    _pair_sq_difference_kernel[(triton.cdiv(n_pairs, block_p),)](
        x, rows, cols, out, n_pairs, x.shape[0], x.shape[1], x.stride(0),
        BLOCK_P=block_p, BLOCK_D=block_d, num_warps=4, **LAUNCH)
    return out


def expansion_lengths(k1: int, k: int) -> tuple[int, int]:
    """(L1, LH): the rank-list heads R(i, k1) and R(c, round(k1/2)) are taken from."""
    return min(k1 + 1, k), min(round(k1 / 2) + 1, k)


def reranking_sets(rank: torch.Tensor, k1: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E(i) of every row as CSR ``(crow, col)`` (columns ascending) and each entry's row."""
    rank = rank.to(torch.int64).contiguous()
    n, k = rank.shape
    crow, col = expanded_sets(rank, *expansion_lengths(k1, k))
    rows = torch.repeat_interleave(torch.arange(n, device=rank.device), crow[1:] - crow[:-1])
    return crow, col, rows


def reciprocal_weights(crow: torch.Tensor, rows: torch.Tensor, entries: torch.Tensor,
                       rowmax: torch.Tensor) -> torch.Tensor:
    """V on E(i): ``exp(-entry / rowmax)`` normalised over each CSR row, fp32.

    ``entries`` are D's values at the pairs (rows, col) before scaling, fp32.
    Element-wise torch ops (deterministic; the fp32 division is IEEE) and the
    row sums of ``segment_sums`` in fp64 (``index_add_`` and ``bincount`` add
    with atomics on a GPU, in no fixed order). exp is taken in fp64 and
    rounded, so V does not depend on the device's fp32 ``exp``.
    """
    scaled = entries.float() / rowmax.float()[rows]
    weight = torch.exp(-scaled.double()).float()
    total = segment_sums(crow[1:] - crow[:-1], weight, torch.float64)
    return (weight.double() / total[rows]).float()


def query_gallery_overlaps(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                           rank: torch.Tensor, expansion: int, q: int, available_bytes: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``m(i, j) = sum_l min(V'[i, l], V'[j, l])`` of queries i < q and gallery rows j >= q.

    V' = the mean of V (CSR) over the first ``expansion`` ranks (V itself for
    1). Returns COO ``(i, j, m)`` (int64, int64, fp32) of the pairs whose
    supports meet, sorted by (i, j); ``available_bytes`` is the memory a chunk of
    terms may take a quarter of.
    """
    rank = rank.to(torch.int64).contiguous()
    n = rank.shape[0]
    crow, col, val = query_expand_cuda(crow, col, val, rank, expansion, torch.float64)
    found_i, found_j, found_m = [], [], []
    for r0, pair, m in shared_column_overlaps(crow, col.contiguous(), val.contiguous(), n, q, q,
                                              available_bytes):
        found_i.append(r0 + pair // n)
        found_j.append(pair % n)
        found_m.append(m)
    if not found_m:
        empty = torch.empty(0, dtype=torch.int64, device=col.device)
        return empty, empty.clone(), torch.empty(0, dtype=torch.float32, device=col.device)
    return torch.cat(found_i), torch.cat(found_j), torch.cat(found_m)
