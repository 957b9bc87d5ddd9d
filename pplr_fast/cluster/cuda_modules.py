"""CUDA C kernels of ``csrc/cuda`` (package data ``pplr_fast.csrc_cuda``), compiled at run time.

CuPy compiles the sources with NVRTC (no compiler needed at install time),
caches the modules and launches them on torch's current stream; tensors are
shared zero-copy through DLPack. Only DBSCAN lives here: its union-find has no
natural Triton form.
"""
from __future__ import annotations

import functools
import importlib.resources
from typing import Callable

import torch

THREADS = 256
MAX_BLOCKS = 65535

# launch(kernel_name, items, *args): run a kernel over `items` work items
# (grid-stride loops); args are tensors and Python ints.
Launcher = Callable[..., None]


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:400]}"


@functools.lru_cache(maxsize=None)
def compiled_module(source_name: str):
    """A ``cupy.RawModule`` of one ``.cu`` file of ``pplr_fast.csrc_cuda`` (compiled once)."""
    import cupy

    source = importlib.resources.files("pplr_fast.csrc_cuda").joinpath(source_name).read_text()
    return cupy.RawModule(code=source)


def torch_stream_in_cupy(index: int):
    """torch's current stream on device ``index`` as a CuPy stream (a context manager)."""
    import cupy

    stream = torch.cuda.current_stream(index)
    if hasattr(cupy.cuda.Stream, "from_external"):      # CuPy >= 14
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, index)


def cupy_launcher(device: torch.device, source_name: str) -> Launcher:
    """Launch the kernels of ``source_name`` on ``device``, on torch's current stream."""
    import cupy
    import numpy as np

    module = compiled_module(source_name)
    index = device.index if device.index is not None else torch.cuda.current_device()

    def launch(kernel: str, items: int, *args) -> None:
        blocks = max(1, min(MAX_BLOCKS, -(-items // THREADS)))
        with cupy.cuda.Device(index), torch_stream_in_cupy(index):
            # inside the stream context, DLPack exchange needs no cross-stream sync
            cupy_args = tuple(cupy.from_dlpack(a) if isinstance(a, torch.Tensor) else np.int64(a)
                              for a in args)
            module.get_function(kernel)((blocks,), (THREADS,), cupy_args)

    return launch


def dbscan_labels(launch: Launcher, crow: torch.Tensor, col: torch.Tensor,
                  min_samples: int) -> torch.Tensor:
    """The host side of ``dbscan_cuda.cu``: init, hook/compress until stable, number, borders.

    ``launch`` runs the kernels: CuPy on a GPU, or the host emulation of the
    tests (tests/dbscan_emulation.cpp), so this loop is the one both exercise.
    """
    n = crow.numel() - 1
    device = crow.device
    core = torch.empty(n, dtype=torch.int32, device=device)
    parent = torch.empty(n, dtype=torch.int64, device=device)
    changed = torch.zeros(1, dtype=torch.int32, device=device)
    if n == 0:
        return parent
    launch("dbscan_init", n, crow, n, min_samples, core, parent)
    while True:                                  # hooking until a pass changes nothing
        changed.zero_()
        launch("dbscan_hook", n, crow, col, n, core, parent, changed)
        if not changed.item():
            break
        while True:                              # pointer jumping until every tree is flat
            changed.zero_()
            launch("dbscan_jump", n, n, parent, changed)
            if not changed.item():
                break
    is_core = core.bool()
    is_root = is_core & (parent == torch.arange(n, device=device))
    cluster_of_root = torch.cumsum(is_root, 0) - 1
    labels = torch.where(is_core, cluster_of_root[parent], -1).contiguous()
    launch("dbscan_border", n, crow, col, n, core, labels)
    return labels


def dbscan_cuda(crow: torch.Tensor, col: torch.Tensor, min_samples: int) -> torch.Tensor:
    """DBSCAN labels (int64, on the graph's device) of a symmetric CSR eps-neighbour graph."""
    crow = crow.to(torch.int64).contiguous()
    col = col.to(torch.int64).contiguous()
    return dbscan_labels(cupy_launcher(crow.device, "dbscan_cuda.cu"), crow, col, min_samples)


@functools.lru_cache(maxsize=None)
def cupy_problem() -> str | None:
    """None when CuPy compiles and runs the DBSCAN kernels here, else a one-line reason."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x, or pip install -e '.[gpu]')"
    except Exception as err:     # a broken CuPy install raises more than ImportError
        return f"CuPy fails to import ({one_line(err)}); reinstall it: pip install cupy-cuda12x"
    try:
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
        crow = torch.tensor([0, 2, 4], dtype=torch.int64, device="cuda")
        col = torch.tensor([0, 1, 0, 1], dtype=torch.int64, device="cuda")
        labels = dbscan_cuda(crow, col, 2).tolist()
    except Exception as err:     # NVRTC errors, driver/toolkit mismatches, missing libraries
        return f"CuPy cannot compile or launch the CUDA kernels here ({one_line(err)})"
    if labels != [0, 0]:
        return f"the CUDA DBSCAN self-check gave {labels} instead of [0, 0]"
    return None
