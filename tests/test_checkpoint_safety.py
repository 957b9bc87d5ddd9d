"""Checkpoints are safe to share: no command runs code from one, old files still load,
a finished run is not resumed, and every refusal names the next step that works."""
import hashlib
import os
import pathlib
import random
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from pplr_fast import visualize
from pplr_fast.config import make_config
from pplr_fast.data import create_dataset, make_synthetic_dataset
from pplr_fast.evaluate import main as evaluate_main
from pplr_fast.models import PPLRNet
from pplr_fast.train import main as train_main
from pplr_fast.trainer import PPLRTrainer, RunCompleteError
from pplr_fast.utils.checkpoint import (FORMAT_KEY, FORMAT_VERSION, CheckpointError,
                                        load_checkpoint, restore_rng_state, save_checkpoint)

TINY_CLI = ["-a", "resnet18", "--height", "64", "--width", "32", "-b", "16", "-n", "4",
            "--iters", "2", "--eval-step", "1", "--k1", "10", "--k2", "3", "--k", "5",
            "--eps", "0.7", "--aals-epoch", "1", "--seed", "3", "-j", "0", "--no-progress"]
DEMO_EPOCHS = make_config("synthetic").epochs          # what --resume without --epochs asks for


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished one-epoch run of the train command on a small synthetic set: its folder."""
    root = tmp_path_factory.mktemp("safety")
    make_synthetic_dataset(str(root / "data"), num_train_ids=12, num_test_ids=8)
    train_main(["--data-dir", str(root / "data"), "--logs-dir", str(root / "run"), "--epochs", "1",
                *TINY_CLI])
    return root / "run"


def resume_args(run, checkpoint, *extra):
    return ["--resume", str(checkpoint), "--data-dir", str(run.parent / "data"), *TINY_CLI, *extra]


class Payload:
    """Unpickling this object creates ``marker``: what a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def old_rng_state():
    """The random generator states as pplr_fast wrote them in format 1 (numpy array inside)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def as_format_1(state):
    """``state`` (format 2) written the way the format-1 code wrote it: the generators are set
    from its states and read back with the old calls."""
    restore_rng_state(state["rng"])
    return {**state, FORMAT_KEY: 1, "rng": old_rng_state()}


def snapshot(folder):
    """{file name: (mtime_ns, sha1 of the bytes)} of every file in ``folder``."""
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- code in a checkpoint

def test_new_checkpoints_hold_only_what_a_weights_only_load_accepts(run):
    for name in ("best.pth", "last.pth"):
        state = torch.load(run / name, weights_only=True)      # no allow-list at all
        assert state[FORMAT_KEY] == FORMAT_VERSION == 2
        assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    with pytest.raises(TypeError, match=r"state\['best_map'\] is a numpy.float64"):
        save_checkpoint({"best_map": np.float64(0.5)}, run.parent / "never.pth")
    assert not (run.parent / "never.pth").exists()


def malicious_files(run, folder, marker):
    """Checkpoints that would create ``marker`` when unpickled: a pplr_fast-looking state with
    the payload, and a format-1 one whose payload follows the numpy generator state (the
    allow-listed path for old files)."""
    folder.mkdir()
    state = load_checkpoint(run / "best.pth")
    evil = folder / "best.pth"
    torch.save({**state, "rng": Payload(marker)}, evil)
    old = folder / "old.pth"
    torch.save({**as_format_1(state), "extra": Payload(marker)}, old)
    return evil, old


def test_a_malicious_checkpoint_runs_nothing_in_any_command(run, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil, old = malicious_files(run, tmp_path / "shared", marker)
    # the payload is live: an unsafe load would run it (so this test can fail)
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    before = snapshot(evil.parent)
    for path in (evil, old):
        commands = {
            "evaluate": lambda: evaluate_main(["--checkpoint", str(path), "-j", "0"]),
            "visualize agreement": lambda: visualize.main(["agreement", "--checkpoint", str(path),
                                                           "--device", "cpu"]),
            "train --resume": lambda: train_main(resume_args(run, path, "--epochs", "3")),
            "PPLRNet.from_checkpoint": lambda: PPLRNet.from_checkpoint(path),
            "load_checkpoint": lambda: load_checkpoint(path),
        }
        for name, command in commands.items():
            try:
                command()
                message = None
            except (SystemExit, CheckpointError) as refused:
                message = str(refused)
            assert not marker.exists(), f"{name} ran the checkpoint's code"
            assert message is not None, f"{name} accepted {path.name}"
            assert "\n" not in message and "Traceback" not in capsys.readouterr().err, name
            assert f"refusing checkpoint {path}" in message, name
            assert "global getattr" in message, name       # what Path.touch pickles through
            assert "not written by pplr_fast or was tampered with" in message, name
            assert "never executes code from a checkpoint" in message, name
    assert snapshot(evil.parent) == before, "a refused checkpoint changes nothing beside it"


def test_a_malicious_checkpoint_run_as_a_command_prints_one_line(run, tmp_path):
    marker = tmp_path / "MARKER"
    evil, _ = malicious_files(run, tmp_path / "shared", marker)
    done = subprocess.run([sys.executable, "-m", "pplr_fast.evaluate", "--checkpoint", str(evil)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1 and not marker.exists()
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: refusing checkpoint {evil}")


# --------------------------------------------------------------------------- format-1 files

def rename_numpy_module(src, dst):
    """``src`` as numpy 1.x pickles it: ``numpy.core`` where numpy 2 writes ``numpy._core``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl") and b"numpy._core.multiarray\n" in data:
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            zout.writestr(info, data)


def test_format_1_checkpoints_still_load_evaluate_and_resume(run, tmp_path):
    old_run = tmp_path / "old_run"
    old_run.mkdir()
    for name in ("best.pth", "last.pth"):
        torch.save(as_format_1(load_checkpoint(run / name)), old_run / name)
    with pytest.raises(Exception, match="multiarray._reconstruct"):
        torch.load(old_run / "last.pth", weights_only=True)   # a real numpy state is inside
    numpy1 = tmp_path / "numpy1.pth"
    rename_numpy_module(old_run / "best.pth", numpy1)
    for path in (old_run / "best.pth", old_run / "last.pth", numpy1):
        state = load_checkpoint(path)
        assert state[FORMAT_KEY] == 1 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    model = PPLRNet.from_checkpoint(numpy1)
    assert model.num_classes == load_checkpoint(run / "best.pth")["num_classes"]

    # resuming restores the very generator states of the format-2 file
    def draws_after_restore(path):
        cfg = make_config("synthetic", data_dir=str(run.parent / "data"), logs_dir=str(old_run),
                          resume=str(path), epochs=3, arch="resnet18", height=64, width=32,
                          batch_size=16, num_instances=4, k1=10, k2=3, k=5, eps=0.7, workers=0)
        trainer = PPLRTrainer(cfg, create_dataset("synthetic", cfg.data_dir), torch.device("cpu"))
        trainer.restore(str(path))
        return random.random(), float(np.random.rand()), float(torch.rand(1))
    assert draws_after_restore(old_run / "last.pth") == draws_after_restore(run / "last.pth")

    metrics = evaluate_main(["--checkpoint", str(old_run / "best.pth"), "-j", "0"])
    assert 0 <= metrics["mAP"] <= 1
    train_main(resume_args(run, old_run / "last.pth", "--epochs", "2"))
    resumed = torch.load(old_run / "last.pth", weights_only=True)   # rewritten in format 2
    assert resumed["epoch"] == 1 and resumed[FORMAT_KEY] == FORMAT_VERSION


def test_numpy_arrays_are_allowed_only_in_a_format_1_file(run, tmp_path):
    not_ours = tmp_path / "weights.pth"
    torch.save({"conv1.weight": np.zeros(3, dtype=np.uint32)}, not_ours)
    with pytest.raises(CheckpointError, match=r"refusing checkpoint .*weights.pth.*numpy arrays"):
        load_checkpoint(not_ours)
    newer = tmp_path / "newer.pth"
    torch.save({FORMAT_KEY: 2, "rng": old_rng_state()}, newer)
    with pytest.raises(CheckpointError, match="newer.pth.*tampered"):
        load_checkpoint(newer)


# --------------------------------------------------------------------------- a finished run

def finished_copy(run, folder, *, last_epoch, configured, only_last=False):
    """``run`` (or only its last.pth) copied to ``folder``, last.pth saying that it trained
    epochs 0..last_epoch of a run configured for ``configured`` epochs."""
    if only_last:
        folder.mkdir()
    else:
        shutil.copytree(run, folder)
    state = load_checkpoint(run / "last.pth")
    state.pop(FORMAT_KEY)
    save_checkpoint({**state, "epoch": last_epoch,
                     "config": {**state["config"], "epochs": configured}}, folder / "last.pth")
    return folder / "last.pth"


@pytest.mark.parametrize("only_last", [False, True], ids=["run folder", "last.pth alone"])
def test_resume_of_a_finished_run_says_so_and_changes_nothing(run, tmp_path, capsys, only_last):
    last = finished_copy(run, tmp_path / "run", last_epoch=DEMO_EPOCHS - 1, configured=DEMO_EPOCHS,
                         only_last=only_last)
    before = snapshot(last.parent)
    with pytest.raises(SystemExit) as refused:
        train_main(resume_args(run, last))                      # no --epochs
    message = str(refused.value)
    assert refused.value.code not in (0, None) and "\n" not in message
    assert message.startswith(f"error: {last} is a finished run")
    assert f"epochs 0-{DEMO_EPOCHS - 1}, all {DEMO_EPOCHS} epochs it was configured for" in message
    assert f"without --epochs the total is the default {DEMO_EPOCHS}" in message
    assert f"--epochs M, M > {DEMO_EPOCHS}" in message
    assert f"--resume {last} --epochs {DEMO_EPOCHS + 10}" in message
    assert "Traceback" not in capsys.readouterr().err
    assert snapshot(last.parent) == before, "config.json, metrics.*, summary.json untouched"


def test_resume_with_fewer_epochs_than_done_is_refused(run, tmp_path):
    last = finished_copy(run, tmp_path / "run", last_epoch=4, configured=10)
    before = snapshot(last.parent)
    for epochs in ("3", "5"):
        with pytest.raises(SystemExit) as refused:
            train_main(resume_args(run, last, "--epochs", epochs))
        message = str(refused.value)
        assert f"{last} has already trained 5 epochs (epochs 0-4 of the 10 it was configured " \
               f"for); --epochs {epochs} is the total this run asks for" in message
        assert "not the epochs to add" in message and "--epochs M, M > 5" in message
    assert snapshot(last.parent) == before
    # the library refuses the same way, before anything is written
    cfg = make_config("synthetic", data_dir=str(run.parent / "data"), logs_dir=str(last.parent),
                      resume=str(last), epochs=5, arch="resnet18", height=64, width=32)
    with pytest.raises(RunCompleteError, match="nothing to train"):
        PPLRTrainer(cfg, create_dataset("synthetic", cfg.data_dir), torch.device("cpu"))
    assert snapshot(last.parent) == before


# --------------------------------------------------------------------------- the next step

def test_a_corrupt_resume_names_the_checkpoint_that_resumes(run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    os.link(run / "best.pth", folder / "best.pth")
    (folder / "last.pth").write_bytes((run / "last.pth").read_bytes()[:4096])
    with pytest.raises(SystemExit) as refused:
        train_main(resume_args(run, folder / "last.pth", "--epochs", "3"))
    message = str(refused.value)
    assert f"{folder / 'last.pth'} is corrupt or truncated" in message
    assert "start a new run" in message and "best.pth cannot be resumed" in message
    assert "interrupted.pth" not in message

    os.link(run / "last.pth", folder / "interrupted.pth")     # newer: written after last.pth
    os.utime(folder / "last.pth", (1, 1))
    with pytest.raises(SystemExit) as refused:
        train_main(resume_args(run, folder / "last.pth", "--epochs", "3"))
    message = str(refused.value)
    assert f"resume from {folder / 'interrupted.pth'} instead" in message
    assert "newer than last.pth" in message and "best.pth" not in message


def test_a_corrupt_checkpoint_for_evaluate_names_the_other_one(run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    os.link(run / "last.pth", folder / "last.pth")
    (folder / "best.pth").write_bytes(b"PK\x03\x04 truncated")
    for command in (lambda p: evaluate_main(["--checkpoint", p]),
                    lambda p: visualize.main(["agreement", "--checkpoint", p])):
        with pytest.raises(SystemExit) as refused:
            command(str(folder / "best.pth"))
        message = str(refused.value)
        assert f"{folder / 'best.pth'} is corrupt or truncated" in message
        assert f"pass {folder / 'last.pth'} instead (best.pth and last.pth of a run both work)" \
            in message
        assert "resume" not in message


def test_a_file_that_is_no_pplr_checkpoint_names_what_each_command_takes(run, tmp_path):
    imagenet = tmp_path / "resnet50-0676ba61.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, imagenet)
    with pytest.raises(SystemExit) as refused:
        evaluate_main(["--checkpoint", str(imagenet)])
    message = str(refused.value)
    assert f"{imagenet} is not a pplr_fast checkpoint" in message
    assert "python -m pplr_fast.evaluate --checkpoint takes a run's best.pth or last.pth" in message
    assert "--pretrained of python -m pplr_fast.train" in message and "--resume" not in message
    with pytest.raises(SystemExit, match="visualize --checkpoint takes a run's best.pth or last"):
        visualize.main(["agreement", "--checkpoint", str(imagenet)])
    with pytest.raises(SystemExit) as refused:
        train_main(resume_args(run, imagenet, "--epochs", "3"))
    assert "--resume takes a run's last.pth (or interrupted.pth)" in str(refused.value)
    assert "goes to --pretrained" in str(refused.value)
