"""Sparse k-reciprocal Jaccard distance on a GPU (docs/method.md §2.1; CUDA twin of ``jaccard_cpu.cpp``).

From the kNN lists ``rank`` (N, K), K = min(k1, N), sorted by ``(d, index)``:

1. reciprocal masks: which entries of F(i, k1) and F(i, round(k1/2)) are
   reciprocal (one program per row loads its list and its entries' lists);
2. expansion: per row a padded buffer holding R(i, k1) and every accepted
   R(c, h) (exact integer test ``3 |R(c,h) ∩ R(i,k1)| > 2 |R(c,h)|``), then a
   per-row sort + unique gives E(i) as CSR;
3. V: fp64 distances of (i, j in E(i)) (``pair_sq_distance``) and a row
   softmax of -d, stored in fp32;
4. V' = mean of V over the first k2 kNN entries: a stable sort by (row, column)
   keeps each column's terms in kNN order and ``segment_sums`` adds them left
   to right, as ``jaccard_cpu.cpp`` does;
5. Jaccard (``jaccard_upper_pairs`` over ``shared_column_overlaps``): an
   inverted index (CSC) of V'; one non-zero (i, l) emits a term
   ``min(V'[i,l], V'[j,l])`` for every row j >= i of column l; a stable sort
   by (i, j) and ``segment_sums`` add each pair's terms in ascending l, as the
   CPU kernel's accumulator does; the sums give
   ``d = max(0, 1 - m / (2 - m))``, kept when ``d <= max_distance``, mirrored
   into the symmetric CSR.

Deterministic by construction: no floating-point sum depends on the order in
which programs or threads run (no float atomics, no ``index_add_``), so every
run gives the same values, equal bit for bit to the CPU kernel's given the same V.

Memory is O(N k) apart from the bounded term and expansion buffers.
Takes and returns plain tensors (CSR arrays); ``pplr_fast.cluster.fast_cuda``
wraps the result in a ``SparseDistance``.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from pplr_fast.kernels import LAUNCH
from pplr_fast.kernels.pair_distance import pair_sq_distance

TERM_BYTES = 2 * 1024 ** 3            # Jaccard terms (about 48 bytes each) of one row chunk
EXPANSION_BYTES = 256 * 1024 ** 2      # padded E(i) buffers (and their sort) of one row chunk
EXPANSION_ENTRIES = 16 * 1024 ** 2     # gathered V entries of one query-expansion chunk
EXPANSION_TILE = 2048                  # candidates x R(c, h) x members compared at once
MEMBER_CHUNK = 8                       # members of R(i, k1) per compare step
SEGMENT_BLOCK = 512                    # query-expansion sums per program


@triton.jit(do_not_specialize=["n"])
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


@triton.jit(do_not_specialize=["row0", "n"])
def _expansion_kernel(rank_ptr, mask1_ptr, maskh_ptr, out_ptr, row0, n, K, L1, LH, W,
                      BLOCK_L1: tl.constexpr, BLOCK_LH: tl.constexpr, CAND_CHUNK: tl.constexpr,
                      MEMBER_CHUNK: tl.constexpr):
    """Padded E(i) of row i = row0 + pid: W = L1 + L1 * LH slots, n marks an empty slot.

    Slots [0, L1): R(i, k1). Slots L1 + a * LH + b: entry b of R(c, h) for the
    candidate c = F(i, k1)[a], when c passes the expansion test. Candidates are
    taken CAND_CHUNK at a time and compared with MEMBER_CHUNK members of
    R(i, k1) at a time, so the largest tile (CAND_CHUNK x BLOCK_LH x
    MEMBER_CHUNK) stays small for any k1.
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
    for a0 in range(0, L1, CAND_CHUNK):
        ac = a0 + tl.arange(0, CAND_CHUNK)
        in_chunk = ac < L1
        fc = tl.load(rank_ptr + i * K + ac, mask=in_chunk, other=0)
        mc = (tl.load(mask1_ptr + i * L1 + ac, mask=in_chunk, other=0) != 0) \
            & (fc >= 0) & (fc < n) & in_chunk
        tile_mask = mc[:, None] & (b[None, :] < LH)
        fh = tl.load(rank_ptr + fc[:, None] * K + b[None, :], mask=tile_mask, other=-1)
        mh = (tl.load(maskh_ptr + fc[:, None] * LH + b[None, :], mask=tile_mask, other=0) != 0) \
            & tile_mask
        in_r1 = tl.zeros((CAND_CHUNK, BLOCK_LH), dtype=tl.int32)
        for m0 in range(0, L1, MEMBER_CHUNK):               # is fh[a, b] in R(i, k1)?
            a2 = m0 + tl.arange(0, MEMBER_CHUNK)
            members = tl.load(rank_ptr + i * K + a2, mask=a2 < L1, other=-2)
            reciprocal = tl.load(mask1_ptr + i * L1 + a2, mask=a2 < L1, other=0) != 0
            hit = (fh[:, :, None] == members[None, None, :]) & reciprocal[None, None, :]
            in_r1 = tl.maximum(in_r1, tl.max(hit.to(tl.int32), axis=2))
        overlap = tl.sum(tl.where(mh, in_r1, 0), axis=1)
        size = tl.sum(mh.to(tl.int32), axis=1)
        accept = mc & (3 * overlap > 2 * size)
        added = accept[:, None] & mh
        tl.store(out_row + L1 + ac[:, None] * LH + b[None, :], tl.where(added, fh, n).to(tl.int32),
                 mask=in_chunk[:, None] & (b[None, :] < LH))


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


@triton.jit(do_not_specialize=["n_segments"])
def _segment_sum_kernel(seg_start_ptr, values_ptr, out_ptr, n_segments, BLOCK: tl.constexpr):
    """out[s] = values[start(s)] + values[start(s) + 1] + ..., added left to right.

    The sums are kept in out's type (fp32, or fp64 for fp64 sums of fp32
    values). One lane per segment, so the order of the additions is the order
    of the values, whatever order programs and lanes run in.
    """
    s = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = s < n_segments
    start = tl.load(seg_start_ptr + s, mask=valid, other=0)
    stop = tl.load(seg_start_ptr + s + 1, mask=valid, other=0)
    total = tl.zeros((BLOCK,), dtype=out_ptr.dtype.element_ty)
    for t in range(0, tl.max(stop - start, axis=0)):      # at most k2 terms per segment
        inside = start + t < stop
        total += tl.load(values_ptr + start + t, mask=inside, other=0.0)
    tl.store(out_ptr + s, total, mask=valid)


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


def expansion_candidate_chunk(block_l1: int, block_lh: int) -> int:
    """Candidates per step of ``_expansion_kernel`` (its compare tile: EXPANSION_TILE entries)."""
    return max(1, min(block_l1, EXPANSION_TILE // (block_lh * MEMBER_CHUNK)))


def expanded_sets(rank: torch.Tensor, l1: int, lh: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E(i) of every row as CSR ``(crow, col)``, columns ascending.

    ``l1`` and ``lh`` are the lengths of F(i, k1) and F(i, round(k1/2)), the
    list heads R(i, k1) and R(c, h) are taken from (at most K = rank.shape[1]).
    """
    n, k = rank.shape
    mask1, maskh = reciprocal_mask_cuda(rank, l1), reciprocal_mask_cuda(rank, lh)
    width = l1 + l1 * lh
    block_l1, block_lh = triton.next_power_of_2(l1), triton.next_power_of_2(lh)
    cand_chunk = expansion_candidate_chunk(block_l1, block_lh)
    step = max(1, min(n, EXPANSION_BYTES // (16 * width)))
    rows, cols = [], []
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        padded = torch.empty(r1 - r0, width, dtype=torch.int32, device=rank.device)
        _expansion_kernel[(r1 - r0,)](rank, mask1, maskh, padded, r0, n, k, l1, lh, width,
                                      BLOCK_L1=block_l1, BLOCK_LH=block_lh,
                                      CAND_CHUNK=cand_chunk, MEMBER_CHUNK=MEMBER_CHUNK, **LAUNCH)
        padded = torch.sort(padded, dim=1).values
        first = torch.ones_like(padded, dtype=torch.bool)
        first[:, 1:] = padded[:, 1:] != padded[:, :-1]
        r, t = torch.nonzero(first & (padded < n), as_tuple=True)
        rows.append(r + r0)
        cols.append(padded[r, t].long())
    rows = torch.cat(rows)
    return csr_from_sorted_rows(rows, n), torch.cat(cols)


def softmax_warps(block: int) -> int:
    """Warps of a ``_row_softmax_kernel`` program: about 8 fp64 values a thread."""
    return max(4, min(16, block // 256))


def encode_cuda(x: torch.Tensor, rank: torch.Tensor, k1: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V as CSR ``(crow, col, val)``: softmax of -d over E(i)."""
    n, k = rank.shape
    crow, col = expanded_sets(rank, min(k1, k), min(round(k1 / 2) + 1, k))
    rows = torch.repeat_interleave(torch.arange(n, device=x.device), crow[1:] - crow[:-1])
    dist = pair_sq_distance(x, rows, col)
    val = torch.empty_like(dist)
    longest = int((crow[1:] - crow[:-1]).max()) if n else 0
    if longest:
        block = triton.next_power_of_2(longest)
        _row_softmax_kernel[(n,)](dist, crow, val, BLOCK=block, num_warps=softmax_warps(block),
                                  **LAUNCH)
    return crow, col, val.float()      # softmax in fp64, V stored in fp32 (as on the CPU)


def segment_sums(counts: torch.Tensor, values: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sums of consecutive segments of fp32 ``values`` (lengths ``counts``), added left to right.

    The sums are kept in ``dtype`` (fp32 or fp64). The deterministic
    replacement of ``index_add_``: bit-equal to a sequential loop, on every run
    and every device.
    """
    starts = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=values.device)
    starts[1:] = torch.cumsum(counts, 0)
    out = torch.empty(counts.numel(), dtype=dtype, device=values.device)
    if counts.numel():
        _segment_sum_kernel[(triton.cdiv(counts.numel(), SEGMENT_BLOCK),)](
            starts, values.float().contiguous(), out, counts.numel(), BLOCK=SEGMENT_BLOCK,
            **LAUNCH)
    return out


def query_expand_cuda(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                      rank: torch.Tensor, k2: int, sum_dtype: torch.dtype = torch.float32
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V'[i] = mean of V[rank[i, t]], t < min(k2, K), as CSR with ascending columns.

    Each column's terms are added in t order in ``sum_dtype``: fp32 sums divided
    by the count (as ``jaccard_cpu.cpp``), or fp64 sums times 1 / count,
    rounded to fp32 (as ``rerank_cpu.cpp``).
    """
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
        key, order = torch.sort(owner * n + col[entry], stable=True)   # ties stay in t order
        unique, counts = torch.unique_consecutive(key, return_counts=True)
        keys.append(unique)
        sums.append(segment_sums(counts, val[entry][order], sum_dtype))
    key, total = torch.cat(keys), torch.cat(sums)
    mean = total / float(length) if sum_dtype == torch.float32 else (total * (1.0 / length)).float()
    return csr_from_sorted_rows(key // n, n), key % n, mean


def float32_at_most(value: float) -> float:
    """The largest fp32 number <= ``value``: for fp32 d, ``d <= value`` iff ``d <= it``."""
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def shared_column_overlaps(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n: int,
                           rows: int, first_partner: int, available_bytes: int):
    """Overlaps ``m(i, j) = sum_l min(V'[i, l], V'[j, l])`` of the pairs sharing a column of V'.

    V' is CSR (n rows, columns ascending per row); the pairs are the rows
    i < ``rows`` with the rows j >= max(i, ``first_partner``): with
    ``rows = n, first_partner = 0`` every pair j >= i (the Jaccard matrix's
    upper triangle), with ``rows = first_partner = Q`` the query rows with the
    gallery rows. Yields, a chunk of rows [r0, r1) at a time, ``(r0, pair, m)``:
    ``pair = (i - r0) * n + j`` ascending (int64) and m (fp32).

    Every non-zero (i, l) (ascending l) emits one term ``(i, j, min(V'[i, l],
    V'[j, l]))`` per partner j in column l's posting list (rows ascend there, so
    the partners are a tail of it: from i's own entry, or past the column's
    rows < first_partner); a stable sort by (i, j) keeps each pair's terms in
    ascending l and ``segment_sums`` adds them left to right, the order of the
    CPU kernels' accumulators, so m does not depend on the order in which
    programs run.

    Work per row i: T_i = sum over its non-zeros (i, l) of its partners in
    column l, each term generated, radix-sorted and added once; no loop runs to
    a longest posting list (a segment sum loops to the most columns two rows of
    its block share). Memory: the inverted index (O(nnz)) and about 48 bytes per
    term of one chunk (``TERM_BYTES`` bounds a chunk; a row with more terms than
    that is a chunk of its own).
    """
    device = col.device
    nnz = col.numel()
    owned = nnz if rows == n else int(crow[rows])                 # non-zeros of rows < `rows`
    row_of = torch.repeat_interleave(torch.arange(n, device=device), crow[1:] - crow[:-1])
    by_col = torch.sort(col, stable=True).indices                # rows ascend within a column
    post_row, post_val = row_of[by_col], val[by_col]
    post_pos = torch.empty_like(by_col)
    post_pos[by_col] = torch.arange(nnz, device=device)           # (i, l) in l's posting list
    cptr = csr_from_sorted_rows(col[by_col], n)
    first = post_pos[:owned]                                      # partners j >= i ...
    if first_partner > 0:                                         # ... and j >= first_partner
        below = torch.bincount(col[:int(crow[first_partner])], minlength=n)
        first = torch.maximum(first, cptr[col[:owned]] + below[col[:owned]])
    terms = cptr[col[:owned] + 1] - first
    terms_before = torch.zeros(owned + 1, dtype=torch.int64, device=device)
    terms_before[1:] = torch.cumsum(terms, 0)
    row_terms_end = terms_before[crow[1:rows + 1]]                # terms of rows <= i
    budget = max(1, min(TERM_BYTES, available_bytes // 4) // 48)
    marks = torch.arange(budget, int(terms_before[-1]) + budget, budget, device=device)
    cuts = torch.searchsorted(row_terms_end, marks, right=True).clamp(min=1)
    bounds = sorted(set([0, rows] + cuts.tolist()) & set(range(rows + 1)))   # the only host sync
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        p0, p1 = int(crow[r0]), int(crow[r1])
        t0, t1 = int(terms_before[p0]), int(terms_before[p1])
        if t1 == t0:
            continue
        owner = torch.repeat_interleave(torch.arange(p0, p1, device=device), terms[p0:p1],
                                        output_size=t1 - t0)
        partner = first[owner] + torch.arange(t0, t1, device=device) - terms_before[owner]
        key = (row_of[owner] - r0) * n + post_row[partner]
        key, order = torch.sort(key, stable=True)                 # ties keep ascending l
        term = torch.minimum(val[owner[order]], post_val[partner[order]])
        del owner, partner, order
        pair, count = torch.unique_consecutive(key, return_counts=True)
        yield r0, pair, segment_sums(count, term)


def jaccard_upper_pairs(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n: int,
                        max_distance: float | None, available_bytes: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (i, j >= i) sharing a support column of V' (CSR, columns ascending per row).

    Returns COO ``(i, j, d)`` (int64, int64, fp32) of the pairs with
    ``d <= max_distance`` (all of them for None), sorted by (i, j); d is
    bit-equal to ``jaccard_cpu.cpp``'s and does not depend on the order in which
    programs run: the overlaps m of :func:`shared_column_overlaps` give
    ``d = max(0, 1 - m / (2 - m))`` in IEEE fp32. Memory: that function's and
    the output.
    """
    device = col.device
    found_i, found_j, found_d = [], [], []
    cutoff = None if max_distance is None else float32_at_most(max_distance)
    for r0, pair, m in shared_column_overlaps(crow, col, val, n, n, 0, available_bytes):
        d = torch.clamp(1 - m / (2 - m), min=0)
        if cutoff is not None:
            keep = d <= cutoff
            pair, d = pair[keep], d[keep]
        found_i.append(r0 + pair // n)
        found_j.append(pair % n)
        found_d.append(d)
    if not found_d:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty.clone(), torch.empty(0, dtype=torch.float32, device=device)
    return torch.cat(found_i), torch.cat(found_j), torch.cat(found_d)


def sparse_jaccard(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n: int,
                   max_distance: float | None, available_bytes: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Jaccard distances of every pair sharing a support column of V' (CSR).

    Returns the symmetric CSR ``(crow, col, val)`` (int64, int64, fp32), columns
    ascending per row, diagonal included; ``available_bytes`` is the device
    memory a chunk of terms may take a quarter of (at most ``TERM_BYTES``).
    """
    i, j, d = jaccard_upper_pairs(crow, col, val, n, max_distance, available_bytes)
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
