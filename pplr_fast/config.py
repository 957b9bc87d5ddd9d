"""Every default of a training run, in one place, and the checks of a run's settings.

A run's settings are layered, each layer overriding the one before:

1. ``RECIPE``: the training recipe of the paper's public code (docs/method.md);
2. ``DATASET_PRESETS[dataset]``: input size, images per identity, DBSCAN eps and
   the camera-loss weight of that dataset (written in the dataset registry,
   ``pplr_fast.data.datasets.DATASETS``);
3. ``DEMO_RECIPE`` (the built-in synthetic dataset only): a small CPU recipe so
   that the no-argument run finishes in a few minutes;
4. the command-line flags (or keyword overrides from Python).

``python -m pplr_fast.train --help``, the trainer and the tests all read these
tables; nothing else in the package holds a default of the method.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backend import BACKENDS, DEFAULT_BACKEND
from .data.datasets import DATASETS, DatasetPreset


# The training settings of each dataset, from the dataset registry (pplr_fast.data.datasets).
DATASET_PRESETS: dict[str, DatasetPreset] = {name: entry.preset for name, entry in DATASETS.items()}

# The recipe of the public code (docs/method.md, "Training recipe").
RECIPE: dict[str, Any] = dict(
    arch="resnet50", parts=3, batch_size=64, workers=2,
    epochs=50, iters=400, lr=3.5e-4, weight_decay=5e-4, step_size=20, eval_step=5,
    k1=30, k2=6, min_samples=4, k=20, beta=0.5, aals_epoch=5, label_smoothing=0.1,
    backend=DEFAULT_BACKEND, seed=1, method="pplr",
)

# "baseline": the paper's part-based Baseline (hard pseudo-labels, plain cross-entropy on the
# global and every part classifier), everything else as PPLR.
METHODS = ("pplr", "baseline")

# What the no-argument run (the synthetic dataset) uses instead: a ResNet-18 at
# the synthetic images' size, few short epochs, so that it ends in about two and
# a half minutes on a 2-core CPU and still shows mAP rise clearly. 6 epochs, not
# 4: measured over seeds 1-4, mAP rose by 13-26 points after 6 epochs, while
# after 4 one seed was still below its start (the first epochs' pseudo-labels
# are poor and set the features back before they help).
DEMO_RECIPE: dict[str, Any] = dict(arch="resnet18", batch_size=32, epochs=6, iters=25,
                                   eval_step=2, aals_epoch=2)

# Values that mean "no file" for --pretrained: train from random initialisation.
NO_PRETRAINED = "none"


@dataclass
class TrainConfig:
    """Every setting of a run (``python -m pplr_fast.train --help`` explains each).

    The field defaults are ``RECIPE`` with Market-1501's preset; build a run's
    configuration with :func:`make_config`, which layers the dataset preset and
    the demo recipe for you.
    """

    dataset: str = "market1501"
    data_dir: str = "data"
    logs_dir: str = "logs"
    arch: str = RECIPE["arch"]
    pretrained: str | None = None
    parts: int = RECIPE["parts"]
    height: int = DATASET_PRESETS["market1501"].height
    width: int = DATASET_PRESETS["market1501"].width
    batch_size: int = RECIPE["batch_size"]
    num_instances: int = DATASET_PRESETS["market1501"].num_instances
    workers: int = RECIPE["workers"]
    epochs: int = RECIPE["epochs"]
    iters: int = RECIPE["iters"]
    lr: float = RECIPE["lr"]
    weight_decay: float = RECIPE["weight_decay"]
    step_size: int = RECIPE["step_size"]
    eval_step: int = RECIPE["eval_step"]
    eps: float = DATASET_PRESETS["market1501"].eps
    k1: int = RECIPE["k1"]
    k2: int = RECIPE["k2"]
    min_samples: int = RECIPE["min_samples"]
    k: int = RECIPE["k"]
    beta: float = RECIPE["beta"]
    aals_epoch: int = RECIPE["aals_epoch"]
    label_smoothing: float = RECIPE["label_smoothing"]
    cam: bool = False
    lam_cam: float = DATASET_PRESETS["market1501"].lam_cam
    backend: str = RECIPE["backend"]
    device: str = "cpu"
    seed: int = RECIPE["seed"]
    resume: str | None = None
    progress: bool | None = None     # None: progress bars only on a terminal
    sync_bn: bool = False
    method: str = RECIPE["method"]


def defaults_for(dataset: str, cam: bool = False) -> dict[str, Any]:
    """The default of every preset-dependent setting of ``dataset`` (layers 1-3)."""
    preset = DATASET_PRESETS[dataset]
    values = dict(RECIPE, height=preset.height, width=preset.width,
                  num_instances=preset.num_instances,
                  eps=preset.eps_cam if cam else preset.eps, lam_cam=preset.lam_cam)
    if not preset.real:
        values.update(DEMO_RECIPE)
    return values


def make_config(dataset: str = "synthetic", *, cam: bool = False, **overrides: Any) -> TrainConfig:
    """The configuration of a run on ``dataset``: defaults, preset, demo recipe, then overrides.

    ``None`` overrides are ignored (an unset command-line flag).
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values = {k: v for k, v in defaults_for(dataset, cam).items() if k in fields}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(dataset=dataset, cam=cam, **values)


class ConfigError(ValueError):
    """Settings that cannot work together; the message names each problem and its fix.

    ``problems`` holds one line per problem; the message lists them all, one per line.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(PROBLEM_SEPARATOR.join(self.problems))


# Problems after the first line up under it in ``error: ...`` (the width of "error: ").
PROBLEM_SEPARATOR = "\n       "


_POSITIVE = ("height", "width", "batch_size", "num_instances", "epochs", "iters", "step_size",
             "eval_step", "k1", "k2", "min_samples", "k", "parts")


def check_config(cfg: TrainConfig) -> None:
    """Every impossible setting of ``cfg``, reported together before anything runs or is written."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)


def config_problems(cfg: TrainConfig) -> list[str]:
    """One line per impossible setting of ``cfg`` (what :func:`check_config` raises)."""
    problems = []
    for name in _POSITIVE:
        if getattr(cfg, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(cfg, name)})")
    if cfg.workers < 0:
        problems.append("--workers must be >= 0")
    if cfg.aals_epoch < 0:
        problems.append(f"--aals-epoch must be >= 0 (got {cfg.aals_epoch})")
    if cfg.num_instances >= 1 and cfg.batch_size % cfg.num_instances:
        problems.append(f"--batch-size {cfg.batch_size} must be a multiple of --num-instances "
                        f"{cfg.num_instances} (a batch is identities x instances)")
    elif cfg.batch_size >= 1 and cfg.num_instances >= 1 and cfg.batch_size // cfg.num_instances < 2:
        problems.append(
            f"--batch-size {cfg.batch_size} with --num-instances {cfg.num_instances} is one "
            "identity per batch: the triplet loss has no negative to learn from; pass "
            f"--batch-size {2 * cfg.num_instances} or more (at least 2 x --num-instances) or a "
            "smaller --num-instances")
    if cfg.k2 > cfg.k1:
        problems.append(f"--k2 {cfg.k2} must not exceed --k1 {cfg.k1}")
    if not 0 < cfg.eps < 1:
        problems.append(f"--eps must lie in (0, 1) (Jaccard distances are in [0, 1]); got {cfg.eps}")
    if not 0 <= cfg.beta <= 1:
        problems.append(f"--beta must lie in [0, 1]; got {cfg.beta}")
    if not 0 <= cfg.label_smoothing <= 1:
        problems.append(f"--label-smoothing must lie in [0, 1]; got {cfg.label_smoothing}")
    if not cfg.lr > 0:
        problems.append(f"--lr must be > 0; got {cfg.lr}")
    if cfg.weight_decay < 0:
        problems.append(f"--weight-decay must be >= 0; got {cfg.weight_decay}")
    if cfg.lam_cam < 0:
        problems.append(f"--lam-cam must be >= 0; got {cfg.lam_cam}")
    if cfg.method not in METHODS:
        problems.append(f"--method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    if cfg.backend not in BACKENDS:
        problems.append(f"--backend must be one of {', '.join(BACKENDS)}; got {cfg.backend!r}")
    if cfg.pretrained and cfg.pretrained != NO_PRETRAINED and not Path(cfg.pretrained).is_file():
        problems.append(f"--pretrained {cfg.pretrained}: no such file (weights are never "
                        "downloaded; pass a torchvision ImageNet .pth file, or --pretrained none)")
    if cfg.resume and not Path(cfg.resume).is_file():
        problems.append(f"--resume {cfg.resume}: no such checkpoint file")
    preset = DATASET_PRESETS.get(cfg.dataset)
    if preset is not None and preset.real and not cfg.pretrained and not cfg.resume:
        problems.append(
            f"-d {cfg.dataset} needs ImageNet weights: PPLR starts from an ImageNet-pretrained "
            "backbone, and a run from random weights spends days reaching a fraction of the "
            "paper's mAP. Pass --pretrained PATH (a torchvision resnet .pth file, e.g. "
            "resnet50-0676ba61.pth, copied to this machine), or --pretrained none to train from "
            "random weights on purpose")
    return problems


def check_data_size(cfg: TrainConfig, num_train_images: int) -> None:
    """The training split must hold at least k1 images (the k-reciprocal neighbourhoods)."""
    if num_train_images < cfg.k1:
        raise ConfigError(
            f"the training set has {num_train_images} images, fewer than k1={cfg.k1}: the "
            "k-reciprocal neighbourhoods would be meaningless; lower --k1 or add images")
