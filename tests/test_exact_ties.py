"""Exact copies of an image tie exactly, in every backend, on every CPU.

The README promises that duplicated images are ordered by index. A BLAS GEMM
does not give two equal rows equal products (the kernel that computes an
entry depends on where it falls in the blocking, and the blocking on the
library, the instruction set it chose for this CPU and the thread count), so
the promise must hold by construction: the C++ and Triton distances add each
pair's products in an order fixed by D alone, and the reference multiplies
each distinct row once (``pplr_fast.utils.distinct_rows``). The oracles add
products one dimension at a time, without a BLAS (``cluster_oracles``).

The shapes below are ones where a plain fp64 GEMM (MKL, OpenBLAS) gives exact
copies different last bits on the CPUs this was written on, so the tests fail
there when any path goes back to a plain GEMM; ``test_ties_hold_under_other_
blas_kernels`` reruns this module with the BLAS pushed onto other kernels and
thread counts, so a blocking-dependent tie fails on any machine, not only on
the one that has it.
"""
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster_cases import (IMPLEMENTATIONS, param_id,
                           set_knn_mode, with_knn_modes)
from cluster_oracles import brute_cross_agreement, brute_jaccard, ranked_lists, sq_distances
from pplr_fast.cluster import common
from pplr_fast.evaluation import pairwise_distance
from pplr_fast.rerank import re_rank_features
from pplr_fast.utils.distinct_rows import DistinctRows, tied_matmul

pytestmark = pytest.mark.no_fallback

TESTS = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def _copies(n: int, dim: int, seed: int, groups: int, copies_per_group: int) -> torch.Tensor:
    """Unit rows, ``groups`` of which are copied ``copies_per_group`` times to rows spread
    over the whole matrix (across GEMM tiles and thread blocks)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    slots = torch.randperm(n, generator=g)[:groups * (copies_per_group + 1)]
    for grp in slots.view(groups, copies_per_group + 1):
        x[grp[1:]] = x[grp[0]].clone()
    return x


def copies(n: int, dim: int, seed: int, groups: int = 12, copies_per_group: int = 3
           ) -> torch.Tensor:
    """Unit rows with exact copies (a fresh tensor each call)."""
    return _copies(n, dim, seed, groups, copies_per_group).clone()


@functools.lru_cache(maxsize=None)
def oracle_lists(n: int, dim: int, seed: int) -> list[list[int]]:
    """Every row's rows by (oracle distance, index)."""
    return ranked_lists(copies(n, dim, seed).numpy())


# (n, dim, seed): sizes that straddle GEMM tile and block edges
SHAPES = [(83, 33, 0), (257, 100, 1), (611, 515, 2)]
INTERPRETED_SHAPES = [(83, 33, 0), (130, 100, 1)]


def shapes(impl):
    return INTERPRETED_SHAPES if impl.interpreted else SHAPES


def copy_groups(x: torch.Tensor) -> list[list[int]]:
    _, inverse = np.unique(x.numpy(), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return [list(np.flatnonzero(inverse == u)) for u in np.unique(inverse)
            if (inverse == u).sum() > 1]


# ---------------------------------------------------------------- the mechanism
def test_tied_matmul_gives_copies_equal_bits():
    for n, dim, seed in SHAPES:
        x = copies(n, dim, seed).double()
        product = tied_matmul(x, x)
        groups = copy_groups(x.float())
        assert groups
        for grp in groups:
            assert all(torch.equal(product[grp[0]], product[i]) for i in grp[1:])
            assert all(torch.equal(product[:, grp[0]], product[:, i]) for i in grp[1:])
        torch.testing.assert_close(product, x @ x.T, atol=1e-14, rtol=0)


def test_distinct_rows_finds_exactly_the_equal_rows():
    x = torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.0, 3.0], [1.0, 2.0], [-0.0, 3.0], [3.0, 0.0]])
    rows = DistinctRows.of(x)           # rows 1 and 5 share rows 0 and 2's bit sums: checked
    assert rows.first.tolist() == [0, 1, 2, 5]
    assert rows.inverse.tolist() == [0, 1, 2, 0, 2, 3]
    assert torch.equal(x[rows.first][rows.inverse], x)
    assert DistinctRows.of(torch.randn(50, 4)).all_distinct
    assert DistinctRows.of(torch.randn(1, 4)).all_distinct
    assert DistinctRows.of(torch.ones(3, 2).half()).first.tolist() == [0]


def test_pairwise_distances_of_copies_are_bit_equal():
    for n, dim, seed in SHAPES:
        x = copies(n, dim, seed)
        d = common.pairwise_sq_distance(x, x)
        for grp in copy_groups(x):
            assert all(torch.equal(d[grp[0]], d[i]) for i in grp[1:])
            assert all(torch.equal(d[:, grp[0]], d[:, i]) for i in grp[1:])


def test_the_oracle_distances_tie_copies():
    x = copies(257, 100, 1).numpy()
    d = sq_distances(x)
    for grp in copy_groups(torch.from_numpy(x)):
        assert all(np.array_equal(d[grp[0]], d[i]) for i in grp[1:])
        assert all(np.array_equal(d[:, grp[0]], d[:, i]) for i in grp[1:])


# ---------------------------------------------------------------- every op, every backend
@pytest.mark.parametrize("impl,knn_mode", with_knn_modes(), ids=param_id)
def test_knn_orders_copies_by_index(impl, knn_mode, monkeypatch):
    set_knn_mode(monkeypatch, impl, knn_mode)       # "overflow": the exact fallback of every row
    for n, dim, seed in shapes(impl):
        x = copies(n, dim, seed)
        k = min(n, 40)
        dist, index = impl.knn(x, k)
        assert index.tolist() == [row[:k] for row in oracle_lists(n, dim, seed)], (n, dim)
        for grp in copy_groups(x):                    # copies list the same neighbours,
            assert all(index[i].tolist() == index[grp[0]].tolist() for i in grp[1:])
            first = index[grp[0]].tolist()           # and sit side by side, by index
            assert first[:len(grp)] == grp
            assert all(torch.equal(dist[i], dist[grp[0]]) for i in grp[1:])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=param_id)
def test_cross_agreement_of_copies(impl):
    n, dim, seed = shapes(impl)[0]
    x_g = copies(n, dim, seed)
    x_p = torch.stack([copies(n, dim, seed + 10 * p + 1) for p in range(3)], dim=2)
    x_p[:, :, 0] = x_g                          # part 0 shares the global copies
    size = min(21, n)
    rank_g = impl.knn(x_g, size)[1]
    ranks_p = [impl.knn(x_p[:, :, p].contiguous(), size)[1] for p in range(3)]
    got = impl.cross_agreement_from_neighbours(rank_g, ranks_p, 20)
    np.testing.assert_allclose(got.numpy(), brute_cross_agreement(x_g, x_p, 20), atol=1e-7, rtol=0)
    assert bool((got[:, 0] == 1).all())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=param_id)
def test_jaccard_of_copies(impl):
    n, dim, seed = shapes(impl)[0]
    x = copies(n, dim, seed)
    got = impl.jaccard(x, 20, 6)
    got = got if isinstance(got, torch.Tensor) else got.to_dense()
    np.testing.assert_allclose(got.numpy(), brute_jaccard(x, 20, 6), atol=1e-5, rtol=0)


def test_reference_knn_of_rows_ties_copies_across_blocks(monkeypatch):
    """The row-block kNN (GPU ranks, any device) splits the rows into GEMM blocks."""
    from pplr_fast.cluster import row_blocks
    monkeypatch.setattr(row_blocks, "block_rows", lambda n, b: 37)
    x = copies(611, 515, 2)
    _, index = row_blocks.nearest_neighbours_of_rows(x, 25, 0, 611)
    assert index.tolist() == [row[:25] for row in oracle_lists(611, 515, 2)]


# ---------------------------------------------------------------- re-ranking and evaluation
# (n, dim, seed, queries), float32 and float64 features (float64 stays float64 there)
QUERY_GALLERY = [(83, 33, 0, 20), (257, 100, 1, 60), (1000, 256, 3, 200)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,dim,seed,q", QUERY_GALLERY)
def test_re_rank_features_ties_gallery_copies(n, dim, seed, q, dtype):
    x = copies(n, dim, seed).to(dtype)
    got = torch.as_tensor(re_rank_features(x[:q], x[q:]))
    for grp in copy_groups(x[q:].float()):
        assert all(torch.equal(got[:, grp[0]], got[:, i]) for i in grp[1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,dim,seed,q", QUERY_GALLERY)
def test_evaluation_distances_tie_gallery_copies(n, dim, seed, q, dtype):
    x = copies(n, dim, seed).to(dtype)
    d = pairwise_distance(x[:q], x[q:])
    for grp in copy_groups(x[q:].float()):
        assert all(torch.equal(d[:, grp[0]], d[:, i]) for i in grp[1:])


# ---------------------------------------------------------------- other BLAS kernels
# Each runs this module in a subprocess with the BLAS (torch's MKL/oneDNN, numpy's
# OpenBLAS) and torch's CPU kernels pushed elsewhere (the suite itself runs on 2
# threads and the machine's own kernels). Only settings every x86-64 CPU can run
# (SSE3-era OpenBLAS kernels, MKL capped at SSE4.2 or AVX2).
OTHER_KERNELS = {
    "openblas-prescott": {"OPENBLAS_CORETYPE": "Prescott"},
    "mkl-sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "mkl-avx2-compatible": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "MKL_CBWR": "COMPATIBLE"},
    "aten-default-1-thread": {"ATEN_CPU_CAPABILITY": "default", "PPLR_TEST_THREADS": "1",
                              "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}


@pytest.mark.parametrize("setting", sorted(OTHER_KERNELS))
def test_ties_hold_under_other_blas_kernels(setting):
    if os.environ.get("PPLR_TEST_OTHER_KERNELS"):
        pytest.skip("already running under another kernel setting")
    env = dict(os.environ, PPLR_TEST_OTHER_KERNELS=setting, **OTHER_KERNELS[setting])
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
         str(TESTS / "test_cluster_cross_agreement.py") + "::test_cross_agreement_from_longer_lists",
         "-k", "not other_blas and not gpu-path"],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"under {OTHER_KERNELS[setting]}:\n{done.stdout[-4000:]}"
