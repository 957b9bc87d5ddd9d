"""Input validation shared by the clustering-stage ops.

A leaf module: it imports nothing of pplr_fast; the memory probe and guard are
:mod:`pplr_fast.utils.memory`.
"""
from __future__ import annotations

import operator

import torch



class ClusterInputError(ValueError):
    """Features or arguments the clustering stage cannot work with."""


def check_features(x: torch.Tensor, name: str = "features") -> None:
    """Rows must be finite and L2-normalised (docs/method.md §2 inputs)."""
    if not isinstance(x, torch.Tensor):
        raise ClusterInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ClusterInputError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ClusterInputError(f"{name} is empty: the clustering stage needs at least one image")
    if not x.dtype.is_floating_point:
        raise ClusterInputError(f"{name} must be floating point, got {x.dtype}")
    norms = x.float().norm(dim=1)      # one pass: a non-finite value gives a non-finite norm
    if not bool(torch.isfinite(norms).all()):
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()
            raise ClusterInputError(
                f"{name} has NaN or Inf values in {bad.numel()} row(s) (first: row "
                f"{int(bad[0])}); the model produced non-finite features — lower the learning "
                "rate or check the input images")
    off = (norms - 1).abs()
    if bool((off > 1e-3).any()):
        i = int(off.argmax())
        raise ClusterInputError(
            f"{name} rows must be L2-normalised (row {i} has norm {float(norms[i]):.4g}); "
            "call torch.nn.functional.normalize(x, dim=1) first")


def check_k(name: str, k: int, minimum: int = 1, *, integer_like: bool = False) -> int:
    """``k`` as an int >= ``minimum`` (never a bool), else a ClusterInputError naming it.
    ``integer_like`` also takes what ``operator.index`` turns into an int (numpy integers)."""
    value = k
    if integer_like and not isinstance(k, bool):
        try:
            value = operator.index(k)
        except TypeError:
            pass
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ClusterInputError(f"{name} must be an integer >= {minimum}, got {k!r}")
    return value


def check_stage_args(n: int, *, eps: float, k1: int, k2: int, min_samples: int, k: int) -> None:
    """The arguments of one clustering stage over ``n`` images (the features are checked
    apart, by :func:`check_part_features`): Jaccard's k1, k2, cross-agreement's k and
    DBSCAN's min_samples and eps."""
    check_jaccard_args(k1, k2, None, n=n)
    check_k("k", k)
    check_k("min_samples", min_samples)
    if not 0 < eps < 1:
        raise ClusterInputError(f"eps must lie in (0, 1) for Jaccard distances, got {eps}")


def check_part_features(x_g: torch.Tensor, x_p: torch.Tensor) -> None:
    """Global features (N, D) and part features (N, D, N_p), every part L2-normalised."""
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


def check_jaccard_args(k1: int, k2: int, max_distance: float | None, n: int | None = None
                       ) -> None:
    """k1, k2 and max_distance of the Jaccard distance; with ``n``, also that there are
    at least k1 images (:func:`check_enough_images`)."""
    check_k("k1", k1)
    check_k("k2", k2)
    if n is not None:
        check_enough_images(n, k1)
    if k2 > k1:
        raise ClusterInputError(f"k2 ({k2}) must not exceed k1 ({k1}): query expansion "
                                "averages over the first k2 of the k1 neighbours")
    if max_distance is not None and not 0 <= max_distance <= 1:
        raise ClusterInputError(f"max_distance must lie in [0, 1], got {max_distance}")


def check_enough_images(n: int, k1: int) -> None:
    """At least k1 images: with fewer, every k-reciprocal neighbourhood holds all N of them,
    so the Jaccard distances (and the clusters built on them) say nothing."""
    if k1 > n:
        raise ClusterInputError(
            f"k1={k1} exceeds the number of images N={n}: every k-reciprocal neighbourhood "
            "would be the whole set, so the distances would say nothing about who is near "
            f"whom; pass k1 <= {n} (and k2 <= k1), or use more images")


def index_range(rank: torch.Tensor) -> tuple[int, int]:
    """(min, max) of an index tensor.

    CPU tensors go through numpy, single-threaded: a torch parallel region
    just before the OpenMP kernels of ``pplr_fast._*`` (a second OpenMP
    runtime) leaves torch's threads spinning against them, which costs more
    than the check itself.
    """
    values = rank.numpy() if rank.device.type == "cpu" else rank
    return int(values.min()), int(values.max())


def check_neighbour_lists(rank: torch.Tensor, n: int, columns: int, device: torch.device,
                          name: str = "rank") -> None:
    """``rank`` is an (n, >= columns) integer tensor of indices in [0, n) on ``device``,
    as :func:`pplr_fast.cluster.nearest_neighbours` returns it."""
    if not isinstance(rank, torch.Tensor) or rank.dim() != 2 or rank.shape[0] != n:
        shape = tuple(rank.shape) if isinstance(rank, torch.Tensor) else type(rank).__name__
        raise ClusterInputError(f"{name} must be an (N={n}, K) tensor of neighbour indices, got "
                                f"{shape}; pass the index tensor of nearest_neighbours")
    if rank.dtype.is_floating_point or rank.dtype == torch.bool or rank.dtype.is_complex:
        raise ClusterInputError(f"{name} must hold integer indices, got {rank.dtype}")
    if rank.shape[1] < columns:
        raise ClusterInputError(f"{name} has {rank.shape[1]} neighbours per row but needs "
                                f"{columns}; compute nearest_neighbours with k >= {columns}")
    if rank.device != device:
        raise ClusterInputError(f"{name} is on {rank.device} but the features are on {device}")
    lowest, highest = index_range(rank) if rank.numel() else (0, 0)
    if lowest < 0 or highest >= n:
        raise ClusterInputError(f"{name} holds indices outside [0, {n}): it does not belong to "
                                "these features")
