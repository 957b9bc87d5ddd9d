"""The fast CPU clustering kernels (csrc/cpu) against the reference path."""
import warnings

import numpy as np
import pytest
import torch

from cluster_oracles import clustered_features, lattice_features, normalize
from pplr_fast.cluster import (SparseDistance, cross_agreement, dbscan, jaccard_distance,
                               nearest_neighbours)
from pplr_fast.cluster import fast_knn


@pytest.fixture(autouse=True)
def no_fallback():
    """A silent fallback to the reference path would make these tests vacuous."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


@pytest.fixture(params=["bf16-filter", "fp32", "overflow"])
def knn_mode(request, monkeypatch):
    """Run each kNN-dependent test through every selection path."""
    if request.param == "fp32":
        monkeypatch.setattr(fast_knn, "cpu_has_native_bf16", lambda: False)
    else:
        monkeypatch.setattr(fast_knn, "cpu_has_native_bf16", lambda: True)
    if request.param == "overflow":
        monkeypatch.setattr(fast_knn, "CANDIDATE_CAP", 3)
    return request.param


FEATURES = {
    "clustered": lambda: clustered_features(300, 32, groups=20, spread=0.6, seed=0),
    "duplicates": lambda: clustered_features(200, 16, groups=10, spread=0.4, seed=1, duplicates=25),
    "lattice-ties": lambda: lattice_features(120, 8, seed=2),
    "isotropic": lambda: normalize(torch.randn(150, 256, generator=torch.Generator().manual_seed(3))),
    "tiny": lambda: clustered_features(9, 8, groups=2, spread=0.3, seed=4),
    "single": lambda: normalize(torch.ones(1, 4)),
}


@pytest.mark.parametrize("name", FEATURES)
def test_knn_fast_equals_reference(name, knn_mode):
    x = FEATURES[name]()
    for k in (1, 7, 31):
        d_ref, i_ref = nearest_neighbours(x, k, backend="reference")
        d_fast, i_fast = nearest_neighbours(x, k, backend="fast")
        assert torch.equal(i_fast, i_ref), f"{name} k={k}"
        torch.testing.assert_close(d_fast, d_ref, atol=2e-6, rtol=0)


def test_error_bound_holds_for_bf16_scores():
    """The rigorous bound of fast_knn must cover the actual bf16 GEMM error."""
    x = clustered_features(400, 512, groups=30, spread=0.8, seed=5)
    low = x.bfloat16()
    c = fast_knn.rounding_error_bounds(x, low, 2.0 ** -24)
    scores = (low @ low.T).double()
    exact = x.double() @ x.double().T
    allowed = c[:, None] + 2.0 ** -8 * scores.abs()
    assert bool(((scores - exact).abs() <= allowed).all())


def test_error_bound_holds_for_fp32_scores():
    """Without native bf16 the filter is the fp32 GEMM itself: rho = 0, and the
    accumulation bound alone must cover its error (long rows, so it matters)."""
    x = clustered_features(300, 2048, groups=20, spread=0.8, seed=6)
    c = fast_knn.rounding_error_bounds(x, x, 2.0 ** -24)
    with fast_knn.ieee_matmul():
        scores = (x @ x.T).double()
    exact = x.double() @ x.double().T
    assert bool(((scores - exact).abs() <= c[:, None]).all())
    assert float(c.max()) < 1e-3, "a loose bound would make every column a candidate"


JACCARD_CASES = [("clustered", 30, 6), ("duplicates", 20, 6), ("lattice-ties", 10, 3),
                 ("isotropic", 15, 2), ("tiny", 30, 6), ("clustered", 11, 1), ("single", 30, 6)]


@pytest.mark.parametrize("name,k1,k2", JACCARD_CASES)
def test_jaccard_fast_equals_reference(name, k1, k2, knn_mode):
    x = FEATURES[name]()
    ref = jaccard_distance(x, k1, k2, backend="reference")
    fast = jaccard_distance(x, k1, k2, backend="fast")
    assert isinstance(fast, SparseDistance)
    dense = fast.to_dense()
    assert float((dense - ref).abs().max()) <= 1e-5
    assert torch.equal(dense, dense.T)
    # every stored pair has d < 1 exactly where the reference does
    assert torch.equal(dense < 1, ref < 1)
    cut = jaccard_distance(x, k1, k2, backend="fast", max_distance=0.55)
    assert cut.cutoff == 0.55 and bool((cut.val <= 0.55).all())
    assert torch.equal(cut.within(0.5)[1], fast.within(0.5)[1])


def random_graph(rng, n):
    pts = rng.normal(size=(n, 2)) * rng.uniform(0.5, 3.0)
    pts[: n // 3] += 4.0
    return torch.from_numpy(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).astype(np.float32))


@pytest.mark.parametrize("seed", range(30))
def test_dbscan_fast_equals_reference(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 120))
    d = random_graph(rng, n)
    if seed % 3 == 0:           # quantised distances: many pairs exactly at eps
        d = torch.round(d * 2) / 2
    eps = float(rng.choice([0.5, 1.0])) if seed % 3 == 0 else float(rng.uniform(0.2, 1.5))
    min_samples = int(rng.integers(1, 8))
    assert torch.equal(dbscan(d, eps, min_samples, backend="fast"),
                       dbscan(d, eps, min_samples, backend="reference"))


def test_dbscan_fast_border_tie_all_noise_one_cluster():
    n = 11
    d = torch.ones(n, n)
    d.fill_diagonal_(0)
    for grp in ([1, 2, 3, 4], [5, 6, 7, 8]):
        for i in grp:
            for j in grp:
                d[i, j] = 0.1 if i != j else 0
    d[0, 8] = d[8, 0] = d[0, 2] = d[2, 0] = 0.2
    labels = dbscan(SparseDistance.from_dense(d), 0.3, 4, backend="fast")
    assert labels.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, -1, -1]
    eye = torch.ones(8, 8)
    eye.fill_diagonal_(0)
    assert (dbscan(eye, 0.5, 2, backend="fast") == -1).all()
    assert (dbscan(torch.zeros(8, 8), 0.5, 4, backend="fast") == 0).all()


@pytest.mark.parametrize("name", ["clustered", "duplicates", "lattice-ties", "tiny", "single"])
def test_cross_agreement_fast_equals_reference(name, knn_mode):
    x_g = FEATURES[name]()
    n = x_g.shape[0]
    x_p = torch.stack([normalize(x_g + 0.3 * torch.randn(x_g.shape, generator=torch.Generator().manual_seed(p)))
                       for p in range(3)], dim=2)
    if name == "duplicates":    # keep the copies exact in the part spaces too
        x_p[(7 * 3 + 3) % n] = x_p[(5 * 3 + 1) % n]
    for k in (1, 5, 20):
        assert torch.equal(cross_agreement(x_g, x_p, k, backend="fast"),
                           cross_agreement(x_g, x_p, k, backend="reference"))


def eps_away_from_every_distance(dist: torch.Tensor, wanted: float) -> float:
    """An eps near ``wanted`` with no distance within 1e-4 of it."""
    values = torch.unique(dist.flatten())
    eps = wanted
    while bool(((values - eps).abs() < 1e-4).any()):
        eps += 3.7e-4
    return eps


@pytest.mark.parametrize("name", ["clustered", "duplicates", "lattice-ties"])
def test_pseudo_labels_identical_end_to_end(name, knn_mode):
    x = FEATURES[name]()
    ref = jaccard_distance(x, 20, 6, backend="reference")
    eps = eps_away_from_every_distance(ref, 0.6)
    labels_ref = dbscan(ref, eps, 4, backend="reference")
    fast = jaccard_distance(x, 20, 6, backend="fast", max_distance=eps)
    assert torch.equal(dbscan(fast, eps, 4, backend="fast"), labels_ref)


def test_dbscan_fast_on_asymmetric_matrix_uses_sklearn_semantics():
    from sklearn.cluster import DBSCAN
    rng = np.random.default_rng(7)
    d = rng.uniform(0, 1, size=(40, 40)).astype(np.float32)
    np.fill_diagonal(d, 0)
    with pytest.warns(RuntimeWarning, match="not symmetric"):
        got = dbscan(torch.from_numpy(d), 0.3, 3, backend="fast")
    expected = DBSCAN(eps=0.3, min_samples=3, metric="precomputed").fit_predict(d.astype(np.float64))
    np.testing.assert_array_equal(got.numpy(), expected)
