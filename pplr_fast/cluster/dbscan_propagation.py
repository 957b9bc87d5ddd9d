"""DBSCAN by label propagation in plain torch ops: the GPU DBSCAN that needs neither CuPy nor NVRTC.

Same semantics as scikit-learn's DBSCAN on a precomputed eps-neighbour graph
(docs/method.md §2.2), so its labels equal the reference's and the CUDA C kernel's:

- core point: at least ``min_samples`` neighbours (self included), i.e. its
  row of the CSR graph has ``min_samples`` or more entries;
- clusters: connected components of the graph restricted to core points,
  numbered 0, 1, ... in increasing order of their lowest-index core point;
- a border (non-core) point with a core neighbour joins the lowest-numbered
  cluster among its core neighbours; every other point is noise (-1).

Components are found by min-label hooking over the core-core edges with
``scatter_reduce(amin)`` followed by pointer jumping: every core point holds
a parent, a core point of its component with an index no larger than its own
(a forest whose roots point to themselves). One round

1. hooks, for every core-core edge (u, v), the root of v and v itself onto
   the root of u when that is smaller (``amin`` is order-independent, so the
   result does not depend on how the GPU schedules the scatter);
2. jumps pointers ``bit_length(N)`` times (parent = parent[parent]), which
   flattens any tree, so every core point points at its root again;
3. compares with the previous parents: one host sync (``.item()``) per round.

When a round changes nothing every edge joins two points of the same root,
and each component's root is its lowest core index (that index's parent can
only be itself). A tree that has a smaller-rooted neighbour tree hooks onto
one each round, so the number of trees in a component shrinks every round:
a path of trees halves per round (O(log N) rounds for a chain, the worst
case of plain min-label propagation, which needs O(N)); in practice a handful
of rounds. Work per round: O(E_core) gathers and one scatter, plus
``bit_length(N)`` gathers of N; memory O(N + E). Nothing here depends on
floating point, so the labels are identical on every run and device.
"""
from __future__ import annotations

import torch

from .checks import ClusterInputError


def check_graph(crow: torch.Tensor, col: torch.Tensor, min_samples: int) -> int:
    """Validate a CSR graph; return its number of points N."""
    if not isinstance(crow, torch.Tensor) or not isinstance(col, torch.Tensor):
        raise ClusterInputError("crow and col must be torch tensors (the CSR of the eps graph)")
    if crow.dim() != 1 or crow.numel() < 1 or col.dim() != 1:
        raise ClusterInputError(f"crow must be 1-D of length N + 1 and col 1-D, got shapes "
                                f"{tuple(crow.shape)} and {tuple(col.shape)}")
    if crow.dtype.is_floating_point or col.dtype.is_floating_point:
        raise ClusterInputError(f"crow and col must be integer tensors, got {crow.dtype} and "
                                f"{col.dtype}")
    if crow.device != col.device:
        raise ClusterInputError(f"crow and col must be on one device, got {crow.device} and "
                                f"{col.device}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ClusterInputError(f"min_samples must be a positive int, got {min_samples!r}")
    return crow.numel() - 1


def core_components(src: torch.Tensor, dst: torch.Tensor, is_core: torch.Tensor
                    ) -> tuple[torch.Tensor, int]:
    """``(root, rounds)``: the lowest core index of each core point's component.

    ``src``/``dst`` are the core-core edges (both directions of each pair);
    ``root`` is int64 (N,), meaningful at core points only (non-core points
    keep their own index); ``rounds`` counts hook-and-jump rounds, the last
    one being the round that changed nothing.
    """
    n = is_core.numel()
    parent = torch.arange(n, dtype=torch.int64, device=is_core.device)
    if src.numel() == 0:
        return parent, 0
    jumps = max(1, n.bit_length())
    rounds = 0
    while True:
        rounds += 1
        previous = parent
        root_u, root_v = parent[src], parent[dst]
        # hook v's root and v itself onto u's root; min keeps parent[i] <= i
        parent = parent.scatter_reduce(0, root_v, root_u, reduce="amin", include_self=True)
        parent = parent.scatter_reduce(0, dst, root_u, reduce="amin", include_self=True)
        for _ in range(jumps):
            parent = parent[parent]
        if not bool((parent != previous).any()):      # the one host sync of a round
            return parent, rounds


def dbscan_propagation(crow: torch.Tensor, col: torch.Tensor, min_samples: int,
                       return_rounds: bool = False):
    """DBSCAN labels (int64, -1 = noise) of a symmetric CSR eps-neighbour graph.

    Args:
        crow: (N + 1,) row pointers; row i lists the neighbours of i (i itself
            included, as ``d(i, i) = 0 <= eps``).
        col: (E,) neighbour indices. The graph must be symmetric (j in row i
            iff i in row j), as a distance matrix's eps graph is.
        min_samples: neighbours (self included) that make a core point.
        return_rounds: also return the number of propagation rounds.

    Runs on the graph's device with torch ops only (any device).
    """
    n = check_graph(crow, col, min_samples)
    device = crow.device
    crow = crow.to(torch.int64)
    col = col.to(torch.int64)
    if n == 0:
        labels = torch.empty(0, dtype=torch.int64, device=device)
        return (labels, 0) if return_rounds else labels
    degree = crow[1:] - crow[:-1]
    is_core = degree >= min_samples
    row = torch.repeat_interleave(torch.arange(n, device=device), degree,
                                  output_size=col.numel())
    core_edge = is_core[row] & is_core[col]
    src, dst = row[core_edge], col[core_edge]        # one compaction (one sync)
    root, rounds = core_components(src, dst, is_core)

    is_root = is_core & (root == torch.arange(n, device=device))
    cluster_of_root = torch.cumsum(is_root, 0) - 1
    cluster = torch.where(is_core, cluster_of_root[root], -1)
    # border points: the lowest cluster number among core neighbours
    none = torch.iinfo(torch.int64).max
    offer = torch.where(is_core[col], cluster[col], none)
    border = torch.full((n,), none, dtype=torch.int64, device=device)
    border = border.scatter_reduce(0, row, offer, reduce="amin", include_self=True)
    border = torch.where(border == none, -1, border)
    labels = torch.where(is_core, cluster, border)
    return (labels, rounds) if return_rounds else labels
