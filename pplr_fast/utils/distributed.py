"""torch.distributed glue: one process without torchrun behaves exactly as before.

Under ``torchrun --nproc_per_node=K`` every rank runs the trainer; feature
extraction is sharded and gathered, the ranks share the clustering stage
(``pplr_fast.cluster.distributed_stage``) and all get the same pseudo-labels and
scores, the sampler splits identity groups across ranks, and only rank 0 logs
and writes checkpoints.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> torch.device:
    """Join the process group started by torchrun; returns this rank's device."""
    if not launched_by_torchrun():
        return torch.device(device_type if device_type != "cuda" else "cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return device


def shutdown() -> None:
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shard_range(n: int) -> range:
    """This rank's contiguous share of ``range(n)``."""
    size, r = world_size(), rank()
    return range(n * r // size, n * (r + 1) // size)


def gather_shards(local: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate every rank's shard (rank order) on every rank."""
    if not is_initialized():
        return local
    size = world_size()
    counts = [total * (r + 1) // size - total * r // size for r in range(size)]
    longest = max(counts)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[:local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(pieces, counts)])


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world_size()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
