"""Short real training runs: the log, the checkpoints, and the errors users meet."""
import json
import math

import pytest
import torch

from pplr_fast.data import make_synthetic_dataset, read_market_layout
from pplr_fast.train import main as train_main
from pplr_fast.trainer import PPLRTrainer, TrainConfig
from pplr_fast.utils.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return read_market_layout(make_synthetic_dataset(str(root), num_train_ids=12, num_test_ids=8),
                              name="synthetic")


def tiny_config(logs, **overrides) -> TrainConfig:
    base = dict(arch="resnet18", height=64, width=32, batch_size=16, num_instances=4, workers=0,
                epochs=2, iters=3, eval_step=1, k1=10, k2=3, k=5, eps=0.7, aals_epoch=1,
                logs_dir=str(logs), progress=False, backend="fast", seed=3)
    base.update(overrides)
    return TrainConfig(**base)


def read_log(logs):
    return [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("cam", [False, True], ids=["pplr", "pplr-cam"])
def test_short_run_writes_log_checkpoints_and_plot(small_dataset, tmp_path, cam):
    logs = tmp_path / "run"
    summary = PPLRTrainer(tiny_config(logs, cam=cam), small_dataset, torch.device("cpu")).fit()
    records = read_log(logs)
    assert [r["epoch"] for r in records] == [-1, 0, 1]
    assert 0 <= records[0]["mAP"] <= 1 and records[0]["num_valid_queries"] > 0
    for r in records[1:]:
        assert r["clusters"] >= 1, "eps 0.7 on this data must give clusters"
        assert r["clusters"] + r["outliers"] <= len(small_dataset.train)
        for key in ("loss", "loss_pglr", "loss_part", "loss_triplet", "mAP", "rank1",
                    "knn_global_s", "dbscan_s", "cross_agreement_s", "extract_s", "train_s"):
            assert math.isfinite(r[key]), key
        assert ("loss_camera" in r) == cam
    for name in ("best.pth", "last.pth"):
        state = load_checkpoint(logs / name)
        assert state["config"]["arch"] == "resnet18"
        assert state["pseudo_labels"].shape == (len(small_dataset.train),)
        assert state["scores"].shape == (len(small_dataset.train), 3)
    assert load_checkpoint(logs / "last.pth")["epoch"] == 1
    assert (logs / "metrics.png").stat().st_size > 1000
    assert summary["initial"]["mAP"] == records[0]["mAP"]
    assert summary["final"]["epoch"] == summary["best_epoch"]


def test_epoch_without_clusters_is_logged_and_skipped(small_dataset, tmp_path):
    logs = tmp_path / "run"
    PPLRTrainer(tiny_config(logs, eps=1e-4, epochs=1), small_dataset, torch.device("cpu")).fit()
    record = read_log(logs)[1]
    assert record["clusters"] == 0 and record["skipped"] == "no clusters"
    assert "loss" not in record and "mAP" in record


def test_too_few_images_for_k1(small_dataset, tmp_path):
    cfg = tiny_config(tmp_path / "run", k1=1000)
    with pytest.raises(ValueError, match=r"fewer than k1=1000.*lower --k1"):
        PPLRTrainer(cfg, small_dataset, torch.device("cpu")).fit()


def test_cli_rejects_impossible_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit, match="multiple of --num-instances"):
        train_main(["--batch-size", "30", "-n", "4", "--logs-dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"--eps must lie in \(0, 1\)"):
        train_main(["--eps", "1.5", "--logs-dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no such file .*never downloaded"):
        train_main(["--pretrained", str(tmp_path / "missing.pth"), "--logs-dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists(), "nothing may be written before the arguments are checked"


def test_cli_bad_setup_is_a_message_and_writes_nothing(small_dataset, tmp_path):
    (tmp_path / "Market-1501").symlink_to(small_dataset.root)   # read as -d market1501
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("these are not weights")
    common = ["-d", "market1501", "--data-dir", str(tmp_path), "--epochs", "1",
              "--logs-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit, match="cannot read pretrained weights file .*notes.pth"):
        train_main(["--pretrained", str(not_weights), "-a", "resnet18", *common])
    with pytest.raises(SystemExit, match="fewer than k1=5000.*lower --k1"):
        train_main(["--k1", "5000", *common])
    assert not (tmp_path / "run").exists(), "a run that cannot start leaves no folder behind"


def test_cli_missing_dataset_shows_expected_layout(tmp_path):
    with pytest.raises(SystemExit) as err:
        train_main(["-d", "market1501", "--data-dir", str(tmp_path), "--logs-dir", str(tmp_path / "x")])
    message = str(err.value)
    assert "Market-1501" in message and "bounding_box_train" in message
