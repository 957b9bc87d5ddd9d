"""Exact kNN: every implementation against the brute-force ranking (docs/method.md §2.1 step 1)."""
import functools

import numpy as np
import pytest
import torch

from cluster_cases import (FEATURES, IMPLEMENTATIONS, param_id,
                           set_knn_mode, with_knn_modes)
from cluster_oracles import brute_knn, clustered_features, lattice_features, sq_distances
from pplr_fast.cluster import common, nearest_neighbours

pytestmark = pytest.mark.no_fallback

KS = (1, 7, 31)


@functools.lru_cache(maxsize=None)
def oracle(name: str, interpreted: bool):
    case = FEATURES[name]
    x = (case.small if interpreted else case.full)()
    return brute_knn(x, max(KS))


@functools.lru_cache(maxsize=None)
def reference_knn(name: str, interpreted: bool, k: int):
    case = FEATURES[name]
    return nearest_neighbours((case.small if interpreted else case.full)(), k,
                              backend="reference")


@pytest.mark.parametrize("name", FEATURES)
@pytest.mark.parametrize("impl,knn_mode", with_knn_modes(), ids=param_id)
def test_knn_matches_brute_force(impl, knn_mode, name, monkeypatch):
    set_knn_mode(monkeypatch, impl, knn_mode)
    x = impl.features(name)
    n = x.shape[0]
    d_brute, lists = oracle(name, impl.interpreted)
    for k in KS:
        dist, index = impl.knn(x, k)
        assert dist.shape == index.shape == (n, min(k, n))
        assert dist.dtype == torch.float64 and index.dtype == torch.int64
        assert [row[:k] for row in lists] == index.tolist(), f"{name} k={k}"
        expected = np.take_along_axis(d_brute, index.numpy(), axis=1)
        np.testing.assert_allclose(dist.numpy(), expected, atol=2e-6, rtol=0)
        assert bool((dist[:, 1:] >= dist[:, :-1]).all())
        if k >= n:                                   # N < k: every row lists all N rows
            assert all(sorted(row) == list(range(n)) for row in index.tolist())
        if not impl.is_reference:                    # the same ranking as the reference
            d_ref, i_ref = reference_knn(name, impl.interpreted, k)
            assert torch.equal(index, i_ref), f"{name} k={k}"
            torch.testing.assert_close(dist, d_ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=param_id)
def test_knn_breaks_exact_ties_by_index(impl):
    x = lattice_features(40, 6, seed=1)
    _, index = impl.knn(x, 12)
    d = sq_distances(x.numpy())
    for i in range(40):
        assert index[i].tolist() == sorted(range(40), key=lambda j: (d[i, j], j))[:12]


# ---------------------------------------------------------------- the fast kNN's error bound
def test_error_bound_holds_for_bf16_scores():
    """The rigorous bound of the fast kNN filter covers the actual bf16 GEMM error."""
    x = clustered_features(400, 512, groups=30, spread=0.8, seed=5)
    low = x.bfloat16()
    c = common.rounding_error_bounds(x, low, 2.0 ** -24)
    scores = (low @ low.T).double()
    exact = x.double() @ x.double().T
    allowed = c[:, None] + 2.0 ** -8 * scores.abs()
    assert bool(((scores - exact).abs() <= allowed).all())


def test_error_bound_holds_for_fp32_scores():
    """Without native bf16 the filter is the fp32 GEMM itself: rho = 0, and the
    accumulation bound alone must cover its error (long rows, so it matters)."""
    x = clustered_features(300, 2048, groups=20, spread=0.8, seed=6)
    c = common.rounding_error_bounds(x, x, 2.0 ** -24)
    with common.ieee_matmul():
        scores = (x @ x.T).double()
    exact = x.double() @ x.double().T
    assert bool(((scores - exact).abs() <= c[:, None]).all())
    assert float(c.max()) < 1e-3, "a loose bound would make every column a candidate"


def test_error_bound_holds_for_fp16_scores():
    """The bound used by the GPU path covers fp16 inputs with fp16 output."""
    x = clustered_features(300, 512, groups=30, spread=0.8, seed=5)
    low = x.half()
    c = common.rounding_error_bounds(x, low, 2.0 ** -22)
    scores = (low @ low.T).double()
    exact = x.double() @ x.double().T
    assert bool(((scores - exact).abs() <= c[:, None] + 2.0 ** -11 * scores.abs()).all())
