"""k-reciprocal Jaccard distance (SPEC §2.1; Zhong et al., CVPR 2017).

Steps, for L2-normalised rows x_i and ``rank[i]`` = the k1 nearest neighbours
of i sorted by ``(d, index)``:

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

When N < k1 every neighbour list simply has N entries. ``round`` is Python's
(half to even), as in the public code's ``np.around``.
"""
from __future__ import annotations

import torch

from .checks import ClusterInputError, check_features, check_k, ensure_fits
from .knn import pairwise_sq_distance, reference_dense_bytes, sorted_neighbours
from .sparse_distance import SparseDistance


def check_jaccard_args(k1: int, k2: int, max_distance: float | None) -> None:
    check_k("k1", k1)
    check_k("k2", k2)
    if k2 > k1:
        raise ClusterInputError(f"k2 ({k2}) must not exceed k1 ({k1}): query expansion "
                                "averages over the first k2 of the k1 neighbours")
    if max_distance is not None and not 0 <= max_distance <= 1:
        raise ClusterInputError(f"max_distance must lie in [0, 1], got {max_distance}")


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


def jaccard_distance_reference(x: torch.Tensor, k1: int = 30, k2: int = 6) -> torch.Tensor:
    """Reference k-reciprocal Jaccard distance: dense (N, N) float32."""
    n = x.shape[0]
    ensure_fits(reference_dense_bytes(n, matrices=5), x.device,
                f"the reference Jaccard distance of N={n} (five dense N x N matrices)",
                "use backend='fast' (sparse, O(N·k) memory)")
    dist = pairwise_sq_distance(x, x)
    _, rank = sorted_neighbours(dist, k1)
    v = encode(dist, expansion_mask(rank, k1))
    del dist
    return jaccard_from_encoding(query_expand(v, rank, k2))


def jaccard_distance(x: torch.Tensor, k1: int = 30, k2: int = 6, backend: str = "fast",
                     max_distance: float | None = None) -> torch.Tensor | SparseDistance:
    """k-reciprocal Jaccard distance between the rows of ``x``.

    Args:
        x: (N, D) L2-normalised features.
        k1, k2: neighbourhood sizes (SPEC defaults 30 and 6); k2 <= k1.
        backend: ``"reference"`` returns a dense (N, N) float32 tensor;
            ``"fast"`` returns a :class:`SparseDistance` (``.to_dense()`` gives
            the same matrix), built without any N x N array.
        max_distance: fast backend only: keep just the pairs with
            ``d <= max_distance`` (e.g. the DBSCAN eps), which is all DBSCAN needs.
    """
    check_features(x)
    check_jaccard_args(k1, k2, max_distance)
    from .backend import resolve_backend
    if resolve_backend(backend, x.device, "jaccard") == "reference":
        dense = jaccard_distance_reference(x, k1, k2)
        if backend == "fast":   # fell back: keep the fast return type
            return SparseDistance.from_dense(dense).truncated(max_distance)
        return dense
    from .fast_jaccard import jaccard_distance_fast
    return jaccard_distance_fast(x, k1, k2, max_distance)
