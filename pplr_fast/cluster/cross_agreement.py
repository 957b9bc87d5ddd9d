"""Cross-agreement scores between the global and each part space (SPEC §2.3).

``A[i, n] = |N_g(i) ∩ N_n(i)| / |N_g(i) ∪ N_n(i)|`` where ``N_g(i)`` and
``N_n(i)`` are the k nearest neighbours of i in the global space and in part
space n, i itself excluded by index (neighbours ranked by ``(d, index)``, so
with duplicated images the result does not depend on where i sorts among its
copies). With N <= k the sets hold the N - 1 other images; with N == 1 both
sets are empty and the score is 0.
"""
from __future__ import annotations

import torch

from .checks import ClusterInputError, check_features, check_k, ensure_fits
from .knn import pairwise_sq_distance, reference_dense_bytes, sorted_neighbours


def check_part_features(x_g: torch.Tensor, x_p: torch.Tensor) -> None:
    check_features(x_g, "x_g")
    if not isinstance(x_p, torch.Tensor) or x_p.dim() != 3:
        raise ClusterInputError("x_p must be a (N, D, N_p) tensor (part dimension last), got "
                                f"{tuple(x_p.shape) if isinstance(x_p, torch.Tensor) else type(x_p)}")
    if x_p.shape[0] != x_g.shape[0]:
        raise ClusterInputError(f"x_g has {x_g.shape[0]} rows but x_p has {x_p.shape[0]}")
    if x_p.device != x_g.device:
        raise ClusterInputError(f"x_g is on {x_g.device} but x_p is on {x_p.device}")
    for n in range(x_p.shape[2]):
        check_features(x_p[:, :, n], f"x_p[:, :, {n}]")


def neighbours_excluding_self_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, min(k, N-1)) indices of the k nearest other rows, ranked by (d, index)."""
    dist = pairwise_sq_distance(x, x)
    dist.fill_diagonal_(float("inf"))
    return sorted_neighbours(dist, min(k, x.shape[0] - 1))[1]


def agreement(neigh_g: torch.Tensor, neigh_p: torch.Tensor) -> torch.Tensor:
    """Jaccard index of two (N, k) neighbour-index sets, row by row."""
    k = neigh_g.shape[1]
    if k == 0:
        return torch.zeros(neigh_g.shape[0], dtype=torch.float32, device=neigh_g.device)
    inter = (neigh_g[:, :, None] == neigh_p[:, None, :]).any(-1).sum(1)
    return inter.float() / (2 * k - inter).float()


def cross_agreement_reference(x_g: torch.Tensor, x_p: torch.Tensor, k: int = 20) -> torch.Tensor:
    n = x_g.shape[0]
    ensure_fits(reference_dense_bytes(n), x_g.device,
                f"the reference cross-agreement of N={n} (a dense N x N matrix per space)",
                "use backend='fast'")
    neigh_g = neighbours_excluding_self_reference(x_g, k)
    return torch.stack([agreement(neigh_g, neighbours_excluding_self_reference(x_p[:, :, p], k))
                        for p in range(x_p.shape[2])], dim=1)


def cross_agreement(x_g: torch.Tensor, x_p: torch.Tensor, k: int = 20,
                    backend: str = "fast") -> torch.Tensor:
    """(N, N_p) float32 cross-agreement scores in [0, 1].

    Args:
        x_g: (N, D) L2-normalised global features.
        x_p: (N, D, N_p) part features, each part L2-normalised over D.
        k: neighbourhood size (SPEC: 20).
        backend: ``"reference"`` or ``"fast"``.
    """
    check_part_features(x_g, x_p)
    check_k("k", k)
    from .backend import resolve_backend
    if resolve_backend(backend, x_g.device, "cross_agreement") == "reference":
        return cross_agreement_reference(x_g, x_p, k)
    from .fast_cross_agreement import cross_agreement_fast
    return cross_agreement_fast(x_g, x_p, k)
