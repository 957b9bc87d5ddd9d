"""Time, bytes and memory of the fast clustering stage shared by K ranks.

``--ranks K ...``: the fast path's stage shared by K ranks
(``pplr_fast.cluster.distributed_stage``), for every K given: the script
starts K processes on this machine (a gloo group on CPU, NCCL on CUDA, one
GPU per rank), each with T / K threads (T = --threads, default the core
count), each holding its block of the features; it reports each rank's
seconds per stage (median of --repeat runs after a warm-up), its rows and
the bytes it received and sent, and whether every rank's labels and scores
equal K = 1's. The per-rank work and bytes are what predict a multi-node run.
``--features gather ring`` (default both): rows with the features gathered on
every rank, and rows with only each rank's block kept and the blocks passed
around a ring; "peak MiB" is the rank's peak resident memory during the stage
above what it held before it (Linux: VmHWM after a reset through clear_refs).

Features: the seeded identity-structured generator of ``benchmarks/features.py``.
Output: a markdown table on stdout, and ``cluster_stage_ranks_<device>.{md,json}``
in ``--out``. The single-process benchmark over sizes N is ``benchmarks/cluster_stage.py``
(which forwards ``--ranks`` here).

Usage: python benchmarks/cluster_ranks.py --ranks 1 2 [--features gather ring] [--threads T]
       [--n 12936 ...] [--dim 2048] [--parts 3] [--device cpu|cuda] [--repeat 3]
       [--eps 0.6] [--timeout S] [--shared-note TEXT] [--out DIR]
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from features import IdentityFeatureConfig, identity_features
from machine import (MIB, busy_warning, describe_machine, load_average, machine_lines,
                     peak_rss_growth_kib, reset_peak_rss, seconds_text)

from pplr_fast.cluster.stage import STAGES

RANK_STAGES = ("features", *STAGES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", required=True,
                        help="measure the fast stage shared by K ranks, for each K given "
                             "(started here); see the module docstring")
    parser.add_argument("--n", type=int, nargs="+", help="sizes N (default: 12936)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension D")
    parser.add_argument("--parts", type=int, default=3, help="number of parts N_p")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--eps", type=float, help="DBSCAN eps (default 0.6)")
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--min-samples", type=int, default=4)
    parser.add_argument("--k", type=int, default=20, help="cross-agreement neighbours")
    parser.add_argument("--seed", type=int, default=0, help="feature generator seed")
    parser.add_argument("--threads", type=int,
                        help="threads shared by the ranks of one measurement (default: the "
                             "core count)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds per measurement (every rank of one K and mode)")
    parser.add_argument("--features", nargs="+", choices=("gather", "ring"),
                        default=["gather", "ring"],
                        help="the stage's feature modes to measure (default both)")
    parser.add_argument("--shared-note", help="a line for the table header (e.g. that "
                        "the machine was shared while it ran)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results"))
    args = parser.parse_args(argv)
    if min(args.ranks) < 1:
        parser.error("--ranks takes K >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


RANK_STAGES = ("features", *STAGES)


def rank_worker(payload: str) -> None:
    """One rank of a --ranks measurement: prints its JSON row."""
    from datetime import timedelta

    import torch.distributed as dist

    from pplr_fast.cluster.distributed_stage import block_bounds, run_distributed_cluster_stage
    job = json.loads(payload)
    args = argparse.Namespace(**job["config"])
    rank, world = job["rank"], job["world"]
    torch.set_num_threads(job["threads"])
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{job['port']}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=args.timeout))
    n = job["n"]
    x_g, x_p, _ = identity_features(n, args.dim, args.parts, args.seed)
    bounds = block_bounds([n * (r + 1) // world - n * r // world for r in range(world)])
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    x_g = x_g[bounds[rank]:bounds[rank + 1]].clone().to(device)   # the whole features go
    x_p = x_p[bounds[rank]:bounds[rank + 1]].clone().to(device)
    gc.collect()
    runs, peak = [], 0
    for _ in range(1 + args.repeat):          # the first is the warm-up
        dist.barrier()
        before = reset_peak_rss()
        result = run_distributed_cluster_stage(
            x_g, x_p, eps=args.eps, k1=args.k1, k2=args.k2, min_samples=args.min_samples,
            k=args.k, backend="fast", dbscan_on=job["dbscan_on"], features=job["features"])
        runs.append(result.timings)
        growth = peak_rss_growth_kib(before)
        peak = max(peak, growth * 1024) if growth is not None else None
    median = {key: statistics.median(r[key] for r in runs[1:]) for key in runs[1]}
    digest = hashlib.sha1(result.labels.cpu().numpy().tobytes()
                          + result.scores.cpu().numpy().tobytes()).hexdigest()
    print(json.dumps({"rank": rank, "rows": list(result.rows), "seconds": median,
                      "received": result.received_bytes, "sent": result.sent_bytes,
                      "peak_bytes": peak, "digest": digest, "clusters": result.num_clusters,
                      "outliers": result.num_outliers, "ran": result.backend}))
    dist.destroy_process_group()


def measure_ranks(args: argparse.Namespace, n: int, world: int, dbscan_on: str,
                  features: str) -> list[dict]:
    """Start ``world`` ranks on this machine; one row per rank."""
    with socket_for_port() as port:
        pass
    threads = max(1, (args.threads or os.cpu_count() or 1) // world)
    config = vars(args)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--rank-worker", json.dumps(
            {"config": config, "n": n, "rank": r, "world": world, "port": port,
             "threads": threads, "dbscan_on": dbscan_on, "features": features})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        for r in range(world)]
    rows = []
    for r, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            out, err = "", f"timed out after {args.timeout:g} s"
        base = {"n": n, "ranks": world, "threads_per_rank": threads, "dbscan_on": dbscan_on,
                "features": features, "rank": r}
        if proc.returncode == 0:
            rows.append({**base, "status": "ok", **json.loads(out.strip().splitlines()[-1])})
        else:
            reason = (err.strip().splitlines() or ["no output"])[-1][:300]
            rows.append({**base, "status": f"failed: {reason}"})
    return rows


class socket_for_port:
    """A free TCP port on 127.0.0.1 (the rendezvous of one --ranks measurement)."""

    def __enter__(self) -> int:
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def ranks_report(result: dict) -> str:
    config = result["config"]
    lines = [f"# Clustering stage over K ranks (fast path), {config['device']}", ""]
    machine = result["machine"]
    lines += machine_lines(machine)
    lines.append(f"Load average before / after: {result['load_before']} / {result['load_after']}.")
    lines += filter(None, [busy_warning(result["load_before"],
                                        machine.get("usable_cores") or machine.get("cores"))])
    if config.get("shared_note"):
        lines.append(f"Note: {config['shared_note']}")
    lines += ["", f"D = {config['dim']}, N_p = {config['parts']}, eps = {config['eps']}, k1 = "
              f"{config['k1']}, k2 = {config['k2']}, min_samples = {config['min_samples']}, k = "
              f"{config['k']}; median of {config['repeat']} run(s) after one warm-up; every "
              "rank on this one machine (gloo over loopback on CPU). Seconds per stage are "
              "each rank's own (local work and the collectives it waits in); 'features' is "
              "the all_gather of the feature blocks (the trainer skips it: its extraction "
              "already gathers them). Mode 'gather': every rank gathers the whole features; "
              "'ring': each rank keeps its block and the blocks visit every rank in turn "
              "(the kNN and the encoding's distances), O(N·D / K + N·k) memory per rank, "
              "each rank's rows against all N (twice the GEMM of the shared upper "
              "triangle). Peak MiB: the rank's peak resident memory during the stage above "
              "what it held before (its own feature block). MiB in / out: bytes this rank "
              "received / sent over the "
              "whole stage (loopback here, the network across nodes). 'same as K=1': this "
              "rank's labels and scores equal, bit for bit, those of the K = 1 run.", ""]
    for note in result["notes"]:
        lines.append(f"Note: {note}")
    header = ["N", "K", "mode", "threads / rank", "DBSCAN on", "rank", "rows", *RANK_STAGES,
              "total", "MiB in", "MiB out", "peak MiB", "clusters / outliers", "same as K=1"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for row in result["rows"]:
        head = [str(row["n"]), str(row["ranks"]), row.get("features", "gather"),
                str(row["threads_per_rank"]), row["dbscan_on"], str(row["rank"])]
        if row["status"] != "ok":
            lines.append("| " + " | ".join(head + [row["status"]] + [""] * (len(header) - 7))
                         + " |")
            continue
        sec = row["seconds"]
        cells = head + [f"[{row['rows'][0]}, {row['rows'][1]})",
                        *[seconds_text(sec.get(s)) for s in RANK_STAGES],
                        seconds_text(sec["total"]),
                        f"{sum(row['received'].values()) / MIB:.1f}",
                        f"{sum(row['sent'].values()) / MIB:.1f}",
                        "" if row.get("peak_bytes") is None else f"{row['peak_bytes'] / MIB:.0f}",
                        f"{row['clusters']} / {row['outliers']}",
                        {True: "yes", False: "NO", None: ""}[row.get("same_as_one_rank")]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bytes received per rank and stage (MiB):", "",
              "| N | K | mode | DBSCAN on | rank | " + " | ".join(RANK_STAGES) + " |",
              "|" + "---:|" * (5 + len(RANK_STAGES))]
    for row in result["rows"]:
        if row["status"] == "ok":
            lines.append(f"| {row['n']} | {row['ranks']} | {row.get('features', 'gather')} | "
                         f"{row['dbscan_on']} | {row['rank']} | "
                         + " | ".join(f"{row['received'].get(s, 0) / MIB:.2f}"
                                      for s in RANK_STAGES) + " |")
    return "\n".join(lines) + "\n"


def ranks_main(args: argparse.Namespace) -> dict:
    """--ranks: measure the stage over every K, write cluster_stage_ranks_<device>.{md,json}."""
    sizes = args.n or [12936]
    args.eps = 0.6 if args.eps is None else args.eps
    load_before = load_average()
    rows, notes = [], []
    for n in sizes:
        one_rank = None
        for features, world in [(f, w) for f in args.features for w in args.ranks]:
            gathering = features == "gather" and world > 1
            for dbscan_on in (("every", "one") if gathering else ("every",)):
                print(f"  N={n} K={world} {features} DBSCAN on {dbscan_on} ...", file=sys.stderr,
                      flush=True)
                measured = measure_ranks(args, n, world, dbscan_on, features)
                if world == 1 and one_rank is None and measured[0]["status"] == "ok":
                    one_rank = measured[0]["digest"]
                for row in measured:
                    if row["status"] == "ok" and one_rank is not None:
                        row["same_as_one_rank"] = row["digest"] == one_rank
                rows += measured
    if 1 not in args.ranks:
        notes.append("no K = 1 run: the 'same as K=1' column is empty")
    result = {"machine": describe_machine(args.device), "load_before": load_before,
              "load_after": load_average(), "generator": IdentityFeatureConfig().describe(),
              "config": dict(vars(args)),
              "stages": list(RANK_STAGES), "rows": rows, "notes": notes}
    report = ranks_report(result)
    print(report)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cluster_stage_ranks_{args.device}")
    with open(stem + ".md", "w") as handle:
        handle.write(report)
    with open(stem + ".json", "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"wrote {stem}.md and .json")
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rank-worker"]:         # one rank, started by measure_ranks
        rank_worker(argv[1])
        return {}
    return ranks_main(parse_args(argv))


if __name__ == "__main__":
    main()
