"""DBSCAN: every implementation against scikit-learn (docs/method.md §2.2).

Implementations: the public op with ``backend="reference"`` and
``backend="fast"`` (C++ on a CPU), and the GPU path's CUDA C
(csrc/cuda/dbscan_cuda.cu) compiled by g++ with tests/cuda_host_emulation.h:
its launches run under random schedules (sequential or preempted at every
atomic), driven by the host loop of the GPU path (``fast_cuda.dbscan_labels``),
three schedules per case. On a GPU with CuPy the real kernels run too.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster_cases import (FEATURES, border_case, dbscan_case,
                           path_graph, random_distance_matrix, set_knn_mode)
from cluster_oracles import brute_dbscan
from pplr_fast.cluster import SparseDistance, common, dbscan, fast_cuda, jaccard_distance

pytestmark = pytest.mark.no_fallback

REPO = Path(__file__).resolve().parents[1]
DBSCAN_CU = REPO / "csrc" / "cuda" / "dbscan_cuda.cu"
SCHEDULES = 3


@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    """dbscan_cuda.cu compiled as C++ for the host, loaded with ctypes."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is needed to build the host emulation of the CUDA kernels")
    lib = tmp_path_factory.mktemp("dbscan_emulation") / "libdbscan_emulation.so"
    subprocess.run([compiler, "-std=c++17", "-O1", "-Wall", "-Werror", "-shared", "-fPIC",
                    "-pthread", "-I", str(REPO / "tests"), "-I", str(DBSCAN_CU.parent),
                    str(REPO / "tests" / "dbscan_emulation.cpp"), "-o", str(lib)],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


class EmulatedLauncher:
    """``launch(kernel, items, *args)`` for dbscan_labels on the host emulation.

    Each launch draws a grid (a few threads, so that grid-stride loops do most
    of the work, or one thread per item) and a schedule (sequential in a
    shuffled order, or preemptive at every atomic).
    """

    def __init__(self, library, seed):
        self.library = library
        self.rng = np.random.default_rng(seed)

    def __call__(self, kernel, items, *args):
        if self.rng.random() < 0.5:
            blocks, threads = int(self.rng.integers(1, 4)), int(self.rng.integers(1, 6))
        else:
            threads = int(self.rng.integers(1, 9))
            blocks = -(-items // threads)
        preemptive = blocks * threads <= 160 and self.rng.random() < 0.5
        c_args = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor)
                  else ctypes.c_longlong(a) for a in args]
        getattr(self.library, f"emulate_{kernel}")(
            ctypes.c_uint(blocks), ctypes.c_uint(threads),
            ctypes.c_ulonglong(int(self.rng.integers(2 ** 63))), ctypes.c_int(preemptive), *c_args)


IMPLEMENTATIONS = ["reference", "fast", "gpu-path-emulated"]


@pytest.fixture(params=IMPLEMENTATIONS)
def run_dbscan(request):
    """``run(dist, eps, min_samples)``: labels of one implementation, as a list of runs
    (one per schedule for the emulated GPU path)."""
    if request.param != "gpu-path-emulated":
        return lambda dist, eps, min_samples: [dbscan(dist, eps, min_samples,
                                                      backend=request.param)]
    library = request.getfixturevalue("emulation")

    def run(dist, eps, min_samples):
        crow, col = common.neighbour_lists(dist, eps)
        return [fast_cuda.dbscan_labels(EmulatedLauncher(library, seed), crow.contiguous(),
                                        col.contiguous(), min_samples)
                for seed in range(SCHEDULES)]
    return run


def dense(dist) -> np.ndarray:
    return (dist.to_dense() if isinstance(dist, SparseDistance) else dist).numpy()


def assert_matches_sklearn(run_dbscan, dist, eps, min_samples) -> None:
    expected = brute_dbscan(dense(dist), eps, min_samples)
    for labels in run_dbscan(dist, eps, min_samples):
        assert labels.dtype == torch.int64
        np.testing.assert_array_equal(labels.numpy(), expected)


@pytest.mark.parametrize("seed", range(40))
def test_dbscan_matches_sklearn(run_dbscan, seed):
    """Random graphs: 2-D points, quantised distances (many pairs exactly at eps,
    border ties), Jaccard-like; N from 1 to 149, min_samples from 1 to 7."""
    dist, eps, min_samples = dbscan_case(seed)
    assert_matches_sklearn(run_dbscan, dist, eps, min_samples)


def test_dbscan_border_point_joins_lowest_numbered_cluster(run_dbscan):
    for dist in (border_case(), SparseDistance.from_dense(border_case())):
        for labels in run_dbscan(dist, 0.3, 4):
            assert labels.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, -1, -1]
    assert_matches_sklearn(run_dbscan, border_case(), 0.3, 4)


def test_dbscan_all_noise_one_cluster_singletons(run_dbscan):
    apart = torch.ones(10, 10)
    apart.fill_diagonal_(0)
    assert all((labels == -1).all() for labels in run_dbscan(apart, 0.5, 2))          # all noise
    assert all((labels == 0).all() for labels in run_dbscan(apart * 0, 0.5, 4))       # one cluster
    assert all(labels.tolist() == list(range(10)) for labels in run_dbscan(apart, 0.5, 1))


@pytest.mark.parametrize("min_samples", [2, 3])
def test_dbscan_long_chains(run_dbscan, min_samples):
    """Paths in index order, reversed and shuffled: one cluster however it is walked
    (the GPU path's hooking and pointer jumping must converge)."""
    rng = np.random.default_rng(7)
    n = 300
    for order in (list(range(n)), list(range(n))[::-1], rng.permutation(n).tolist()):
        assert_matches_sklearn(run_dbscan, path_graph(order), 0.5, min_samples)


def test_dbscan_accepts_sparse_distance(run_dbscan):
    rng = np.random.default_rng(0)
    d = torch.from_numpy(random_distance_matrix(rng, 60, "jaccard-like"))
    sparse = SparseDistance.from_dense(d)
    for from_sparse, from_dense in zip(run_dbscan(sparse, 0.5, 3), run_dbscan(d, 0.5, 3)):
        assert torch.equal(from_sparse, from_dense)
    with pytest.raises(ValueError, match="every pair of images would be a neighbour"):
        run_dbscan(sparse, 1.0, 3)
    with pytest.raises(ValueError, match="exceeds the cutoff"):
        run_dbscan(sparse.truncated(0.3), 0.5, 3)


def test_dbscan_fast_on_asymmetric_matrix_uses_sklearn_semantics():
    rng = np.random.default_rng(7)
    d = rng.uniform(0, 1, size=(40, 40)).astype(np.float32)
    np.fill_diagonal(d, 0)
    with pytest.warns(RuntimeWarning, match="not symmetric"):
        got = dbscan(torch.from_numpy(d), 0.3, 3, backend="fast")
    np.testing.assert_array_equal(got.numpy(), brute_dbscan(d, 0.3, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("seed", range(6))
def test_dbscan_cuda_on_a_gpu_equals_reference(seed):
    if fast_cuda.cupy_problem() is not None:
        pytest.skip(fast_cuda.cupy_problem())
    rng = np.random.default_rng(500 + seed)
    pts = rng.normal(size=(int(rng.integers(1, 2000)), 2)) * rng.uniform(0.5, 3.0)
    pts[: len(pts) // 3] += 4.0
    d = torch.from_numpy(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).astype(np.float32))
    eps, min_samples = float(rng.uniform(0.05, 0.5)), int(rng.integers(1, 8))
    expected = dbscan(d, eps, min_samples, backend="reference")
    labels = dbscan(SparseDistance.from_dense(d).to("cuda"), eps, min_samples, backend="fast")
    assert labels.device.type == "cuda" and torch.equal(labels.cpu(), expected)


# ---------------------------------------------------------------- kNN -> Jaccard -> DBSCAN
def eps_away_from_every_distance(dist: torch.Tensor, wanted: float) -> float:
    """An eps near ``wanted`` with no distance within 1e-4 of it."""
    values = torch.unique(dist.flatten())
    eps = wanted
    while bool(((values - eps).abs() < 1e-4).any()):
        eps += 3.7e-4
    return eps


END_TO_END = [("fast-cpu", name, mode) for name in ("clustered", "duplicates", "lattice-ties")
              for mode in ("bf16-filter", "fp32-filter", "overflow")] + \
             [("gpu-path", "clustered", "filter")]


@pytest.mark.parametrize("path,name,knn_mode", END_TO_END)
def test_pseudo_labels_identical_end_to_end(path, name, knn_mode, monkeypatch, device, request):
    """Features -> kNN -> sparse Jaccard (pruned at eps) -> DBSCAN, every piece of one
    fast path, gives the reference's labels (the GPU path: Triton kernels, then the
    CUDA C DBSCAN on the host emulation)."""
    from cluster_cases import IMPLEMENTATIONS
    impl = next(i for i in IMPLEMENTATIONS if i.name == path)
    set_knn_mode(monkeypatch, impl, knn_mode)
    case = FEATURES[name]
    x = (case.small if impl.interpreted else case.full)()
    ref = jaccard_distance(x, 20, 6, backend="reference").to_dense()
    eps = eps_away_from_every_distance(ref, 0.6)
    expected = dbscan(ref, eps, 4, backend="reference")
    if path == "fast-cpu":
        fast = jaccard_distance(x, 20, 6, backend="fast", max_distance=eps)
        assert torch.equal(dbscan(fast, eps, 4, backend="fast"), expected)
        return
    _, rank = fast_cuda.nearest_neighbours(x.to(device), 20)
    dist = fast_cuda.jaccard_from_neighbours(x.to(device), rank, 20, 6, eps).to("cpu")
    crow, col = common.neighbour_lists(dist, eps)
    library = request.getfixturevalue("emulation")
    labels = fast_cuda.dbscan_labels(EmulatedLauncher(library, 0), crow.contiguous(),
                                     col.contiguous(), 4)
    assert torch.equal(labels, expected)


@pytest.mark.parametrize("seed", [s for s in range(40) if s % 3 == 1])
def test_dbscan_on_sparse_distances_at_eps(run_dbscan, seed):
    """Quantised cases (distances exactly at eps) through a SparseDistance, whole and
    truncated at eps: a pair at d == eps is a neighbour (scikit-learn's d <= eps)."""
    dist, eps, min_samples = dbscan_case(seed)
    eps = min(eps, 0.75)          # a SparseDistance reads absent pairs as 1: eps stays below
    d = dense(dist)
    assert bool((d == np.float32(eps)).any()), "the case must hold pairs exactly at eps"
    sparse = SparseDistance.from_dense(dist)
    crow, col = sparse.truncated(eps).within(eps)
    assert int(crow[-1]) == int((d <= eps).sum())
    expected = brute_dbscan(d, eps, min_samples)
    for source in (sparse, sparse.truncated(eps)):
        for labels in run_dbscan(source, eps, min_samples):
            np.testing.assert_array_equal(labels.numpy(), expected)
