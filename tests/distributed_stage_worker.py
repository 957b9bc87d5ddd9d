"""One rank of the distributed clustering-stage tests (started by test_cluster_distributed.py).

Reads the inputs the test saved, joins a gloo group over TCP, runs
:func:`run_distributed_cluster_stage` on its block (or on the whole features
with --gathered) and saves what it got. ``--fail raise`` makes this rank's
encoding raise, ``--fail exit`` makes the process die there; ``--fail ring``
and ``--fail ring-exit`` do that in the kNN ring's second step (after a block
arrived). ``--forbid-feature-gather`` makes any collective that would move
more than one block of features at once fail (the ring mode must not).
"""
import argparse
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from pplr_fast.cluster import distributed_stage, row_blocks
from pplr_fast.cluster.distributed_stage import DistributedStageError, run_distributed_cluster_stage


def forbid_feature_gather(dim: int, block_rows: int) -> None:
    """Make every collective and receive that would move features of more rows than one
    block holds, or any all_gather / all_to_all of features, raise."""
    def is_features(t):
        return t.dtype.is_floating_point and t.dim() >= 2 and t.shape[1] == dim

    def guarded(name, op):
        def run(*args, **kwargs):
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            for a in args:
                if isinstance(a, list):
                    tensors += [getattr(t, "tensor", t) for t in a]   # tensors, or P2POps
            for t in tensors:
                if is_features(t) and (name != "batch_isend_irecv" or t.shape[0] > block_rows):
                    raise RuntimeError(f"{name} moved features of shape {tuple(t.shape)}")
            return op(*args, **kwargs)
        return run
    for name in ("all_gather", "all_gather_into_tensor", "all_to_all_single", "gather",
                 "broadcast", "all_reduce", "batch_isend_irecv"):
        setattr(dist, name, guarded(name, getattr(dist, name)))


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--rank", "--world", "--port"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail", choices=("none", "raise", "exit", "ring", "ring-exit"),
                        default="none")
    parser.add_argument("--forbid-feature-gather", action="store_true")
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
    if args.fail in ("raise", "exit") and args.rank == args.fail_rank:
        def broken(*_args, **_kwargs):
            if args.fail == "exit":
                os._exit(3)
            raise RuntimeError("injected failure")
        distributed_stage.row_blocks.encode_rows = broken
        distributed_stage.row_blocks.expand_rows = broken
    if args.fail in ("ring", "ring-exit") and args.rank == args.fail_rank:
        visit, visits = row_blocks.RingNeighbours.visit, []

        def broken_visit(self, x_cols, c0):
            visits.append(c0)
            if len(visits) == 2:
                if args.fail == "ring-exit":
                    os._exit(3)
                raise RuntimeError("injected failure in the ring")
            return visit(self, x_cols, c0)
        row_blocks.RingNeighbours.visit = broken_visit
    if args.forbid_feature_gather:
        forbid_feature_gather(x_g.shape[1], max(job["counts"]))
    try:
        params = dict(job["params"], **job.get("rank_params", {}).get(args.rank, {}))
        result = run_distributed_cluster_stage(x_g, x_p, gathered=job["gathered"], **params)
    except DistributedStageError as err:
        print(f"STAGE ERROR: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    torch.save({"labels": result.labels, "scores": result.scores, "rows": result.rows,
                "received": result.received_bytes, "timings": result.timings}, args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
