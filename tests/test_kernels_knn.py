"""kernels/knn.py (fused fp16 filter + fp64 re-rank) against the fp64 brute-force top-k.

Runs on CPU tensors through the Triton interpreter (PPLR_TEST_GPU=1: on CUDA),
with small tiles so that small inputs stream many column tiles, compact their
candidate lists several times and, for near-equidistant data, overflow them.
"""
import pytest
import torch

from cluster_oracles import clustered_features, lattice_features, normalize
from pplr_fast.cluster import nearest_neighbours
from pplr_fast.cluster import common
from pplr_fast.kernels import knn


def topk(x, k):
    """knn_topk with the error bounds the GPU path computes for it."""
    x = x.float().contiguous()
    return knn.knn_topk(x, k, common.rounding_error_bounds(x, x.half(), knn.ACCUMULATE_ROUNDOFF))

def fp16_scrambled(m: int = 40, others: int = 30, dim: int = 32) -> torch.Tensor:
    """Row 0 and m rows at similarities 0.9 + j 1e-6 to it, in a shuffled order.

    Rounding to fp16 moves each of those similarities by ~1e-4 (every row has
    many non-zero components), scrambling their fp64 order: only a filter that
    widens the k-th fp16 score by the error bound keeps the exact neighbours
    of row 0.
    """
    g = torch.Generator().manual_seed(11)
    q = normalize(torch.randn(1, dim, generator=g, dtype=torch.float64))
    u = torch.randn(m, dim, generator=g, dtype=torch.float64)
    u = normalize(u - (u @ q.T) * q)                     # unit vectors orthogonal to q
    cos = 0.9 + 1e-6 * torch.randperm(m, generator=g).double()
    near = cos[:, None] * q + torch.sqrt(1 - cos ** 2)[:, None] * u
    rest = torch.randn(others, dim, generator=g, dtype=torch.float64)
    return normalize(torch.cat([q, near, rest]).float())


def near_equidistant(n: int = 200) -> torch.Tensor:
    """Every pair within 1e-9 of the same distance; the last rows copy the first ones.

    The copies (the true nearest neighbours of rows 0-9) come after the
    columns that fill up an overflowing list.
    """
    g = torch.Generator().manual_seed(6)
    x = normalize(torch.ones(n, 16) + 1e-5 * torch.randn(n, 16, generator=g))
    x[n - 10:] = x[:10]
    return x


FEATURES = {
    "fp16-scrambled": fp16_scrambled,
    "random": lambda: normalize(torch.randn(130, 24, generator=torch.Generator().manual_seed(3))),
    "clustered": lambda: clustered_features(150, 24, groups=15, spread=0.6, seed=0),
    "duplicates": lambda: clustered_features(120, 16, groups=8, spread=0.4, seed=1,
                                             duplicates=20),
    "lattice-ties": lambda: lattice_features(80, 8, seed=2),
    "tiny": lambda: clustered_features(9, 8, groups=2, spread=0.3, seed=4),
    "single": lambda: normalize(torch.ones(1, 4)),
    "near-equidistant": lambda: near_equidistant(),
    "all-equal": lambda: normalize(torch.ones(150, 8)),
}


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles small enough that 100-row inputs take many tiles and compactions.

    A coarse bisection (theta further below the k-th score) keeps the interpreter
    fast; the filter is exact for any number of steps.
    """
    monkeypatch.setattr(knn, "BLOCK_M", 16)
    monkeypatch.setattr(knn, "BLOCK_N", 32)
    monkeypatch.setattr(knn, "COMPACT_CHUNK", 32)
    monkeypatch.setattr(knn, "BISECT_STEPS", 6)


@pytest.fixture
def exact_rows_calls(monkeypatch):
    """How many rows ``knn_topk`` handed to the overflow path."""
    seen = []
    original = knn.exact_rows_topk

    def spy(x, rows, k):
        seen.append(rows.numel())
        return original(x, rows, k)

    monkeypatch.setattr(knn, "exact_rows_topk", spy)
    return seen


def assert_equals_brute_force(x, k, dist, index):
    d_ref, i_ref = nearest_neighbours(x, k, backend="reference")
    assert dist.dtype == torch.float64 and index.dtype == torch.int64
    assert dist.shape == index.shape == (x.shape[0], min(k, x.shape[0]))
    assert torch.equal(index.cpu(), i_ref), "neighbour lists differ from the fp64 brute force"
    torch.testing.assert_close(dist.cpu(), d_ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["random", "clustered", "duplicates", "lattice-ties", "tiny",
                                  "single", "fp16-scrambled"])
def test_knn_topk_equals_brute_force(name, small_tiles, exact_rows_calls, device):
    x = FEATURES[name]()
    for k in (1, 7, 31):
        dist, index = topk(x.to(device), k)
        assert_equals_brute_force(x, k, dist, index)
    assert sum(exact_rows_calls) == 0, "well-separated data must not overflow the lists"


def test_knn_topk_keeps_neighbours_that_fp16_ranks_below_the_kth(small_tiles, monkeypatch,
                                                                  device):
    """theta bisected down to the k-th fp16 score itself: only the error bound keeps them."""
    monkeypatch.setattr(knn, "BISECT_STEPS", 40)
    x = fp16_scrambled()
    for k in (2, 7, 20):
        dist, index = topk(x.to(device), k)
        assert_equals_brute_force(x, k, dist, index)


@pytest.mark.parametrize("name", ["near-equidistant", "all-equal"])
def test_knn_topk_overflowing_rows_are_exact(name, small_tiles, exact_rows_calls, monkeypatch,
                                             device):
    """Every column within the error bound of the k-th score: the lists overflow."""
    monkeypatch.setattr(knn, "EXACT_ROWS", 24)             # several groups of flagged rows
    monkeypatch.setattr(knn, "EXACT_BLOCK_ENTRIES", 24 * 20)    # several column blocks each
    x = FEATURES[name]()
    for k in (3, 10):
        dist, index = topk(x.to(device), k)
        assert_equals_brute_force(x, k, dist, index)
    assert sum(exact_rows_calls) >= x.shape[0], "the overflow path must have run"


def test_knn_topk_several_launches_and_the_k_loop(small_tiles, monkeypatch, device):
    """Lists for 32 rows a launch (memory-bound launches), and D above the resident row tile."""
    monkeypatch.setattr(knn, "LIST_BYTES", 32 * 8 * knn.list_capacity(7))
    monkeypatch.setattr(knn, "MAX_BLOCK_K", 16)
    x = clustered_features(100, 40, groups=10, spread=0.6, seed=8)
    assert knn.rows_per_launch(100, knn.list_capacity(7), torch.device("cpu")) == 32
    dist, index = topk(x.to(device), 7)
    assert_equals_brute_force(x, 7, dist, index)


def test_exact_rows_topk_ties_across_column_blocks(monkeypatch, device):
    """The overflow path alone: duplicates tied at the k-th distance in several column blocks."""
    x = clustered_features(90, 8, groups=3, spread=0.2, seed=9, duplicates=40)
    monkeypatch.setattr(knn, "EXACT_BLOCK_ENTRIES", 5 * 13)
    rows = torch.tensor([0, 5, 17, 44, 89])
    _, i_ref = nearest_neighbours(x, 12, backend="reference")
    for k in (1, 12):
        dist, index = knn.exact_rows_topk(x.to(device), rows.to(device), k)
        assert torch.equal(index.cpu(), i_ref[rows, :k])
    d_ref = nearest_neighbours(x, 12, backend="reference")[0][rows]
    torch.testing.assert_close(dist.cpu(), d_ref, atol=1e-12, rtol=0)


def test_error_bounds_cover_fp16_scores():
    """|fp32 score of the fp16 copy - exact similarity| <= c_i, on wide rows too."""
    x = clustered_features(200, 512, groups=20, spread=0.8, seed=5)
    low = x.half()
    c = common.rounding_error_bounds(x, low, knn.ACCUMULATE_ROUNDOFF)
    scores = low.float() @ low.float().T
    exact = x.double() @ x.double().T
    slack = (c[:, None] - (scores.double() - exact).abs())
    assert bool((slack >= 0).all())
    assert float(c.max()) < 5e-3, "the bound must stay tight enough to filter"


def test_knn_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        knn.knn_topk(torch.empty(0, 4), 3, torch.empty(0, dtype=torch.float64))
    with pytest.raises(ValueError, match="k >= 1"):
        knn.knn_topk(normalize(torch.ones(3, 4)), 0, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="one error bound per row"):
        knn.knn_topk(normalize(torch.ones(3, 4)), 2, torch.zeros(2, dtype=torch.float64))
