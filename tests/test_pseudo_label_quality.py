"""Pseudo-label quality numbers against scikit-learn, and ground truth never steering training."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from pplr_fast.data import make_synthetic_dataset, read_market_layout
from pplr_fast.pseudo_label_quality import (adjusted_rand_index, cluster_purity,
                                            normalized_mutual_info, pseudo_label_quality)
from pplr_fast.trainer import PPLRTrainer, TrainConfig
from pplr_fast.utils.checkpoint import load_checkpoint


def sklearn_purity(truth, pred):
    table = contingency_matrix(truth, pred)            # (classes, clusters)
    return table.max(axis=0).sum() / table.sum()


def labelings(rng):
    """Random, adversarial and degenerate pairs (truth, prediction)."""
    n = 60
    truth = rng.integers(0, 9, n)
    yield "random", truth, rng.integers(0, 6, n)
    yield "identical", truth, truth.copy()
    yield "renamed", truth, (truth * 7 + 100) % 1000          # same partition, other names
    yield "negative and sparse names", truth, rng.choice([-5, 3, 1000, 42], n)
    yield "one cluster", truth, np.zeros(n, int)
    yield "all singletons", truth, np.arange(n)
    yield "both one cluster", np.zeros(n, int), np.full(n, 3)
    yield "both singletons", np.arange(n), np.arange(n)[::-1].copy()
    yield "one item", np.array([4]), np.array([2])
    yield "two items", np.array([1, 1]), np.array([0, 1])
    yield "large", rng.integers(0, 700, 5000), rng.integers(0, 900, 5000)


@pytest.mark.parametrize("case", range(11))
def test_ari_nmi_purity_match_sklearn(rng, case):
    name, truth, pred = list(labelings(rng))[case]
    assert adjusted_rand_index(truth, pred) == pytest.approx(
        adjusted_rand_score(truth, pred), abs=1e-12), name
    assert normalized_mutual_info(truth, pred) == pytest.approx(
        normalized_mutual_info_score(truth, pred), abs=1e-12), name
    assert cluster_purity(truth, pred) == pytest.approx(sklearn_purity(truth, pred), abs=1e-15), name


def test_empty_and_mismatched_inputs():
    empty = np.array([], dtype=int)
    assert adjusted_rand_index(empty, empty) == adjusted_rand_score(empty, empty) == 1.0
    assert normalized_mutual_info(empty, empty) == normalized_mutual_info_score(empty, empty) == 1.0
    with pytest.raises(ValueError, match="same length"):
        adjusted_rand_index([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="empty labeling"):
        cluster_purity(empty, empty)


def test_quality_record_leaves_outliers_out(rng):
    n, parts = 80, 3
    truth = rng.integers(0, 10, n)
    labels = rng.integers(-1, 6, n)
    scores = rng.random((n, parts)).astype(np.float32)
    record = pseudo_label_quality(torch.from_numpy(labels), truth.tolist(), torch.from_numpy(scores))
    kept = labels >= 0
    assert record["kept_fraction"] == kept.mean()
    assert record["pseudo_ari"] == pytest.approx(adjusted_rand_score(truth[kept], labels[kept]), abs=1e-12)
    assert record["pseudo_nmi"] == pytest.approx(
        normalized_mutual_info_score(truth[kept], labels[kept]), abs=1e-12)
    assert record["pseudo_purity"] == pytest.approx(sklearn_purity(truth[kept], labels[kept]))
    np.testing.assert_allclose(record["agreement_per_part"], scores.astype(np.float64).mean(0))
    # outliers are not a cluster: relabelling them -1 -> -2 changes nothing, merging them does
    relabelled = np.where(kept, labels, -2)
    assert pseudo_label_quality(relabelled, truth)["pseudo_ari"] == record["pseudo_ari"]
    assert pseudo_label_quality(np.where(kept, labels, 99), truth)["kept_fraction"] == 1.0


def test_quality_record_without_clusters_and_bad_lengths():
    record = pseudo_label_quality(np.full(5, -1), np.arange(5), np.zeros((5, 2)))
    assert record["kept_fraction"] == 0.0
    assert all(math.isnan(record[k]) for k in ("pseudo_ari", "pseudo_nmi", "pseudo_purity"))
    with pytest.raises(ValueError, match="5 pseudo-labels but 4 true identities"):
        pseudo_label_quality(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match=r"scores must be \(N=5, N_p\)"):
        pseudo_label_quality(np.zeros(5), np.zeros(5), np.zeros((4, 2)))


# ----------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return read_market_layout(make_synthetic_dataset(str(root), num_train_ids=12, num_test_ids=8),
                              name="synthetic")


def train(dataset, logs, **overrides):
    cfg = dict(arch="resnet18", height=64, width=32, batch_size=16, num_instances=4, workers=0,
               epochs=2, iters=2, eval_step=2, k1=10, k2=3, k=5, eps=0.7, aals_epoch=1,
               logs_dir=str(logs), progress=False, backend="reference", seed=3)
    cfg.update(overrides)
    PPLRTrainer(TrainConfig(**cfg), dataset, torch.device("cpu")).fit()
    records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    return records, load_checkpoint(logs / "last.pth")


def test_training_ignores_the_true_identities(small_dataset, tmp_path):
    """Shuffling the training images' identities changes the quality numbers only."""
    ids = [pid for _, pid, _ in sorted(small_dataset.train)]
    shuffled_ids = np.random.default_rng(1).permutation(ids).tolist()
    assert shuffled_ids != ids
    by_path = dict(zip(sorted(p for p, _, _ in small_dataset.train), shuffled_ids))
    shuffled = dataclasses.replace(
        small_dataset, train=[(p, by_path[p], cam) for p, _, cam in small_dataset.train])
    records, state = train(small_dataset, tmp_path / "true")
    shuffled_records, shuffled_state = train(shuffled, tmp_path / "shuffled")
    assert torch.equal(state["pseudo_labels"], shuffled_state["pseudo_labels"])
    assert torch.equal(state["scores"], shuffled_state["scores"])
    training_keys = ("clusters", "outliers", "loss", "loss_pglr", "loss_part", "loss_triplet",
                     "mAP", "rank1", "kept_fraction", "agreement_per_part")
    for a, b in zip(records, shuffled_records, strict=True):
        assert {k: a.get(k) for k in training_keys} == {k: b.get(k) for k in training_keys}
    for state_key in ("global_bn.running_mean", "backbone.conv1.weight"):
        assert torch.equal(state["model"][state_key], shuffled_state["model"][state_key])
    epochs = [r for r in records if r["epoch"] >= 0]
    assert all(r["clusters"] > 0 and 0 < r["kept_fraction"] <= 1 for r in epochs)
    # ... while the quality numbers did read the (shuffled) identities
    assert all(-1 <= r["pseudo_ari"] <= 1 and 0 <= r["pseudo_nmi"] <= 1 for r in epochs)
    assert [r["pseudo_ari"] for r in epochs] != [
        r["pseudo_ari"] for r in shuffled_records if r["epoch"] >= 0]
    truth = np.array(ids)
    labels = state["pseudo_labels"].numpy()
    kept = labels >= 0
    assert epochs[-1]["pseudo_ari"] == pytest.approx(
        adjusted_rand_score(truth[kept], labels[kept]), abs=1e-12)
    assert len(epochs[-1]["agreement_per_part"]) == 3
    assert (tmp_path / "true" / "metrics.png").stat().st_size > 1000
