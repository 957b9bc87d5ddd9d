"""Independent brute-force implementations, written straight from docs/method.md §2.

Plain Python sets and float64 loops: slow, obvious, and sharing no code with
``pplr_fast.cluster``. Every implementation of every op is tested against them
(``cluster_cases.py``); DBSCAN's oracle is scikit-learn's.

Distances never go through a BLAS (:func:`sq_distances`): a GEMM's last bit
depends on the CPU's kernels and blocking, which would order exact copies of a
row by that bit on some machines and not on others.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch


def sq_distances(x: np.ndarray) -> np.ndarray:
    """``2 - 2 <x_i, x_j>`` in float64, the products of each pair added one dimension at a
    time, left to right: one IEEE operation each, the same bits on every machine, and
    bit-equal distances for exact copies."""
    X = np.asarray(x, dtype=np.float64)
    dot = np.zeros((len(X), len(X)))
    for t in range(X.shape[1]):
        dot += np.multiply.outer(X[:, t], X[:, t])
    return 2 - 2 * dot


def ranked_lists(x: np.ndarray, exclude_self: bool = False) -> list[list[int]]:
    """Every row's other rows sorted by (squared distance, index), float64."""
    d = sq_distances(x)
    n = len(x)
    return [sorted((j for j in range(n) if not (exclude_self and j == i)),
                   key=lambda j: (d[i, j], j)) for i in range(n)]


def brute_knn(x: torch.Tensor, k: int) -> tuple[np.ndarray, list[list[int]]]:
    """The k nearest rows of every row, itself included: (float64 distance matrix, lists)."""
    X = x.double().numpy()
    return sq_distances(X), [r[:k] for r in ranked_lists(X)]


def brute_dbscan(d: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """scikit-learn's DBSCAN on the precomputed distances (float64)."""
    from sklearn.cluster import DBSCAN
    return DBSCAN(eps=eps, min_samples=min_samples,
                  metric="precomputed").fit_predict(d.astype(np.float64))


def brute_jaccard(x: torch.Tensor, k1: int, k2: int) -> np.ndarray:
    """docs/method.md §2.1, literally."""
    X = x.double().numpy()
    n = len(X)
    d = sq_distances(X)
    rank = [r[:k1] for r in ranked_lists(X)]

    def F(i, k):
        return rank[i][:min(k + 1, k1)]

    def R(i, k):
        return {j for j in F(i, k) if i in F(j, k)}

    half = round(k1 / 2)
    V = np.zeros((n, n))
    for i in range(n):
        Ri = R(i, k1)
        E = set(Ri)
        for c in Ri:
            Rc = R(c, half)
            if len(Rc & Ri) > Fraction(2, 3) * len(Rc):
                E |= Rc
        if E:
            w = {j: math.exp(-d[i, j]) for j in E}
            total = sum(w.values())
            for j, wj in w.items():
                V[i, j] = wj / total
    if k2 > 1:
        V = np.stack([np.mean([V[j] for j in rank[i][:k2]], axis=0) for i in range(n)])
    out = np.ones((n, n))
    for i in range(n):
        # m(i, j) = Σ_l min(V'[i, l], V'[j, l]); V' >= 0, so columns outside
        # either support add 0
        m = np.minimum(V[i][None, :], V).sum(axis=1)
        out[i] = np.maximum(0.0, 1 - m / (2 - m))
    return out


def brute_cross_agreement(x_g: torch.Tensor, x_p: torch.Tensor, k: int) -> np.ndarray:
    """docs/method.md §2.3 with Python sets."""
    g = [set(r[:k]) for r in ranked_lists(x_g.double().numpy(), exclude_self=True)]
    n, _, parts = x_p.shape
    out = np.zeros((n, parts))
    for p in range(parts):
        lists = ranked_lists(x_p[:, :, p].double().numpy(), exclude_self=True)
        for i in range(n):
            s = set(lists[i][:k])
            union = g[i] | s
            out[i, p] = len(g[i] & s) / len(union) if union else 0.0
    return out


def normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def clustered_features(n: int, dim: int, groups: int, spread: float, seed: int,
                       duplicates: int = 0) -> torch.Tensor:
    """Identity-structured features: ``groups`` centres plus noise; a few exact copies."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, dim, generator=g)
    x = centres[torch.randint(0, groups, (n,), generator=g)] + spread * torch.randn(n, dim, generator=g)
    x = normalize(x)
    for t in range(duplicates):
        x[(7 * t + 3) % n] = x[(5 * t + 1) % n]
    return x


def lattice_features(n: int, dim: int, seed: int) -> torch.Tensor:
    """Rows e_a or (e_a + e_b)/sqrt(2): many exactly tied distances in any precision."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, dim)
    for i in range(n):
        a, b = torch.randint(0, dim, (2,), generator=g).tolist()
        x[i, a] += 1
        x[i, b] += 1 if i % 2 else 0
    return normalize(x)
