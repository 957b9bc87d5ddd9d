"""Every clustering outcome of an epoch is logged, recorded and survived (no traceback).

Each test forces the clustering result (the trainer's ``run_cluster_stage`` is
replaced by one that returns chosen labels), so the outcome does not depend
on what random data happens to produce.
"""
import json

import pytest
import torch

import pplr_fast.trainer as trainer_module
from pplr_fast.cluster.stage import ClusterStageResult
from pplr_fast.config import make_config
from pplr_fast.data import make_synthetic_dataset, read_market_layout
from pplr_fast.trainer import PPLRTrainer, cluster_means, plan_epoch
from pplr_fast.utils.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return read_market_layout(make_synthetic_dataset(str(root), num_train_ids=12, num_test_ids=8),
                              name="synthetic")


def tiny_config(logs, **overrides):
    base = dict(arch="resnet18", height=64, width=32, batch_size=16, num_instances=4, workers=0,
                epochs=2, iters=2, eval_step=1, k1=10, k2=3, k=5, aals_epoch=1,
                logs_dir=str(logs), progress=False, backend="reference", seed=3)
    base.update(overrides)
    return make_config("synthetic", **base)


def force_labels(monkeypatch, per_epoch):
    """Make the trainer's clustering stage return ``per_epoch[e]`` as the labels of epoch e."""
    calls = []

    def fake_stage(x_g, x_p, **kwargs):
        labels = torch.as_tensor(per_epoch[len(calls)], dtype=torch.int64)
        calls.append(labels)
        scores = torch.rand(x_g.shape[0], x_p.shape[2], generator=torch.Generator().manual_seed(0))
        return ClusterStageResult(labels, scores, {"total": 0.0}, "forced")

    monkeypatch.setattr(trainer_module, "run_cluster_stage", fake_stage)
    return calls


def true_ids(dataset):
    pids = [pid for _, pid, _ in sorted(dataset.train)]
    order = {p: i for i, p in enumerate(sorted(set(pids)))}
    return torch.tensor([order[p] for p in pids])


def run(dataset, logs, capsys, **overrides):
    PPLRTrainer(tiny_config(logs, **overrides), dataset, torch.device("cpu")).fit()
    records = [json.loads(x) for x in (logs / "metrics.jsonl").read_text().splitlines()]
    return records, capsys.readouterr().out


def assert_run_went_on(records, logs, epochs=2):
    """Every epoch is in the log and evaluated, and the last one was saved."""
    assert [r["epoch"] for r in records] == [-1, *range(epochs)]
    assert all("mAP" in r for r in records)
    assert load_checkpoint(logs / "last.pth")["epoch"] == epochs - 1


def test_no_clusters_skips_training_then_goes_on(small_dataset, tmp_path, monkeypatch, capsys):
    n = len(small_dataset.train)
    force_labels(monkeypatch, [[-1] * n, true_ids(small_dataset)])
    records, out = run(small_dataset, tmp_path / "run", capsys)
    assert_run_went_on(records, tmp_path / "run")
    assert records[1]["skipped"] == "no clusters" and "loss" not in records[1]
    assert "DBSCAN found no cluster" in out and "raise --eps" in out
    assert "loss" in records[2] and "events" not in records[2]


def test_one_cluster_skips_training_without_touching_the_weights(small_dataset, tmp_path,
                                                                   monkeypatch, capsys):
    n = len(small_dataset.train)
    one = [0] * n
    one[:5] = [-1] * 5
    force_labels(monkeypatch, [one, true_ids(small_dataset)])
    seen = {}
    original = PPLRTrainer._run_epoch

    def spy(self, epoch):
        before = [p.detach().clone() for p in self.model.backbone.parameters()]
        record = original(self, epoch)
        seen[epoch] = all(torch.equal(a, b) for a, b in zip(before, self.model.backbone.parameters()))
        return record

    monkeypatch.setattr(PPLRTrainer, "_run_epoch", spy)
    records, out = run(small_dataset, tmp_path / "run", capsys)
    assert_run_went_on(records, tmp_path / "run")
    assert records[1]["skipped"] == "one cluster" and "loss" not in records[1]
    assert "into one cluster" in out and "skipping training" in out
    assert seen == {0: True, 1: False}, "the skipped epoch leaves the weights alone, the next trains"


def test_nearly_all_outliers_trains_on_the_few_kept(small_dataset, tmp_path, monkeypatch, capsys):
    n = len(small_dataset.train)
    few = [-1] * n
    few[:8], few[8:16] = [0] * 8, [1] * 8              # 16 of 156 images kept
    force_labels(monkeypatch, [few, few])
    records, out = run(small_dataset, tmp_path / "run", capsys)
    assert_run_went_on(records, tmp_path / "run")
    assert records[1]["events"] == ["few kept"] and "skipped" not in records[1]
    assert records[1]["clusters"] == 2 and records[1]["outliers"] == n - 16
    assert torch.isfinite(torch.tensor(records[1]["loss"]))
    assert f"only 16 of {n} images" in out


def test_cluster_count_jump_is_reported_and_trained(small_dataset, tmp_path, monkeypatch, capsys):
    ids = true_ids(small_dataset)
    force_labels(monkeypatch, [ids, ids % 2])           # 12 clusters, then 2
    records, out = run(small_dataset, tmp_path / "run", capsys)
    assert_run_went_on(records, tmp_path / "run")
    assert "events" not in records[1]
    assert records[2]["events"] == ["cluster jump"] and "loss" in records[2]
    assert "jumped from 12 to 2" in out


def test_clusters_within_one_camera_train_without_the_camera_loss(small_dataset, tmp_path,
                                                                    monkeypatch, capsys):
    samples = sorted(small_dataset.train)
    pairs = sorted({(pid, cam) for _, pid, cam in samples})
    per_camera = torch.tensor([pairs.index((pid, cam)) for _, pid, cam in samples])
    force_labels(monkeypatch, [per_camera, true_ids(small_dataset)])
    records, out = run(small_dataset, tmp_path / "run", capsys, cam=True)
    assert_run_went_on(records, tmp_path / "run")
    assert records[1]["events"] == ["no cross-camera cluster"]
    assert "loss" in records[1] and "loss_camera" not in records[1]
    assert "loss_camera" in records[2], "the next epoch has cross-camera clusters again"
    assert "camera loss has no positive" in out


def test_plan_epoch_decides_from_labels_alone():
    cams = torch.tensor([0, 1, 0, 1, 0, 1])
    assert plan_epoch(torch.full((6,), -1), cams, eps=0.5, cam=False, previous_clusters=None).events \
        == ["no clusters"]
    assert not plan_epoch(torch.zeros(6, dtype=torch.long), cams, eps=0.5, cam=False,
                          previous_clusters=None).train
    normal = plan_epoch(torch.tensor([0, 0, 1, 1, 2, 2]), cams, eps=0.5, cam=True, previous_clusters=4)
    assert normal.train and normal.camera_loss and normal.events == []
    jump = plan_epoch(torch.tensor([0, 0, 1, 1, 2, 2]), cams, eps=0.5, cam=False, previous_clusters=7)
    assert jump.events == ["cluster jump"]
    same_camera = plan_epoch(torch.tensor([0, 1, 0, 1, 0, 1]), cams, eps=0.5, cam=True,
                             previous_clusters=None)
    assert same_camera.train and not same_camera.camera_loss


def test_plan_epoch_thresholds_at_their_edges():
    """'few kept' below 20% of the images (not at it); 'cluster jump' beyond a factor 2
    either way (not at it); nothing to compare after an epoch without clusters."""
    def events(labels, previous=None, cams=None, cam=False):
        labels = torch.tensor(labels)
        cams = torch.zeros_like(labels) if cams is None else torch.tensor(cams)
        return plan_epoch(labels, cams, eps=0.5, cam=cam, previous_clusters=previous)

    assert events([0, 0, 1, 1] + [-1] * 16).events == []                  # 4 of 20: 20%
    few = events([0, 0, 1] + [-1] * 17)                                   # 3 of 20: 15%
    assert few.events == ["few kept"] and few.train
    assert "only 3 of 20 images (15%)" in few.messages[0]
    two, three, six, seven = ([c // 2 for c in range(2 * m)] for m in (2, 3, 6, 7))
    assert events(three, previous=6).events == [] and events(six, previous=3).events == []
    assert events(two, previous=6).events == ["cluster jump"]
    assert events(seven, previous=3).events == ["cluster jump"]
    assert "jumped from 6 to 2" in events(two, previous=6).messages[0]
    assert events(six, previous=0).events == [], "after an epoch without clusters"


def test_plan_epoch_camera_check_ignores_outliers():
    """Outliers seen by two cameras are no cross-camera cluster."""
    labels = torch.tensor([0, 0, 1, 1, -1, -1])
    single = plan_epoch(labels, torch.tensor([0, 0, 1, 1, 0, 1]), eps=0.5, cam=True,
                        previous_clusters=None)
    assert not single.camera_loss and single.events == ["no cross-camera cluster"]
    crossed = plan_epoch(labels, torch.tensor([0, 1, 1, 1, 0, 0]), eps=0.5, cam=True,
                         previous_clusters=None)
    assert crossed.camera_loss and crossed.events == []


def test_cluster_means_by_hand():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    assert cluster_means(x, torch.tensor([0, 0, 2, 2]), 3)[[0, 2]].tolist() == [[2.0, 0.0],
                                                                                [2.5, 3.5]]
    parts = torch.stack([x, 2 * x], dim=2)                                # (N, D, N_p)
    assert cluster_means(parts, torch.tensor([1, 1, 0, 0]), 2)[:, :, 1].tolist() == [[5.0, 7.0],
                                                                                     [4.0, 0.0]]
