"""``python -m pplr_fast.evaluate --checkpoint PATH``: mAP, CMC and mINP of a checkpoint.

Reads a pplr_fast checkpoint (best.pth / last.pth of a training run); the
model settings (architecture, parts, input size) and, unless given, the
dataset and its folder come from the checkpoint. Evaluation never creates
data: a missing dataset folder is an error.
"""
from __future__ import annotations

import argparse
import json

import torch

from .data import DATASET_NAMES, DatasetError, ImageReadError, create_dataset, dataset_name_argument
from .evaluation import evaluate_split
from .models import PPLRNet
from .utils.checkpoint import CheckpointError, load_checkpoint
from .utils.cli import plain_help
from .utils.errors import one_line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pplr_fast.evaluate",
                                description=plain_help(__doc__))
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="best.pth or last.pth of a run")
    p.add_argument("-d", "--dataset", type=dataset_name_argument,
                   help=f"one of {', '.join(DATASET_NAMES)} (default: the checkpoint's)")
    p.add_argument("--data-dir", help="folder holding the dataset folders (default: the checkpoint's)")
    p.add_argument("-b", "--batch-size", type=int, default=128, help="(default: 128)")
    p.add_argument("-j", "--workers", type=int, default=2, help="(default: 2)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    bars = p.add_mutually_exclusive_group()
    bars.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="progress bars even when the output is not a terminal")
    bars.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress bars (default: bars only on a terminal)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--rerank", action="store_true",
                   help="also report k-reciprocal re-ranking (Zhong et al., CVPR 2017) side by side")
    p.add_argument("--k1", type=int, default=20, help="re-ranking: k-reciprocal neighbours (default 20)")
    p.add_argument("--k2", type=int, default=6, help="re-ranking: query expansion size (default 6)")
    p.add_argument("--lambda", dest="lambda_value", type=float, default=0.3,
                   help="re-ranking: weight of the original distance (default 0.3)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or
                          (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        state = load_checkpoint(args.checkpoint, command="evaluate")
        cfg = state["config"]
        dataset = create_dataset(args.dataset or cfg["dataset"], args.data_dir or cfg["data_dir"],
                                 generate=False, check_images=("query", "gallery"))
        model = PPLRNet.from_checkpoint(state, device)
        rerank = (dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)
                  if args.rerank else None)
        metrics = evaluate_split(model, dataset.query, dataset.gallery, height=cfg["height"],
                                 width=cfg["width"], batch_size=args.batch_size,
                                 workers=args.workers, device=device, progress=args.progress,
                                 rerank=rerank)
    except (CheckpointError, DatasetError, ImageReadError) as err:
        raise SystemExit(f"error: {one_line(err)}") from None
    except ValueError as err:     # re-ranking arguments (k1, k2, lambda) it cannot use
        if not args.rerank:
            raise
        raise SystemExit(f"error: --rerank: {one_line(err)}") from None
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{dataset.name} (epoch {state['epoch']} of {args.checkpoint}): "
              f"mAP {metrics['mAP']:.1%}  rank-1 {metrics['rank1']:.1%}  rank-5 {metrics['rank5']:.1%}"
              f"  rank-10 {metrics['rank10']:.1%}  mINP {metrics['mINP']:.1%}")
    if args.rerank and not args.json:
        print(rerank_table(metrics, args))
    return metrics


def rerank_table(metrics: dict, args) -> str:
    """Metrics without and with re-ranking, side by side."""
    names = ("mAP", "rank1", "rank5", "rank10", "mINP")
    lines = [f"{'':<32}" + "".join(f"{name:>9}" for name in names)]
    for label, m in (("without re-ranking", metrics),
                     (f"re-ranked (k1={args.k1}, k2={args.k2}, λ={args.lambda_value:g})",
                      metrics["reranked"])):
        lines.append(f"{label:<32}" + "".join(f"{m[name]:>9.1%}" for name in names))
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> None:
    """The ``pplr-evaluate`` console script: :func:`main`, exit status 0 once it has printed.

    ``main`` returns the metrics (for Python callers); a console script returning them would
    print the dict and exit 1.
    """
    main(argv)


if __name__ == "__main__":
    cli()
