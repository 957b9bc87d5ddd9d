"""DBSCAN by label propagation (torch ops only) against the reference DBSCAN and scikit-learn.

Runs on CPU tensors here and on CUDA tensors with PPLR_TEST_GPU=1 (the
``device`` fixture); the graph is built here from a dense distance matrix,
so the test shares no code with the implementation but the public
``dbscan(..., backend="reference")`` it compares with.
"""
import math

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN

from pplr_fast.cluster import ClusterInputError, dbscan
from pplr_fast.cluster.dbscan_propagation import dbscan_propagation


def eps_graph(d: np.ndarray, eps: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (crow, col) of the pairs with d <= eps, self included."""
    n = len(d)
    rows, cols = np.nonzero(d <= eps)
    crow = np.zeros(n + 1, dtype=np.int64)
    np.add.at(crow, rows + 1, 1)
    return (torch.from_numpy(np.cumsum(crow)).to(device),
            torch.from_numpy(cols.astype(np.int64)).to(device))


def sklearn_labels(d: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(
        d.astype(np.float64))


def both_oracles(d: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    ref = dbscan(torch.from_numpy(d), eps, min_samples, backend="reference").numpy()
    np.testing.assert_array_equal(ref, sklearn_labels(d, eps, min_samples))
    return ref


def random_distance_matrix(rng, n: int, kind: str) -> np.ndarray:
    if kind == "points":
        pts = rng.normal(size=(n, 2)) * rng.uniform(0.5, 3.0)
        pts[: n // 3] += 4.0
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    elif kind == "tied":          # many pairs exactly at eps, many equal distances
        pts = rng.integers(0, 6, size=(n, 2)).astype(np.float64)
        d = np.abs(pts[:, None] - pts[None]).sum(-1) / 4.0
    else:                         # "jaccard-like": mostly 1, a few small values
        d = np.ones((n, n))
        mask = rng.random((n, n)) < 0.08
        d[mask] = rng.uniform(0, 1, size=mask.sum())
        d = np.minimum(d, d.T)
        np.fill_diagonal(d, 0)
    return d.astype(np.float32)


def chain_distances(order: np.ndarray, step: float = 1.0) -> np.ndarray:
    """Points on a line visited in ``order``: point order[t] sits at t * step."""
    position = np.empty(len(order))
    position[order] = np.arange(len(order)) * step
    return np.abs(position[:, None] - position[None]).astype(np.float32)


@pytest.mark.parametrize("seed", range(45))
def test_random_graphs_match_reference_and_sklearn(seed, device):
    rng = np.random.default_rng(seed)
    kind = ["points", "tied", "jaccard-like"][seed % 3]
    n = int(rng.integers(2, 120))
    d = random_distance_matrix(rng, n, kind)
    eps = float(rng.choice([0.25, 0.5, 0.75, 1.0])) if kind == "tied" else \
        float(rng.uniform(0.1, 1.2))
    if kind == "jaccard-like":
        eps = min(eps, 0.9)
    min_samples = int(rng.integers(1, 7))
    crow, col = eps_graph(d, eps, device)
    got = dbscan_propagation(crow, col, min_samples)
    assert got.dtype == torch.int64 and got.device.type == device.type
    np.testing.assert_array_equal(got.cpu().numpy(), both_oracles(d, eps, min_samples))


@pytest.mark.parametrize("shape", ["ascending", "descending", "zigzag", "shuffled"])
@pytest.mark.parametrize("n", [2, 3, 64, 257, 1000])
def test_chains_converge_in_logarithmic_rounds(shape, n, device):
    """A path graph is the worst case of plain min-label propagation (N rounds)."""
    rng = np.random.default_rng(n)
    order = {"ascending": np.arange(n), "descending": np.arange(n)[::-1],
             "zigzag": np.argsort(np.arange(n) % 2 * n + np.arange(n) * (1 - 2 * (np.arange(n) % 2))),
             "shuffled": rng.permutation(n)}[shape]
    d = chain_distances(order)
    min_samples = 2 if n > 2 else 1
    crow, col = eps_graph(d, 1.0, device)         # each point sees its two neighbours
    labels, rounds = dbscan_propagation(crow, col, min_samples, return_rounds=True)
    np.testing.assert_array_equal(labels.cpu().numpy(), both_oracles(d, 1.0, min_samples))
    assert bool((labels == 0).all())
    assert rounds <= 2 * math.ceil(math.log2(n)) + 2, rounds


def test_chains_with_borders_and_gaps(device):
    """Several chains, some cut into pieces by points too sparse to be core."""
    d = chain_distances(np.random.default_rng(1).permutation(300))
    far = d > 1.0
    cut = np.random.default_rng(2).random(size=d.shape) < 0.01     # break ~1% of the links
    d[far] = 5.0
    d[(d == 1.0) & cut] = 5.0
    d = np.maximum(d, d.T)
    crow, col = eps_graph(d, 1.0, device)
    clusters = {}
    for min_samples in (1, 2, 3, 4):
        got = dbscan_propagation(crow, col, min_samples).cpu().numpy()
        np.testing.assert_array_equal(got, both_oracles(d, 1.0, min_samples))
        clusters[min_samples] = got.max() + 1
    assert clusters[3] > 1 and clusters[4] == 0, clusters     # pieces; no point has 4


def test_border_point_joins_lowest_numbered_cluster(device):
    """Point 0 is non-core and touches a core point of each of two clusters."""
    n = 11
    d = np.ones((n, n), dtype=np.float32)
    np.fill_diagonal(d, 0)
    for group in ([1, 2, 3, 4], [5, 6, 7, 8]):
        for i in group:
            for j in group:
                d[i, j] = 0.1 if i != j else 0
    for j in (8, 2):
        d[0, j] = d[j, 0] = 0.2
    d[9, 10] = d[10, 9] = 0.2
    crow, col = eps_graph(d, 0.3, device)
    got = dbscan_propagation(crow, col, 4).cpu().numpy()
    np.testing.assert_array_equal(got, both_oracles(d, 0.3, 4))
    assert got[0] == 0 and got[5] == 1 and got[9] == -1


def test_all_noise_one_cluster_single_point_and_empty(device):
    d = np.ones((10, 10), dtype=np.float32)
    np.fill_diagonal(d, 0)
    crow, col = eps_graph(d, 0.5, device)
    assert dbscan_propagation(crow, col, 2).tolist() == [-1] * 10
    assert dbscan_propagation(crow, col, 1).tolist() == list(range(10))    # every point alone
    crow, col = eps_graph(d * 0, 0.5, device)
    assert dbscan_propagation(crow, col, 4).tolist() == [0] * 10
    one = np.zeros((1, 1), dtype=np.float32)
    crow, col = eps_graph(one, 0.5, device)
    assert dbscan_propagation(crow, col, 1).tolist() == sklearn_labels(one, 0.5, 1).tolist() == [0]
    assert dbscan_propagation(crow, col, 2).tolist() == sklearn_labels(one, 0.5, 2).tolist() == [-1]
    empty = dbscan_propagation(torch.zeros(1, dtype=torch.int64, device=device),
                               torch.zeros(0, dtype=torch.int64, device=device), 4)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    # points with no edges at all (not even themselves): noise
    none = dbscan_propagation(torch.zeros(6, dtype=torch.int64, device=device),
                              torch.zeros(0, dtype=torch.int64, device=device), 1)
    assert none.tolist() == [-1] * 5


def test_int32_graph_and_repeated_runs_are_identical(device):
    rng = np.random.default_rng(7)
    d = random_distance_matrix(rng, 90, "tied")
    crow, col = eps_graph(d, 0.5, device)
    first = dbscan_propagation(crow.int(), col.int(), 3)
    assert torch.equal(first, dbscan_propagation(crow, col, 3))
    assert torch.equal(first, dbscan_propagation(crow, col, 3))
    np.testing.assert_array_equal(first.cpu().numpy(), both_oracles(d, 0.5, 3))


def test_bad_input_names_the_problem():
    crow, col = torch.tensor([0, 1]), torch.tensor([0])
    with pytest.raises(ClusterInputError, match="min_samples"):
        dbscan_propagation(crow, col, 0)
    with pytest.raises(ClusterInputError, match="integer"):
        dbscan_propagation(crow.float(), col, 2)
    with pytest.raises(ClusterInputError, match="1-D"):
        dbscan_propagation(crow[None], col, 2)
