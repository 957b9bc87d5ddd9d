"""Re-ID evaluation (docs/method.md §5): query-gallery distances, mAP, CMC and mINP.

Protocol (Market-1501 / Duke / MSMT17 / VeRi-776): for each query, gallery
images of the same identity taken by the same camera are ignored; a query
left with no true match is skipped.  Gallery distractors (Market pid 0) are
ordinary non-matches.  All work is vectorised over chunks of queries, on the
device of the inputs.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .utils.distinct_rows import DistinctRows, tied_matmul

__all__ = ["pairwise_distance", "evaluate_ranking", "evaluate_split"]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[int]]

# Each query chunk holds about this many (query, gallery) entries per temporary.
CHUNK_ENTRIES = 1 << 21


def pairwise_distance(query_features: torch.Tensor, gallery_features: torch.Tensor,
                      chunk_size: Optional[int] = None) -> torch.Tensor:
    """Euclidean distances (Q, G) between L2-normalised query and gallery features.

    Rows are L2-normalised here (a no-op for the model's eval outputs), so
    ``d = sqrt(2 - 2 <q, g>)``.  Computed ``chunk_size`` queries at a time to
    bound temporary memory; float32 or float64 like the inputs. Exact copies of a
    gallery image get bit-equal distances (``pplr_fast.utils.distinct_rows``), so the
    stable ranking orders them by index on every machine.

    Raises:
        ValueError: shapes disagree, or a feature is NaN/inf.
    """
    query_features = _check_features(query_features, "query_features")
    gallery_features = _check_features(gallery_features, "gallery_features")
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(f"query and gallery features differ in dimension: "
                         f"{query_features.shape[1]} vs {gallery_features.shape[1]}")
    gallery_features = gallery_features.to(query_features)
    num_queries, num_gallery = query_features.shape[0], gallery_features.shape[0]
    chunk_size = chunk_size or max(1, CHUNK_ENTRIES // max(num_gallery, 1))

    query_features = F.normalize(query_features, dim=1)
    gallery_features = F.normalize(gallery_features, dim=1)
    gallery_rows = DistinctRows.of(gallery_features)      # exact copies tie, ranked by index
    distmat = query_features.new_empty(num_queries, num_gallery)
    for start in range(0, num_queries, chunk_size):
        similarity = tied_matmul(query_features[start:start + chunk_size], gallery_features,
                                 rows_b=gallery_rows)
        distmat[start:start + chunk_size] = (2 - 2 * similarity).clamp_(min=0).sqrt_()
    return distmat


def _check_features(features: torch.Tensor, name: str) -> torch.Tensor:
    features = torch.as_tensor(features)
    if features.dim() != 2:
        raise ValueError(f"{name} must be (num_images, dim), got shape {tuple(features.shape)}")
    if not features.is_floating_point() or features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    finite = torch.isfinite(features).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"{name} contain NaN or inf in {int((~finite).sum())} of "
                         f"{features.shape[0]} rows: the model produced non-finite features "
                         f"(check the training loss and learning rate)")
    return features


def evaluate_ranking(distmat: torch.Tensor, query_pids: ArrayLike, gallery_pids: ArrayLike,
                     query_cams: ArrayLike, gallery_cams: ArrayLike,
                     ranks: Sequence[int] = (1, 5, 10),
                     chunk_size: Optional[int] = None) -> dict[str, float]:
    """mAP, CMC rank-k and mINP of a (Q, G) distance matrix, all in [0, 1].

    For each query, gallery entries with its pid AND its camera are removed;
    the remaining same-pid entries are its true matches.  Queries with no true
    match left are skipped (``num_valid_queries`` counts the others).  Ties in
    distance are ranked by gallery index (stable sort).  Note: the public PPLR
    code computes AP with scikit-learn, which instead scores tied distances as
    one threshold; the two agree whenever no distances tie.

    Returns:
        ``{"mAP", "rank1", "rank5", "rank10", "mINP", "num_valid_queries"}``
        (one ``rank{k}`` per entry of ``ranks``).

    Raises:
        ValueError: shapes disagree, ``distmat`` holds NaN, or no query has a true match.
    """
    distmat = torch.as_tensor(distmat)
    if distmat.dim() != 2:
        raise ValueError(f"distmat must be (num_queries, num_gallery), got {tuple(distmat.shape)}")
    if torch.isnan(distmat).any():
        raise ValueError("distmat contains NaN: the features it was computed from are not finite")
    num_queries, num_gallery = distmat.shape
    if num_queries == 0 or num_gallery == 0:
        raise ValueError(f"distmat is empty ({num_queries} queries x {num_gallery} gallery)")
    device = distmat.device
    query_pids = _as_ids(query_pids, "query_pids", num_queries, device)
    query_cams = _as_ids(query_cams, "query_cams", num_queries, device)
    gallery_pids = _as_ids(gallery_pids, "gallery_pids", num_gallery, device)
    gallery_cams = _as_ids(gallery_cams, "gallery_cams", num_gallery, device)
    if any(int(k) < 1 for k in ranks):
        raise ValueError(f"ranks must be positive, got {tuple(ranks)}")
    chunk_size = chunk_size or max(1, CHUNK_ENTRIES // num_gallery)

    average_precision, inverse_negative_penalty, first_hit = [], [], []
    for start in range(0, num_queries, chunk_size):
        stop = start + chunk_size
        ap, inp, first = _rank_chunk(distmat[start:stop], query_pids[start:stop],
                                     query_cams[start:stop], gallery_pids, gallery_cams)
        average_precision.append(ap)
        inverse_negative_penalty.append(inp)
        first_hit.append(first)
    average_precision = torch.cat(average_precision)
    inverse_negative_penalty = torch.cat(inverse_negative_penalty)
    first_hit = torch.cat(first_hit)

    valid = first_hit > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a true match in the gallery (same pid, other camera): "
                         "check that query and gallery ids come from the same dataset split")
    results = {"mAP": float(average_precision[valid].mean())}
    for k in ranks:
        results[f"rank{int(k)}"] = float((first_hit[valid] <= int(k)).double().mean())
    results["mINP"] = float(inverse_negative_penalty[valid].mean())
    results["num_valid_queries"] = num_valid
    return results


def _as_ids(ids: ArrayLike, name: str, expected_len: int, device: torch.device) -> torch.Tensor:
    ids = torch.as_tensor(ids).to(device=device, dtype=torch.int64).reshape(-1)
    if ids.numel() != expected_len:
        raise ValueError(f"{name} has {ids.numel()} entries but distmat implies {expected_len}")
    return ids


def _rank_chunk(distmat: torch.Tensor, query_pids: torch.Tensor, query_cams: torch.Tensor,
                gallery_pids: torch.Tensor, gallery_cams: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query AP, INP and 1-based first-hit rank (0: no true match) for a chunk."""
    order = torch.argsort(distmat, dim=1, stable=True)
    same_pid = gallery_pids[order] == query_pids[:, None]
    ignored = same_pid & (gallery_cams[order] == query_cams[:, None])
    hits = same_pid & ~ignored
    # 1-based rank of each entry among the kept (not ignored) entries.
    kept_rank = (~ignored).cumsum(dim=1)

    num_hits = hits.sum(dim=1)
    precision_at_hits = torch.where(hits, hits.cumsum(dim=1).double() / kept_rank.double(), 0.0)
    average_precision = precision_at_hits.sum(dim=1) / num_hits.clamp(min=1).double()

    last_hit = torch.where(hits, kept_rank, 0).amax(dim=1)
    inverse_negative_penalty = num_hits.double() / last_hit.clamp(min=1).double()
    first_hit_index = hits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first True
    first_hit = kept_rank.gather(1, first_hit_index).squeeze(1)
    first_hit = torch.where(num_hits > 0, first_hit, 0)
    return average_precision, inverse_negative_penalty, first_hit


def evaluate_split(model, query: Sequence, gallery: Sequence, *, height: int, width: int,
                   batch_size: int, workers: int, device: torch.device,
                   progress: Optional[bool] = None, rerank: Optional[dict] = None) -> dict:
    """mAP, CMC and mINP of ``model`` on a query/gallery split of ``(path, pid, camid)`` samples.

    Features are the L2-normalised global features (``model.extract``).
    Under torch.distributed every rank extracts its shard and rank 0 alone
    ranks the gallery (the other ranks return ``{}``). With ``rerank`` (keyword arguments of
    :func:`pplr_fast.rerank.re_rank_features`: k1, k2, lambda_value) the
    metrics after k-reciprocal re-ranking are added under ``"reranked"``.
    """
    from .features import extract_features
    from .utils import distributed
    extract = dict(height=height, width=width, batch_size=batch_size, workers=workers,
                   device=device, progress=progress)
    q, _ = extract_features(model, query, desc="evaluate: query", **extract)
    g, _ = extract_features(model, gallery, desc="evaluate: gallery", **extract)
    if not distributed.is_main():
        return {}
    column = lambda rows, i: torch.tensor([r[i] for r in rows])  # noqa: E731
    ids = (column(query, 1), column(gallery, 1), column(query, 2), column(gallery, 2))
    metrics = evaluate_ranking(pairwise_distance(q, g), *ids)
    if rerank is not None:
        from .rerank import re_rank_features
        # the Euclidean distances of the normalised features, as evaluated above
        reranked = re_rank_features(F.normalize(q.float(), dim=1), F.normalize(g.float(), dim=1),
                                    **rerank)
        metrics["reranked"] = evaluate_ranking(reranked, *ids)
    return metrics
