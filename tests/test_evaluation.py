"""evaluate_ranking against a per-query Python reference and scikit-learn; pairwise_distance."""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from pplr_fast.evaluation import evaluate_ranking, evaluate_split, pairwise_distance


def reference_metrics(distmat, query_pids, gallery_pids, query_cams, gallery_cams,
                      ranks=(1, 5, 10)):
    """One query at a time: drop same-pid same-camera entries, then rank the rest."""
    aps, inps, first_hits = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = gallery_pids[order] == query_pids[i]
        kept = ~(same_pid & (gallery_cams[order] == query_cams[i]))
        hit_ranks = np.flatnonzero(same_pid[kept]) + 1  # 1-based ranks of the true matches
        if len(hit_ranks) == 0:
            continue
        aps.append(np.mean([(n + 1) / rank for n, rank in enumerate(hit_ranks)]))
        inps.append(len(hit_ranks) / hit_ranks[-1])
        first_hits.append(hit_ranks[0])
    results = {"mAP": np.mean(aps), "mINP": np.mean(inps), "num_valid_queries": len(aps)}
    for k in ranks:
        results[f"rank{k}"] = np.mean(np.array(first_hits) <= k)
    return results


def random_problem(rng, num_queries=60, num_gallery=300, num_pids=25, num_cams=4,
                   integer_distances=True):
    """Random ids/cams with ties, distractors (pid 0) and queries without matches."""
    query_pids = rng.integers(1, num_pids + 5, num_queries)  # pids > num_pids: no gallery match
    gallery_pids = rng.integers(0, num_pids + 1, num_gallery)  # pid 0: distractors
    query_cams = rng.integers(0, num_cams, num_queries)
    gallery_cams = rng.integers(0, num_cams, num_gallery)
    if integer_distances:
        distmat = rng.integers(0, 8, (num_queries, num_gallery)).astype(np.float32)
    else:
        distmat = rng.random((num_queries, num_gallery)).astype(np.float32)
    return distmat, query_pids, gallery_pids, query_cams, gallery_cams


def assert_metrics_equal(actual, expected):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_with_ties(seed):
    problem = random_problem(np.random.default_rng(seed))
    expected = reference_metrics(*problem)
    assert 0 < expected["num_valid_queries"] < 60
    assert_metrics_equal(evaluate_ranking(torch.from_numpy(problem[0]), *problem[1:]), expected)


def test_chunking_does_not_change_results(rng):
    distmat, *ids = random_problem(rng)
    expected = evaluate_ranking(distmat, *ids, ranks=(1, 3, 20))
    for chunk_size in (1, 7, 1000):
        assert evaluate_ranking(distmat, *ids, ranks=(1, 3, 20), chunk_size=chunk_size) == expected
    assert {"rank1", "rank3", "rank20"} <= set(expected)


def test_average_precision_matches_sklearn(rng):
    distmat, query_pids, gallery_pids, query_cams, gallery_cams = random_problem(
        rng, integer_distances=False)  # no ties: sklearn groups tied scores
    aps = []
    for i in range(len(query_pids)):
        kept = ~((gallery_pids == query_pids[i]) & (gallery_cams == query_cams[i]))
        matches = gallery_pids[kept] == query_pids[i]
        if matches.any():
            aps.append(average_precision_score(matches, -distmat[i][kept]))
    results = evaluate_ranking(distmat, query_pids, gallery_pids, query_cams, gallery_cams)
    assert results["num_valid_queries"] == len(aps)
    assert results["mAP"] == pytest.approx(np.mean(aps), abs=1e-9)


def test_hand_computed_query():
    # Ranked gallery: other pid, true match, same-camera match (ignored), distractor, true match.
    distmat = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    gallery_pids = [9, 7, 7, 0, 7]
    gallery_cams = [1, 2, 1, 3, 3]
    results = evaluate_ranking(distmat, [7], gallery_pids, [1], gallery_cams, ranks=(1, 2, 5))
    # Kept ranks of the true matches: 2 and 4.
    assert results["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert results["rank1"] == 0 and results["rank2"] == 1 and results["rank5"] == 1
    assert results["mINP"] == pytest.approx(2 / 4)
    assert results["num_valid_queries"] == 1


def test_ties_are_ranked_by_gallery_index():
    distmat = np.zeros((1, 3), dtype=np.float32)
    results = evaluate_ranking(distmat, [5], [1, 5, 2], [0], [1, 1, 1], ranks=(1, 2))
    assert results["rank1"] == 0 and results["rank2"] == 1
    assert results["mAP"] == pytest.approx(0.5)


def test_perfect_ranking():
    gallery_pids = np.repeat(np.arange(1, 11), 3)
    gallery_cams = np.tile([1, 2, 3], 10)
    query_pids, query_cams = np.arange(1, 11), np.zeros(10, dtype=np.int64)
    distmat = (gallery_pids[None, :] != query_pids[:, None]).astype(np.float32)
    results = evaluate_ranking(distmat, query_pids, gallery_pids, query_cams, gallery_cams)
    assert results == {"mAP": 1.0, "rank1": 1.0, "rank5": 1.0, "rank10": 1.0, "mINP": 1.0,
                       "num_valid_queries": 10}


def test_errors():
    distmat = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_ranking(distmat, [1, 2], [3, 4, 5], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="no query has a true match"):  # only same-camera matches
        evaluate_ranking(distmat, [1, 2], [1, 2, 2], [0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="gallery_pids has 2 entries"):
        evaluate_ranking(distmat, [1, 2], [1, 2], [0, 0], [1, 1, 1])
    distmat[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(distmat, [1, 2], [1, 2, 2], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        evaluate_ranking(np.ones((2, 0)), [1, 2], [], [0, 0], [])


def test_pairwise_distance_is_euclidean_on_normalised_features():
    torch.manual_seed(0)
    query, gallery = torch.randn(13, 16), torch.randn(29, 16) * 3
    expected = torch.cdist(torch.nn.functional.normalize(query, dim=1),
                           torch.nn.functional.normalize(gallery, dim=1))
    torch.testing.assert_close(pairwise_distance(query, gallery), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pairwise_distance(query, gallery, chunk_size=4),
                               pairwise_distance(query, gallery))
    assert torch.all(pairwise_distance(query, query).diagonal() < 1e-3)


def test_pairwise_distance_rejects_nan_and_bad_shapes():
    query, gallery = torch.randn(4, 8), torch.randn(5, 8)
    query[2, 3] = float("nan")
    with pytest.raises(ValueError, match="query_features contain NaN or inf in 1 of 4 rows"):
        pairwise_distance(query, gallery)
    with pytest.raises(ValueError, match="differ in dimension"):
        pairwise_distance(torch.randn(4, 8), torch.randn(5, 7))


def test_end_to_end_from_features(rng):
    # Identity prototypes plus noise: distances from pairwise_distance rank well.
    prototypes = rng.standard_normal((20, 32))
    gallery_pids = np.repeat(np.arange(20), 5)
    query_pids = np.arange(20)
    gallery = torch.tensor(prototypes[gallery_pids] + 0.1 * rng.standard_normal((100, 32)))
    query = torch.tensor(prototypes[query_pids] + 0.1 * rng.standard_normal((20, 32)))
    distmat = pairwise_distance(query, gallery)
    assert distmat.dtype == torch.float64
    results = evaluate_ranking(distmat, query_pids, gallery_pids, np.zeros(20), np.ones(100))
    assert results["mAP"] > 0.99 and results["rank1"] == 1.0


class _MeanColourModel(torch.nn.Module):
    """Features = each image's mean RGB colour (undoing the ImageNet normalisation)."""

    def extract(self, images):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        colour = (images * std + mean).mean((2, 3))
        return colour, colour[:, :, None]


def test_evaluate_split_reads_pid_then_camera_of_each_sample(tmp_path):
    def image(name, rgb):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (4, 8), rgb).save(path)
        return str(path)
    query = [(image("q", (255, 0, 0)), 1, 0)]
    gallery = [(image("a", (255, 0, 0)), 1, 0),    # same pid, same camera: ignored
               (image("b", (230, 0, 40)), 2, 1),   # nearest kept entry, another pid
               (image("c", (180, 0, 90)), 1, 2)]   # the true match, second
    results = evaluate_split(_MeanColourModel(), query, gallery, height=8, width=4, batch_size=2,
                             workers=0, device=torch.device("cpu"), progress=False)
    assert results == {"mAP": 0.5, "rank1": 0.0, "rank5": 1.0, "rank10": 1.0, "mINP": 0.5,
                       "num_valid_queries": 1}
