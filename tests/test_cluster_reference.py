"""The reference clustering stage against independent oracles (SPEC §2)."""
import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN

from cluster_oracles import (brute_cross_agreement, brute_jaccard, clustered_features,
                             lattice_features, normalize)
from pplr_fast.cluster import (ClusterInputError, SparseDistance, cross_agreement, dbscan,
                               jaccard_distance, nearest_neighbours)
from pplr_fast.cluster import checks


# ---------------------------------------------------------------- kNN
def test_knn_reference_breaks_ties_by_index():
    x = lattice_features(40, 6, seed=1)
    dist, idx = nearest_neighbours(x, 12, backend="reference")
    d = 2 - 2 * (x.double() @ x.double().T)
    for i in range(40):
        expected = sorted(range(40), key=lambda j: (d[i, j].item(), j))[:12]
        assert idx[i].tolist() == expected
    assert torch.all(dist[:, 1:] >= dist[:, :-1])


def test_knn_clamps_k_to_n():
    x = normalize(torch.randn(5, 8))
    dist, idx = nearest_neighbours(x, 30, backend="reference")
    assert idx.shape == (5, 5)
    assert sorted(idx[0].tolist()) == list(range(5))


# ---------------------------------------------------------------- Jaccard
JACCARD_CASES = [
    ("clustered", lambda: clustered_features(48, 12, groups=6, spread=0.4, seed=0), 8, 3),
    ("clustered-k2=1", lambda: clustered_features(40, 12, groups=5, spread=0.5, seed=1), 6, 1),
    ("duplicates", lambda: clustered_features(45, 10, groups=5, spread=0.3, seed=2, duplicates=6), 7, 4),
    ("lattice-ties", lambda: lattice_features(36, 5, seed=3), 6, 2),
    ("random", lambda: normalize(torch.randn(30, 4, generator=torch.Generator().manual_seed(4))), 5, 2),
    ("N<k1", lambda: clustered_features(12, 6, groups=2, spread=0.3, seed=5), 30, 6),
    ("odd-k1", lambda: clustered_features(40, 8, groups=4, spread=0.4, seed=6), 9, 6),
]


@pytest.mark.parametrize("name,make,k1,k2", JACCARD_CASES, ids=[c[0] for c in JACCARD_CASES])
def test_jaccard_reference_matches_brute_force(name, make, k1, k2):
    x = make()
    ref = jaccard_distance(x, k1, k2, backend="reference")
    expected = brute_jaccard(x, k1, k2)
    assert ref.shape == (len(x), len(x)) and ref.dtype == torch.float32
    np.testing.assert_allclose(ref.numpy(), expected, atol=1e-5, rtol=0)
    assert torch.equal(ref, ref.T), "the reference Jaccard distance must be exactly symmetric"
    assert (ref.diagonal() < 1e-5).all()
    assert ((ref >= 0) & (ref <= 1)).all()


def test_jaccard_fast_fallback_type_is_sparse_and_exact():
    x = clustered_features(30, 8, groups=3, spread=0.4, seed=7)
    dense = jaccard_distance(x, 6, 2, backend="reference")
    sparse = SparseDistance.from_dense(dense)
    assert torch.equal(sparse.to_dense(), dense)
    cut = sparse.truncated(0.5)
    assert cut.cutoff == 0.5 and bool((cut.val <= 0.5).all())
    crow, col = cut.within(0.4)
    assert int(crow[-1]) == int((dense <= 0.4).sum())


# ---------------------------------------------------------------- DBSCAN
def sklearn_labels(d: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(d)


def random_distance_matrix(rng, n: int, kind: str) -> np.ndarray:
    if kind == "points":
        pts = rng.normal(size=(n, 2)) * rng.uniform(0.5, 3.0)
        pts[: n // 3] += 4.0
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    elif kind == "quantised":     # many pairs exactly at eps
        pts = rng.integers(0, 6, size=(n, 2)).astype(np.float64)
        d = np.abs(pts[:, None] - pts[None]).sum(-1) / 4.0
    else:                         # "jaccard-like": mostly 1, a few small values
        d = np.ones((n, n))
        mask = rng.random((n, n)) < 0.08
        d[mask] = rng.uniform(0, 1, size=mask.sum())
        d = np.minimum(d, d.T)
        np.fill_diagonal(d, 0)
    return d.astype(np.float32)


@pytest.mark.parametrize("seed", range(40))
def test_dbscan_reference_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    kind = ["points", "quantised", "jaccard-like"][seed % 3]
    n = int(rng.integers(1, 90))
    d = random_distance_matrix(rng, n, kind)
    eps = float(rng.choice([0.25, 0.5, 0.75, 1.0])) if kind == "quantised" else float(rng.uniform(0.1, 1.2))
    if kind == "jaccard-like":
        eps = min(eps, 0.9)
    min_samples = int(rng.integers(1, 7))
    got = dbscan(torch.from_numpy(d), eps, min_samples, backend="reference").numpy()
    np.testing.assert_array_equal(got, sklearn_labels(d.astype(np.float64), eps, min_samples))


def border_case() -> np.ndarray:
    """Two dense groups; point 0 (non-core) touches both, the later-numbered first."""
    n = 11
    d = np.ones((n, n), dtype=np.float32)
    np.fill_diagonal(d, 0)
    a, b = [1, 2, 3, 4], [5, 6, 7, 8]       # cluster of 1..4 gets label 0, 5..8 label 1
    for grp in (a, b):
        for i in grp:
            for j in grp:
                d[i, j] = 0.1 if i != j else 0
    for j in (8, 2):                          # border point 0 is near one core of each
        d[0, j] = d[j, 0] = 0.2
    d[9, 10] = d[10, 9] = 0.2                 # a pair too small to be core: noise
    return d


def test_dbscan_border_point_joins_lowest_numbered_cluster():
    d = border_case()
    got = dbscan(torch.from_numpy(d), 0.3, 4, backend="reference").numpy()
    expected = sklearn_labels(d.astype(np.float64), 0.3, 4)
    np.testing.assert_array_equal(got, expected)
    assert got[0] == 0 and got[1] == 0 and got[5] == 1 and got[9] == -1


def test_dbscan_all_noise_and_one_cluster():
    d = np.ones((10, 10), dtype=np.float32)
    np.fill_diagonal(d, 0)
    assert (dbscan(torch.from_numpy(d), 0.5, 2, backend="reference") == -1).all()
    assert (dbscan(torch.from_numpy(d * 0), 0.5, 4, backend="reference") == 0).all()


def test_dbscan_accepts_sparse_distance():
    rng = np.random.default_rng(0)
    d = random_distance_matrix(rng, 60, "jaccard-like")
    dense = torch.from_numpy(d)
    sparse = SparseDistance.from_dense(dense)
    assert torch.equal(dbscan(sparse, 0.5, 3, backend="reference"),
                       dbscan(dense, 0.5, 3, backend="reference"))
    with pytest.raises(ValueError, match="every pair of images would be a neighbour"):
        dbscan(sparse, 1.0, 3, backend="reference")
    with pytest.raises(ValueError, match="exceeds the cutoff"):
        dbscan(sparse.truncated(0.3), 0.5, 3, backend="reference")


# ---------------------------------------------------------------- cross-agreement
@pytest.mark.parametrize("n,k,dup", [(40, 5, 0), (30, 20, 4), (6, 20, 0), (1, 20, 0)])
def test_cross_agreement_reference_matches_sets(n, k, dup):
    x_g = clustered_features(n, 8, groups=4, spread=0.5, seed=n, duplicates=dup)
    x_p = torch.stack([clustered_features(n, 8, groups=4, spread=0.5, seed=n + 10 * p, duplicates=dup)
                       for p in range(3)], dim=2)
    got = cross_agreement(x_g, x_p, k, backend="reference")
    assert got.shape == (n, 3) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), brute_cross_agreement(x_g, x_p, k), atol=1e-7)


def test_cross_agreement_of_identical_spaces_is_one():
    x = clustered_features(50, 8, groups=4, spread=0.5, seed=3)
    assert torch.all(cross_agreement(x, torch.stack([x, x], 2), 10, backend="reference") == 1)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_name_the_problem():
    x = normalize(torch.randn(20, 4))
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ClusterInputError, match="NaN or Inf .* row 3"):
        jaccard_distance(bad, 5, 2, backend="reference")
    with pytest.raises(ClusterInputError, match="L2-normalised"):
        jaccard_distance(x * 3, 5, 2, backend="reference")
    with pytest.raises(ClusterInputError, match="k2 .* must not exceed k1"):
        jaccard_distance(x, 3, 6, backend="reference")
    with pytest.raises(ClusterInputError, match="eps must be > 0"):
        dbscan(torch.zeros(3, 3), 0.0, 4, backend="reference")
    with pytest.raises(ClusterInputError, match=r"\(N, D, N_p\)"):
        cross_agreement(x, x, 5, backend="reference")
    with pytest.raises(ValueError, match="backend must be one of"):
        jaccard_distance(x, 5, 2, backend="turbo")


def test_reference_refuses_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda device: 2 ** 20)
    x = normalize(torch.randn(600, 4))
    with pytest.raises(MemoryError, match=r"needs about .* GiB .* backend='fast'"):
        jaccard_distance(x, 5, 2, backend="reference")
