"""The reference clustering path: plain PyTorch, dense N x N matrices, obviously right.

Every op of the stage (docs/method.md §2), each the oracle its fast twins
(``fast_cpu.py``, ``fast_cuda.py``) are tested against. The public entry
points with input checks and backend choice are in ``api.py``; the functions
here take checked inputs.

kNN (docs/method.md §2.1 step 1, §2.3)
    the full N x N fp64 distance matrix and a stable sort of every row
    (``common.py`` says why fp64 and ``(d, index)`` make every backend agree).

k-reciprocal Jaccard distance (docs/method.md §2.1; Zhong et al., CVPR 2017), for
L2-normalised rows x_i and ``rank[i]`` = the k1 nearest neighbours of i
sorted by ``(d, index)``:

1. ``F(i, k)`` = first ``min(k + 1, k1)`` entries of ``rank[i]``;
   ``R(i, k)`` = ``{j in F(i, k) : i in F(j, k)}``.
2. ``E(i)`` = ``R(i, k1)`` plus every ``R(c, h)`` (h = round(k1 / 2)) of a
   candidate ``c in R(i, k1)`` with ``|R(c, h) ∩ R(i, k1)| > 2/3 |R(c, h)|``.
3. ``V[i, j]`` = softmax over ``j in E(i)`` of ``-d(i, j)`` (d in float64, V
   stored in float32); 0 elsewhere.
4. ``V'[i]`` = mean of ``V[j]`` over the first k2 entries of ``rank[i]``
   (skipped when k2 == 1).
5. ``d_J(i, j) = 1 - m / (2 - m)``, ``m = Σ_l min(V'[i, l], V'[j, l])``,
   clamped at 0. Pairs whose supports do not meet have ``d_J = 1``.

   When N < k1 every neighbour list simply has N entries. ``round`` is
   Python's (half to even), as in the public code's ``np.around``.

DBSCAN (docs/method.md §2.2), scikit-learn's exact semantics:
    neighbours of i are the j with ``d(i, j) <= eps`` (i itself included
    when ``d(i, i) <= eps``); a core point has at least ``min_samples``
    neighbours; clusters are the connected components of core points,
    numbered in increasing order of their lowest-index core point; a
    non-core point within eps of a core point joins the lowest-numbered
    neighbouring cluster, every other point is noise (-1).

Cross-agreement (docs/method.md §2.3):
    ``A[i, n] = |N_g(i) ∩ N_n(i)| / |N_g(i) ∪ N_n(i)|`` where ``N_g(i)`` and
    ``N_n(i)`` are the k nearest neighbours of i in the global space and in
    part space n, i itself excluded by index (so with duplicated images the
    result does not depend on where i sorts among its copies). With N <= k
    the sets hold the N - 1 other images; with N == 1 both sets are empty and
    the score is 0.
"""
from __future__ import annotations

import torch

from pplr_fast.utils.memory import ensure_fits

from .common import (Timer, neighbour_lists, neighbours_without_self, no_timer,
                     pairwise_sq_distance, reference_dense_bytes, sorted_neighbours)


# ---------------------------------------------------------------- kNN
def nearest_neighbours(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN from dense fp64 distances and a stable sort. Returns (dist, index)."""
    n = x.shape[0]
    ensure_fits(reference_dense_bytes(n), x.device,
                f"the reference kNN of N={n} (a dense N x N matrix)",
                "use backend='fast', which never builds the N x N matrix")
    return sorted_neighbours(pairwise_sq_distance(x, x), k)


# ---------------------------------------------------------------- Jaccard
def reciprocal_mask(rank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``F(i, k)`` for every i and which of its entries are in ``R(i, k)``.

    Returns ``(f, mask)`` of shape (N, min(k + 1, K)) where K = rank.shape[1].
    """
    f = rank[:, :min(k + 1, rank.shape[1])]
    me = torch.arange(rank.shape[0], device=rank.device)[:, None, None]
    return f, (f[f] == me).any(dim=-1)


def expansion_mask(rank: torch.Tensor, k1: int) -> torch.Tensor:
    """Dense (N, N) boolean membership of the expanded sets ``E(i)``."""
    n = rank.shape[0]
    f1, m1 = reciprocal_mask(rank, k1)
    fh, mh = reciprocal_mask(rank, round(k1 / 2))
    rows = torch.arange(n, device=rank.device)
    in_r1 = torch.zeros(n, n, dtype=torch.bool, device=rank.device)
    in_r1[rows[:, None].expand_as(f1)[m1], f1[m1]] = True
    # For each candidate c = f1[i, a]: R(c, h) as (fh[c], mh[c]).
    cand_f, cand_m = fh[f1], mh[f1]                                   # (N, K1, Kh)
    overlap = (cand_m & in_r1[rows[:, None, None], cand_f]).sum(-1)   # |R(c,h) ∩ R(i,k1)|
    size = cand_m.sum(-1)
    accept = m1 & (3 * overlap > 2 * size)                            # exact "> 2/3 |R(c,h)|"
    added = accept[:, :, None] & cand_m
    expanded = in_r1.clone()
    expanded[rows[:, None, None].expand_as(cand_f)[added], cand_f[added]] = True
    return expanded


def encode(dist: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """``V`` (float32): row-wise softmax of ``-dist`` over ``members``; rows without members are 0."""
    w = torch.where(members, -dist, torch.full_like(dist, float("-inf")))
    top = w.max(dim=1, keepdim=True).values
    w.sub_(torch.where(torch.isfinite(top), top, torch.zeros_like(top))).exp_()
    return w.div_(w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)).float()


def query_expand(v: torch.Tensor, rank: torch.Tensor, k2: int) -> torch.Tensor:
    """``V'[i]`` = mean of ``V[rank[i, t]]`` for t < k2 (identity when k2 == 1)."""
    if k2 == 1:
        return v
    k2 = min(k2, rank.shape[1])
    out = v[rank[:, 0]].clone()
    for t in range(1, k2):
        out += v[rank[:, t]]
    return out / k2


def jaccard_from_encoding(vq: torch.Tensor) -> torch.Tensor:
    """Dense Jaccard distances from the dense encoding ``V'``, via an inverted index.

    Row i only visits the images that share a support column with it, as the
    public code does: for each non-zero ``V'[i, l]``, the posting list of
    column l contributes ``min(V'[i, l], V'[j, l])`` to ``m(i, j)``.
    """
    n = vq.shape[0]
    rows, cols = torch.nonzero(vq, as_tuple=True)          # row-major
    vals = vq[rows, cols]
    row_ptr = torch.zeros(n + 1, dtype=torch.int64, device=vq.device)
    row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    by_col = torch.sort(cols, stable=True).indices
    post_rows, post_vals = rows[by_col], vals[by_col]
    col_ptr = torch.zeros(n + 1, dtype=torch.int64, device=vq.device)
    col_ptr[1:] = torch.cumsum(torch.bincount(cols, minlength=n), 0)
    out = torch.empty(n, n, dtype=torch.float32, device=vq.device)
    for i in range(n):
        lo, hi = int(row_ptr[i]), int(row_ptr[i + 1])
        if lo == hi:                            # empty V' row: shares nothing
            out[i] = 1
            continue
        support, weight = cols[lo:hi], vals[lo:hi]
        starts, lengths = col_ptr[support], col_ptr[support + 1] - col_ptr[support]
        ends = torch.cumsum(lengths, 0)         # every posting holds row i: lengths >= 1
        segment = torch.zeros(int(ends[-1]), dtype=torch.int64, device=vq.device)
        segment[ends[:-1]] = 1
        segment = torch.cumsum(segment, 0)      # which support column each slot serves
        slot = torch.arange(segment.numel(), device=vq.device)
        posting = starts[segment] + slot - (ends - lengths)[segment]
        m = torch.zeros(n, dtype=torch.float32, device=vq.device)
        m.index_add_(0, post_rows[posting], torch.minimum(post_vals[posting], weight[segment]))
        out[i] = 1 - m / (2 - m)
    return out.clamp_(min=0)


def _ensure_jaccard_fits(n: int, device: torch.device) -> None:
    ensure_fits(reference_dense_bytes(n, matrices=5), device,
                f"the reference Jaccard distance of N={n} (five dense N x N matrices)",
                "use backend='fast' (sparse, O(N·k) memory)")


def _encoding(dist: torch.Tensor, rank: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Dense ``V'`` (steps 1-4) from the dense distances and the kNN lists (N, min(k1, N))."""
    return query_expand(encode(dist, expansion_mask(rank, k1)), rank, k2)


def jaccard_from_neighbours(x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                            timer: Timer = no_timer) -> torch.Tensor:
    """Dense (N, N) float32 Jaccard distances from kNN lists ``rank`` (N, >= min(k1, N)).

    ``timer`` times the encoding (steps 1-4, with the dense distances they
    need) as "encoding" and the pairwise distances (step 5) as "jaccard".
    """
    n = x.shape[0]
    _ensure_jaccard_fits(n, x.device)
    with timer("encoding"):
        vq = _encoding(pairwise_sq_distance(x, x), rank[:, :min(k1, n)], k1, k2)
    with timer("jaccard"):
        return jaccard_from_encoding(vq)


def jaccard_distance(x: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Dense (N, N) float32 Jaccard distances of the rows of ``x``; the kNN and the
    encoding share one distance matrix."""
    _ensure_jaccard_fits(x.shape[0], x.device)
    dist = pairwise_sq_distance(x, x)
    _, rank = sorted_neighbours(dist, k1)
    vq = _encoding(dist, rank, k1, k2)
    del dist
    return jaccard_from_encoding(vq)


# ---------------------------------------------------------------- DBSCAN
def dbscan(dist, eps: float, min_samples: int) -> torch.Tensor:
    """scikit-learn's DBSCAN loop, transcribed: expand clusters in index order.

    ``dist`` is a dense (N, N) tensor or a ``SparseDistance``.
    """
    if isinstance(dist, torch.Tensor):
        n = dist.shape[0]
        ensure_fits(n * n, dist.device, f"the reference DBSCAN of N={n} (a dense N x N mask)",
                    "pass a SparseDistance and use backend='fast'")
    crow, col = neighbour_lists(dist, eps)
    crow, col = crow.tolist(), col.tolist()
    n = len(crow) - 1
    is_core = [crow[i + 1] - crow[i] >= min_samples for i in range(n)]
    labels = [-1] * n
    cluster = 0
    for seed in range(n):
        if labels[seed] != -1 or not is_core[seed]:
            continue
        labels[seed] = cluster
        stack = [seed]
        while stack:
            p = stack.pop()
            if not is_core[p]:
                continue
            for q in col[crow[p]:crow[p + 1]]:
                if labels[q] == -1:
                    labels[q] = cluster
                    stack.append(q)
        cluster += 1
    return torch.tensor(labels, dtype=torch.int64, device=dist.device)


# ---------------------------------------------------------------- cross-agreement
def agreement(neigh_g: torch.Tensor, neigh_p: torch.Tensor) -> torch.Tensor:
    """Jaccard index of two (N, k) neighbour-index sets, row by row."""
    k = neigh_g.shape[1]
    if k == 0:
        return torch.zeros(neigh_g.shape[0], dtype=torch.float32, device=neigh_g.device)
    inter = (neigh_g[:, :, None] == neigh_p[:, None, :]).any(-1).sum(1)
    return inter.float() / (2 * k - inter).float()


def cross_agreement_from_neighbours(rank_g: torch.Tensor, ranks_p: list[torch.Tensor],
                                    k: int) -> torch.Tensor:
    """(N, N_p) scores from kNN lists sorted by (d, index), self included, each with
    at least min(k + 1, N) columns."""
    neigh_g = neighbours_without_self(rank_g, k)
    scores = [agreement(neigh_g, neighbours_without_self(r, k)) for r in ranks_p]
    if not scores:
        return torch.zeros(rank_g.shape[0], 0, dtype=torch.float32, device=rank_g.device)
    return torch.stack(scores, dim=1)


def cross_agreement(x_g: torch.Tensor, x_p: torch.Tensor, k: int) -> torch.Tensor:
    """(N, N_p) scores from the features: dense kNN in every space, then the set overlaps."""
    n = x_g.shape[0]
    ensure_fits(reference_dense_bytes(n), x_g.device,
                f"the reference cross-agreement of N={n} (a dense N x N matrix per space)",
                "use backend='fast'")
    size = min(k + 1, n)
    rank_g = nearest_neighbours(x_g, size)[1]
    ranks_p = [nearest_neighbours(x_p[:, :, p], size)[1] for p in range(x_p.shape[2])]
    return cross_agreement_from_neighbours(rank_g, ranks_p, k)
