"""k-reciprocal re-ranking for any re-ID code base: fast, exact drop-ins for two copied functions.

Most re-ID code bases carry one or both of these, copied nearly unchanged:

* ``compute_jaccard_distance`` (SpCL, cluster-contrast, PPLR and their
  descendants): the dense N x N k-reciprocal Jaccard distance of training
  features, fed to DBSCAN;
* ``re_ranking`` (Zhong et al., CVPR 2017; torchreid, open-reid,
  reid-strong-baseline): test-time re-ranking of query-gallery distances.

Both are drop-ins (change the import, keep the call)::

    from pplr_fast.rerank import compute_jaccard_distance
    from pplr_fast.rerank import re_ranking

and :func:`re_rank_features` re-ranks straight from query and gallery features.

What is computed (``re_ranking``). D is the (Q+G) x (Q+G) block matrix
``[[q_q, q_g], [q_g^T, g_g]]`` of Euclidean distances, squared element-wise
(in the input's dtype, then rounded to float32; with ``squared=True`` the
blocks already hold squared distances and are only rounded) and scaled so
that each image's largest distance is 1;
``rank[i]`` lists D's row i by (value, column), so ties go to the lower index.
With ``F(i, k)`` = the first k+1 entries of ``rank[i]`` and ``R(i, k)`` its
entries j with ``i in F(j, k)``: ``E(i)`` = ``R(i, k1)`` plus each
``R(c, round(k1/2))`` (half to even, as numpy's ``around``) of a candidate
``c in R(i, k1)`` that shares more than 2/3 of its entries with ``R(i, k1)``;
``V[i, j] = exp(-D[i, j]) / sum_{l in E(i)} exp(-D[i, l])`` on E(i); when
``k2 != 1``, ``V[i]`` becomes the mean of ``V[j]`` over the first k2 entries of
``rank[i]``; for query rows, ``m(i, j) = sum_l min(V[i, l], V[j, l])`` and
``jaccard = 1 - m / (2 - m)`` (1 when the supports do not meet, not clipped);
the result is ``(1 - lambda) jaccard + lambda D`` on the query-gallery block.
As in the copied function, D's row i is the i-th column of the block matrix
divided by that column's maximum (the same as the row when the blocks are
symmetric, as distance matrices are).

How. Only the first ``max(k1 + 1, k2)`` ranks of each row of D are kept, read
straight from the caller's blocks a few rows at a time (no (Q+G)^2 matrix, no
full sort); the expanded sets, weights, query expansion and the Jaccard terms
of the query rows are sparse. CPU: ``csrc/cpu/rerank_cpu.cpp`` (OpenMP).
CUDA tensors stay on the GPU: the O(N^2) passes (row maxima, ranks, the
output) in plain torch, the sparse stages in the Triton kernels of
``pplr_fast.kernels.rerank`` (deterministic: every sum is added left to right).

Differences from the copied code: none in the result beyond float32 rounding
(sums are accumulated in float64 here; results agree to ~1e-7) and the order
of exactly tied distances (by index here; ``np.argsort``'s quicksort leaves it
unspecified). Inputs that the copied code turns into NaN (non-finite
distances, an image at distance 0 from every image) are refused. Distances
that are not Euclidean, most often squared Euclidean distances (which the
copied function silently squares again), raise a SquaredDistanceWarning
(:func:`euclidean_test`).
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from pplr_fast.cluster import jaccard_distance
from pplr_fast.cluster.checks import check_enough_images, check_k
from pplr_fast.utils.distinct_rows import DistinctRows, tied_matmul
from pplr_fast.utils.memory import available_memory, ensure_fits
from pplr_fast.utils.timing import StageClock

__all__ = ["compute_jaccard_distance", "re_ranking", "re_rank_features", "SquaredDistanceWarning"]

EUCLIDEAN_TEST_IMAGES = 256     # images whose distances the Euclidean test reads
CHUNK_BYTES = 256 * 1024 ** 2   # a block of D rows (or of the feature GEMM) held at once
SPARSE_HINT = ("use pplr_fast.cluster.jaccard_distance(features, k1, k2), which returns a sparse "
               "matrix in O(N·k) memory (pplr_fast.cluster.dbscan takes it directly)")


# --------------------------------------------------------------------------- memory estimate
# (the guard is pplr_fast.utils.memory.ensure_fits)

def sparse_bytes(n: int, k1: int, k2: int) -> int:
    """A generous estimate of the sparse intermediates of re-ranking n images."""
    ranks = n * max(k1 + 1, k2) * 8
    expanded = n * min(n, 4 * (k1 + 1)) * 12 * max(k2, 1)
    return ranks + expanded


# --------------------------------------------------------------------------- argument checks

def check_parameters(k1, k2, lambda_value) -> tuple[int, int, float]:
    """``(k1, k2, lambda)`` as Python numbers, or a ValueError naming the bad one."""
    k1, k2 = check_k("k1", k1, integer_like=True), check_k("k2", k2, integer_like=True)
    lam = float(lambda_value)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1] (weight of the original distance), "
                         f"got {lambda_value!r}")
    return k1, k2, lam


def _as_block(block, name: str) -> np.ndarray:
    """A C-contiguous float32/float64 numpy view (or copy) of a distance block."""
    if isinstance(block, torch.Tensor):
        block = block.detach()
        if block.dtype in (torch.float16, torch.bfloat16):
            block = block.float()
        block = block.cpu().numpy()
    block = np.asarray(block)
    if block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float32 if block.dtype == np.float16 else np.float64)
    if block.ndim != 2:
        raise ValueError(f"{name} must be a 2-D distance matrix, got shape {block.shape}")
    return np.ascontiguousarray(block)


def _check_shapes(q_g, q_q, g_g) -> tuple[int, int]:
    q, g = q_g.shape
    if q == 0 or g == 0:
        raise ValueError(f"q_g_dist is empty ({q} queries x {g} gallery images)")
    if tuple(q_q.shape) != (q, q):
        raise ValueError(f"q_q_dist must be ({q}, {q}) for q_g_dist of shape ({q}, {g}), "
                         f"got {tuple(q_q.shape)}")
    if tuple(g_g.shape) != (g, g):
        raise ValueError(f"g_g_dist must be ({g}, {g}) for q_g_dist of shape ({q}, {g}), "
                         f"got {tuple(g_g.shape)}")
    return q, g


def _raise_row_problems(non_finite: int, zero: int, q: int, source: str) -> None:
    def image(r):
        return f"query {r}" if r < q else f"gallery image {r - q}"
    if non_finite >= 0:
        raise ValueError(f"{source} hold NaN or Inf (first in the distances of {image(non_finite)}); "
                         "the features they come from are not finite")
    if zero >= 0:
        raise ValueError(f"{image(zero)} is at distance 0 from every image: re-ranking divides each "
                         f"image's distances by the largest one; check that the {source} are not "
                         "all zero (identical features)")


# --------------------------------------------------------------------------- the sparse middle

def _encode(rank: np.ndarray, entry_values, rowmax: np.ndarray, k1: int):
    """The weights V on the expanded sets E(i), as CSR ``(crow, col, val)``.

    ``entry_values(rows, cols)`` returns the squared distances D-row ``rows[p]``
    holds at column ``cols[p]`` (before scaling), as float32.
    """
    from pplr_fast import _rerank
    n, K = rank.shape
    crow, col = _rerank.expansion(rank, min(k1 + 1, K), min(round(k1 / 2) + 1, K))
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(crow))
    scaled = entry_values(rows, col) / rowmax[rows]                       # float32, as D
    weight = np.exp(-scaled)
    total = np.bincount(rows, weights=weight, minlength=n)
    return crow, col, (weight / total[rows]).astype(np.float32)


def _expansion_length(k2: int, K: int) -> int:
    """Ranks averaged by the query expansion (1: none)."""
    return min(k2, K) if k2 != 1 else 1


def _squared_float32(values: np.ndarray) -> np.ndarray:
    """float32(x * x) of float32/float64 values, rounded as the copied code rounds."""
    return np.square(values.astype(np.float64)).astype(np.float32)


# --------------------------------------------------------------------------- squared input


class SquaredDistanceWarning(UserWarning):
    """re_ranking was given distances that are not Euclidean: most likely squared ones."""


def _rounding_tolerance(*blocks) -> float:
    """How negative (relative to the largest) an eigenvalue of the Euclidean test may be
    from rounding alone: 3e-3 covers distances computed in float16 (3e-4 to 1e-3 seen);
    bfloat16 inputs get 3 of their epsilons."""
    tolerance = 3e-3
    for block in blocks:
        dtype = getattr(block, "dtype", None)
        if dtype is torch.bfloat16:
            tolerance = max(tolerance, 3 * torch.finfo(torch.bfloat16).eps)
    return tolerance


def euclidean_test(q_g, q_q, g_g, images: int = EUCLIDEAN_TEST_IMAGES) -> float:
    """How far the distances among a sample of the images are from Euclidean distances.

    Distances d between m points are Euclidean (the distances of some m
    points in some space) exactly when the double-centred matrix of their
    squares, ``G = -1/2 J (d * d) J`` with ``J = I - 11^T / m``, has no negative
    eigenvalue (Schoenberg; on 3 points this is the triangle inequality).
    Squared Euclidean distances are not Euclidean distances: in high
    dimension they still satisfy the triangle inequality on nearly every
    triple, but G of a few hundred of them has clearly negative eigenvalues.
    The test reads the (images x images) distances of a fixed random sample
    (all images when there are fewer) from the three blocks.

    Returns:
        G's smallest eigenvalue over its largest: >= 0 up to rounding (about
        1e-7 for float32 distances, 1e-3 for float16) for Euclidean distances;
        around -1e-2 to -0.2 for squared distances of real and clustered features.
        0 when there are fewer than 3 images or a sampled distance is not finite.
    """
    q, g = q_g.shape
    n = q + g
    if n < 3:
        return 0.0
    index = np.sort(np.random.default_rng(0).choice(n, size=min(n, images), replace=False))
    m = len(index)
    rows, cols = np.repeat(index, m), np.tile(index, m)
    if isinstance(q_g, torch.Tensor):
        rows, cols = (torch.from_numpy(t).to(q_g.device) for t in (rows, cols))
        sample = _block_matrix_entries(q_q, q_g, g_g, q, rows, cols).cpu().numpy()
    else:
        sample = _block_matrix_entries(q_q, q_g, g_g, q, rows, cols)
    sample = sample.reshape(m, m)
    if not np.isfinite(sample).all():
        return 0.0             # refused later, with its own message
    sample = (sample + sample.T) / 2
    sq = sample * sample
    gram = -0.5 * (sq - sq.mean(axis=0) - sq.mean(axis=1)[:, None] + sq.mean())
    eigenvalues = np.linalg.eigvalsh(gram)
    return float(eigenvalues[0] / eigenvalues[-1]) if eigenvalues[-1] > 0 else 0.0


def _warn_unless_euclidean(q_g, q_q, g_g, tolerance: float, stacklevel: int) -> None:
    ratio = euclidean_test(q_g, q_q, g_g)
    if ratio < -tolerance:
        warnings.warn(
            "re_ranking: these distances are not Euclidean distances (the distances among "
            f"{min(q_g.shape[0] + q_g.shape[1], EUCLIDEAN_TEST_IMAGES)} sampled images fail the "
            f"Euclidean test, {ratio:.2g}); most likely they are squared Euclidean distances "
            "(torchreid's 'euclidean' metric is squared, 1 - cosine similarity is squared / 2). "
            "re_ranking squares its input, as the copied function does, so squared input is "
            "used to the 4th power and the result is off. Pass Euclidean distances (np.sqrt or "
            "torch.sqrt of your squared matrices, clamped at 0), or squared=True to have them "
            "used as the squared distances they are; to reproduce a code base that passes "
            "squared distances on purpose, filter SquaredDistanceWarning.",
            SquaredDistanceWarning, stacklevel=stacklevel)


# --------------------------------------------------------------------------- re_ranking

def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3, *, squared: bool = False, timings: dict | None = None):
    """Re-ranked query-gallery distances (Zhong et al., CVPR 2017), as the copied function.

    Args:
        q_g_dist: (Q, G) distances between queries and gallery images.
        q_q_dist: (Q, Q) distances between queries.
        g_g_dist: (G, G) distances between gallery images.
            numpy arrays or torch tensors (CPU or CUDA) of Euclidean (not
            squared) distances: they are squared here, as in the copied
            function. Distances that fail a Euclidean test on a sample of the
            images (squared ones do) raise a SquaredDistanceWarning.
        k1, k2: k-reciprocal neighbourhood and query-expansion sizes (>= 1; k1 at
            most Q + G, the images ranked: a larger k1 is refused).
        lambda_value: weight of the original distance, in [0, 1].
        squared: the blocks hold squared Euclidean distances: they are used as
            they are, not squared again (the same result as passing their
            square roots, up to float32 rounding), and not tested.
        timings: a dict that receives the seconds of each stage (CPU path).

    Returns:
        (Q, G) float32 re-ranked distances: a numpy array, or a torch tensor
        on q_g_dist's device when q_g_dist is a tensor.
    """
    clock = StageClock(timings=timings)     # laps, the device not synchronised
    k1, k2, lam = check_parameters(k1, k2, lambda_value)
    as_tensor = isinstance(q_g_dist, torch.Tensor)
    blocks = (q_g_dist, q_q_dist, g_g_dist)
    tolerance = _rounding_tolerance(*blocks)
    if any(isinstance(b, torch.Tensor) and b.is_cuda for b in blocks):
        out = _re_ranking_torch(*(torch.as_tensor(b).to(q_g_dist.device if as_tensor else "cuda")
                                  for b in blocks), k1, k2, lam, squared=squared,
                                tolerance=tolerance, stacklevel=4)
        return out if as_tensor else out.cpu().numpy()
    q_g = _as_block(q_g_dist, "q_g_dist")
    q_q = _as_block(q_q_dist, "q_q_dist")
    g_g = _as_block(g_g_dist, "g_g_dist")
    q, g = _check_shapes(q_g, q_q, g_g)
    n = q + g
    check_enough_images(n, k1)
    ensure_fits(4 * q * g + sparse_bytes(n, k1, k2), "cpu",
                f"re-ranking {q} queries against {g} gallery images (the ({q}, {g}) "
                "float32 result and the sparse ranks)",
                "re-rank the queries in smaller batches (each batch with the full gallery)",
                name_device=False)
    from pplr_fast import _rerank
    K = min(n, max(k1 + 1, k2))
    # D rows of the queries: [column i of q_q, row i of q_g]; of gallery image
    # g: [column g of q_g, column g of g_g] (the columns of the block matrix).
    square = not squared            # D is the square of Euclidean input, squared input as given
    rank_q, max_q, bad_q, zero_q = _rerank.rank_rows(q_q, True, q_g, False, K, square)
    rank_g, max_g, bad_g, zero_g = _rerank.rank_rows(q_g, True, g_g, True, K, square)
    _raise_row_problems(bad_q if bad_q >= 0 else (q + bad_g if bad_g >= 0 else -1),
                        zero_q if zero_q >= 0 else (q + zero_g if zero_g >= 0 else -1),
                        q, "distances")
    if not squared:
        _warn_unless_euclidean(q_g, q_q, g_g, tolerance, stacklevel=3)
    rank = np.concatenate([rank_q, rank_g])
    rowmax = np.concatenate([max_q, max_g])
    clock.lap("ranks")

    def entry_values(rows, cols):
        values = _block_matrix_entries(q_q, q_g, g_g, q, cols, rows)
        return _squared_float32(values) if square else values.astype(np.float32)

    crow, col, v = _encode(rank, entry_values, rowmax, k1)
    clock.lap("encoding")
    out = np.empty((q, g), dtype=np.float32)
    _rerank.overlap_combine(crow, col, v, rank, _expansion_length(k2, K), q_g, square, max_q, lam,
                            out)
    clock.lap("jaccard + output")
    return torch.from_numpy(out) if as_tensor else out


def _block_matrix_entries(q_q, q_g, g_g, q: int, rows, cols):
    """Entries ``[rows[p], cols[p]]`` of ``[[q_q, q_g], [q_g^T, g_g]]`` (numpy or torch)."""
    is_torch = isinstance(q_g, torch.Tensor)
    out = (torch.empty(rows.shape[0], dtype=torch.float64, device=q_g.device) if is_torch
           else np.empty(rows.shape[0], dtype=np.float64))
    top, left = rows < q, cols < q
    for mask, fetch in ((top & left, lambda r, c: q_q[r, c]),
                        (top & ~left, lambda r, c: q_g[r, c - q]),
                        (~top & left, lambda r, c: q_g[c, r - q]),
                        (~top & ~left, lambda r, c: g_g[r - q, c - q])):
        values = fetch(rows[mask], cols[mask])
        out[mask] = values.double() if is_torch else values
    return out


# --------------------------------------------------------------------------- torch (CUDA) path

def smallest_by_value_then_index(s: torch.Tensor, k: int) -> torch.Tensor:
    """Columns of the k smallest entries of each row of ``s``, sorted by (value, column)."""
    values, index = torch.topk(s, k, dim=1, largest=False, sorted=True)
    index, order = index.sort(dim=1)
    values = values.gather(1, order)
    values, order = values.sort(dim=1, stable=True)
    index = index.gather(1, order)
    # rows where the k-th value ties with entries topk may have left out
    spill = (s <= values[:, -1:]).sum(dim=1) > k
    if bool(spill.any()):
        rows = torch.nonzero(spill).flatten()
        index[rows] = torch.sort(s[rows], dim=1, stable=True).indices[:, :k]
    return index


def _rank_rows_torch(row_block, count: int, n: int, k: int, square: bool, device):
    """rank (count, k) and rowmax (count,) of D rows given by ``row_block(r0, r1)``."""
    rank = torch.empty(count, k, dtype=torch.int64, device=device)
    rowmax = torch.empty(count, dtype=torch.float32, device=device)
    non_finite, zero = -1, -1
    step = max(1, CHUNK_BYTES // (8 * n))
    for r0 in range(0, count, step):
        r1 = min(count, r0 + step)
        s = row_block(r0, r1)
        s = (s.square() if square else s).float()
        finite = torch.isfinite(s).all(dim=1)
        m = s.amax(dim=1)
        if non_finite < 0 and not bool(finite.all()):
            non_finite = r0 + int(torch.nonzero(~finite)[0])
        bad = finite & ~(m > 0)
        if zero < 0 and bool(bad.any()):
            zero = r0 + int(torch.nonzero(bad)[0])
        s = s / torch.where(m > 0, m, torch.ones_like(m))[:, None]
        rank[r0:r1] = smallest_by_value_then_index(torch.nan_to_num(s), k)
        rowmax[r0:r1] = m
    return rank, rowmax, non_finite, zero


def _finish_device(rank, rowmax, entry_values, qg_squared, q: int, k1: int, k2: int,
                   lam: float) -> torch.Tensor:
    """The sparse stages (``pplr_fast.kernels.rerank``) and the (Q, G) output, on rank's device.

    ``entry_values(rows, cols)`` returns D's squared entries at those pairs
    before scaling (fp32); ``qg_squared`` is the squared query-gallery block
    (fp32), overwritten by the result.
    """
    from pplr_fast.kernels import rerank as kernels
    crow, col, rows = kernels.reranking_sets(rank, k1)
    v = kernels.reciprocal_weights(crow, rows, entry_values(rows, col), rowmax)
    expansion = _expansion_length(k2, rank.shape[1])
    i, j, m = kernels.query_gallery_overlaps(crow, col, v, rank, expansion, q,
                                             available_memory(rank.device))
    device = qg_squared.device
    keep = torch.tensor(1.0 - lam, dtype=torch.float32, device=device)
    mix = torch.tensor(lam, dtype=torch.float32, device=device)
    out = qg_squared.div_(rowmax[:q, None])     # D's query-gallery block
    j = j - q
    scaled = out[i, j]
    out.mul_(mix).add_(keep)                    # jaccard = 1 where the supports do not meet
    out[i, j] = (1 - m / (2 - m)) * keep + scaled * mix
    return out


def _re_ranking_torch(q_g, q_q, g_g, k1: int, k2: int, lam: float, *, squared: bool = False,
                      tolerance: float | None = None, stacklevel: int = 3) -> torch.Tensor:
    """:func:`re_ranking` on tensors of any device: the O(N^2) passes in torch."""
    def floating(t):
        return t.detach().float() if not t.is_floating_point() or t.dtype in (
            torch.float16, torch.bfloat16) else t.detach()
    q_g, q_q, g_g = floating(q_g), floating(q_q), floating(g_g)
    for name, t in (("q_g_dist", q_g), ("q_q_dist", q_q), ("g_g_dist", g_g)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D distance matrix, got shape {tuple(t.shape)}")
    q, g = _check_shapes(q_g, q_q, g_g)
    n, device = q + g, q_g.device
    check_enough_images(n, k1)
    ensure_fits(4 * q * g + sparse_bytes(n, k1, k2) + CHUNK_BYTES, device,
                f"re-ranking {q} queries against {g} gallery images on the GPU",
                "re-rank the queries in smaller batches", name_device=False)
    K = min(n, max(k1 + 1, k2))
    square = not squared
    rank_q, max_q, bad_q, zero_q = _rank_rows_torch(
        lambda r0, r1: torch.cat([q_q[:, r0:r1].T, q_g[r0:r1]], dim=1).double(), q, n, K, square,
        device)
    rank_g, max_g, bad_g, zero_g = _rank_rows_torch(
        lambda r0, r1: torch.cat([q_g[:, r0:r1].T, g_g[:, r0:r1].T], dim=1).double(), g, n, K,
        square, device)
    _raise_row_problems(bad_q if bad_q >= 0 else (q + bad_g if bad_g >= 0 else -1),
                        zero_q if zero_q >= 0 else (q + zero_g if zero_g >= 0 else -1),
                        q, "distances")
    if not squared:
        _warn_unless_euclidean(q_g, q_q, g_g, _rounding_tolerance(q_g, q_q, g_g)
                               if tolerance is None else tolerance, stacklevel)

    def entry_values(rows, cols):
        values = _block_matrix_entries(q_q, q_g, g_g, q, cols, rows)
        return (values.square() if square else values).float()

    qg = q_g.double()
    return _finish_device(torch.cat([rank_q, rank_g]), torch.cat([max_q, max_g]), entry_values,
                          (qg.square() if square else qg).float(), q, k1, k2, lam)


# --------------------------------------------------------------------------- from features

def _as_features(features, name: str) -> torch.Tensor:
    x = torch.as_tensor(features).detach()
    if x.dim() != 2:
        raise ValueError(f"{name} must be (num_images, dim), got shape {tuple(x.shape)}")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} hold NaN or Inf: the model produced non-finite features")
    return x


def re_rank_features(query, gallery, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
                     timings: dict | None = None):
    """:func:`re_ranking` of the Euclidean distances between the given features.

    The same result as ``re_ranking(dist(q, g), dist(q, q), dist(g, g), ...)``
    with ``dist`` the Euclidean distance of the features as given (normalise
    them first if your model's distances are on normalised features), without
    building those three matrices: squared distances are computed a block of
    rows at a time (float64 features stay float64), each block leaves only its
    ranks and maximum, and the query-gallery block is written into the output.

    Args:
        query: (Q, D) and gallery: (G, D) features, numpy arrays or torch
            tensors (CPU or CUDA).
        k1, k2, lambda_value: as :func:`re_ranking`.
        timings: a dict that receives the seconds of each stage (CPU path).

    Returns:
        (Q, G) float32 re-ranked distances: a torch tensor on query's device
        when query is a tensor, else a numpy array.
    """
    clock = StageClock(timings=timings)     # laps, the device not synchronised
    k1, k2, lam = check_parameters(k1, k2, lambda_value)
    as_tensor = isinstance(query, torch.Tensor)
    qx, gx = _as_features(query, "query"), _as_features(gallery, "gallery")
    if qx.shape[0] == 0 or gx.shape[0] == 0:
        raise ValueError(f"no images to re-rank ({qx.shape[0]} queries, {gx.shape[0]} gallery)")
    if qx.shape[1] != gx.shape[1]:
        raise ValueError(f"query and gallery features differ in dimension: {qx.shape[1]} vs "
                         f"{gx.shape[1]}")
    device = qx.device if qx.is_cuda else gx.device
    dtype = torch.promote_types(qx.dtype, gx.dtype)
    x = torch.cat([qx.to(device, dtype), gx.to(device, dtype)]).contiguous()
    q, n = qx.shape[0], x.shape[0]
    g = n - q
    check_enough_images(n, k1)
    ensure_fits(4 * q * g + sparse_bytes(n, k1, k2) + CHUNK_BYTES, device,
                f"re-ranking {q} queries against {g} gallery images (the ({q}, {g}) "
                "float32 result, a block of distances and the sparse ranks)",
                "re-rank the queries in smaller batches (each batch with the full gallery)",
                name_device=False)
    if x.is_cuda:
        result = _re_rank_features_device(x, q, k1, k2, lam)
        return result if as_tensor else result.cpu().numpy()

    K = min(n, max(k1 + 1, k2))
    out = torch.empty(q, g, dtype=torch.float32)
    block = _distance_rows(x, q, out)
    from pplr_fast import _rerank
    step = max(1, CHUNK_BYTES // (x.element_size() * n))
    rank = np.empty((n, K), dtype=np.int64)
    rowmax = np.empty(n, dtype=np.float32)
    for start, stop in ((0, q), (q, n)):      # query blocks never straddle the boundary
        for r0 in range(start, stop, step):
            r1 = min(stop, r0 + step)
            rank[r0:r1], rowmax[r0:r1], _, zero = _rerank.rank_rows(
                block(r0, r1).numpy(), False, None, False, K, False)
            _raise_row_problems(-1, r0 + zero if zero >= 0 else -1, q, "features")
    clock.lap("distances + ranks")
    xs = x.numpy()

    def entry_values(rows, cols):
        return _rerank.pair_sq_distance(xs, rows, cols).astype(np.float32)

    crow, col, v = _encode(rank, entry_values, rowmax, k1)
    clock.lap("encoding")
    result = out.numpy()
    _rerank.overlap_combine(crow, col, v, rank, _expansion_length(k2, K), result, False, rowmax[:q],
                            lam, result)
    clock.lap("jaccard + output")
    return out if as_tensor else result


def _distance_rows(x: torch.Tensor, q: int, out: torch.Tensor):
    """``block(r0, r1)``: squared distances of rows r0..r1 of x to every row; a block of
    query rows (r1 <= q) also writes its gallery columns into ``out``. Exact copies get
    bit-equal columns (``pplr_fast.utils.distinct_rows``): they tie, ranked by index."""
    rows = DistinctRows.of(x)
    distinct = rows.distinct(x)
    norms = rows.expand((distinct * distinct).sum(dim=1), 0)

    def block(r0, r1):
        d = tied_matmul(x[r0:r1], x, rows_b=rows).mul_(-2).add_(norms[None, :])
        d.add_(norms[r0:r1, None]).clamp_(min=0)
        if r1 <= q:
            out[r0:r1] = d[:, q:]
        return d

    return block


def _re_rank_features_device(x: torch.Tensor, q: int, k1: int, k2: int,
                             lam: float) -> torch.Tensor:
    """:func:`re_rank_features` of the rows of ``x`` (queries first) on x's device: torch for
    the distances and ranks, ``pplr_fast.kernels.rerank`` for the sparse stages."""
    from pplr_fast.kernels.pair_distance import pair_sq_difference
    n, device = x.shape[0], x.device
    out = torch.empty(q, n - q, dtype=torch.float32, device=device)
    rank, rowmax, _, zero = _rank_rows_features_torch(_distance_rows(x, q, out), q, n,
                                                      min(n, max(k1 + 1, k2)), device)
    _raise_row_problems(-1, zero, q, "features")

    def entry_values(rows, cols):
        return pair_sq_difference(x, rows, cols).float()

    return _finish_device(rank, rowmax, entry_values, out, q, k1, k2, lam)


def _rank_rows_features_torch(block, q: int, n: int, k: int, device):
    """Ranks of the query rows, then of the gallery rows (query blocks stay inside [0, q))."""
    rank_q, max_q, _, zero_q = _rank_rows_torch(block, q, n, k, False, device)
    rank_g, max_g, _, zero_g = _rank_rows_torch(lambda r0, r1: block(q + r0, q + r1), n - q, n, k,
                                                False, device)
    zero = zero_q if zero_q >= 0 else (q + zero_g if zero_g >= 0 else -1)
    return torch.cat([rank_q, rank_g]), torch.cat([max_q, max_g]), -1, zero


# --------------------------------------------------------------------------- compute_jaccard_distance

def compute_jaccard_distance(target_features, k1: int = 20, k2: int = 6, print_flag: bool = True,
                             search_option: int = 0, use_float16: bool = False) -> np.ndarray:
    """Dense k-reciprocal Jaccard distance of the rows of ``target_features``, as the copied function.

    Args:
        target_features: (N, D) L2-normalised features (torch tensor, CPU or
            CUDA, or numpy array): what SpCL / cluster-contrast / PPLR pass.
            The copied function ranks neighbours by Euclidean distance but
            weighs them with ``2 - 2 <x_i, x_j>``, which is that distance only
            for unit rows; rows that are not normalised are refused with a
            pointer to ``F.normalize``.
        k1, k2: neighbourhood sizes (neighbour lists hold k1 images, the image
            itself included, as the copied function's kNN search returns;
            query expansion over the first min(k2, k1)).
        print_flag: print the start and the time taken, as the copied function.
        search_option: accepted and ignored (the kNN here is always exact).
        use_float16: return float16 instead of float32.

    Returns:
        (N, N) numpy array, negatives clipped to 0; pairs whose neighbourhoods
        never meet are exactly 1. Computed sparsely (exact, O(N·k) memory) and
        only then written out densely; refused with an estimate when the N x N
        array would not fit in memory.
    """
    del search_option
    start = time.time()
    if print_flag:
        print("Computing jaccard distance...")
    x = torch.as_tensor(target_features).detach() if not isinstance(target_features, torch.Tensor) \
        else target_features.detach()
    k1, k2, _ = check_parameters(k1, k2, 0.0)
    n = int(x.shape[0]) if x.dim() >= 1 else 0
    if n:
        check_enough_images(n, k1)
    dtype = np.float16 if use_float16 else np.float32
    ensure_fits(np.dtype(dtype).itemsize * n * n + sparse_bytes(n, k1, k2), "cpu",
                f"a dense {n} x {n} {np.dtype(dtype).name} Jaccard matrix", SPARSE_HINT,
                name_device=False)
    sparse = jaccard_distance(x, k1=k1, k2=min(k2, k1), backend="fast").to("cpu")
    dense = np.ones((n, n), dtype=dtype)
    dense[sparse.rows().numpy(), sparse.col.numpy()] = sparse.val.clamp(min=0).numpy().astype(dtype)
    if print_flag:
        print(f"Jaccard distance computing time cost: {time.time() - start}")
    return dense
