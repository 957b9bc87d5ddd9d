"""Exact kNN on a GPU for N up to ~1,000,000: a fused fp16 GEMM filter, then an fp64 re-rank.

``knn_topk(x, k)`` returns, for every row of the L2-normalised ``x`` (N, D),
its k nearest rows (itself included) by the fp64 distance
``d(i, j) = 2 - 2 <x_i, x_j>`` of ``pair_distance.py``, sorted by
``(d, index)``: the contract and tie rule of ``pplr_fast.cluster.nearest_neighbours``
(``pplr_fast/cluster/reference.py`` is the definition).

Filter (``_knn_filter_kernel``, one program per BLOCK_M rows). The program
streams every column tile of the fp16 copy x~ through ``tl.dot`` (fp32
accumulation) and never writes a score matrix. Per row it keeps a running
threshold theta (a lower bound of the row's k-th best fp16 score) and a
candidate list in global memory (CAP fp32 scores + int32 columns): a score
joins the list when it is >= floor(theta). When a list could overflow on the
next tile, the program compacts its rows: theta becomes the k-th best listed
score (bisection between the lowest and highest listed scores, ``BISECT_STEPS``
halvings: theta is below it by a few 1e-5 at most, never above; any number of
steps keeps the filter exact), and entries below the new floor
are dropped, keeping the list in ascending column order. A row still holding
more than CAP - BLOCK_N entries after compaction is flagged; after the last
tile every row is compacted once more.

Why the filter is exact. For rows x_i, x_j, the fp32 score s_ij of x~_i x~_j
differs from the exact similarity a_ij by at most c_i (no output rounding:
scores stay fp32), with

    c_i = rho_i M + |x_i| rho_max + rho_i rho_max
          + 1.01 D 2^-22 ((|x_i| + rho_i)(M + rho_max) + |x_i| M) + 1e-6,

rho_i = |x~_i - x_i| measured on the data, M = max_j |x_j| (Cauchy-Schwarz on
x~_i x~_j - x_i x_j) and 2^-22 the roundoff of a tensor-core fp32
accumulation, which does not round to nearest. Let t be the row's k-th best
fp16 score. The k columns scoring >= t have a >= t - c_i, so the exact k-th
best similarity is >= t - c_i, and any column among the exact k nearest
(ties included) has s >= t - 2 c_i =: floor(t) (minus 1e-6 for the fp32
compare). theta <= t at all times and floor is increasing, so a column was
listed when it streamed past (s >= floor(theta) at that moment) and never
dropped (compaction drops s < floor(theta') <= floor(t)); the final list is
every column with s >= floor(theta_final), a superset of the exact k nearest.
The listed columns get their fp64 distance (``pair_sq_distance``, the same
arithmetic for every pair, so exact duplicates stay exact ties) and a stable
sort of each row's short list (columns ascending) by distance keeps the
first k: exactly the reference ranking.

Flagged rows (near-equidistant data: more than CAP - BLOCK_N columns within
2 c_i of the k-th best score) are finished by ``exact_rows_topk``: their fp64
distances to column blocks of x, a running k smallest distance per row
(``torch.topk`` values only, no sort of a full row), then a second pass that
keeps the columns below that k-th distance and the lowest-index ones equal to
it. Only the flagged rows and one column block are ever in fp64.

Memory: x~ (2 N D bytes), the candidate lists of one launch (8 CAP bytes a
row, CAP = 256 for k <= 96; launches cover as many rows as ``LIST_BYTES`` and a quarter of the free
memory allow, without a host sync between launches), the output (16 N k
bytes): O(N (D + k)).

Throughput targets (arithmetic, not yet measured on a GPU).

- N = 1,000,000, D = 256, global + 3 part spaces: 4 x 2 N^2 D = 2.0e15 fp16
  FLOPs. A program's 64 x 64 x 32 GEMM step reads its two operand tiles
  (8 KiB) for 2.6e5 FLOPs: 32 FLOPs per byte from L2, where all programs
  stream the same column tiles of the 512 MB x~ at about the same time. At
  ~6 TB/s of L2 bandwidth that caps the GEMM at ~190 TFLOP/s (the H100's
  dense fp16 peak is ~990): about 10.5 s for the four spaces, the bulk of the
  kNN. The epilogue is one compare per score plus a row sum per tile (4e12
  scores, ~0.5 s of CUDA-core work); lists are compacted about log2(N / CAP)
  times per row block. Re-rank: ~(k + a few) candidates a row,
  1e6 x 50 x 256 x 2 = 2.6e10 fp64 FLOPs and a sort of (N, ~50) per space:
  ~0.1 s. kNN ~11 s of the 30 s stage budget, with 2 GiB of lists (one launch
  a space). Larger tiles (128 x 128) would double the FLOPs per byte but spill
  registers with this epilogue on sm_90 (checked by the compile test).
- N = 12,936, D = 2048: 2 N^2 D = 6.9e11 FLOPs, ~4 ms at 190 TFLOP/s over 203
  programs (1.5 waves on 132 SMs); launch and re-rank overheads dominate, well
  under 0.2 s.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pplr_fast.kernels import LAUNCH
from pplr_fast.kernels.pair_distance import pair_sq_distance
from pplr_fast.utils.memory import available_memory

ACCUMULATE_ROUNDOFF = 2.0 ** -22   # tensor-core fp32 accumulation (not round-to-nearest)
BLOCK_M = 64                       # rows per filter program
BLOCK_N = 64                       # columns per streamed tile
MAX_BLOCK_K = 32                   # features per step of the GEMM's inner loop
FILTER_WARPS = 8                   # with 64 x 64 x 32 tiles: no register spills (compile test)
COMPACT_CHUNK = 64                 # list entries per step of a compaction
BISECT_STEPS = 16                  # halvings of the listed scores' range: theta within ~2^-16 of it
LIST_BYTES = 8 * 1024 ** 3         # candidate lists (8 CAP bytes a row) of one launch, at most
RERANK_ENTRIES = 2 ** 24           # (row, candidate) slots re-ranked at once
EXACT_BLOCK_ENTRIES = 2 ** 22      # fp64 distances of the flagged rows computed at once
EXACT_ROWS = 256                   # flagged rows finished together


@triton.jit
def _candidate_floor(theta, c):
    """Lowest fp32 score that can still be among the exact top-k when theta <= the k-th best."""
    floor = theta.to(tl.float64) - 2.0 * c - 1e-6
    return tl.where(theta == float("-inf"), float("-inf"), floor.to(tl.float32))


@triton.jit
def _compact_lists(scores, cols, count, theta, c, k, CAP: tl.constexpr, BLOCK_N: tl.constexpr,
                   CHUNK: tl.constexpr, BISECT_STEPS: tl.constexpr):
    """Raise theta to the k-th best listed score (from below) and drop entries under its floor.

    ``scores``/``cols`` are the (rows, 1) list pointers of the program's rows.
    Returns (theta, floor, count, full): ``full`` marks rows whose list keeps
    more than CAP - BLOCK_N entries (the next tile might not fit).
    """
    longest = tl.max(count, axis=0)
    lo = tl.full(theta.shape, float("inf"), tl.float32)        # the lowest listed score
    hi = tl.full(theta.shape, float("-inf"), tl.float32)       # the highest
    for j0 in range(0, longest, CHUNK):
        j = j0 + tl.arange(0, CHUNK)[None, :]
        listed = j < count[:, None]
        s = tl.load(scores + j, mask=listed, other=0.0)
        lo = tl.minimum(lo, tl.min(tl.where(listed, s, float("inf")), axis=1))
        hi = tl.maximum(hi, tl.max(tl.where(listed, s, float("-inf")), axis=1))
    lo = tl.where(count > 0, tl.maximum(lo, theta), 0.0)   # >= k listed scores are >= lo
    hi = tl.where(count > 0, hi + 1e-3, 0.0)               # (when count >= k); none is >= hi
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) * 0.5
        at_least = tl.zeros_like(count)
        for j0 in range(0, longest, CHUNK):
            j = j0 + tl.arange(0, CHUNK)[None, :]
            s = tl.load(scores + j, mask=j < count[:, None], other=float("-inf"))
            at_least += tl.sum((s >= mid[:, None]).to(tl.int32), axis=1)
        enough = at_least >= k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid)
    theta = tl.where(count >= k, tl.maximum(theta, lo), theta)
    floor = _candidate_floor(theta, c)
    kept = tl.zeros_like(count)
    for j0 in range(0, longest, CHUNK):
        j = j0 + tl.arange(0, CHUNK)[None, :]
        listed = j < count[:, None]
        s = tl.load(scores + j, mask=listed, other=float("-inf"))
        col = tl.load(cols + j, mask=listed, other=0)
        keep = listed & (s >= floor[:, None])
        slot = kept[:, None] + tl.cumsum(keep.to(tl.int32), axis=1) - 1     # slot <= j
        tl.debug_barrier()            # the whole chunk is read before any of it is overwritten
        tl.store(scores + slot, s, mask=keep)
        tl.store(cols + slot, col, mask=keep)
        kept += tl.sum(keep.to(tl.int32), axis=1)
    tl.debug_barrier()
    return theta, floor, kept, kept > CAP - BLOCK_N


@triton.jit(do_not_specialize=["n", "row0", "k"])
def _knn_filter_kernel(x_ptr, bound_ptr, list_score_ptr, list_col_ptr, count_ptr, full_ptr,
                       n, row0, dim, stride_x, k,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       CAP: tl.constexpr, CHUNK: tl.constexpr, BISECT_STEPS: tl.constexpr):
    """Candidate lists of rows row0 + pid * BLOCK_M + [0, BLOCK_M) (see the module docstring)."""
    local = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = row0 + local
    row_ok = rows < n
    c = tl.load(bound_ptr + rows, mask=row_ok, other=0.0)
    scores = list_score_ptr + local[:, None] * CAP
    cols_out = list_col_ptr + local[:, None] * CAP
    theta = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    floor = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    count = tl.zeros((BLOCK_M,), dtype=tl.int32)
    full = tl.zeros((BLOCK_M,), dtype=tl.int1)
    kk = tl.arange(0, BLOCK_K)
    for n0 in range(0, n, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, dim, BLOCK_K):
            a = tl.load(x_ptr + rows[:, None] * stride_x + (k0 + kk)[None, :],
                        mask=row_ok[:, None] & ((k0 + kk)[None, :] < dim), other=0.0)
            b = tl.load(x_ptr + cols[None, :] * stride_x + (k0 + kk)[:, None],
                        mask=col_ok[None, :] & ((k0 + kk)[:, None] < dim), other=0.0)
            acc = tl.dot(a, b, acc)
        take = (acc >= floor[:, None]) & col_ok[None, :] & (row_ok & ~full)[:, None]
        n_take = tl.sum(take.to(tl.int32), axis=1)
        if tl.max(n_take, axis=0) > 0:
            slot = count[:, None] + tl.cumsum(take.to(tl.int32), axis=1) - 1
            tl.store(scores + slot, acc, mask=take)
            tl.store(cols_out + slot, cols[None, :], mask=take)
            count += n_take
            if tl.max(count, axis=0) > CAP - BLOCK_N:
                theta, floor, count, now_full = _compact_lists(
                    scores, cols_out, count, theta, c, k, CAP, BLOCK_N, CHUNK, BISECT_STEPS)
                full = full | now_full
    theta, floor, count, now_full = _compact_lists(scores, cols_out, count, theta, c, k, CAP,
                                                   BLOCK_N, CHUNK, BISECT_STEPS)
    tl.store(count_ptr + local, count)
    tl.store(full_ptr + local, (full | now_full).to(tl.int8))


def list_capacity(k: int) -> int:
    """CAP: entries of a row's candidate list; room for one tile plus 2k survivors at least."""
    return max(4 * BLOCK_N, triton.next_power_of_2(2 * k + BLOCK_N))


def rows_per_launch(n: int, cap: int, device: torch.device) -> int:
    """Rows (a multiple of BLOCK_M) whose candidate lists one filter launch holds."""
    free = available_memory(device) if device.type == "cuda" else LIST_BYTES * 4
    fit = min(LIST_BYTES, free // 4) // (8 * cap)
    return max(BLOCK_M, min(triton.cdiv(n, BLOCK_M) * BLOCK_M, fit // BLOCK_M * BLOCK_M))


def rerank(x: torch.Tensor, r0: int, cols: torch.Tensor, counts: torch.Tensor, k: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest (fp64 distance, column) of rows r0 + [0, len(counts)) among their lists.

    List columns ascend, so a stable sort by distance orders ties by index.
    """
    rows = counts.numel()
    dist = torch.empty(rows, k, dtype=torch.float64, device=x.device)
    index = torch.empty(rows, k, dtype=torch.int64, device=x.device)
    width = max(k, int(counts.max())) if rows else k            # one host sync per launch
    step = max(1, RERANK_ENTRIES // width)
    for a in range(0, rows, step):
        b = min(rows, a + step)
        listed = torch.arange(width, device=x.device)[None, :] < counts[a:b, None]
        col = torch.where(listed, cols[a:b, :width].long(), -1)      # -1: no distance computed
        row = torch.arange(r0 + a, r0 + b, device=x.device)[:, None].expand(-1, width)
        d = pair_sq_distance(x, row.reshape(-1), col.reshape(-1)).view(b - a, width)
        d = torch.where(listed, d, float("inf"))
        d, order = torch.sort(d, dim=1, stable=True)
        dist[a:b] = d[:, :k]
        index[a:b] = torch.gather(col, 1, order[:, :k])
    return dist, index


def exact_rows_topk(x: torch.Tensor, rows: torch.Tensor, k: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest (by (fp64 d, index)) of a few rows, from their distances to every row.

    Two passes over column blocks, each block's fp64 distances computed by
    ``pair_sq_distance``: the running k smallest distance values give the k-th
    distance d_k; then the columns with d < d_k (fewer than k) and the
    lowest-index columns with d == d_k fill the k slots. No row is sorted in
    full and x is never converted to fp64.
    """
    n = x.shape[0]
    r = rows.numel()
    device = x.device
    block = max(1, EXACT_BLOCK_ENTRIES // max(1, r))

    def block_distances(c0: int) -> tuple[torch.Tensor, torch.Tensor]:
        cols = torch.arange(c0, min(n, c0 + block), device=device)
        d = pair_sq_distance(x, rows[:, None].expand(-1, cols.numel()).reshape(-1),
                             cols[None, :].expand(r, -1).reshape(-1))
        return d.view(r, cols.numel()), cols

    best = torch.full((r, k), float("inf"), dtype=torch.float64, device=device)
    for c0 in range(0, n, block):
        d, _ = block_distances(c0)
        best = torch.topk(torch.cat([best, d], dim=1), k, dim=1, largest=False).values
    kth = best.max(dim=1).values[:, None]
    slots = torch.arange(k + 1, device=device)[None, :]
    less_d = torch.full((r, k + 1), float("inf"), dtype=torch.float64, device=device)
    less_c = torch.zeros((r, k + 1), dtype=torch.int64, device=device)
    equal_c = torch.zeros((r, k + 1), dtype=torch.int64, device=device)
    n_less = torch.zeros((r, 1), dtype=torch.int64, device=device)
    n_equal = torch.zeros((r, 1), dtype=torch.int64, device=device)
    for c0 in range(0, n, block):
        d, cols = block_distances(c0)
        cols = cols[None, :].expand(r, -1)
        less, equal = d < kth, d == kth
        at = torch.where(less, n_less + torch.cumsum(less, 1) - 1, k)     # slot k: discarded
        less_d.scatter_(1, at, d)
        less_c.scatter_(1, at, cols)
        at = n_equal + torch.cumsum(equal, 1) - 1
        equal_c.scatter_(1, torch.where(equal & (at < k), at, k), cols)
        n_less += less.sum(1, keepdim=True)
        n_equal += equal.sum(1, keepdim=True)
    less_d[:, k] = float("inf")
    less_d, order = torch.sort(less_d[:, :k], dim=1, stable=True)   # found in ascending column
    less_c = torch.gather(less_c[:, :k], 1, order)
    from_equal = slots[:, :k] >= n_less
    index = torch.where(from_equal, torch.gather(equal_c, 1, (slots[:, :k] - n_less).clamp(min=0)),
                        less_c)
    dist = torch.where(from_equal, kth, less_d)
    return dist, index


def knn_topk(x: torch.Tensor, k: int, bounds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN of every row of ``x`` among its rows: (dist fp64 (N, k'), index int64 (N, k')).

    ``x``: (N, D) L2-normalised features on any device (CPU tensors need the
    Triton interpreter); k' = min(k, N). Rows are sorted by (d, index) and
    include the row itself. ``bounds``: (N,) float64, the per-row c_i of the
    module docstring for the fp16 copy ``x.half()`` and an accumulation
    roundoff of ``ACCUMULATE_ROUNDOFF`` (the caller computes it:
    ``pplr_fast.cluster.common.rounding_error_bounds``, shared with the CPU path).
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"knn_topk needs a non-empty (N, D) tensor, got shape {tuple(x.shape)}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"knn_topk needs an integer k >= 1, got {k!r}")
    x = x.float().contiguous()
    n, dim = x.shape
    k = min(k, n)
    x_low = x.half()
    if bounds.shape != (n,):
        raise ValueError(f"knn_topk needs one error bound per row ({n}), got {tuple(bounds.shape)}")
    bounds = bounds.to(device=x.device, dtype=torch.float64).contiguous()
    cap = list_capacity(k)
    step = rows_per_launch(n, cap, x.device)
    scores = torch.empty(step, cap, dtype=torch.float32, device=x.device)
    cols = torch.empty(step, cap, dtype=torch.int32, device=x.device)
    counts = torch.empty(step, dtype=torch.int32, device=x.device)
    full = torch.empty(step, dtype=torch.int8, device=x.device)
    block_k = min(MAX_BLOCK_K, max(16, triton.next_power_of_2(dim)))
    dist = torch.empty(n, k, dtype=torch.float64, device=x.device)
    index = torch.empty(n, k, dtype=torch.int64, device=x.device)
    flagged = []
    for r0 in range(0, n, step):
        rows = min(step, n - r0)
        _knn_filter_kernel[(triton.cdiv(rows, BLOCK_M),)](
            x_low, bounds, scores, cols, counts, full, n, r0, dim, x_low.stride(0), k,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=block_k, CAP=cap, CHUNK=COMPACT_CHUNK,
            BISECT_STEPS=BISECT_STEPS, num_warps=FILTER_WARPS, **LAUNCH)
        dist[r0:r0 + rows], index[r0:r0 + rows] = rerank(x, r0, cols, counts[:rows], k)
        flagged.append(r0 + torch.nonzero(full[:rows]).flatten())
    flagged = torch.cat(flagged)
    if flagged.numel():
        for a in range(0, flagged.numel(), EXACT_ROWS):
            rows = flagged[a:a + EXACT_ROWS]
            dist[rows], index[rows] = exact_rows_topk(x, rows, k)
    return dist, index
