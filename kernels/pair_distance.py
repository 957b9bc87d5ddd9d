"""Exact squared distances of a list of row pairs, in fp64: ``2 - 2 <x_r, x_c>`` or ``|x_r - x_c|^2``.

The re-rank step of the fast kNN and the distances of the Jaccard encoding
both need the distance of a few candidate pairs per row, never the full
N x N matrix. One program takes BLOCK_P pairs, gathers both fp32 rows in
BLOCK_D chunks and keeps a (BLOCK_P, BLOCK_D) fp64 partial-sum tile (a product
of two fp32 numbers is exact in fp64), reduced once at the end — the
precision every backend ranks neighbours with (see pplr_fast/cluster/common.py).

The block sizes depend on D only, so every call computes a given pair with
the same arithmetic: equal inputs give bit-equal distances (exact ties of
duplicated images stay ties), and d(r, c) == d(c, r).

Two forms, one kernel (a constexpr picks the term): ``pair_sq_distance``
(``2 - 2 <x_r, x_c>`` of fp32 rows, the clustering's distance of unit rows)
and ``pair_sq_difference`` (``sum (x_r - x_c)^2`` of fp32 or fp64 rows, the
re-ranking's distance of features of any norm, as the CPU re-ranking kernel).
"""
import torch
import triton
import triton.language as tl

from pplr_fast.kernels import LAUNCH

TILE_ELEMENTS = 1024      # BLOCK_P x BLOCK_D: the fp64 partial sums a program holds (4 warps)


@triton.jit(do_not_specialize=["n_pairs", "n_rows"])
def _pair_sq_distance_kernel(x_ptr, rows_ptr, cols_ptr, out_ptr, n_pairs, n_rows, dim, stride_x,
                             BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                             DIFFERENCE: tl.constexpr):
    """out[p] = 2 - 2 <x_r, x_c> (DIFFERENCE False) or sum_d (x_r - x_c)^2, in fp64."""
    pairs = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    valid = pairs < n_pairs
    r = tl.load(rows_ptr + pairs, mask=valid, other=0)
    c = tl.load(cols_ptr + pairs, mask=valid, other=0)
    valid = valid & (r >= 0) & (r < n_rows) & (c >= 0) & (c < n_rows)
    a_rows = x_ptr + r[:, None] * stride_x
    b_rows = x_ptr + c[:, None] * stride_x
    acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float64)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)[None, :]
        mask = valid[:, None] & (d < dim)
        a = tl.load(a_rows + d, mask=mask, other=0.0).to(tl.float64)
        b = tl.load(b_rows + d, mask=mask, other=0.0).to(tl.float64)
        if DIFFERENCE:
            acc += (a - b) * (a - b)
        else:
            acc += a * b
    total = tl.sum(acc, axis=1)
    if DIFFERENCE:
        tl.store(out_ptr + pairs, total, mask=pairs < n_pairs)
    else:
        tl.store(out_ptr + pairs, 2.0 - 2.0 * total, mask=pairs < n_pairs)


def block_sizes(dim: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_D), a function of D alone (see the module docstring)."""
    block_d = min(128, triton.next_power_of_2(max(1, dim)))
    return TILE_ELEMENTS // block_d, block_d


def _launch(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, difference: bool
            ) -> torch.Tensor:
    rows = rows.to(torch.int64).contiguous()
    cols = cols.to(torch.int64).contiguous()
    n_pairs = rows.numel()
    out = torch.empty(n_pairs, dtype=torch.float64, device=x.device)
    if n_pairs == 0:
        return out
    block_p, block_d = block_sizes(x.shape[1])
    _pair_sq_distance_kernel[(triton.cdiv(n_pairs, block_p),)](
        x, rows, cols, out, n_pairs, x.shape[0], x.shape[1], x.stride(0),
        BLOCK_P=block_p, BLOCK_D=block_d, DIFFERENCE=difference, num_warps=4, **LAUNCH)
    return out


def pair_sq_distance(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(P,) fp64 ``2 - 2 <x[rows[p]], x[cols[p]]>`` for int64 index vectors ``rows``, ``cols``."""
    return _launch(x.float().contiguous(), rows, cols, difference=False)


def pair_sq_difference(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(P,) fp64 squared Euclidean distances ``|x[rows[p]] - x[cols[p]]|^2``.

    For features of any norm (:func:`pair_sq_distance` is the same only for
    unit rows), fp32 or fp64 (other dtypes are taken as fp32), summed in fp64
    as the CPU's ``_rerank.pair_sq_distance``.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return _launch(x.contiguous(), rows, cols, difference=True)
