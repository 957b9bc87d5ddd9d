"""Fused PPLR classification loss: global PGLR loss + the N_p part losses.

One op, two Triton kernels and an ``autograd.Function`` that takes checked
inputs; ``pplr_fast.losses.pplr_classification_loss_fused`` checks them and
applies it. Its plain PyTorch twin is
``pplr_fast.losses.pplr_classification_loss(backend="reference")``.

Per row i (one program each):

* forward pass 1 streams over C in BLOCK_C chunks and keeps a running max
  m and sum-exp s for the global row and every part row (a (BLOCK_NP,
  BLOCK_C) tile per chunk); then ``log p_c = (x_c - m) - log s``;
* forward pass 2 streams again, now that the log-softmax is known, and
  accumulates ``Σ_c q_c log p_g,c`` with ``q = Σ_n w_n p_n`` (built per
  chunk, never stored) and ``Σ_c log p_n,c`` per part;
* backward streams once and writes both gradients:
  ``d logits_g = (p_g - β onehot - (1-β) q) · g_global / B`` and
  ``d logits_p[n] = (p_n - a_n onehot - b_n / C) · g_parts / (B N_p)``,
  where the part loss is ``-a_n log p_n,y - (b_n / C) Σ_c log p_n,c + k_n``:
  AALS ``a = A, b = 1 - A, k = -(1 - A) log C``; label-smoothed CE
  ``a = 1 - ε, b = ε, k = 0``.

Only the per-row (m, log s) pairs (2 B + 2 B N_p floats) are saved for
backward; no B x C x N_p temporary exists. Logits of any strides and of dtype float32,
float16 or bfloat16 are read and upcast to float32 on load; all
accumulation is float32; gradients are written in the logits' dtype and
strides; the two losses are float32 scalars.
"""
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from pplr_fast.kernels import LAUNCH
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Elements of one (BLOCK_NP, BLOCK_C) tile: bounds the registers a program holds.
_MAX_TILE_ELEMENTS = 8192


@triton.jit
def _load_part_tile(row_ptr, c_offs, stride_c, n_offs, stride_n, c_mask, n_mask):
    """(BLOCK_NP, BLOCK_C) float32 tile of part logits: -inf in padded classes,
    0 in padded parts (their statistics are never used)."""
    tile_mask = n_mask[:, None] & c_mask[None, :]
    ptrs = row_ptr + n_offs[:, None] * stride_n + c_offs[None, :] * stride_c
    x = tl.load(ptrs, mask=tile_mask, other=float("-inf")).to(tl.float32)
    return tl.where(n_mask[:, None], x, 0.0)


@triton.jit
def _part_weights(scores_ptr, row, stride_b, stride_n, n_offs, n_mask):
    """Agreement scores of a row and their softmax over the parts (0 in padding)."""
    scores = tl.load(scores_ptr + row * stride_b + n_offs * stride_n, mask=n_mask,
                     other=float("-inf")).to(tl.float32)
    exp_scores = tl.exp(scores - tl.max(scores, 0))
    return tl.where(n_mask, scores, 0.0), exp_scores / tl.sum(exp_scores, 0)


@triton.jit
def _part_loss_coefficients(scores, epsilon, USE_AALS: tl.constexpr):
    """(a, b) of the part loss ``-a log p_y - (b / C) Σ_c log p_c + k``."""
    if USE_AALS:
        return scores, 1.0 - scores
    else:
        return tl.zeros_like(scores) + (1.0 - epsilon), tl.zeros_like(scores) + epsilon


@triton.jit
def _pplr_classification_forward_kernel(
    g_ptr, g_stride_b, g_stride_c,
    p_ptr, p_stride_b, p_stride_c, p_stride_n,
    targets_ptr, targets_stride,
    scores_ptr, scores_stride_b, scores_stride_n,
    max_g_ptr, log_sum_g_ptr, max_p_ptr, log_sum_p_ptr, loss_g_ptr, loss_p_ptr,
    C, N_P, beta, epsilon, log_c,
    USE_AALS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_NP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g_row = g_ptr + row * g_stride_b
    p_row = p_ptr + row * p_stride_b
    c_base = tl.arange(0, BLOCK_C)
    n_offs = tl.arange(0, BLOCK_NP)
    n_mask = n_offs < N_P

    # Pass 1: running max and sum-exp of the global row and each part row.
    max_g = float("-inf")
    sum_g = 0.0
    max_p = tl.full([BLOCK_NP], float("-inf"), tl.float32)
    sum_p = tl.zeros([BLOCK_NP], tl.float32)
    for start in range(0, C, BLOCK_C):
        c_offs = start + c_base
        c_mask = c_offs < C
        x_g = tl.load(g_row + c_offs * g_stride_c, mask=c_mask, other=float("-inf")).to(tl.float32)
        new_max_g = tl.maximum(max_g, tl.max(x_g, 0))
        sum_g = sum_g * tl.exp(max_g - new_max_g) + tl.sum(tl.exp(x_g - new_max_g), 0)
        max_g = new_max_g
        x_p = _load_part_tile(p_row, c_offs, p_stride_c, n_offs, p_stride_n, c_mask, n_mask)
        new_max_p = tl.maximum(max_p, tl.max(x_p, 1))
        sum_p = sum_p * tl.exp(max_p - new_max_p) + tl.sum(tl.exp(x_p - new_max_p[:, None]), 1)
        max_p = new_max_p
    # log p = (x - max) - log_sum: subtracting max first keeps (x - max)
    # exact, where x - (max + log_sum) would round at the scale of max.
    log_sum_g = tl.log(sum_g)
    log_sum_p = tl.log(sum_p)

    # Pass 2: Σ_c q_c log p_g,c and Σ_c log p_n,c.
    scores, weights = _part_weights(scores_ptr, row, scores_stride_b, scores_stride_n,
                                    n_offs, n_mask)
    q_dot_log_p_g = 0.0
    sum_log_p = tl.zeros([BLOCK_NP], tl.float32)
    for start in range(0, C, BLOCK_C):
        c_offs = start + c_base
        c_mask = c_offs < C
        tile_mask = n_mask[:, None] & c_mask[None, :]
        x_g = tl.load(g_row + c_offs * g_stride_c, mask=c_mask, other=0.0).to(tl.float32)
        x_p = _load_part_tile(p_row, c_offs, p_stride_c, n_offs, p_stride_n, c_mask, n_mask)
        log_p = tl.where(tile_mask, (x_p - max_p[:, None]) - log_sum_p[:, None], 0.0)
        prob_p = tl.where(tile_mask, tl.exp(log_p), 0.0)
        q = tl.sum(weights[:, None] * prob_p, 0)
        q_dot_log_p_g += tl.sum(tl.where(c_mask, q * ((x_g - max_g) - log_sum_g), 0.0), 0)
        sum_log_p += tl.sum(log_p, 1)

    target = tl.load(targets_ptr + row * targets_stride)
    target = tl.minimum(tl.maximum(target, 0), C - 1)   # checked on the host; never read outside
    x_g_target = tl.load(g_row + target * g_stride_c).to(tl.float32)
    log_p_g_target = (x_g_target - max_g) - log_sum_g
    x_p_target = tl.load(p_row + target * p_stride_c + n_offs * p_stride_n, mask=n_mask,
                         other=0.0).to(tl.float32)
    log_p_target = (x_p_target - max_p) - log_sum_p
    loss_g = -beta * log_p_g_target - (1.0 - beta) * q_dot_log_p_g

    a, b = _part_loss_coefficients(scores, epsilon, USE_AALS)
    part_loss = -a * log_p_target - (b / C) * sum_log_p
    if USE_AALS:
        part_loss -= (1.0 - scores) * log_c
    part_loss = tl.sum(tl.where(n_mask, part_loss, 0.0), 0)

    tl.store(max_g_ptr + row, max_g)
    tl.store(log_sum_g_ptr + row, log_sum_g)
    tl.store(max_p_ptr + row * N_P + n_offs, max_p, mask=n_mask)
    tl.store(log_sum_p_ptr + row * N_P + n_offs, log_sum_p, mask=n_mask)
    tl.store(loss_g_ptr + row, loss_g)
    tl.store(loss_p_ptr + row, part_loss)


@triton.jit
def _pplr_classification_backward_kernel(
    g_ptr, g_stride_b, g_stride_c,
    p_ptr, p_stride_b, p_stride_c, p_stride_n,
    grad_g_ptr, grad_g_stride_b, grad_g_stride_c,
    grad_p_ptr, grad_p_stride_b, grad_p_stride_c, grad_p_stride_n,
    targets_ptr, targets_stride,
    scores_ptr, scores_stride_b, scores_stride_n,
    max_g_ptr, log_sum_g_ptr, max_p_ptr, log_sum_p_ptr, upstream_g_ptr, upstream_p_ptr,
    B, C, N_P, beta, epsilon,
    USE_AALS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_NP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g_row = g_ptr + row * g_stride_b
    p_row = p_ptr + row * p_stride_b
    grad_g_row = grad_g_ptr + row * grad_g_stride_b
    grad_p_row = grad_p_ptr + row * grad_p_stride_b
    c_base = tl.arange(0, BLOCK_C)
    n_offs = tl.arange(0, BLOCK_NP)
    n_mask = n_offs < N_P

    scale_g = tl.load(upstream_g_ptr).to(tl.float32) / B
    scale_p = tl.load(upstream_p_ptr).to(tl.float32) / (B * N_P)
    max_g = tl.load(max_g_ptr + row)
    log_sum_g = tl.load(log_sum_g_ptr + row)
    max_p = tl.load(max_p_ptr + row * N_P + n_offs, mask=n_mask, other=0.0)
    log_sum_p = tl.load(log_sum_p_ptr + row * N_P + n_offs, mask=n_mask, other=0.0)
    scores, weights = _part_weights(scores_ptr, row, scores_stride_b, scores_stride_n,
                                    n_offs, n_mask)
    a, b = _part_loss_coefficients(scores, epsilon, USE_AALS)
    uniform_b = b / C
    target = tl.load(targets_ptr + row * targets_stride)

    for start in range(0, C, BLOCK_C):
        c_offs = start + c_base
        c_mask = c_offs < C
        tile_mask = n_mask[:, None] & c_mask[None, :]
        is_target = c_offs == target
        x_g = tl.load(g_row + c_offs * g_stride_c, mask=c_mask, other=0.0).to(tl.float32)
        x_p = _load_part_tile(p_row, c_offs, p_stride_c, n_offs, p_stride_n, c_mask, n_mask)
        prob_p = tl.where(tile_mask, tl.exp((x_p - max_p[:, None]) - log_sum_p[:, None]), 0.0)
        q = tl.sum(weights[:, None] * prob_p, 0)
        prob_g = tl.exp((x_g - max_g) - log_sum_g)
        grad_g = (prob_g - (1.0 - beta) * q - tl.where(is_target, beta, 0.0)) * scale_g
        grad_p = prob_p - uniform_b[:, None] - tl.where(is_target[None, :], a[:, None], 0.0)
        grad_p = grad_p * scale_p
        tl.store(grad_g_row + c_offs * grad_g_stride_c,
                 grad_g.to(grad_g_ptr.dtype.element_ty), mask=c_mask)
        tl.store(grad_p_row + n_offs[:, None] * grad_p_stride_n + c_offs[None, :] * grad_p_stride_c,
                 grad_p.to(grad_p_ptr.dtype.element_ty), mask=tile_mask)


def launch_config(num_classes: int, num_parts: int,
                  block_c: Optional[int] = None) -> Tuple[int, int, int]:
    """(BLOCK_C, BLOCK_NP, num_warps) for C classes and N_p parts.

    BLOCK_C covers C in one chunk when the (BLOCK_NP, BLOCK_C) tile stays
    within _MAX_TILE_ELEMENTS, else chunks of that size; ``block_c`` (a power
    of two) overrides it (tests force several chunks this way). Not tuned on
    a GPU yet.
    """
    block_np = triton.next_power_of_2(num_parts)
    if block_c is None:
        block_c = min(triton.next_power_of_2(num_classes),
                      max(16, _MAX_TILE_ELEMENTS // block_np))
    elif block_c < 1 or block_c & (block_c - 1):
        raise ValueError(f"block_c must be a power of two, got {block_c}")
    tile = block_np * block_c
    num_warps = 4 if tile <= 2048 else (8 if tile <= 4096 else 16)
    return block_c, block_np, num_warps


class PPLRClassificationLossFunction(torch.autograd.Function):
    """autograd.Function of the fused op: (loss_global, loss_parts)."""

    @staticmethod
    def forward(ctx, logits_g: Tensor, logits_p: Tensor, targets: Tensor, scores: Tensor,
                beta: float, use_aals: bool, epsilon: float,
                block_c: Optional[int]) -> Tuple[Tensor, Tensor]:
        batch, num_classes, num_parts = logits_p.shape
        block_c, block_np, num_warps = launch_config(num_classes, num_parts, block_c)
        device = logits_g.device
        stats_g = torch.empty(2, batch, dtype=torch.float32, device=device)   # max, log-sum
        stats_p = torch.empty(2, batch, num_parts, dtype=torch.float32, device=device)
        loss_g_rows = torch.empty(batch, dtype=torch.float32, device=device)
        loss_p_rows = torch.empty(batch, dtype=torch.float32, device=device)
        _pplr_classification_forward_kernel[(batch,)](
            logits_g, logits_g.stride(0), logits_g.stride(1),
            logits_p, logits_p.stride(0), logits_p.stride(1), logits_p.stride(2),
            targets, targets.stride(0),
            scores, scores.stride(0), scores.stride(1),
            stats_g[0], stats_g[1], stats_p[0], stats_p[1], loss_g_rows, loss_p_rows,
            num_classes, num_parts, float(beta), float(epsilon), math.log(num_classes),
            USE_AALS=bool(use_aals), BLOCK_C=block_c, BLOCK_NP=block_np, num_warps=num_warps, **LAUNCH,
        )
        ctx.save_for_backward(logits_g, logits_p, targets, scores, stats_g, stats_p)
        ctx.config = (float(beta), bool(use_aals), float(epsilon), block_c, block_np, num_warps)
        loss_g = loss_g_rows.sum() / batch
        loss_p = loss_p_rows.sum() / (batch * num_parts)
        return loss_g, loss_p

    @staticmethod
    def backward(ctx, grad_loss_g: Tensor, grad_loss_p: Tensor):
        logits_g, logits_p, targets, scores, stats_g, stats_p = ctx.saved_tensors
        beta, use_aals, epsilon, block_c, block_np, num_warps = ctx.config
        batch, num_classes, num_parts = logits_p.shape
        grad_g = torch.empty_like(logits_g)
        grad_p = torch.empty_like(logits_p)
        _pplr_classification_backward_kernel[(batch,)](
            logits_g, logits_g.stride(0), logits_g.stride(1),
            logits_p, logits_p.stride(0), logits_p.stride(1), logits_p.stride(2),
            grad_g, grad_g.stride(0), grad_g.stride(1),
            grad_p, grad_p.stride(0), grad_p.stride(1), grad_p.stride(2),
            targets, targets.stride(0),
            scores, scores.stride(0), scores.stride(1),
            stats_g[0], stats_g[1], stats_p[0], stats_p[1],
            grad_loss_g.contiguous(), grad_loss_p.contiguous(),
            batch, num_classes, num_parts, beta, epsilon,
            USE_AALS=use_aals, BLOCK_C=block_c, BLOCK_NP=block_np, num_warps=num_warps, **LAUNCH,
        )
        return grad_g, grad_p, None, None, None, None, None, None


def is_interpreted() -> bool:
    """True when the kernels of this module run in the Triton interpreter."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(_pplr_classification_forward_kernel, InterpretedFunction)


__all__ = ["PPLRClassificationLossFunction", "launch_config", "is_interpreted",
           "SUPPORTED_DTYPES"]
