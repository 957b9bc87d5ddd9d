"""Cross-agreement scores: every implementation against Python sets (docs/method.md §2.3).

The scores are ratios of small integers divided with IEEE rounding, so every
implementation must equal the reference bit for bit.
"""
import functools

import numpy as np
import pytest
import torch

from cluster_cases import (CROSS_AGREEMENT_FEATURES, CROSS_AGREEMENT_K, FEATURES,
                           IMPLEMENTATIONS, INDEPENDENT_PART_CASES, independent_parts,
                           param_id, part_features, set_knn_mode, with_knn_modes)
from cluster_oracles import brute_cross_agreement, clustered_features
from pplr_fast.cluster import cross_agreement, cross_agreement_from_neighbours, nearest_neighbours

pytestmark = pytest.mark.no_fallback

INTERPRETED_ROWS = 60       # the Triton interpreter is slow: the first rows only


def spaces(name: str, interpreted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    case = FEATURES[name]
    x_g = (case.small if interpreted else case.full)()
    if interpreted:
        x_g = x_g[:INTERPRETED_ROWS]
    return x_g, part_features(x_g, name)


@functools.lru_cache(maxsize=None)
def expected(name: str, interpreted: bool, k: int) -> tuple[np.ndarray, torch.Tensor]:
    x_g, x_p = spaces(name, interpreted)
    return brute_cross_agreement(x_g, x_p, k), cross_agreement(x_g, x_p, k, backend="reference")


def check_scores(got: torch.Tensor, oracle: np.ndarray, reference: torch.Tensor) -> None:
    assert got.shape == oracle.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), oracle, atol=1e-7, rtol=0)
    assert torch.equal(got, reference)


@pytest.mark.parametrize("name", CROSS_AGREEMENT_FEATURES)
@pytest.mark.parametrize("impl,knn_mode", with_knn_modes(gpu_modes=False), ids=param_id)
def test_cross_agreement_matches_sets(impl, knn_mode, name, monkeypatch):
    set_knn_mode(monkeypatch, impl, knn_mode)
    x_g, x_p = spaces(name, impl.interpreted)
    for k in CROSS_AGREEMENT_K:
        check_scores(impl.cross_agreement(x_g, x_p, k), *expected(name, impl.interpreted, k))


@pytest.mark.parametrize("n,k,dup", INDEPENDENT_PART_CASES)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=param_id)
def test_cross_agreement_of_independent_spaces(impl, n, k, dup):
    x_g, x_p = independent_parts(n, dup)
    reference = cross_agreement(x_g, x_p, k, backend="reference")
    check_scores(impl.cross_agreement(x_g, x_p, k), brute_cross_agreement(x_g, x_p, k), reference)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=param_id)
def test_cross_agreement_from_longer_lists(impl):
    """Lists longer than k + 1 (the stage shares its k1-long global list) must not matter."""
    x_g, x_p = spaces("duplicates", True)
    n = x_g.shape[0]
    for k, extra in ((1, 0), (5, 3), (20, 9)):
        size = min(k + 1 + extra, n)
        rank_g = nearest_neighbours(x_g, size, backend="reference")[1]
        ranks_p = [nearest_neighbours(x_p[:, :, p].contiguous(), size, backend="reference")[1]
                   for p in range(3)]
        got = impl.cross_agreement_from_neighbours(rank_g, ranks_p, k)
        check_scores(got, brute_cross_agreement(x_g, x_p, k),
                     cross_agreement(x_g, x_p, k, backend="reference"))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=param_id)
def test_cross_agreement_of_identical_spaces_is_one(impl):
    x = clustered_features(50, 8, groups=4, spread=0.5, seed=3)
    assert torch.all(impl.cross_agreement(x, torch.stack([x, x], 2), 10) == 1)


def test_cross_agreement_from_neighbours_is_the_public_op():
    x_g, x_p = spaces("clustered", False)
    rank_g = nearest_neighbours(x_g, 31, backend="fast")[1]
    ranks_p = [nearest_neighbours(x_p[:, :, p], 21, backend="fast")[1] for p in range(3)]
    for backend in ("reference", "fast"):
        assert torch.equal(cross_agreement_from_neighbours(rank_g, ranks_p, 20, backend),
                           cross_agreement(x_g, x_p, 20, backend))
