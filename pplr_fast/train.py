"""``python -m pplr_fast.train``: train PPLR (or PPLR-CAM with ``--cam``).

With no arguments it trains on the built-in synthetic dataset (generated into
``--data-dir`` on first use) with a small CPU recipe (a ResNet-18, a few short
epochs: about three minutes on 2 cores) and prints mAP before and after
training. With ``-d market1501 --data-dir DIR --pretrained FILE`` (or msmt17,
veri, dukemtmcreid) it runs the full recipe with that dataset's presets; every
flag overrides its preset. The defaults shown below read "full recipe;
synthetic demo" where the two differ. The method and every default are
described in docs/method.md.

Multi-GPU/CPU: ``torchrun --nproc_per_node=K -m pplr_fast.train ...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from .backend import BACKENDS
from .config import (DATASET_PRESETS, DEMO_RECIPE, METHODS, NO_PRETRAINED, PROBLEM_SEPARATOR,
                     RECIPE, ConfigError, TrainConfig, config_problems, make_config)
from .data import (DATASET_NAMES, DatasetError, ImageReadError, create_dataset,
                   dataset_name_argument, locate_dataset)
from .models import RESNETS, PretrainedWeightsError
from .trainer import PPLRTrainer, RunCompleteError
from .utils import distributed
from .utils.checkpoint import CheckpointError
from .utils.cli import plain_help
from .utils.errors import one_line


def _default(name: str) -> str:
    """``(default: X)`` or ``(default: X; synthetic demo: Y)`` for a recipe setting."""
    full = RECIPE[name]
    demo = DEMO_RECIPE.get(name, full)
    return f"(default: {full})" if demo == full else f"(default: {full}; synthetic demo: {demo})"


def _preset(name: str) -> str:
    values = ", ".join(f"{d} {getattr(p, name)}" for d, p in DATASET_PRESETS.items())
    return f"(dataset preset: {values})"


def build_parser() -> argparse.ArgumentParser:
    """The command line; every default shown comes from :mod:`pplr_fast.config`."""
    p = argparse.ArgumentParser(
        prog="python -m pplr_fast.train", description=plain_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument_group("data")
    a.add_argument("-d", "--dataset", default="synthetic", type=dataset_name_argument,
                   help=f"one of {', '.join(DATASET_NAMES)} (default: synthetic)")
    a.add_argument("--data-dir", default="data", metavar="PATH",
                   help="folder holding the dataset folders (default: ./data)")
    a.add_argument("--height", type=int, help=f"input height {_preset('height')}")
    a.add_argument("--width", type=int, help=f"input width {_preset('width')}")
    a.add_argument("-b", "--batch-size", type=int,
                   help=f"images per batch, identities x instances {_default('batch_size')}")
    a.add_argument("-n", "--num-instances", type=int,
                   help=f"images per identity in a batch {_preset('num_instances')}")
    a.add_argument("-j", "--workers", type=int, help=f"data-loading processes {_default('workers')}")
    m = p.add_argument_group("model")
    m.add_argument("-a", "--arch", choices=sorted(RESNETS), help=f"backbone {_default('arch')}")
    m.add_argument("--pretrained", metavar="PATH",
                   help="torchvision ImageNet checkpoint FILE for the backbone (never downloaded); "
                        "required on real datasets; 'none' trains from random weights")
    m.add_argument("--parts", type=int, help=f"horizontal parts N_p {_default('parts')}")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int,
                   help=f"total epochs of the run, also with --resume {_default('epochs')}")
    o.add_argument("--iters", type=int, help=f"iterations per epoch {_default('iters')}")
    o.add_argument("--lr", type=float, help=f"Adam learning rate {_default('lr')}")
    o.add_argument("--weight-decay", type=float, help=f"Adam weight decay {_default('weight_decay')}")
    o.add_argument("--step-size", type=int,
                   help=f"lr x0.1 every this many epochs {_default('step_size')}")
    o.add_argument("--seed", type=int, help=f"random seed {_default('seed')}")
    c = p.add_argument_group("PPLR")
    c.add_argument("--method", choices=METHODS,
                   help="pplr, or baseline: the same part-based network trained with hard "
                        "pseudo-labels (plain cross-entropy) on the global and every part "
                        f"classifier, no PGLR, no AALS, no label smoothing {_default('method')}")
    c.add_argument("--eps", type=float,
                   help=f"DBSCAN eps {_preset('eps')}; with --cam {_preset('eps_cam')}")
    c.add_argument("--k1", type=int, help=f"Jaccard k1 {_default('k1')}")
    c.add_argument("--k2", type=int, help=f"Jaccard k2 {_default('k2')}")
    c.add_argument("--min-samples", type=int, help=f"DBSCAN min_samples {_default('min_samples')}")
    c.add_argument("--k", type=int, help=f"cross-agreement neighbourhood {_default('k')}")
    c.add_argument("--beta", type=float, help=f"PGLR weight of the one-hot label {_default('beta')}")
    c.add_argument("--aals-epoch", type=int, help=f"first epoch of AALS {_default('aals_epoch')}")
    c.add_argument("--label-smoothing", type=float,
                   help="label smoothing of the part cross-entropy before --aals-epoch "
                        f"{_default('label_smoothing')}")
    c.add_argument("--cam", action="store_true", help="PPLR-CAM: add the inter-camera proxy loss")
    c.add_argument("--lam-cam", type=float, help=f"weight of the camera loss {_preset('lam_cam')}")
    r = p.add_argument_group("run")
    r.add_argument("--backend", choices=BACKENDS,
                   help="clustering kernels and losses: fast (falls back to reference where its "
                        "kernels are unavailable, saying so) or reference (plain PyTorch) "
                        f"{_default('backend')}")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="(default: auto: cuda when torch sees a GPU)")
    r.add_argument("--eval-step", type=int, help=f"evaluate every this many epochs {_default('eval_step')}")
    r.add_argument("--logs-dir", metavar="PATH",
                   help="output folder (default: logs/<dataset>/<date-time>; with --resume: the "
                        "checkpoint's folder)")
    r.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a run from its last.pth, up to --epochs epochs in total")
    r.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    bars = r.add_mutually_exclusive_group()
    bars.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="progress bars even when the output is not a terminal")
    bars.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress bars (default: bars only on a terminal)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Flags override the demo recipe, the dataset preset and the recipe (pplr_fast.config).

    Raises one ConfigError listing every problem of the command line: the
    settings (pplr_fast.config.config_problems), the device and the dataset folder
    (found, not yet read).
    """
    problems = []
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        problems.append("--device cuda but this torch build sees no CUDA GPU; "
                        "use --device cpu (or auto)")
    logs = args.logs_dir or str(Path("logs") / args.dataset / time.strftime("%Y%m%d-%H%M%S"))
    if args.resume and not args.logs_dir:
        logs = str(Path(args.resume).parent)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name not in ("dataset", "cam", "data_dir", "logs_dir", "device")
                 and hasattr(args, f.name)}
    # absolute paths: a checkpoint read from another folder still finds its data
    cfg = make_config(args.dataset, cam=args.cam, data_dir=str(Path(args.data_dir).resolve()),
                      logs_dir=str(Path(logs).resolve()), device=device, **overrides)
    problems += config_problems(cfg)
    try:
        locate_dataset(cfg.dataset, cfg.data_dir)
    except DatasetError as err:
        problems.append(str(err).replace("\n", PROBLEM_SEPARATOR))
    if problems:
        raise ConfigError(problems)
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if cfg.pretrained == NO_PRETRAINED and DATASET_PRESETS[cfg.dataset].real:
        print(f"warning: --pretrained none: training on {cfg.dataset} from random weights "
              "(expect a much lower mAP than from ImageNet weights)", file=sys.stderr)
    device = distributed.init(cfg.device)
    logs = Path(cfg.logs_dir)
    created = not logs.exists()
    started = False
    try:
        try:
            dataset = create_dataset(cfg.dataset, cfg.data_dir)
        except DatasetError as err:
            raise SystemExit(f"error: {err}") from None
        if distributed.is_main():
            print(dataset.summary())
        try:
            # the trainer checks the data against k1, reads --resume and loads
            # --pretrained before anything is written
            trainer = PPLRTrainer(cfg, dataset, device)
            if distributed.is_main():
                print(f"training on {device} with --backend {cfg.backend}; logs in {logs}")
                logs.mkdir(parents=True, exist_ok=True)
                (logs / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
            summary = trainer.fit()
            started = True
        except RunCompleteError as err:     # --resume of a run with no epoch left: change nothing
            err.epochs_given = args.epochs is not None
            raise SystemExit(f"error: {one_line(err)}") from None
        except (CheckpointError, PretrainedWeightsError, ImageReadError, ConfigError,
                FloatingPointError) as err:
            raise SystemExit(f"error: {one_line(err)}") from None
    finally:
        distributed.shutdown()
        if not started and created and distributed.is_main() and not trainer_started(logs):
            shutil.rmtree(logs, ignore_errors=True)   # a run that never started leaves nothing
    if summary.get("interrupted"):
        raise SystemExit(128 + summary["signal"])   # the shell convention for "killed by signal"
    return summary


def cli(argv: list[str] | None = None) -> None:
    """The ``pplr-train`` console script: :func:`main`, exit status 0 once the run has ended.

    A console script exits with what its function returns; ``main`` returns the run's summary
    (for Python callers), which as an exit status would be printed and exit 1.
    """
    main(argv)


def trainer_started(logs: Path) -> bool:
    """Whether the run in ``logs`` has saved a checkpoint (then its folder is kept)."""
    return (logs / "last.pth").exists()


if __name__ == "__main__":
    cli()
