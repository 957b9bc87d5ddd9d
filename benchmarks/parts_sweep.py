"""mAP against the number of parts N_p, PPLR vs the part-based Baseline (paper Fig. 1).

Trains ``python -m pplr_fast.train`` once per (method, N_p): the same
arguments for every run (the training arguments after ``--``, or the small
synthetic recipe below when none are given) plus ``--parts N_p --method M``.
Each run's result is its best evaluated epoch (the trainer's ``best.pth``).
Writes ``parts_sweep_<tag>.{md,json,png}``: a table (mAP, rank-1, the last
epoch's pseudo-label ARI and kept fraction, wall time per run) and the plot
in the paper's layout (mAP vs N_p, one line per method).

Usage:
    python benchmarks/parts_sweep.py [--parts 1 2 3 4 6] [--methods pplr baseline]
        [--tag cpu] [--runs-dir DIR] [--out DIR] [-- TRAIN ARGUMENTS...]
    (each run's folder, <runs-dir>/<method>_parts<N_p>, is replaced)
    # Market-1501, the paper's recipe (10 full trainings):
    python benchmarks/parts_sweep.py --tag market1501 -- -d market1501 \\
        --data-dir /data/reid --pretrained resnet50-0676ba61.pth

The default recipe (no training arguments) is about a minute of CPU per
training on a small synthetic dataset generated into ``--runs-dir``: tiny, one
seed, so its differences between methods are within run-to-run noise. It
checks the pipeline and the layout; it does not reproduce the paper's figure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import busy_warning, describe_machine, load_average, machine_lines

from pplr_fast.config import METHODS

LABELS = {"pplr": "PPLR", "baseline": "Baseline"}
# The default recipe: a small synthetic dataset (24 training identities, about
# 320 images; pplr_fast.data.synthetic, generated into --runs-dir and read
# through the Market-1501 folder layout), ResNet-18 at 64x32, 5 epochs of 20
# iterations of 16 images, AALS from epoch 2, evaluated at the end: about a
# minute per run on two busy cores. Plain PyTorch losses (--backend reference):
# the fast CPU loss compiles on first use, which would land in one run's time.
SYNTHETIC_IDS = (24, 16)         # training identities, test identities
SYNTHETIC_RECIPE = ["-d", "market1501", "-a", "resnet18", "--height", "64", "--width", "32",
                    "--epochs", "5", "--iters", "20", "--eval-step", "5", "--aals-epoch", "2",
                    "-b", "16", "-n", "4", "--eps", "0.5", "--k1", "20", "--workers", "0",
                    "--backend", "reference", "--pretrained", "none"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] [-- TRAIN ARGUMENTS...]")
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4, 6],
                        help="values of N_p (1 2 3 4 6)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--tag", default="cpu", help="file name suffix (cpu)")
    parser.add_argument("--runs-dir", default="logs/parts_sweep",
                        help="where each training writes its run folder (logs/parts_sweep)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results"))
    args = parser.parse_args(own)
    if any(n < 1 for n in args.parts):
        parser.error("--parts values must be >= 1")
    for flag in ("--parts", "--method", "--logs-dir", "--resume"):
        if flag in train_args:
            parser.error(f"{flag} is set by the sweep for each run; leave it out of the "
                         "training arguments")
    args.synthetic = not train_args
    args.train_args = train_args
    return args


def synthetic_recipe(runs_dir: Path) -> list[str]:
    """The default recipe's arguments, its small synthetic dataset generated on first use."""
    from pplr_fast.data import make_synthetic_dataset
    folder = make_synthetic_dataset(str(runs_dir / "data"), num_train_ids=SYNTHETIC_IDS[0],
                                    num_test_ids=SYNTHETIC_IDS[1])
    link = runs_dir / "data" / "Market-1501"
    if not link.exists():
        link.symlink_to(folder)
    return [*SYNTHETIC_RECIPE, "--data-dir", str(runs_dir / "data")]


def run_one(train_args: list[str], method: str, parts: int, logs: Path) -> dict:
    """One training; its best epoch's metrics and the last epoch's pseudo-label quality."""
    from pplr_fast.train import main as train_main
    if logs.exists():                        # a previous sweep's run: its log would be appended to
        shutil.rmtree(logs)
    start = time.perf_counter()
    summary = train_main([*train_args, "--parts", str(parts), "--method", method,
                          "--logs-dir", str(logs), "--no-progress"])
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r.get("epoch", -1) >= 0][-1]
    final = summary.get("final") or {}
    return {"method": method, "parts": parts, "mAP": final.get("mAP"), "rank1": final.get("rank1"),
            "best_epoch": summary.get("best_epoch"),
            "initial_mAP": (summary.get("initial") or {}).get("mAP"),
            "last_epoch_pseudo_ari": last.get("pseudo_ari"),
            "last_epoch_kept_fraction": last.get("kept_fraction"),
            "last_epoch_clusters": last.get("clusters"), "seconds": seconds, "logs": str(logs)}


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_report(result: dict) -> str:
    rows = {(r["method"], r["parts"]): r for r in result["rows"]}
    methods, parts = result["methods"], result["parts"]
    lines = [f"# mAP vs number of parts N_p: {', '.join(LABELS[m] for m in methods)} ({result['tag']})",
             ""]
    if result["synthetic"]:
        lines += ["**Synthetic data, small recipe.** These runs train a ResNet-18 at 64x32 for "
                  f"a few short epochs (arguments below) on a small synthetic dataset ({SYNTHETIC_IDS[0]} "
                  "training identities, read through the Market-1501 folder layout), one seed per "
                  "cell: they check "
                  "the sweep end to end, and differences between the methods here are within "
                  "run-to-run noise. They do not reproduce the paper's Fig. 1 (Market-1501, "
                  "ResNet-50, 50 epochs); see the README for that run.", ""]
    lines += [f"Training arguments of every run: `{' '.join(result['train_args'])}` "
              "plus `--parts N_p --method M`. mAP and rank-1 of each run's best evaluated epoch; "
              "ARI and kept fraction of the last epoch's pseudo-labels against the true "
              "training identities (kept images only).",
              *machine_lines(result["machine"]),
              f"Load average before / after: {result['load_before']} / {result['load_after']}; "
              f"whole sweep {result['seconds'] / 60:.1f} min.",
              *filter(None, [busy_warning(result["load_before"],
                                          result["machine"]["usable_cores"]
                                          or result["machine"]["cores"])]),
              ""]
    header = "| N_p |" + "".join(f" {LABELS[m]} mAP (%) |" for m in methods)
    rule = "|---:|" + "---:|" * len(methods)
    if methods == list(METHODS):
        header += " PPLR - Baseline |"
        rule += "---:|"
    header += "".join(f" {LABELS[m]} R1 (%) | {LABELS[m]} ARI / kept | {LABELS[m]} s |"
                      for m in methods)
    rule += "---:|---:|---:|" * len(methods)
    lines += [header, rule]
    for n in parts:
        cells = [f"| {n} |"] + [f" {percent(rows[(m, n)]['mAP'])} |" for m in methods]
        if methods == list(METHODS):
            a, b = rows[("pplr", n)]["mAP"], rows[("baseline", n)]["mAP"]
            cells.append(" n/a |" if a is None or b is None else f" {100 * (a - b):+.1f} |")
        for m in methods:
            r = rows[(m, n)]
            ari = "n/a" if r["last_epoch_pseudo_ari"] is None else f"{r['last_epoch_pseudo_ari']:.3f}"
            cells.append(f" {percent(r['rank1'])} | {ari} / {r['last_epoch_kept_fraction']:.2f} | "
                         f"{r['seconds']:.0f} |")
        lines.append("".join(cells))
    initial = sorted({round(100 * r["initial_mAP"], 1) for r in result["rows"]
                      if r["initial_mAP"] is not None})
    if initial:
        lines += ["", f"mAP before training: {', '.join(f'{v:.1f}' for v in initial)} % "
                      "(one value: the seed fixes the backbone before the part heads are made)."
                      if len(initial) == 1 else
                      f"mAP before training: {', '.join(f'{v:.1f}' for v in initial)} %."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    """mAP (%) against N_p, one line per method, as in the paper's Fig. 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for method, style in zip(result["methods"], ("o-", "s--")):
        points = [(r["parts"], 100 * r["mAP"]) for r in result["rows"]
                  if r["method"] == method and r["mAP"] is not None]
        points.sort()
        if points:
            ax.plot(*zip(*points), style, label=LABELS[method])
    ax.set_xticks(result["parts"])
    ax.set_xlabel("number of parts N_p")
    ax.set_ylabel("mAP (%)")
    title = "mAP vs N_p" + (" (synthetic data, small recipe)" if result["synthetic"] else
                            f" ({result['tag']})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.synthetic:
        args.train_args = synthetic_recipe(Path(args.runs_dir))
    from pplr_fast.train import build_parser
    build_parser().parse_args(args.train_args)            # bad training arguments fail first
    load_before = load_average()
    start = time.perf_counter()
    rows = []
    for parts in args.parts:
        for method in args.methods:
            print(f"== {LABELS[method]}, N_p = {parts}", file=sys.stderr, flush=True)
            logs = Path(args.runs_dir) / f"{method}_parts{parts}"
            rows.append(run_one(args.train_args, method, parts, logs))
    import torch
    result = {"machine": describe_machine("cuda" if torch.cuda.is_available() else "cpu"),
              "load_before": load_before, "load_after": load_average(),
              "seconds": time.perf_counter() - start, "tag": args.tag, "synthetic": args.synthetic,
              "train_args": args.train_args, "parts": args.parts, "methods": args.methods,
              "rows": rows}
    report = markdown_report(result)
    print(report)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"parts_sweep_{args.tag}")
    with open(stem + ".md", "w") as handle:
        handle.write(report)
    with open(stem + ".json", "w") as handle:
        json.dump(result, handle, indent=2)
    plot(result, stem + ".png")
    print(f"wrote {stem}.md, {stem}.json and {stem}.png")
    return result


if __name__ == "__main__":
    main()
