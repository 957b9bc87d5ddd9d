"""Fast exact kNN: low-precision GEMM filter + fp64 re-rank (see ``knn.py``).

Why it is exact. For rows x_i, x_j and their low-precision copies x~, the
computed low-precision score s_ij differs from the exact similarity a_ij by at
most ``c_i + u |s_ij|`` where u is the unit roundoff of the score's dtype and

    c_i = rho_i M + |x_i| rho_max + rho_i rho_max + (accumulation rounding)

with ``rho_i = |x~_i - x_i|`` measured on the data and M = max_j |x_j|
(Cauchy-Schwarz on ``x~_i x~_j - x_i x_j``). Columns that cannot reach the
k-th best similarity under that bound are dropped; every other column is
re-ranked with fp64 distances (as the reference ranks). A row whose candidate
set is unusually large (nearly equidistant data) is finished with an exact
fp64 GEMM row instead.

CPU: bf16 GEMM (oneDNN/MKL, ~4-5x faster than fp32 on CPUs with native bf16)
over the upper triangle only — each block of scores serves its rows and,
transposed, its columns — streamed into the C++ selection of
``csrc/cpu/knn_cpu.cpp`` (a running top-k threshold per row and the columns
that can still reach it). Without native bf16 (AVX2-only CPUs, where bf16
GEMMs are emulated and slow) the filter is the fp32 GEMM over the same upper
triangle (x~ = x, so rho = 0 and only the accumulation bound remains), with
the same C++ selection and fp64 re-rank. CUDA: fp16 cuBLAS GEMM + torch.topk
+ a Triton kernel for the fp64 re-rank.
"""
from __future__ import annotations

import contextlib
import functools
import os

import numpy as np
import torch

from .knn import pairwise_sq_distance

BLOCK_BYTES = 256 * 1024 ** 2     # score block (rows x N) kept in memory at once
CANDIDATE_CAP = 4096              # candidates per row before the fp32 fallback


@contextlib.contextmanager
def ieee_matmul():
    """fp32 GEMMs with plain fp32 arithmetic, whatever the caller's settings.

    The error bounds assume it: on a GPU no TF32, no fp16 accumulation, no
    reduced-precision split-K reductions; on a CPU no bf16/TF32 internal
    arithmetic for fp32 inputs (``torch.backends.mkldnn.matmul.fp32_precision``).
    The caller's settings are restored.
    """
    matmul = torch.backends.cuda.matmul
    names = [name for name in ("allow_tf32", "allow_fp16_accumulation",
                               "allow_fp16_reduced_precision_reduction") if hasattr(matmul, name)]
    saved = {name: getattr(matmul, name) for name in names}
    if hasattr(matmul, "allow_fp16_reduced_precision_reduction_split_k"):
        saved["allow_fp16_reduced_precision_reduction"] = (
            matmul.allow_fp16_reduced_precision_reduction,
            matmul.allow_fp16_reduced_precision_reduction_split_k)
    cpu = getattr(torch.backends.mkldnn, "matmul", None)
    cpu_precision = getattr(cpu, "fp32_precision", None)
    for name in names:
        setattr(matmul, name, False)
    if cpu_precision is not None:
        cpu.fp32_precision = "ieee"
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(matmul, name, value)
        if cpu_precision is not None:
            cpu.fp32_precision = cpu_precision


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512-BF16 or AMX)."""
    override = os.environ.get("PPLR_FAST_KNN_PRECISION")
    if override in ("bf16", "fp32"):
        return override == "bf16"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def rounding_error_bounds(x: torch.Tensor, x_low: torch.Tensor, accumulate_roundoff: float
                          ) -> torch.Tensor:
    """Per-row c_i (float64, see module docstring).

    ``x_low - x`` is exact in fp32 (Sterbenz: a rounding stays within a factor
    2 of its input), and an fp32 norm over D terms is within D * 2^-24 of the
    true one, so the norms are computed in fp32 and inflated by that much.
    """
    d = x.shape[1]
    slack = 1 + 2 * (d + 1) * 2.0 ** -24
    rho = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    step = max(1, BLOCK_BYTES // (4 * max(1, x.shape[1])))
    for r0 in range(0, x.shape[0], step):
        rho[r0:r0 + step] = (x_low[r0:r0 + step].float() - x[r0:r0 + step]).norm(dim=1)
    rho = rho.double() * slack
    norm = x.float().norm(dim=1).double() * slack
    big, rho_max = float(norm.max()), float(rho.max())
    gamma = 1.01 * d * accumulate_roundoff
    accumulation = gamma * ((norm + rho) * (big + rho_max) + norm * big)
    return rho * big + norm * rho_max + rho * rho_max + accumulation + 1e-6


def block_rows(n: int, bytes_per_entry: int) -> int:
    return max(16, min(n, BLOCK_BYTES // max(1, bytes_per_entry * n)))


def nearest_neighbours_fast(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN, rows sorted by (fp64 distance, index). Returns (dist, index)."""
    k = min(k, x.shape[0])
    if x.is_cuda:
        from .fast_knn_cuda import nearest_neighbours_cuda
        return nearest_neighbours_cuda(x, k)
    return nearest_neighbours_cpu(x.float().contiguous(), k)


def exact_rows_topk(x: torch.Tensor, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of the given rows from exact fp64 distances to every row."""
    from pplr_fast import _knn
    return _knn.topk_from_distances(pairwise_sq_distance(x[torch.from_numpy(rows)], x).numpy(), k)


def nearest_neighbours_cpu(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    from pplr_fast import _knn
    n = x.shape[0]
    dist = np.empty((n, k), dtype=np.float64)
    index = np.empty((n, k), dtype=np.int64)
    if cpu_has_native_bf16():     # bf16 scores (2 bytes), rounded to bf16: u = 2^-8
        x_low, output_roundoff, score_bytes = x.bfloat16(), 2.0 ** -8, 2
    else:                         # fp32 scores are the fp32 accumulator itself
        x_low, output_roundoff, score_bytes = x, 0.0, 4
    bounds = rounding_error_bounds(x, x_low, 2.0 ** -24).numpy()
    selection = _knn.SymmetricTopK(n, k, bounds, output_roundoff)
    # Block rows [r0, r1) x columns [r0, n): the blocks cover the upper triangle,
    # half the GEMM. ~6 blocks is enough; memory caps the block at BLOCK_BYTES.
    block = min(block_rows(n, score_bytes), max(512, -(-n // 6)))
    for r0 in range(0, n, block):
        with ieee_matmul():
            scores = x_low[r0:r0 + block] @ x_low[r0:].T
        if score_bytes == 2:
            selection.consume_bf16(scores.view(torch.int16).numpy().view(np.uint16), r0)
        else:
            selection.consume_fp32(scores.numpy(), r0)
        del scores
    dist[:], index[:], overflow = selection.finish(x.numpy(), CANDIDATE_CAP)
    overflowing = np.flatnonzero(overflow)
    step = block_rows(n, 8)
    for r0 in range(0, len(overflowing), step):
        rows = overflowing[r0:r0 + step]
        dist[rows], index[rows] = exact_rows_topk(x, rows, k)
    return torch.from_numpy(dist), torch.from_numpy(index)
