"""One rank of the distributed clustering-stage tests (started by test_cluster_distributed.py).

Reads the inputs the test saved, joins a gloo group over TCP, runs
:func:`run_distributed_cluster_stage` on its block (or on the whole features
with --gathered) and saves what it got. ``--fail raise`` makes this rank's
encoding raise, ``--fail exit`` makes the process die there.
"""
import argparse
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from pplr_fast.cluster import distributed_stage
from pplr_fast.cluster.distributed_stage import DistributedStageError, run_distributed_cluster_stage


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--rank", "--world", "--port"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail", choices=("none", "raise", "exit"), default="none")
    parser.add_argument("--fail-rank", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world, timeout=timedelta(seconds=args.timeout))
    job = torch.load(args.inputs)
    x_g, x_p = job["x_g"], job["x_p"]
    if not job["gathered"]:
        bounds = distributed_stage.block_bounds(job["counts"])
        x_g = x_g[bounds[args.rank]:bounds[args.rank + 1]]
        x_p = x_p[bounds[args.rank]:bounds[args.rank + 1]]
    if args.fail != "none" and args.rank == args.fail_rank:
        def broken(*_args, **_kwargs):
            if args.fail == "exit":
                os._exit(3)
            raise RuntimeError("injected failure")
        distributed_stage.api.encode_rows = broken
    try:
        result = run_distributed_cluster_stage(x_g, x_p, gathered=job["gathered"], **job["params"])
    except DistributedStageError as err:
        print(f"STAGE ERROR: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    torch.save({"labels": result.labels, "scores": result.scores, "rows": result.rows,
                "received": result.received_bytes, "timings": result.timings}, args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
