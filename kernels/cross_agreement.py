"""Cross-agreement scores on a GPU (docs/method.md §2.3; CUDA twin of ``cross_agreement_cpu.cpp``).

One launch over (rows x parts). A program takes row i's global kNN list and
its list in part space n, keeps in each the first ``size = min(k, N - 1)``
entries other than i (lists hold distinct indices, so "other than i" just
skips i's own position), counts the common indices with a pairwise compare of
the two short lists and writes ``common / (|G| + |P| - common)`` (0 for an
empty union), divided with IEEE rounding so that the scores equal the CPU and
reference ones bit for bit.
"""
import torch
import triton
import triton.language as tl

from pplr_fast.kernels import LAUNCH


@triton.jit
def _kept_entries(list_ptr, i, length, size, t):
    """Entries t of a list, and which of them are among its first ``size`` other than i."""
    in_list = t < length
    entries = tl.load(list_ptr + t, mask=in_list, other=-1)
    self_pos = tl.min(tl.where(in_list & (entries == i), t, length), axis=0)
    rank_among_others = t - (self_pos < t).to(tl.int32)
    return entries, in_list & (entries != i) & (rank_among_others < size)


@triton.jit(do_not_specialize=["n"])
def _cross_agreement_kernel(neigh_g_ptr, neigh_p_ptr, out_ptr, n, n_parts, kg, kp, size,
                            BLOCK_K: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1).to(tl.int64)
    t = tl.arange(0, BLOCK_K)
    g, g_kept = _kept_entries(neigh_g_ptr + i * kg, i, kg, size, t)
    p, p_kept = _kept_entries(neigh_p_ptr + (part * n + i) * kp, i, kp, size, t)
    same = (g[:, None] == p[None, :]) & g_kept[:, None] & p_kept[None, :]
    common = tl.sum(tl.sum(same.to(tl.int32), axis=1), axis=0)
    total = tl.sum(g_kept.to(tl.int32), axis=0) + tl.sum(p_kept.to(tl.int32), axis=0) - common
    score = tl.math.div_rn(common.to(tl.float32), tl.maximum(total, 1).to(tl.float32))
    tl.store(out_ptr + i * n_parts + part, score)


def compare_warps(block_k: int) -> int:
    """Warps of a program: its BLOCK_K x BLOCK_K compare tile at 32 entries a thread."""
    return max(1, min(16, block_k * block_k // 1024))


def cross_agreement_from_neighbours_cuda(neigh_g: torch.Tensor, neigh_p: torch.Tensor, k: int
                                         ) -> torch.Tensor:
    """(N, N_p) fp32 scores from kNN lists sorted by (d, index), self included.

    Args:
        neigh_g: (N, Kg) global kNN indices.
        neigh_p: (N_p, N, Kp) kNN indices in every part space.
        k: neighbourhood size; each set holds min(k, N - 1) images.
    """
    n, kg = neigh_g.shape
    n_parts, _, kp = neigh_p.shape
    neigh_g = neigh_g.to(torch.int64).contiguous()
    neigh_p = neigh_p.to(torch.int64).contiguous()
    out = torch.empty(n, n_parts, dtype=torch.float32, device=neigh_g.device)
    if n_parts == 0:
        return out
    block_k = triton.next_power_of_2(max(kg, kp))
    _cross_agreement_kernel[(n, n_parts)](neigh_g, neigh_p, out, n, n_parts, kg, kp,
                                          min(k, n - 1), BLOCK_K=block_k,
                                          num_warps=compare_warps(block_k), **LAUNCH)
    return out
