"""Sparse k-reciprocal Jaccard distance on a GPU (SPEC §2.1; CUDA twin of ``jaccard_cpu.cpp``).

From the kNN lists ``rank`` (N, K), K = min(k1, N), sorted by ``(d, index)``:

1. reciprocal masks: which entries of F(i, k1) and F(i, round(k1/2)) are
   reciprocal (one program per row loads its list and its entries' lists);
2. expansion: per row a padded buffer holding R(i, k1) and every accepted
   R(c, h) (exact integer test ``3 |R(c,h) ∩ R(i,k1)| > 2 |R(c,h)|``), then a
   per-row sort + unique gives E(i) as CSR;
3. V: fp64 distances of (i, j in E(i)) (``pair_sq_distance``) and a row
   softmax of -d, stored in fp32;
4. V' = mean of V over the first k2 kNN entries (sort + segment sum);
5. Jaccard: an inverted index (CSC) of V'; for a chunk of rows, every
   non-zero (i, l) walks the posting list of column l (rows j >= i) and
   atomically adds ``min(V'[i,l], V'[j,l])`` into a dense (rows x N)
   accumulator bounded by ``ACCUMULATOR_BYTES``; its non-zeros give
   ``d = max(0, 1 - m / (2 - m))``, kept when ``d <= max_distance``, and are
   mirrored into the symmetric CSR.

Memory is O(N k) apart from the bounded accumulator and expansion buffers.
Takes and returns plain tensors (CSR arrays); ``pplr_fast.cluster.fast_cuda``
wraps the result in a ``SparseDistance``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pplr_fast.kernels import LAUNCH
from pplr_fast.kernels.pair_distance import pair_sq_distance

ACCUMULATOR_BYTES = 2 * 1024 ** 3      # dense fp32 m(i, j) block of one row chunk (at most)
EXPANSION_BYTES = 256 * 1024 ** 2      # padded E(i) buffers (and their sort) of one row chunk
EXPANSION_ENTRIES = 16 * 1024 ** 2     # gathered V entries of one query-expansion chunk
BLOCK_NNZ = 64                         # V' non-zeros per program of the Jaccard kernel
BLOCK_POSTING = 32                     # posting-list entries per step


@triton.jit
def _reciprocal_mask_kernel(rank_ptr, mask_ptr, n, K, L, BLOCK_L: tl.constexpr):
    """mask[i, t] = rank[i, t] lists i among its own first L entries (t < L)."""
    i = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, BLOCK_L)
    in_list = t < L
    f = tl.load(rank_ptr + i * K + t, mask=in_list, other=0)
    valid = in_list & (f >= 0) & (f < n)
    tile_mask = valid[:, None] & (t[None, :] < L)
    their_lists = tl.load(rank_ptr + f[:, None] * K + t[None, :], mask=tile_mask, other=-1)
    reciprocal = tl.max((their_lists == i).to(tl.int32), axis=1) > 0
    tl.store(mask_ptr + i * L + t, (valid & reciprocal).to(tl.int8), mask=in_list)


@triton.jit
def _expansion_kernel(rank_ptr, mask1_ptr, maskh_ptr, out_ptr, row0, n, K, L1, LH, W,
                      BLOCK_L1: tl.constexpr, BLOCK_LH: tl.constexpr, MEMBER_CHUNK: tl.constexpr):
    """Padded E(i) of row i = row0 + pid: W = L1 + L1 * LH slots, n marks an empty slot.

    Slots [0, L1): R(i, k1). Slots L1 + a * LH + b: entry b of R(c, h) for the
    candidate c = F(i, k1)[a], when c passes the expansion test.
    """
    pid = tl.program_id(0).to(tl.int64)
    i = row0 + pid
    out_row = out_ptr + pid * W
    a = tl.arange(0, BLOCK_L1)
    in_l1 = a < L1
    f1 = tl.load(rank_ptr + i * K + a, mask=in_l1, other=0)
    m1 = (tl.load(mask1_ptr + i * L1 + a, mask=in_l1, other=0) != 0) & (f1 >= 0) & (f1 < n)
    tl.store(out_row + a, tl.where(m1, f1, n).to(tl.int32), mask=in_l1)

    b = tl.arange(0, BLOCK_LH)
    tile_mask = m1[:, None] & (b[None, :] < LH)
    fh = tl.load(rank_ptr + f1[:, None] * K + b[None, :], mask=tile_mask, other=-1)
    mh = (tl.load(maskh_ptr + f1[:, None] * LH + b[None, :], mask=tile_mask, other=0) != 0) \
        & tile_mask
    in_r1 = tl.zeros((BLOCK_L1, BLOCK_LH), dtype=tl.int32)
    for a0 in range(0, L1, MEMBER_CHUNK):                  # is fh[a, b] in R(i, k1)?
        a2 = a0 + tl.arange(0, MEMBER_CHUNK)
        members = tl.load(rank_ptr + i * K + a2, mask=a2 < L1, other=-2)
        reciprocal = tl.load(mask1_ptr + i * L1 + a2, mask=a2 < L1, other=0) != 0
        hit = (fh[:, :, None] == members[None, None, :]) & reciprocal[None, None, :]
        in_r1 = tl.maximum(in_r1, tl.max(hit.to(tl.int32), axis=2))
    overlap = tl.sum(tl.where(mh, in_r1, 0), axis=1)
    size = tl.sum(mh.to(tl.int32), axis=1)
    accept = m1 & (3 * overlap > 2 * size)
    added = accept[:, None] & mh
    tl.store(out_row + L1 + a[:, None] * LH + b[None, :], tl.where(added, fh, n).to(tl.int32),
             mask=in_l1[:, None] & (b[None, :] < LH))


@triton.jit
def _row_softmax_kernel(dist_ptr, crow_ptr, out_ptr, BLOCK: tl.constexpr):
    """out = softmax of -dist over each CSR row (shifted by the row's smallest distance), fp64."""
    i = tl.program_id(0).to(tl.int64)
    start = tl.load(crow_ptr + i)
    stop = tl.load(crow_ptr + i + 1)
    offs = start + tl.arange(0, BLOCK)
    valid = offs < stop
    d = tl.load(dist_ptr + offs, mask=valid, other=float("inf")).to(tl.float64)
    lowest = tl.minimum(tl.min(d, axis=0), 3.0e38)        # finite even for an empty row
    w = tl.exp(lowest - d)                                 # 0 in the padding
    total = tl.sum(w, axis=0)
    tl.store(out_ptr + offs, w / tl.where(total > 0, total, 1.0), mask=valid)   # fp64 division is IEEE


@triton.jit
def _jaccard_accumulate_kernel(row_ptr, col_ptr, val_ptr, cptr_ptr, post_row_ptr, post_val_ptr,
                               acc_ptr, nnz_start, nnz_stop, row0, n,
                               BLOCK_NNZ: tl.constexpr, BLOCK_POSTING: tl.constexpr):
    """acc[i - row0, j] += min(V'[i, l], V'[j, l]) for each non-zero (i, l), j >= i in column l."""
    e = nnz_start + tl.program_id(0).to(tl.int64) * BLOCK_NNZ + tl.arange(0, BLOCK_NNZ)
    valid = e < nnz_stop
    i = tl.load(row_ptr + e, mask=valid, other=0)
    l = tl.load(col_ptr + e, mask=valid, other=0)
    v = tl.load(val_ptr + e, mask=valid, other=0.0)
    valid = valid & (l >= 0) & (l < n)
    first = tl.load(cptr_ptr + l, mask=valid, other=0)
    length = tl.where(valid, tl.load(cptr_ptr + l + 1, mask=valid, other=0) - first, 0)
    acc_rows = acc_ptr + (i - row0) * n
    for q0 in range(0, tl.max(length, axis=0), BLOCK_POSTING):
        q = q0 + tl.arange(0, BLOCK_POSTING)
        in_posting = q[None, :] < length[:, None]
        j = tl.load(post_row_ptr + first[:, None] + q[None, :], mask=in_posting, other=-1)
        w = tl.load(post_val_ptr + first[:, None] + q[None, :], mask=in_posting, other=0.0)
        upper = in_posting & (j >= i[:, None]) & (j < n)
        tl.atomic_add(acc_rows[:, None] + j, tl.minimum(v[:, None], w), mask=upper, sem="relaxed")


def csr_from_sorted_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Row pointers (n + 1,) int64 of a row-sorted COO row vector."""
    crow = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    return crow


def reciprocal_mask_cuda(rank: torch.Tensor, length: int) -> torch.Tensor:
    """(N, length) int8: entry t of F(i, .) = rank[i, :length] is in R(i, .)."""
    n, k = rank.shape
    mask = torch.empty(n, length, dtype=torch.int8, device=rank.device)
    _reciprocal_mask_kernel[(n,)](rank, mask, n, k, length,
                                  BLOCK_L=triton.next_power_of_2(length), **LAUNCH)
    return mask


def expanded_sets(rank: torch.Tensor, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E(i) of every row as CSR ``(crow, col)``, columns ascending."""
    n, k = rank.shape
    l1, lh = min(k1, k), min(round(k1 / 2) + 1, k)
    mask1, maskh = reciprocal_mask_cuda(rank, l1), reciprocal_mask_cuda(rank, lh)
    width = l1 + l1 * lh
    step = max(1, min(n, EXPANSION_BYTES // (16 * width)))
    rows, cols = [], []
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        padded = torch.empty(r1 - r0, width, dtype=torch.int32, device=rank.device)
        _expansion_kernel[(r1 - r0,)](rank, mask1, maskh, padded, r0, n, k, l1, lh, width,
                                      BLOCK_L1=triton.next_power_of_2(l1),
                                      BLOCK_LH=triton.next_power_of_2(lh), MEMBER_CHUNK=8,
                                      **LAUNCH)
        padded = torch.sort(padded, dim=1).values
        first = torch.ones_like(padded, dtype=torch.bool)
        first[:, 1:] = padded[:, 1:] != padded[:, :-1]
        r, t = torch.nonzero(first & (padded < n), as_tuple=True)
        rows.append(r + r0)
        cols.append(padded[r, t].long())
    rows = torch.cat(rows)
    return csr_from_sorted_rows(rows, n), torch.cat(cols)


def encode_cuda(x: torch.Tensor, rank: torch.Tensor, k1: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V as CSR ``(crow, col, val)``: softmax of -d over E(i)."""
    n = x.shape[0]
    crow, col = expanded_sets(rank, k1)
    rows = torch.repeat_interleave(torch.arange(n, device=x.device), crow[1:] - crow[:-1])
    dist = pair_sq_distance(x, rows, col)
    val = torch.empty_like(dist)
    longest = int((crow[1:] - crow[:-1]).max()) if n else 0
    if longest:
        _row_softmax_kernel[(n,)](dist, crow, val, BLOCK=triton.next_power_of_2(longest),
                                  **LAUNCH)
    return crow, col, val.float()      # softmax in fp64, V stored in fp32 (as on the CPU)


def query_expand_cuda(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                      rank: torch.Tensor, k2: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V'[i] = mean of V[rank[i, t]], t < min(k2, K), as CSR with ascending columns."""
    n = rank.shape[0]
    if k2 == 1:
        return crow, col, val
    length = min(k2, rank.shape[1])
    row_len = crow[1:] - crow[:-1]
    step = max(1, min(n, EXPANSION_ENTRIES // max(1, length * int(row_len.max()))))
    keys, sums = [], []
    for r0 in range(0, n, step):
        src = rank[r0:r0 + step, :length].reshape(-1)        # the rows averaged, per owner
        seg_len = row_len[src]
        seg = torch.repeat_interleave(torch.arange(src.numel(), device=col.device), seg_len)
        seg_start = torch.cumsum(seg_len, 0) - seg_len
        entry = crow[src][seg] + torch.arange(seg.numel(), device=col.device) - seg_start[seg]
        owner = r0 + seg // length
        key, order = torch.sort(owner * n + col[entry])
        unique, inverse = torch.unique_consecutive(key, return_inverse=True)
        keys.append(unique)
        sums.append(torch.zeros(unique.numel(), dtype=torch.float32, device=col.device)
                    .index_add_(0, inverse, val[entry][order]))
    key = torch.cat(keys)
    return csr_from_sorted_rows(key // n, n), key % n, torch.cat(sums) / float(length)


def sparse_jaccard(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n: int,
                   max_distance: float | None, available_bytes: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Jaccard distances of every pair sharing a support column of V' (CSR).

    Returns the symmetric CSR ``(crow, col, val)`` (int64, int64, fp32), columns
    ascending per row, diagonal included; ``available_bytes`` is the device
    memory the accumulator may take a quarter of (at most ACCUMULATOR_BYTES).
    """
    device = col.device
    rows = torch.repeat_interleave(torch.arange(n, device=device), crow[1:] - crow[:-1])
    by_col = torch.sort(col, stable=True).indices                # rows ascend within a column
    post_row, post_val = rows[by_col].contiguous(), val[by_col].contiguous()
    cptr = csr_from_sorted_rows(col[by_col], n)
    budget = min(ACCUMULATOR_BYTES, available_bytes // 4)
    step = max(1, min(n, budget // (4 * n)))
    acc = torch.empty(step, n, dtype=torch.float32, device=device)
    upper_i, upper_j, upper_d = [], [], []
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        block = acc[:r1 - r0]
        block.zero_()
        nnz_start, nnz_stop = int(crow[r0]), int(crow[r1])
        if nnz_stop > nnz_start:
            grid = (triton.cdiv(nnz_stop - nnz_start, BLOCK_NNZ),)
            _jaccard_accumulate_kernel[grid](rows, col, val, cptr, post_row, post_val, block,
                                             nnz_start, nnz_stop, r0, n,
                                             BLOCK_NNZ=BLOCK_NNZ, BLOCK_POSTING=BLOCK_POSTING,
                                             **LAUNCH)
        i, j = torch.nonzero(block, as_tuple=True)
        m = block[i, j]
        d = torch.clamp(1 - m / (2 - m), min=0)
        if max_distance is not None:
            keep = d <= max_distance
            i, j, d = i[keep], j[keep], d[keep]
        upper_i.append(i + r0)
        upper_j.append(j)
        upper_d.append(d)
    del acc
    i, j, d = torch.cat(upper_i), torch.cat(upper_j), torch.cat(upper_d)
    off = j != i
    rows = torch.cat([i, j[off]])
    cols = torch.cat([j, i[off]])
    order = torch.sort(rows * n + cols).indices
    rows, cols = rows[order], cols[order]
    return csr_from_sorted_rows(rows, n), cols, torch.cat([d, d[off]])[order]


def jaccard_from_neighbours_cuda(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                                 max_distance: float | None, available_bytes: int
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse Jaccard distance from the kNN lists ``rank`` (N, min(k1, N)), sorted by (d, index).

    Returns the symmetric CSR ``(crow, col, val)`` of :func:`sparse_jaccard`.
    """
    x = x.float().contiguous()
    rank = rank.to(torch.int64).contiguous()
    crow, col, val = query_expand_cuda(*encode_cuda(x, rank, k1), rank, k2)
    return sparse_jaccard(crow, col.contiguous(), val.contiguous(), x.shape[0], max_distance,
                          available_bytes)
