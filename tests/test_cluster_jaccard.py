"""k-reciprocal Jaccard distance: every implementation against the brute force (docs/method.md §2.1)."""
import functools

import numpy as np
import pytest
import torch

from cluster_cases import (FEATURES, IMPLEMENTATIONS, JACCARD_CASES,
                           param_id, set_knn_mode, with_knn_modes)
from cluster_oracles import brute_jaccard, clustered_features
from pplr_fast.cluster import (SparseDistance, fast_cuda, jaccard_distance,
                               nearest_neighbours)
from pplr_fast.kernels import jaccard as jaccard_kernels

pytestmark = pytest.mark.no_fallback


@functools.lru_cache(maxsize=None)
def features(name: str, interpreted: bool) -> torch.Tensor:
    case = FEATURES[name]
    return (case.small if interpreted else case.full)()


@functools.lru_cache(maxsize=None)
def oracle(name: str, interpreted: bool, k1: int, k2: int) -> np.ndarray:
    return brute_jaccard(features(name, interpreted), k1, k2)


@functools.lru_cache(maxsize=None)
def reference(name: str, interpreted: bool, k1: int, k2: int) -> torch.Tensor:
    """The reference result, dense (below the public op when k1 > N, which the op refuses)."""
    return IMPLEMENTATIONS[0].jaccard(features(name, interpreted), k1, k2).to_dense()


def assert_columns_ascend(out: SparseDistance) -> None:
    counts = out.crow[1:] - out.crow[:-1]
    rows = torch.repeat_interleave(torch.arange(out.n), counts)
    key = rows * out.n + out.col
    assert bool((key[1:] > key[:-1]).all()), "columns must ascend within each row"


@pytest.mark.parametrize("name,k1,k2", JACCARD_CASES)
@pytest.mark.parametrize("impl,knn_mode", with_knn_modes(gpu_modes=False), ids=param_id)
def test_jaccard_matches_brute_force(impl, knn_mode, name, k1, k2, monkeypatch):
    set_knn_mode(monkeypatch, impl, knn_mode)
    x = features(name, impl.interpreted)
    n = x.shape[0]
    expected = oracle(name, impl.interpreted, k1, k2)
    got = impl.jaccard(x, k1, k2)
    assert isinstance(got, SparseDistance) and got.cutoff is None, "one type whatever the backend"
    assert_columns_ascend(got)
    dense = got.to_dense()
    assert dense.shape == (n, n)
    np.testing.assert_allclose(dense.numpy(), expected, atol=1e-5, rtol=0)
    assert torch.equal(dense, dense.T), "the Jaccard distance must be exactly symmetric"
    assert (dense.diagonal() < 1e-5).all()
    assert ((dense >= 0) & (dense <= 1)).all()
    # pairs whose supports meet (d < 1) are exactly the brute force's
    assert np.array_equal(dense.numpy() < 1, expected < 1)
    if not impl.is_reference:
        ref = reference(name, impl.interpreted, k1, k2)
        assert float((dense - ref).abs().max()) <= 1e-5
        assert torch.equal(dense < 1, ref < 1)
    if not impl.is_reference and not impl.interpreted:   # interpreted: see the chunks test
        cut = impl.jaccard(x, k1, k2, max_distance=0.55)
        assert cut.cutoff == 0.55 and bool((cut.val <= 0.55).all())
        assert torch.equal(cut.within(0.5)[1], got.within(0.5)[1])


@pytest.mark.parametrize("impl", [i for i in IMPLEMENTATIONS if not i.interpreted], ids=param_id)
def test_jaccard_from_neighbours_equals_jaccard_distance(impl):
    """The entry point of the stage (shared kNN lists, longer than k1) gives the whole op's result."""
    x = features("duplicates", False)
    rank = nearest_neighbours(x, 40, backend="reference")[1]
    whole = impl.jaccard(x, 20, 6, max_distance=0.6)
    from_lists = impl.jaccard_from_neighbours(x, rank, 20, 6, max_distance=0.6)
    assert torch.equal(from_lists.crow, whole.crow) and torch.equal(from_lists.col, whole.col)
    assert torch.equal(from_lists.val, whole.val) and from_lists.cutoff == 0.6


def test_jaccard_fast_fallback_type_is_sparse_and_exact():
    x = clustered_features(30, 8, groups=3, spread=0.4, seed=7)
    dense = jaccard_distance(x, 6, 2, backend="reference").to_dense()
    sparse = SparseDistance.from_dense(dense)
    assert torch.equal(sparse.to_dense(), dense)
    cut = sparse.truncated(0.5)
    assert cut.cutoff == 0.5 and bool((cut.val <= 0.5).all())
    crow, col = cut.within(0.4)
    assert int(crow[-1]) == int((dense <= 0.4).sum())


def test_jaccard_gpu_path_cutoff_and_chunks(monkeypatch, device):
    """Small memory budgets force many row chunks in every GPU stage; max_distance prunes."""
    x = features("duplicates", device.type == "cpu")
    k1, k2 = 20, 6
    rank = nearest_neighbours(x, k1, backend="reference")[1].to(device)
    x = x.to(device)
    whole = fast_cuda.jaccard_from_neighbours(x, rank, k1, k2, None)
    monkeypatch.setattr(jaccard_kernels, "TERM_BYTES", 48 * 500)
    monkeypatch.setattr(jaccard_kernels, "EXPANSION_BYTES", 16 * 21 * 11 * 5)
    monkeypatch.setattr(jaccard_kernels, "EXPANSION_ENTRIES", 500)
    chunked = fast_cuda.jaccard_from_neighbours(x, rank, k1, k2, None)
    assert torch.equal(chunked.crow, whole.crow) and torch.equal(chunked.col, whole.col)
    assert float((chunked.val - whole.val).abs().max()) <= 1e-6
    cut = fast_cuda.jaccard_from_neighbours(x, rank, k1, k2, 0.55)
    assert cut.cutoff == 0.55 and bool((cut.val <= 0.55).all())
    assert torch.equal(cut.within(0.5)[1], whole.within(0.5)[1])
    dense, kept = whole.to("cpu").to_dense(), cut.to("cpu").to_dense()
    assert not bool(((dense - 0.55).abs() < 1e-5).any())
    torch.testing.assert_close(kept, torch.where(dense <= 0.55, dense, torch.ones_like(dense)),
                               atol=1e-6, rtol=0)


def test_jaccard_kernels_return_plain_csr(device):
    """kernels/jaccard.py hands back tensors (the package wraps them); a tiny
    memory budget still gives the same pairs."""
    x = features("tiny", True).to(device)
    rank = nearest_neighbours(x, 30, backend="reference")[1]
    big = jaccard_kernels.jaccard_from_neighbours_cuda(x, rank, 30, 6, None, 2 ** 40)
    small = jaccard_kernels.jaccard_from_neighbours_cuda(x, rank, 30, 6, None, 4 * 4 * 9)
    assert all(isinstance(t, torch.Tensor) for t in big) and len(big) == 3
    crow, col, val = big
    assert crow.dtype == col.dtype == torch.int64 and val.dtype == torch.float32
    assert torch.equal(crow, small[0]) and torch.equal(col, small[1])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=param_id)
def test_copies_beyond_k1_have_empty_rows(impl):
    """Ten exact copies, k1 = 4, no query expansion: every copy's list is the first
    four copies (ties by index), so copies 9..14 are in no list at all, not even
    their own: R, E and V' are empty, and their distances, to themselves too, are 1."""
    x = clustered_features(30, 8, groups=3, spread=0.4, seed=5)
    x[5:15] = x[5]
    dist = impl.jaccard(x, 4, 1)
    dense = dist.to_dense()
    assert bool((dense[9:15] == 1).all()) and bool((dense[:, 9:15] == 1).all())
    assert bool((dense[5:9, 5:9] < 1e-5).all())
    np.testing.assert_allclose(dense.numpy(), brute_jaccard(x, 4, 1), atol=1e-5, rtol=0)
