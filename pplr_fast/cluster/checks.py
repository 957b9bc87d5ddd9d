"""Input validation and memory guards shared by the clustering-stage ops."""
from __future__ import annotations

import os

import torch

GIB = 1024 ** 3


class ClusterInputError(ValueError):
    """Features or arguments the clustering stage cannot work with."""


def check_features(x: torch.Tensor, name: str = "features") -> None:
    """Rows must be finite and L2-normalised (SPEC §2 inputs)."""
    if not isinstance(x, torch.Tensor):
        raise ClusterInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ClusterInputError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ClusterInputError(f"{name} is empty: the clustering stage needs at least one image")
    if not x.dtype.is_floating_point:
        raise ClusterInputError(f"{name} must be floating point, got {x.dtype}")
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise ClusterInputError(
            f"{name} has NaN or Inf values in {bad.numel()} row(s) (first: row {int(bad[0])}); "
            "the model produced non-finite features — lower the learning rate or check the "
            "input images")
    norms = x.float().norm(dim=1)
    off = (norms - 1).abs()
    if bool((off > 1e-3).any()):
        i = int(off.argmax())
        raise ClusterInputError(
            f"{name} rows must be L2-normalised (row {i} has norm {float(norms[i]):.4g}); "
            "call torch.nn.functional.normalize(x, dim=1) first")


def check_k(name: str, k: int, minimum: int = 1) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < minimum:
        raise ClusterInputError(f"{name} must be an integer >= {minimum}, got {k!r}")


def available_memory(device: torch.device) -> int:
    """Bytes that a new allocation on ``device`` can use right now.

    ``PPLR_FAST_MEMORY_LIMIT_GIB`` caps it (e.g. to leave room for other jobs
    on a shared machine, or to see a refusal without a big machine).
    """
    measured = _measured_memory(device)
    limit = os.environ.get("PPLR_FAST_MEMORY_LIMIT_GIB")
    return measured if not limit else min(measured, int(float(limit) * GIB))


def _measured_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def ensure_fits(nbytes: int, device: torch.device, what: str, hint: str) -> None:
    """Refuse, with an estimate, an allocation that would not fit in memory.

    Raises ``MemoryError`` instead of letting the process be killed half-way.
    """
    avail = available_memory(device)
    if nbytes > 0.9 * avail:
        raise MemoryError(
            f"refused: {what} needs about {nbytes / GIB:.1f} GiB but only "
            f"{avail / GIB:.1f} GiB is available on {device}; {hint}")
