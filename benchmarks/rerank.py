"""Test-time re-ranking: the numpy function most re-ID code bases copy vs pplr_fast.rerank.

For each size (Q queries x G gallery images, D-dim features):

* features: the seeded identity-structured generator of ``benchmarks/features.py``
  (global features, L2-normalised); queries are drawn among images whose
  identity has another image, the rest is the gallery; camera ids are drawn at
  random (the generator's cameras are internal), so a query's same-camera
  matches are ignored by the protocol as usual;
* "distances": the three Euclidean distance matrices (q-g, q-q, g-g) as users
  compute them (torch fp32 GEMM), the input of both ``re_ranking`` rows;
* "numpy re_ranking": the widely copied function as users run it today
  (written out below: dense matrices, a full argsort, Python loops);
* "pplr_fast re_ranking": ``pplr_fast.rerank.re_ranking`` on the same three matrices;
* "pplr_fast re_rank_features": ``pplr_fast.rerank.re_rank_features`` from the
  features (its distances included, so compare it with distances + numpy);

each timed stage by stage (one run each: the numpy baseline takes minutes),
with its peak host memory (growth of the peak RSS over the RSS before the
call), mAP / rank-1 / mINP without and with re-ranking on the same features,
and the largest |difference| between the fast and the numpy re-ranked distances.
A size that does not fit is reported with its memory estimate instead.

    python benchmarks/rerank.py                        # Market-1501 and MSMT17 sizes
    python benchmarks/rerank.py --sizes 200x1000 --dim 128
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from features import IdentityFeatureConfig, identity_features
from machine import (busy_warning, describe_machine, load_average, machine_lines,
                     peak_rss_growth_kib, reset_peak_rss)

from pplr_fast.evaluation import evaluate_ranking
from pplr_fast.rerank import re_rank_features, re_ranking
from pplr_fast.utils.memory import available_memory
from pplr_fast.utils.timing import StageClock

GIB, MIB = 1024 ** 3, 1024 ** 2
SIZES = {"market1501": (3368, 15913), "msmt17": (11659, 82161)}
ROWS = ("numpy re_ranking", "pplr_fast re_ranking", "pplr_fast re_rank_features")
# bytes per entry of the (Q+G)^2 matrices the numpy baseline holds at its peak:
# D (float32) + argsort's int64 indices + their int32 copy, or D + ranks + V + V_qe
NUMPY_BYTES_PER_ENTRY = 16


# --------------------------------------------------------------------------- the baseline

def numpy_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3, timings=None):
    """The widely copied re-ranking (Zhong et al., CVPR 2017) as users run it: the baseline.

    Dense (Q+G)^2 matrices, one full argsort, Python loops over the images,
    float32 throughout; the same semantics as pplr_fast.rerank.re_ranking.
    """
    clock = StageClock(timings=timings)         # host work only: nothing to synchronise
    q = q_g_dist.shape[0]
    n = q + q_g_dist.shape[1]
    blocks = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                             np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    squared = np.power(blocks, 2).astype(np.float32)
    del blocks
    dist = np.transpose(squared / np.max(squared, axis=0))     # row i: column i over its maximum
    del squared
    clock.lap("scale")
    rank = np.argsort(dist).astype(np.int32)
    clock.lap("argsort")

    def reciprocal(i, k, rank=rank):
        forward = rank[i, :k + 1]
        backward = rank[forward, :k + 1]
        return forward[np.where(backward == i)[0]]

    half = int(np.around(k1 / 2.))
    v = np.zeros_like(dist, dtype=np.float32)
    for i in range(n):
        neighbours = reciprocal(i, k1)
        members = neighbours
        for candidate in neighbours:
            theirs = reciprocal(candidate, half)
            if len(np.intersect1d(theirs, neighbours)) > 2. / 3 * len(theirs):
                members = np.append(members, theirs)
        members = np.unique(members)
        weight = np.exp(-dist[i, members])
        v[i, members] = weight / np.sum(weight)
    clock.lap("encoding")
    if k2 != 1:
        expanded = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            expanded[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = expanded
        del expanded
    del rank
    clock.lap("query expansion")
    holders = [np.where(v[:, column] != 0)[0] for column in range(n)]
    clock.lap("inverted index")
    jaccard = np.zeros((q, n), dtype=np.float32)
    for i in range(q):
        overlap = np.zeros(n, dtype=np.float32)
        for column in np.where(v[i] != 0)[0]:
            rows = holders[column]
            overlap[rows] = overlap[rows] + np.minimum(v[i, column], v[rows, column])
        jaccard[i] = 1 - overlap / (2. - overlap)
    clock.lap("jaccard")
    out = jaccard * (1 - lambda_value) + dist[:q] * lambda_value
    clock.lap("combine")
    return out[:, q:]


# --------------------------------------------------------------------------- measuring

def release_free_memory() -> None:
    """Hand freed heap memory back to the system, so that the next peak counts its own pages."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_growth(run):
    """``(result, seconds, peak MiB)``: run() with the growth of the peak RSS it caused."""
    release_free_memory()
    before = reset_peak_rss()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    growth = peak_rss_growth_kib(before)
    return result, seconds, growth / 1024 if growth is not None else None


def query_gallery_split(identity: torch.Tensor, q: int, seed: int):
    """Query indices (identities with another image) and gallery indices, and camera ids."""
    rng = np.random.default_rng(seed)
    identity = identity.numpy()
    counts = np.bincount(identity)
    eligible = np.nonzero(counts[identity] >= 2)[0]
    if len(eligible) < q:
        raise SystemExit(f"error: only {len(eligible)} images can be queries; ask for fewer")
    query = np.sort(rng.choice(eligible, q, replace=False))
    gallery = np.setdiff1d(np.arange(len(identity)), query)
    cameras = rng.integers(0, 6, len(identity))
    return query, gallery, cameras


def euclidean_blocks(qf: torch.Tensor, gf: torch.Tensor):
    """q-g, q-q and g-g Euclidean distances of normalised features (float32 numpy)."""
    def distance(a, b):
        return (2 - 2 * a @ b.T).clamp_(min=0).sqrt_().numpy()
    return distance(qf, gf), distance(qf, qf), distance(gf, gf)


def metrics(distmat, ids) -> dict:
    m = evaluate_ranking(torch.as_tensor(distmat), *ids)
    return {key: m[key] for key in ("mAP", "rank1", "mINP")}


def measure_size(args, label: str, q: int, g: int) -> list[dict]:
    n = q + g
    rows = {name: {"size": label, "Q": q, "G": g, "row": name} for name in ROWS}
    x, _, identity = identity_features(n, args.dim, parts=1, seed=args.seed)
    query, gallery, cameras = query_gallery_split(identity, q, args.seed)
    qf, gf = x[query].contiguous(), x[gallery].contiguous()
    del x
    ids = (identity[query], identity[gallery], cameras[query], cameras[gallery])
    limit = available_memory() if args.memory_limit_gib is None else min(
        available_memory(), int(args.memory_limit_gib * GIB))
    distance_bytes = 4 * (q * g + q * q + g * g)
    numpy_bytes = NUMPY_BYTES_PER_ENTRY * n * n + distance_bytes
    fast_bytes = 4 * q * g + 4 * n * args.dim + 256 * MIB

    plain = reranked_numpy = None
    if distance_bytes + 4 * q * g > 0.9 * limit:
        for name in ROWS[:2]:
            rows[name]["status"] = (f"skipped: the three distance matrices alone need "
                                    f"{distance_bytes / GIB:.3g} GiB")
            rows[name]["needs_gib"] = distance_bytes / GIB
        plain_metrics = None
    else:
        blocks, distance_seconds, _ = peak_growth(lambda: euclidean_blocks(qf, gf))
        plain_metrics = metrics(blocks[0], ids)
        if numpy_bytes > 0.9 * limit or "numpy" not in args.rows:
            rows[ROWS[0]]["status"] = (f"refused: needs {numpy_bytes / GIB:.3g} GiB"
                                       if "numpy" in args.rows else "not run (--rows)")
            rows[ROWS[0]]["needs_gib"] = numpy_bytes / GIB
        else:
            timings = {"distances": distance_seconds}
            reranked_numpy, seconds, peak = peak_growth(
                lambda: numpy_re_ranking(*blocks, args.k1, args.k2, args.lam, timings))
            rows[ROWS[0]].update(status="ok", seconds=timings, total=seconds,
                                 peak_host_mib=peak, metrics=metrics(reranked_numpy, ids))
        timings = {"distances": distance_seconds}
        plain, seconds, peak = peak_growth(
            lambda: re_ranking(*blocks, args.k1, args.k2, args.lam, timings=timings))
        rows[ROWS[1]].update(status="ok", seconds=timings, total=seconds, peak_host_mib=peak,
                             metrics=metrics(plain, ids))
        del blocks
    if fast_bytes > 0.9 * limit:
        rows[ROWS[2]]["status"] = f"refused: needs {fast_bytes / GIB:.3g} GiB"
        rows[ROWS[2]]["needs_gib"] = fast_bytes / GIB
    elif n > args.features_max_n:
        status = f"not run: N = {n} > --features-max-n {args.features_max_n}"
        if args.features_measured:          # its distance GEMM grows as N^2
            n0, seconds0 = args.features_measured
            status += f"; about {seconds0 * (n / n0) ** 2:.0f} s extrapolated from N = {n0} as N^2"
        rows[ROWS[2]]["status"] = status
    else:
        timings = {}
        from_features, seconds, peak = peak_growth(
            lambda: re_rank_features(qf, gf, args.k1, args.k2, args.lam, timings=timings))
        rows[ROWS[2]].update(status="ok", seconds=timings, total=seconds, peak_host_mib=peak,
                             metrics=metrics(from_features, ids))
        args.features_measured = (n, seconds)
        if plain_metrics is None:
            plain_metrics = metrics(torch.cdist(qf, gf), ids)
        if plain is not None:
            rows[ROWS[2]]["max_abs_diff_vs_re_ranking"] = float(
                np.abs(from_features.numpy() - plain).max())
    for row in rows.values():
        row["plain_metrics"] = plain_metrics
    if reranked_numpy is not None:
        rows[ROWS[1]]["max_abs_diff_vs_numpy"] = float(np.abs(plain - reranked_numpy).max())
        rows[ROWS[1]]["same_map_4_decimals"] = (round(rows[ROWS[0]]["metrics"]["mAP"], 4)
                                                == round(rows[ROWS[1]]["metrics"]["mAP"], 4))
        base = rows[ROWS[0]]["total"]
        rows[ROWS[1]]["times_faster"] = base / rows[ROWS[1]]["total"]
        if rows[ROWS[2]].get("status") == "ok":
            rows[ROWS[2]]["times_faster"] = ((base + rows[ROWS[0]]["seconds"]["distances"])
                                             / rows[ROWS[2]]["total"])
    return list(rows.values())


# --------------------------------------------------------------------------- reporting

def seconds_text(row: dict) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in row["seconds"].items())


def markdown_report(result: dict) -> str:
    cfg = result["config"]
    lines = ["# Test-time re-ranking on the CPU: numpy baseline vs pplr_fast.rerank", "",
             *machine_lines(result["machine"]),
             f"Features: {result['generator']['name']} (seed {cfg['seed']}, D = {cfg['dim']}, "
             "L2-normalised), random camera ids; "
             f"k1 = {cfg['k1']}, k2 = {cfg['k2']}, lambda = {cfg['lam']}. One run per row.", ""]
    if result.get("warning"):
        lines += [result["warning"], ""]
    lines += ["| size (Q x G) | row | total s | × faster | peak host MiB | mAP plain → re-ranked "
              "| rank-1 | mINP | max Δ vs numpy | stages (s) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        size = f"{row['size']} ({row['Q']} x {row['G']})"
        if row["status"] != "ok":
            lines.append(f"| {size} | {row['row']} | {row['status']} | | | | | | | |")
            continue
        plain, m = row["plain_metrics"], row["metrics"]
        diff = row.get("max_abs_diff_vs_numpy", row.get("max_abs_diff_vs_re_ranking"))
        diff_text = "" if diff is None else f"{diff:.1e}" + (
            " (vs fast re_ranking)" if "max_abs_diff_vs_re_ranking" in row else "")
        faster = f"{row['times_faster']:.0f}x" if "times_faster" in row else ""
        peak = "" if row["peak_host_mib"] is None else f"{row['peak_host_mib']:.0f}"
        lines.append(f"| {size} | {row['row']} | {row['total']:.2f} | {faster} | {peak} | "
                     f"{plain['mAP']:.4f} → {m['mAP']:.4f} | {plain['rank1']:.4f} → {m['rank1']:.4f} "
                     f"| {plain['mINP']:.4f} → {m['mINP']:.4f} | {diff_text} | {seconds_text(row)} |")
    lines += ["", "total s: the call itself (the distances stage is listed apart and not in the "
              "re_ranking rows' totals; re_rank_features computes its own distances, so its "
              "× faster compares it with distances + numpy). Peak host MiB: growth of the peak "
              "RSS during the call. max Δ: largest |difference| of the re-ranked distances.",
              *(f"Note: {note}" for note in result["notes"])]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["market1501", "msmt17"],
                   help="market1501, msmt17 or QxG (e.g. 200x1000)")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lambda", dest="lam", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", nargs="+", default=["numpy", "fast"], choices=("numpy", "fast"),
                   help="leave out the numpy baseline with --rows fast")
    p.add_argument("--features-max-n", type=int, default=40000,
                   help="run re_rank_features only up to this Q+G (its GEMM grows as N^2 D)")
    p.add_argument("--memory-limit-gib", type=float, default=None,
                   help="treat only this much memory as available (see a refusal on a big machine)")
    p.add_argument("--threads", type=int, default=None, help="torch / OpenMP threads")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args(argv)


def size_of(text: str) -> tuple[str, int, int]:
    if text in SIZES:
        return (text, *SIZES[text])
    try:
        q, g = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --sizes takes market1501, msmt17 or QxG, got {text!r}") from None
    return text, q, g


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_limit_gib is not None:
        os.environ["PPLR_FAST_MEMORY_LIMIT_GIB"] = str(args.memory_limit_gib)
    args.features_measured = None
    load_before = load_average()
    rows, notes = [], []
    for text in args.sizes:
        rows += measure_size(args, *size_of(text))
    machine = describe_machine("cpu")
    result = {"machine": machine, "load_before": load_before, "load_after": load_average(),
              "warning": busy_warning(load_before, machine["usable_cores"] or machine["cores"]),
              "generator": IdentityFeatureConfig().describe(), "config": vars(args),
              "rows": rows, "notes": notes}
    report = markdown_report(result)
    print(report)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "rerank_cpu")
    with open(stem + ".md", "w") as handle:
        handle.write(report)
    with open(stem + ".json", "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"wrote {stem}.md and .json")
    return result


if __name__ == "__main__":
    main()
