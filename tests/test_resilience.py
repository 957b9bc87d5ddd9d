"""Crashes, signals, bad checkpoints and torchrun: the trainer as a user's process sees it."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pplr_fast.data import make_synthetic_dataset
from pplr_fast.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

TINY = ["-d", "market1501", "-a", "resnet18", "--height", "64", "--width", "32", "-b", "16",
        "-n", "4", "-j", "0", "--iters", "3", "--eval-step", "1", "--k1", "10", "--k2", "3",
        "--k", "5", "--eps", "0.7", "--aals-epoch", "1", "--no-progress", "--seed", "5",
        "--pretrained", "none"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small synthetic set in the Market-1501 layout, read through the real CLI path."""
    root = tmp_path_factory.mktemp("reid")
    folder = make_synthetic_dataset(str(root / "generated"), num_train_ids=12, num_test_ids=8)
    os.symlink(folder, root / "Market-1501-v15.09.15")
    return root


def train_command(data_dir, logs, *extra):
    return [sys.executable, "-m", "pplr_fast.train", *TINY, "--data-dir", str(data_dir),
            "--logs-dir", str(logs), *extra]


def run(cmd, timeout=600):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def log_records(logs):
    return [json.loads(x) for x in (logs / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_sigkill_matches_an_uninterrupted_run(data_dir, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run(train_command(data_dir, straight, "--epochs", "2"))

    proc = subprocess.Popen(train_command(data_dir, crashed, "--epochs", "2"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = crashed / "last.pth"
    deadline = time.time() + 600
    while not last.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.kill()                                      # SIGKILL, right after epoch 0 was saved
    proc.wait()
    assert load_checkpoint(last)["epoch"] == 0

    run(train_command(data_dir, crashed, "--epochs", "2", "--resume", str(last)))
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(last)
    assert a["epoch"] == b["epoch"] == 1
    assert torch.equal(a["pseudo_labels"], b["pseudo_labels"])
    assert torch.equal(a["scores"], b["scores"])
    ra, rb = log_records(straight), log_records(crashed)
    assert [r["epoch"] for r in rb] == [-1, 0, 1], "the log holds each epoch once"
    for key in ("clusters", "outliers", "loss", "loss_pglr", "loss_part", "loss_triplet", "mAP", "rank1"):
        assert ra[2][key] == pytest.approx(rb[2][key], rel=1e-5, abs=1e-6), key


def test_sigterm_finishes_the_step_saves_and_exits(data_dir, tmp_path):
    logs = tmp_path / "run"
    cmd = train_command(data_dir, logs, "--epochs", "1")
    cmd[cmd.index("--iters") + 1] = "500"
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:                         # wait until training has started
        lines.append(line)
        if "clusters" in line:
            break
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    text = "".join(lines) + out
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "received signal" in text and "--resume" in text
    state = load_checkpoint(logs / "interrupted.pth")
    assert state["epoch"] == -1 and state["num_classes"] >= 1


def test_corrupt_and_foreign_checkpoints_are_named(data_dir, tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint({"epoch": 0, "weights": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated.pth is corrupt or truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a pplr_fast checkpoint.*--pretrained"):
        load_checkpoint(foreign)
    done = subprocess.run(train_command(data_dir, tmp_path / "x", "--resume", str(truncated)),
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode != 0
    assert "corrupt or truncated" in done.stderr and "Traceback" not in done.stderr


def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score
    return adjusted_rand_score(a, b)


def test_torchrun_two_ranks_agree_and_match_one_process(data_dir, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    run(train_command(data_dir, single, "--epochs", "1"))
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
         *train_command(data_dir, multi, "--epochs", "1")[1:]])
    digests = [json.loads((multi / f"rank{r}.jsonl").read_text().splitlines()[0]) for r in (0, 1)]
    assert digests[0]["pseudo_labels_sha1"] == digests[1]["pseudo_labels_sha1"]
    one, two = load_checkpoint(single / "last.pth"), load_checkpoint(multi / "last.pth")
    assert adjusted_rand_index(one["pseudo_labels"].numpy(), two["pseudo_labels"].numpy()) > 0.95
    r1, r2 = log_records(single), log_records(multi)
    assert r1[0]["mAP"] == pytest.approx(r2[0]["mAP"], abs=1e-3), "same weights before training"
    assert abs(r1[1]["mAP"] - r2[1]["mAP"]) < 0.15
    assert not (multi / "rank1").exists() and (multi / "metrics.png").exists()
