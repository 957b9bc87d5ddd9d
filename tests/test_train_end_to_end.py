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
    assert records[0]["eval_s"] > 0
    stages = ("knn_global_s", "knn_parts_s", "encoding_s", "jaccard_s", "dbscan_s",
              "cross_agreement_s")
    for r in records[1:]:
        assert r["clusters"] >= 1, "eps 0.7 on this data must give clusters"
        assert r["clusters"] + r["outliers"] <= len(small_dataset.train)
        for key in ("loss", "loss_pglr", "loss_part", "loss_triplet", "mAP", "rank1",
                    *stages, "extract_s", "cluster_s", "train_s", "eval_s", "epoch_s"):
            assert math.isfinite(r[key]), key
        assert "total_s" not in r, "the clustering stage's total is cluster_s"
        # every part of the epoch is named: the stage total holds its stages, the epoch its parts
        assert sum(r[key] for key in stages) <= r["cluster_s"] + 1e-6
        assert r["extract_s"] + r["cluster_s"] + r["train_s"] + r["eval_s"] <= r["epoch_s"]
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
        train_main(["--k1", "5000", "--pretrained", "none", *common])
    assert not (tmp_path / "run").exists(), "a run that cannot start leaves no folder behind"


def test_cli_reports_the_dataset_folder_with_every_other_problem(tmp_path):
    """A missing dataset folder and a missing --pretrained file (and a bad flag), one error."""
    with pytest.raises(SystemExit) as err:
        train_main(["-d", "market1501", "--data-dir", str(tmp_path / "reid"), "--eps", "2",
                    "--pretrained", str(tmp_path / "r50.pth"), "--logs-dir", str(tmp_path / "x")])
    message = str(err.value)
    assert message.startswith("error: ")
    for expected in ("r50.pth: no such file", "--eps must lie in (0, 1)",
                     "Market-1501 not found", "bounding_box_train", "Unpack the dataset there"):
        assert expected in message, expected
    lines = message.splitlines()
    assert all(line.startswith("       ") for line in lines[1:]), "problems line up under the first"
    assert list(tmp_path.iterdir()) == [], "nothing is written"


def test_unreadable_images_stop_the_run_before_any_work(small_dataset, tmp_path, monkeypatch,
                                                        capsys):
    """Every unreadable image of every split is named when the dataset is scanned, before
    the network is built or the before-training evaluation runs; nothing is written."""
    import shutil

    import pplr_fast.train
    copy = tmp_path / "data" / "Market-1501"
    shutil.copytree(small_dataset.root, copy)
    train_image = sorted((copy / "bounding_box_train").glob("*.jpg"))[-1]
    train_image.write_bytes(train_image.read_bytes()[:500])      # an interrupted copy
    gallery_image = sorted((copy / "bounding_box_test").glob("0*.jpg"))[0]   # not junk (-1)
    gallery_image.write_bytes(b"")

    def no_trainer(*args, **kwargs):
        raise AssertionError("the trainer was built despite unreadable images")

    monkeypatch.setattr(pplr_fast.train, "PPLRTrainer", no_trainer)
    logs = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        train_main(["-d", "market1501", "--data-dir", str(tmp_path / "data"), "--logs-dir", str(logs),
                    "--pretrained", "none", "--no-progress", *TINY_CLI])
    message = str(err.value)
    assert "2 of" in message and "images cannot be read (train 1, gallery 1)" in message
    assert str(train_image) in message and f"{gallery_image}: empty file" in message
    assert "replace them with intact copies" in message
    assert "before training" not in capsys.readouterr().out
    assert not logs.exists()


def test_cli_missing_dataset_shows_expected_layout(tmp_path):
    with pytest.raises(SystemExit) as err:
        train_main(["-d", "market1501", "--data-dir", str(tmp_path), "--logs-dir", str(tmp_path / "x"),
                    "--pretrained", "none"])
    message = str(err.value)
    assert "Market-1501" in message and "bounding_box_train" in message


TINY_CLI = ["-a", "resnet18", "--height", "64", "--width", "32", "-b", "16", "-n", "4",
            "--iters", "2", "--eval-step", "1", "--k1", "10", "--k2", "3", "--k", "5",
            "--eps", "0.7", "--aals-epoch", "1", "--seed", "3"]


def market_folder(small_dataset, tmp_path):
    """``tmp_path`` laid out as a data dir holding a (symlinked) Market-1501 folder."""
    (tmp_path / "Market-1501").symlink_to(small_dataset.root)
    return tmp_path


def test_unknown_dataset_is_one_line_for_train_and_evaluate(tmp_path, capsys):
    from pplr_fast.evaluate import main as evaluate_main
    for entry, extra in ((train_main, []), (evaluate_main, ["--checkpoint", "x.pth"])):
        with pytest.raises(SystemExit) as err:
            entry(["-d", "foo", "--data-dir", str(tmp_path), *extra])
        assert err.value.code == 2
        message = capsys.readouterr().err
        assert "unknown dataset 'foo'" in message and "market1501" in message
        assert "Traceback" not in message


def test_real_dataset_needs_pretrained_or_an_explicit_none(small_dataset, tmp_path, capsys):
    data = market_folder(small_dataset, tmp_path)
    logs = tmp_path / "run"
    with pytest.raises(SystemExit, match="needs ImageNet weights.*--pretrained PATH.*--pretrained none"):
        train_main(["-d", "market1501", "--data-dir", str(data), "--logs-dir", str(logs)])
    assert not logs.exists()
    # the synthetic default trains from scratch without the flag: its config checks pass
    from pplr_fast.config import check_config, make_config
    check_config(make_config("synthetic"))
    train_main(["-d", "market1501", "--data-dir", str(data), "--logs-dir", str(logs), "-j", "0",
                "--pretrained", "none", "--epochs", "1", "--no-progress", *TINY_CLI])
    err = capsys.readouterr().err
    assert "warning: --pretrained none" in err and (logs / "last.pth").exists()


def test_corrupt_image_in_a_loader_worker_is_one_line_and_leaves_no_folder(small_dataset, tmp_path):
    import shutil
    copy = tmp_path / "data" / "Market-1501"
    shutil.copytree(small_dataset.root, copy)
    victim = sorted((copy / "query").glob("*.jpg"))[0]
    # cut inside its header but ending in the end marker: the scan of the dataset (which
    # reads the ends of each file) passes it, decoding it in a loader worker fails
    victim.write_bytes(victim.read_bytes()[:300] + b"\xff\xd9")
    logs = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        train_main(["-d", "market1501", "--data-dir", str(tmp_path / "data"), "--logs-dir", str(logs),
                    "--pretrained", "none", "-j", "1", "--epochs", "1", "--no-progress", *TINY_CLI])
    message = str(err.value)
    assert message.startswith("error: cannot read image") and victim.name in message
    assert "\n" not in message and "Traceback" not in message and "worker" not in message
    assert not logs.exists(), "a run that could not start leaves no folder behind"


def test_truncated_resume_is_named_and_overwrites_nothing(small_dataset, tmp_path):
    data = market_folder(small_dataset, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"note": "the run that wrote last.pth"}')
    (run / "last.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit) as err:
        train_main(["-d", "market1501", "--data-dir", str(data), "--pretrained", "none",
                    "--resume", str(run / "last.pth"), *TINY_CLI])
    message = str(err.value)
    assert "last.pth is corrupt or truncated" in message and "start a new run" in message
    assert message.endswith(")"), "the message is whole, not cut mid-sentence"
    assert (run / "config.json").read_text() == '{"note": "the run that wrote last.pth"}'
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "last.pth"]


def test_cli_run_from_relative_paths_then_evaluate_elsewhere(small_dataset, tmp_path, monkeypatch,
                                                             capfd):
    """No bars in redirected output; best.pth without the optimizer; evaluate reads the
    checkpoint's absolute data folder from any working directory and creates nothing."""
    from pplr_fast.evaluate import main as evaluate_main
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(work)
    make_synthetic_dataset("data", num_train_ids=12, num_test_ids=8)
    train_main(["--data-dir", "data", "--logs-dir", "run", "-j", "0", "--epochs", "2", *TINY_CLI])
    err = capfd.readouterr().err
    assert "\r" not in err, "progress bars are drawn only on a terminal"
    best, last = load_checkpoint(work / "run" / "best.pth"), load_checkpoint(work / "run" / "last.pth")
    assert best["optimizer"] is None and last["optimizer"] is not None
    assert best["config"]["data_dir"] == str(work / "data")
    with pytest.raises(SystemExit, match="holds no optimizer state.*last.pth"):
        train_main(["--resume", str(work / "run" / "best.pth"), "--epochs", "3", *TINY_CLI])
    monkeypatch.chdir(elsewhere)
    metrics = evaluate_main(["--checkpoint", str(work / "run" / "best.pth"), "-j", "0"])
    assert metrics["mAP"] == pytest.approx(next(
        r["mAP"] for r in read_log(work / "run") if r["epoch"] == best["epoch"]), abs=1e-6)
    assert list(elsewhere.iterdir()) == [], "evaluate never generates data"
    with pytest.raises(SystemExit, match="no synthetic dataset at .*--data-dir"):
        evaluate_main(["--checkpoint", str(work / "run" / "best.pth"), "--data-dir", str(elsewhere)])
    assert list(elsewhere.iterdir()) == []


def test_help_says_what_the_no_argument_run_uses(capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    from pplr_fast.config import DEMO_RECIPE, RECIPE
    assert f"(default: {RECIPE['epochs']}; synthetic demo: {DEMO_RECIPE['epochs']})" in text
    assert f"(default: {RECIPE['arch']}; synthetic demo: {DEMO_RECIPE['arch']})" in text
    assert "total epochs of the run, also with --resume" in text
    assert "docs/method.md" in text


def test_issue_repro_default_recipe_on_a_market_folder_from_random_weights(small_dataset, tmp_path):
    """The first real-JPEG run that crashed: `-d market1501 -a resnet18` with the preset eps
    (0.6) and an untrained network, which merges the training images into one cluster."""
    data = market_folder(small_dataset, tmp_path)
    logs = tmp_path / "run"
    train_main(["-d", "market1501", "--data-dir", str(data), "-a", "resnet18", "--pretrained", "none",
                "--height", "64", "--width", "32", "-b", "16", "--iters", "2", "--epochs", "2",
                "--eval-step", "1", "-j", "0", "--no-progress", "--logs-dir", str(logs)])
    records = read_log(logs)
    assert [r["epoch"] for r in records] == [-1, 0, 1]
    assert records[1]["clusters"] <= 1 and records[1]["skipped"] in ("one cluster", "no clusters")
    assert all("mAP" in r for r in records) and (logs / "last.pth").exists()
