"""How much memory a device has free, and the one guard against allocations that would not fit.

Every memory check of the package goes through here: the clustering ops'
dense-matrix refusals, the re-ranking's output estimate, the GPU kNN's list
sizing. ``PPLR_FAST_MEMORY_LIMIT_GIB`` caps what counts as available (to leave
room for other jobs on a shared machine, or to see a refusal without a big
machine). A guard refuses what would take more than ``FIT_FRACTION`` of it,
with the estimate and the fix, instead of letting the process be killed
half-way.

A leaf module: it imports nothing of pplr_fast.
"""
from __future__ import annotations

import os

import torch

GIB = 1024 ** 3
MIB = 1024 ** 2
LIMIT_ENV = "PPLR_FAST_MEMORY_LIMIT_GIB"
FIT_FRACTION = 0.9     # what an allocation may take of the available memory


def measured_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free on ``device`` as the system reports them (CUDA: free device memory;
    CPU: MemAvailable of /proc/meminfo, else the available pages)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes that a new allocation on ``device`` can use now (capped by ``PPLR_FAST_MEMORY_LIMIT_GIB``)."""
    measured = measured_memory(device)
    limit = os.environ.get(LIMIT_ENV)
    return measured if not limit else min(measured, int(float(limit) * GIB))


def ensure_fits(nbytes: int, device: torch.device | str, what: str, hint: str, *,
                name_device: bool = True) -> None:
    """Raise ``MemoryError`` naming ``what``, its estimate, what is available and ``hint``
    (the fix) when ``nbytes`` would take more than FIT_FRACTION of the available memory.
    ``name_device=False`` leaves the device out of the message (the re-ranking's refusals,
    whose messages never named it)."""
    available = available_memory(device)
    if nbytes > FIT_FRACTION * available:
        where = f" on {torch.device(device)}" if name_device else ""
        raise MemoryError(
            f"refused: {what} needs about {nbytes / GIB:.1f} GiB but only "
            f"{available / GIB:.1f} GiB is available{where}; {hint}")
