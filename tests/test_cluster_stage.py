"""The whole clustering stage: both backends give the same pseudo-labels and scores."""
import warnings

import numpy as np
import pytest
import torch

from cluster_oracles import (brute_cross_agreement, brute_dbscan, brute_jaccard, clustered_features,
                             normalize)
from pplr_fast.cluster import ClusterInputError, dbscan, jaccard_distance
from pplr_fast.cluster.common import neighbours_without_self
from pplr_fast.cluster.stage import STAGES, run_cluster_stage


def part_features(x_g: torch.Tensor, parts: int, noise: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.stack([normalize(x_g + noise * torch.randn(x_g.shape, generator=g))
                        for _ in range(parts)], dim=2)


@pytest.mark.parametrize("n,groups,dup", [(240, 16, 0), (150, 8, 12), (20, 2, 0)])
def test_stage_backends_agree(n, groups, dup):
    x_g = clustered_features(n, 24, groups=groups, spread=0.5, seed=n, duplicates=dup)
    x_p = part_features(x_g, 3, 0.4)
    eps, k1 = 0.6, min(30, n)                  # k1 > N is refused
    dist = jaccard_distance(x_g, k1, 6, backend="reference").to_dense()
    assert not bool(((dist - eps).abs() < 1e-5).any()), "pick another eps: a pair sits on it"
    ref = run_cluster_stage(x_g, x_p, eps=eps, k1=k1, backend="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)     # no silent fallback
        fast = run_cluster_stage(x_g, x_p, eps=eps, k1=k1, backend="fast")
    assert fast.backend == "fast" and ref.backend == "reference"
    assert torch.equal(fast.labels, ref.labels)
    assert torch.equal(fast.scores, ref.scores)
    assert torch.equal(ref.labels, dbscan(dist, eps, 4, backend="reference"))
    for timings in (ref.timings, fast.timings):
        assert set(STAGES) | {"total"} == set(timings)
        assert all(v >= 0 for v in timings.values())
    assert ref.num_clusters >= 1


def test_stage_all_noise_gives_no_cluster():
    x_g = normalize(torch.randn(40, 64, generator=torch.Generator().manual_seed(0)))
    res = run_cluster_stage(x_g, part_features(x_g, 2, 1.0), eps=0.05, backend="fast")
    assert res.num_clusters == 0 and res.num_outliers == 40


def test_neighbours_without_self_handles_duplicates_ahead_of_self():
    rank = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]])   # row 2 sorts behind two copies
    assert neighbours_without_self(rank, 2).tolist() == [[1, 2], [0, 2], [0, 1]]


def test_stage_rejects_bad_eps():
    x_g = normalize(torch.randn(10, 4))
    with pytest.raises(ClusterInputError, match=r"eps must lie in \(0, 1\)"):
        run_cluster_stage(x_g, part_features(x_g, 1, 0.1), eps=1.5, k1=10)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_stage_passes_every_setting_on(backend):
    """Non-default k1, k2, k (k + 1 > k1), min_samples: labels and scores are the
    oracles' for those settings, which differ from the defaults' on this case."""
    x_g = clustered_features(60, 16, groups=10, spread=0.9, seed=21)
    x_p = part_features(x_g, 2, 0.5)
    k1, k2, k, min_samples = 8, 3, 12, 3
    dist = brute_jaccard(x_g, k1, k2)
    eps = 0.55
    assert not bool((np.abs(dist - eps) < 1e-4).any()), "pick another eps: a pair sits on it"
    labels = brute_dbscan(dist, eps, min_samples)
    scores = brute_cross_agreement(x_g, x_p, k)
    # the case tells each setting from its default
    assert not np.array_equal(labels, brute_dbscan(dist, eps, 4))
    assert not np.array_equal(labels, brute_dbscan(brute_jaccard(x_g, k1, 6), eps, min_samples))
    assert not np.allclose(scores, brute_cross_agreement(x_g, x_p, 20))
    res = run_cluster_stage(x_g, x_p, eps=eps, k1=k1, k2=k2, k=k, min_samples=min_samples,
                            backend=backend)
    np.testing.assert_array_equal(res.labels.numpy(), labels)
    np.testing.assert_allclose(res.scores.numpy(), scores, atol=1e-7, rtol=0)


@pytest.mark.parametrize("eps", [0.0, 1.0])
def test_stage_rejects_eps_at_the_ends(eps):
    """eps = 1 would join every pair whose neighbourhoods never meet (d = 1)."""
    x_g = normalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ClusterInputError, match=r"eps must lie in \(0, 1\)"):
        run_cluster_stage(x_g, part_features(x_g, 1, 0.1), eps=eps, k1=10)
