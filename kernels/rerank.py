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
blocks it was given, or ``pair_distance.pair_sq_difference`` of the features).

Deterministic by construction, as ``kernels/jaccard.py``: no float atomics, no
``index_add_``; every sum is added left to right by one lane, so every run
gives the same bits whatever order programs run in.

Takes and returns plain tensors; ``pplr_fast.rerank`` builds the output.
"""
from __future__ import annotations

import torch

from pplr_fast.kernels.jaccard import (expanded_sets, query_expand_cuda, segment_sums,
                                       shared_column_overlaps)


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
