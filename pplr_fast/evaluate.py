"""``python -m pplr_fast.evaluate --checkpoint PATH -d NAME``: mAP, CMC and mINP of a checkpoint.

Reads a pplr_fast checkpoint (best.pth / last.pth of a training run); the
model settings (architecture, parts, input size) come from the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from .data import DATASET_NAMES, DatasetError, create_dataset
from .evaluation import evaluate_ranking, pairwise_distance
from .features import extract_features
from .models import PPLRNet
from .utils.checkpoint import CheckpointError, load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pplr_fast.evaluate", description=__doc__)
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="best.pth or last.pth of a run")
    p.add_argument("-d", "--dataset", help=f"one of {', '.join(DATASET_NAMES)} "
                                            "(default: the checkpoint's)")
    p.add_argument("--data-dir", help="folder holding the dataset folders (default: the checkpoint's)")
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--rerank", action="store_true",
                   help="also report k-reciprocal re-ranking (Zhong et al., CVPR 2017) side by side")
    p.add_argument("--k1", type=int, default=20, help="re-ranking: k-reciprocal neighbours (default 20)")
    p.add_argument("--k2", type=int, default=6, help="re-ranking: query expansion size (default 6)")
    p.add_argument("--lambda", dest="lambda_value", type=float, default=0.3,
                   help="re-ranking: weight of the original distance (default 0.3)")
    return p


def load_model(checkpoint: dict, device: torch.device) -> PPLRNet:
    cfg = checkpoint["config"]
    model = PPLRNet(cfg["arch"], num_parts=cfg["parts"])
    c, d = checkpoint["num_classes"], model.feature_dim
    model.reset_classifiers(torch.ones(c, d), torch.ones(c, d, cfg["parts"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or
                          (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        state = load_checkpoint(args.checkpoint)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    cfg = state["config"]
    try:
        dataset = create_dataset(args.dataset or cfg["dataset"], args.data_dir or cfg["data_dir"])
    except DatasetError as err:
        raise SystemExit(f"error: {err}") from None
    model = load_model(state, device)
    extract = dict(height=cfg["height"], width=cfg["width"], batch_size=args.batch_size,
                   workers=args.workers, device=device)
    q, _ = extract_features(model, dataset.query, desc="query", **extract)
    g, _ = extract_features(model, dataset.gallery, desc="gallery", **extract)
    column = lambda rows, i: torch.tensor([r[i] for r in rows])  # noqa: E731
    ids = (column(dataset.query, 1), column(dataset.gallery, 1), column(dataset.query, 2),
           column(dataset.gallery, 2))
    metrics = evaluate_ranking(pairwise_distance(q, g), *ids)
    if args.rerank:
        from .rerank import re_rank_features
        try:   # the Euclidean distances of the normalised features, as evaluated above
            reranked = re_rank_features(F.normalize(q.float(), dim=1), F.normalize(g.float(), dim=1),
                                        args.k1, args.k2, args.lambda_value)
        except ValueError as err:
            raise SystemExit(f"error: --rerank: {err}") from None
        metrics["reranked"] = evaluate_ranking(reranked, *ids)
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


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
