"""Seconds per PPLR training iteration and parameter count, reference vs fast losses,
and the part-based Baseline's (hard pseudo-labels, plain cross-entropy on every head).

The layout of the paper's cost table (docs/method.md §8: parameters, clustering
s/epoch, training s/iter). One iteration is what ``PPLRTrainer.train_epoch``
does per batch, on random images (data loading excluded):

    forward of PPLRNet -> pplr_classification_loss(backend=...) (PGLR + AALS)
    + soft_triplet_loss on f_g -> backward -> Adam step

with a batch of P identities x K images (default 64 = 16 x 4), C classes
(default 750, about Market-1501's cluster count) and N_p parts. Time: median
over ``--repeat`` iterations after ``--warmup`` iterations (the first of
which compiles the fast loss on a CPU; its time is reported apart).
Parameters: every parameter of the network with its C-way classifiers
(ResNet-50, C = 750, N_p = 3 gives the paper's 29.668 M).

The Baseline row (``--methods`` includes ``baseline``) runs the same
iteration with ``baseline_classification_loss`` in place of PGLR + AALS (that
loss has one implementation for every device). Its clustering column is the
fast backend's stage without the cross-agreement step, which only PPLR's
losses need (the trainer still computes it for the Baseline, to log it).

The clustering column comes from a ``benchmarks/cluster_stage.py`` JSON
(``--cluster-json``, the row of size ``--cluster-n``; feature extraction is
added when that JSON has it); without one it reads "see cluster_stage".

Usage: python benchmarks/train_step.py [--arch resnet50] [--height 384] [--width 128]
       [--batch-size 64] [--num-instances 4] [--classes 750] [--parts 3]
       [--device cpu|cuda] [--methods pplr baseline] [--repeat 10] [--warmup 2] [--threads T]
       [--cluster-json benchmarks/results/cluster_stage_cuda.json] [--cluster-n 12936]
       [--out DIR]
CPU-sized: --arch resnet18 --height 128 --width 64 --batch-size 32
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import busy_warning, describe_machine, load_average, machine_lines

from pplr_fast.backend import BACKENDS
from pplr_fast.config import METHODS
from pplr_fast.losses import (baseline_classification_loss, pplr_classification_loss,
                              soft_triplet_loss)
from pplr_fast.models import RESNETS, PPLRNet
from pplr_fast.utils.timing import synchronize

BASELINE = "baseline"   # the ``backend`` key of the Baseline's row
# docs/method.md §8: supplementary material of the paper, Market-1501, 4 TITAN RTX.
PAPER_PPLR = {"name": "PPLR, paper (4x TITAN RTX, Market-1501, ResNet-50, 384x128, batch 64)",
              "parameters_m": 29.668, "cluster_s_per_epoch": 38.484, "train_s_per_iter": 0.202}


def build_model(args: argparse.Namespace, device: torch.device) -> PPLRNet:
    """PPLRNet with C-way classifiers initialised from random unit centroids, seeded."""
    torch.manual_seed(args.seed)
    model = PPLRNet(args.arch, num_parts=args.parts)
    dim = model.feature_dim
    model.reset_classifiers(torch.randn(args.classes, dim), torch.randn(args.classes, dim,
                                                                        args.parts))
    return model.to(device).train()


def make_batch(args: argparse.Namespace, device: torch.device):
    """Random images; P identities x K instances with distinct random classes; scores."""
    generator = torch.Generator().manual_seed(args.seed)
    identities = args.batch_size // args.num_instances
    images = torch.randn(identities * args.num_instances, 3, args.height, args.width,
                         generator=generator)
    classes = torch.randperm(args.classes, generator=generator)[:identities]
    targets = classes.repeat_interleave(args.num_instances)
    scores = torch.rand(targets.numel(), args.parts, generator=generator)
    return images.to(device), targets.to(device), scores.to(device)


def train_iteration(model: PPLRNet, optimizer: torch.optim.Optimizer, batch, backend: str,
                    use_aals: bool) -> float:
    """Forward, PPLR losses, backward and Adam step; returns the loss."""
    images, targets, scores = batch
    out = model(images)
    if backend == BASELINE:
        loss_global, loss_parts = baseline_classification_loss(out.logits_g, out.logits_p, targets)
    else:
        loss_global, loss_parts = pplr_classification_loss(
            out.logits_g, out.logits_p, targets, scores, beta=0.5, use_aals=use_aals,
            epsilon=0.1, backend=backend)
    loss = loss_global + loss_parts + soft_triplet_loss(out.f_g, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def measure(args: argparse.Namespace, backend: str, device: torch.device) -> dict:
    """Seconds per iteration (median, min, first call) of one loss backend (or the Baseline)."""
    model = build_model(args, device)
    optimizer = torch.optim.Adam([{"params": list(model.backbone_parameters())},
                                  {"params": list(model.classifier_parameters())}],
                                 lr=3.5e-4, weight_decay=5e-4)
    batch = make_batch(args, device)
    use_aals = args.part_loss == "aals"
    name = ("pplr_fast, Baseline (hard labels, plain CE)" if backend == BASELINE
            else f"pplr_fast, {backend} losses")
    row = {"backend": backend, "method": BASELINE if backend == BASELINE else "pplr", "name": name,
           "parameters": sum(p.numel() for p in model.parameters()),
           "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    row["parameters_m"] = row["parameters"] / 1e6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        times = []
        for _ in range(args.warmup + args.repeat):
            synchronize(device)
            start = time.perf_counter()
            loss = train_iteration(model, optimizer, batch, backend, use_aals)
            synchronize(device)
            times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{backend}: the loss became {float(loss)}")
    timed = times[args.warmup:]
    row.update(first_iteration_s=times[0], train_s_per_iter=statistics.median(timed),
               train_s_per_iter_min=min(timed), iterations=timed, final_loss=float(loss),
               warnings=sorted({str(w.message)[:300] for w in caught
                                if issubclass(w.category, RuntimeWarning)}))
    return row


def clustering_column(args: argparse.Namespace, rows: list[dict]) -> str | None:
    """Fill ``cluster_s_per_epoch`` of every row from a cluster_stage JSON; return a note."""
    if not args.cluster_json:
        return None
    with open(args.cluster_json) as handle:
        clustering = json.load(handle)
    sizes = sorted({r["n"] for r in clustering["rows"]})
    n = args.cluster_n if args.cluster_n is not None else (
        12936 if 12936 in sizes else max(sizes))
    by_backend = {r["backend"]: r for r in clustering["rows"] if r["n"] == n}
    if not by_backend:
        raise SystemExit(f"{args.cluster_json} has no rows for N={n} (it has {sizes})")
    for row in rows:
        baseline = row["backend"] == BASELINE
        measured = by_backend.get("fast" if baseline else row["backend"])
        if measured is None:
            row["cluster_s_per_epoch"] = "not measured"
        elif not measured["status"].startswith("ok"):
            row["cluster_s_per_epoch"] = measured["status"]
        else:
            seconds = measured["seconds"]
            unused = seconds.get("cross_agreement", 0.0) if baseline else 0.0
            row["cluster_s_per_epoch"] = seconds["total"] + seconds.get("extract", 0.0) - unused
    includes = "feature extraction + clustering" if any(
        "extract" in r.get("seconds", {}) for r in by_backend.values()) else \
        "clustering only, without feature extraction"
    where = clustering["machine"].get("gpu") or clustering["machine"]["cpu"]
    baseline = (" The Baseline's is the fast backend's without the cross-agreement step."
                if any(r["backend"] == BASELINE for r in rows) else "")
    return (f"Clustering s/epoch: {args.cluster_json}, N = {n}, {includes}, measured on "
            f"{where} ({clustering['config']['device']}).{baseline}")


def cell(value, digits: int) -> str:
    if value is None:
        return "see cluster_stage"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_report(result: dict) -> str:
    config = result["config"]
    lines = [
        f"# PPLR cost per epoch and per iteration, {config['device']}",
        "",
        f"Training iteration: {config['arch']}, {config['height']}x{config['width']} inputs, "
        f"batch {config['batch_size']} = {config['batch_size'] // config['num_instances']} x "
        f"{config['num_instances']}, N_p = {config['parts']}, C = {config['classes']}, "
        f"PPLR part loss {config['part_loss']}; forward + losses + backward + Adam step on random images "
        f"(no data loading); median of {config['repeat']} after {config['warmup']} warm-up.",
        *machine_lines(result["machine"]),
        f"Load average before / after: {result['load_before']} / {result['load_after']}.",
        *filter(None, [busy_warning(result["load_before"],
                                    result["machine"]["usable_cores"]
                                    or result["machine"]["cores"])]),
        "",
        "| | parameters (M) | clustering s/epoch | training s/iter |",
        "|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['name']} | {row['parameters_m']:.3f} | "
                     f"{cell(row.get('cluster_s_per_epoch'), 3)} | "
                     f"{cell(row['train_s_per_iter'], 4)} |")
    paper = result["paper"]
    lines.append(f"| {paper['name']} | {paper['parameters_m']:.3f} | "
                 f"{paper['cluster_s_per_epoch']:.3f} | {paper['train_s_per_iter']:.3f} |")
    lines.append("")
    lines += ["First iteration (includes compiling the fast loss on a CPU): " + ", ".join(
        f"{r['backend']} {r['first_iteration_s']:.2f} s" for r in result["rows"]) + "."]
    if result["cluster_note"]:
        lines.append(result["cluster_note"])
    lines.append("The paper's row is its published figure (docs/method.md §8), not measured here.")
    for row in result["rows"]:
        lines += [f"Warning ({row['backend']}): {w}" for w in row["warnings"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(RESNETS), default="resnet50")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-instances", type=int, default=4, help="images per identity")
    parser.add_argument("--classes", type=int, default=750, help="number of clusters C")
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--part-loss", choices=("aals", "ce"), default="aals")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="loss backends of the PPLR rows")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="pplr: one row per --backends entry; baseline: the Baseline's row")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster-json", help="a cluster_stage_<device>.json to fill the "
                                               "clustering column from")
    parser.add_argument("--cluster-n", type=int,
                        help="size N of the clustering row (default 12936 if measured, "
                             "else the largest)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if args.batch_size < 2 * args.num_instances or args.batch_size % args.num_instances:
        parser.error("--batch-size must be a multiple of --num-instances, with at least two "
                     "identities (the triplet loss needs negatives)")
    if args.classes < args.batch_size // args.num_instances:
        parser.error("--classes must be at least the number of identities in a batch")
    if args.repeat < 1 or args.warmup < 1:
        parser.error("--repeat and --warmup must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = load_average()
    rows = []
    runs = (list(args.backends) if "pplr" in args.methods else []) + (
        [BASELINE] if BASELINE in args.methods else [])
    for backend in runs:
        print(f"  {backend} losses ...", file=sys.stderr, flush=True)
        rows.append(measure(args, backend, device))
    result = {"machine": describe_machine(args.device), "load_before": load_before,
              "load_after": load_average(), "config": vars(args), "rows": rows,
              "paper": PAPER_PPLR}
    result["cluster_note"] = clustering_column(args, rows)
    report = markdown_report(result)
    print(report)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"train_step_{args.device}")
    with open(stem + ".md", "w") as handle:
        handle.write(report)
    with open(stem + ".json", "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"wrote {stem}.md and {stem}.json")
    return result


if __name__ == "__main__":
    main()
