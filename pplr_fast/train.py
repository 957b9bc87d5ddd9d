"""``python -m pplr_fast.train``: train PPLR (or PPLR-CAM with ``--cam``).

With no arguments it trains on the built-in synthetic dataset (generated into
``--data-dir`` on first use) with a small CPU-friendly recipe, and prints mAP
before and after training. With ``-d market1501 --data-dir DIR`` (or msmt17,
veri, dukemtmcreid) it runs the recipe of SPEC §4 with that dataset's presets;
every flag overrides its preset.

Multi-GPU/CPU: ``torchrun --nproc_per_node=K -m pplr_fast.train ...``.
"""
from __future__ import annotations

import argparse
import json
import dataclasses
import sys
import time
from pathlib import Path

import torch

from .cluster.backend import BACKENDS
from .data import (DATASET_NAMES, DATASET_PRESETS, DatasetError, ImageReadError,
                   canonical_dataset_name, create_dataset)
from .models import RESNETS, PretrainedWeightsError
from .trainer import METHODS, PPLRTrainer, TrainConfig, TrainingSetupError
from .utils import distributed
from .utils.checkpoint import CheckpointError

# The recipe of SPEC §4, and the demo recipe of the synthetic dataset (a CPU
# run of a few minutes: ResNet-18, small images, few short epochs).
RECIPE = dict(arch="resnet50", epochs=50, iters=400, batch_size=64, eval_step=5, aals_epoch=5,
              step_size=20)
RECIPE_OVERRIDES = {
    "synthetic": dict(arch="resnet18", epochs=6, iters=30, batch_size=32, eval_step=2,
                      aals_epoch=2, step_size=20),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pplr_fast.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument_group("data")
    a.add_argument("-d", "--dataset", default="synthetic",
                   help=f"one of {', '.join(DATASET_NAMES)} (default: synthetic)")
    a.add_argument("--data-dir", default="data", metavar="PATH",
                   help="folder holding the dataset folders (default: ./data)")
    a.add_argument("--height", type=int, help="input height (preset)")
    a.add_argument("--width", type=int, help="input width (preset)")
    a.add_argument("-b", "--batch-size", type=int, help="identities x instances per batch (64)")
    a.add_argument("-n", "--num-instances", type=int, help="images per identity in a batch (preset)")
    a.add_argument("-j", "--workers", type=int, default=2, help="data-loading processes (2)")
    m = p.add_argument_group("model")
    m.add_argument("-a", "--arch", choices=sorted(RESNETS), help="backbone (resnet50)")
    m.add_argument("--pretrained", metavar="PATH",
                   help="torchvision ImageNet checkpoint FILE for the backbone (never downloaded)")
    m.add_argument("--parts", type=int, default=3, help="horizontal parts N_p (3)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help="epochs (50)")
    o.add_argument("--iters", type=int, help="iterations per epoch (400)")
    o.add_argument("--lr", type=float, default=3.5e-4, help="Adam learning rate (3.5e-4)")
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--step-size", type=int, help="lr x0.1 every this many epochs (20)")
    o.add_argument("--seed", type=int, default=1)
    c = p.add_argument_group("PPLR")
    c.add_argument("--method", choices=METHODS, default="pplr",
                   help="pplr (default), or baseline: the same part-based network trained with "
                        "hard pseudo-labels (plain cross-entropy) on the global and every part "
                        "classifier, no PGLR, no AALS, no label smoothing")
    c.add_argument("--eps", type=float, help="DBSCAN eps (dataset preset; smaller with --cam)")
    c.add_argument("--k1", type=int, default=30, help="Jaccard k1 (30)")
    c.add_argument("--k2", type=int, default=6, help="Jaccard k2 (6)")
    c.add_argument("--min-samples", type=int, default=4, help="DBSCAN min_samples (4)")
    c.add_argument("--k", type=int, default=20, help="cross-agreement neighbourhood (20)")
    c.add_argument("--beta", type=float, default=0.5, help="PGLR weight of the one-hot label (0.5)")
    c.add_argument("--aals-epoch", type=int, help="first epoch of AALS (5)")
    c.add_argument("--cam", action="store_true", help="PPLR-CAM: add the inter-camera proxy loss")
    c.add_argument("--lam-cam", type=float, help="weight of the camera loss (preset)")
    r = p.add_argument_group("run")
    r.add_argument("--backend", choices=BACKENDS, default="fast",
                   help="clustering kernels and losses: fast (default; falls back to reference "
                        "where its kernels are unavailable, saying so) or reference (plain PyTorch)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--eval-step", type=int, help="evaluate every this many epochs (5)")
    r.add_argument("--logs-dir", metavar="PATH",
                   help="output folder (default: logs/<dataset>/<date-time>)")
    r.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its last.pth")
    r.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Flags override the dataset preset, which overrides the SPEC recipe."""
    dataset = canonical_dataset_name(args.dataset)
    preset = DATASET_PRESETS[dataset]
    recipe = {**RECIPE, **RECIPE_OVERRIDES.get(dataset, {})}

    def pick(name, default):
        value = getattr(args, name)
        return default if value is None else value

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but this torch build sees no CUDA GPU; "
                         "use --device cpu (or auto)")
    logs = args.logs_dir or str(Path("logs") / dataset / time.strftime("%Y%m%d-%H%M%S"))
    if args.resume and not args.logs_dir:
        logs = str(Path(args.resume).resolve().parent)
    cfg = TrainConfig(
        dataset=dataset, data_dir=args.data_dir, logs_dir=logs,
        arch=pick("arch", recipe["arch"]), pretrained=args.pretrained, parts=args.parts,
        height=pick("height", preset.height), width=pick("width", preset.width),
        batch_size=pick("batch_size", recipe["batch_size"]),
        num_instances=pick("num_instances", preset.num_instances), workers=args.workers,
        epochs=pick("epochs", recipe["epochs"]), iters=pick("iters", recipe["iters"]),
        lr=args.lr, weight_decay=args.weight_decay, step_size=pick("step_size", recipe["step_size"]),
        eval_step=pick("eval_step", recipe["eval_step"]),
        eps=pick("eps", preset.eps_cam if args.cam else preset.eps), k1=args.k1, k2=args.k2,
        min_samples=args.min_samples, k=args.k, beta=args.beta,
        aals_epoch=pick("aals_epoch", recipe["aals_epoch"]), cam=args.cam,
        lam_cam=pick("lam_cam", preset.lam_cam), backend=args.backend, device=device,
        seed=args.seed, resume=args.resume, progress=False if args.no_progress else None,
        sync_bn=args.sync_bn, method=args.method)
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Impossible settings fail here, before anything is written."""
    problems = []
    for name in ("height", "width", "batch_size", "num_instances", "epochs", "iters", "step_size",
                 "eval_step", "k1", "k2", "min_samples", "k", "parts"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(cfg, name)})")
    if cfg.workers < 0:
        problems.append("--workers must be >= 0")
    if cfg.batch_size % cfg.num_instances:
        problems.append(f"--batch-size {cfg.batch_size} must be a multiple of --num-instances "
                        f"{cfg.num_instances} (a batch is identities x instances)")
    if cfg.k2 > cfg.k1:
        problems.append(f"--k2 {cfg.k2} must not exceed --k1 {cfg.k1}")
    if not 0 < cfg.eps < 1:
        problems.append(f"--eps must lie in (0, 1) (Jaccard distances are in [0, 1]); got {cfg.eps}")
    if not 0 <= cfg.beta <= 1:
        problems.append(f"--beta must lie in [0, 1]; got {cfg.beta}")
    if not cfg.lr > 0:
        problems.append(f"--lr must be > 0; got {cfg.lr}")
    if cfg.pretrained and not Path(cfg.pretrained).is_file():
        problems.append(f"--pretrained {cfg.pretrained}: no such file (weights are never "
                        "downloaded; pass a torchvision ImageNet .pth file)")
    if cfg.resume and not Path(cfg.resume).is_file():
        problems.append(f"--resume {cfg.resume}: no such checkpoint file")
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    device = distributed.init(cfg.device)
    try:
        try:
            dataset = create_dataset(cfg.dataset, cfg.data_dir)
        except DatasetError as err:
            raise SystemExit(f"error: {err}") from None
        if distributed.is_main():
            print(dataset.summary())
        try:
            # the trainer checks the data against k1 and loads --pretrained before
            # anything is written, so a bad file leaves no half-made run folder
            trainer = PPLRTrainer(cfg, dataset, device)
            if distributed.is_main():
                print(f"training on {device} with --backend {cfg.backend}; logs in {cfg.logs_dir}")
                Path(cfg.logs_dir).mkdir(parents=True, exist_ok=True)
                (Path(cfg.logs_dir) / "config.json").write_text(
                    json.dumps(dataclasses.asdict(cfg), indent=2))
            summary = trainer.fit()
        except (CheckpointError, PretrainedWeightsError, ImageReadError, TrainingSetupError,
                FloatingPointError) as err:
            raise SystemExit(f"error: {err}") from None
    finally:
        distributed.shutdown()
    if summary.get("interrupted"):
        raise SystemExit(128 + summary["signal"])   # the shell convention for "killed by signal"
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
