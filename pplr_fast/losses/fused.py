"""The fused Triton PPLR classification loss, with its input checks.

The kernels and their ``autograd.Function`` are in
``kernels/pplr_classification_loss.py`` (installed as
``pplr_fast.kernels.pplr_classification_loss``); they take checked tensors.
"""
from typing import Optional, Tuple

from torch import Tensor

from ._validation import check_fraction, check_values


def pplr_classification_loss_fused(logits_g: Tensor, logits_p: Tensor, targets: Tensor,
                                   scores: Tensor, *, beta: float = 0.5, use_aals: bool,
                                   epsilon: float = 0.1, block_c: Optional[int] = None,
                                   validate: bool = True) -> Tuple[Tensor, Tensor]:
    """Fused (loss_global, loss_parts) of PPLR (docs/method.md §3), one pass over the logits.

    Args:
        logits_g: (B, C) global logits; float32, float16 or bfloat16, any strides.
        logits_p: (B, C, N_p) part logits (part dim last), same dtype, any strides.
        targets: (B,) integer pseudo-labels in [0, C).
        scores: (B, N_p) agreement scores in [0, 1]; constants (no gradient).
        beta: weight of the one-hot label in the PGLR target.
        use_aals: part loss is AALS if True, else label-smoothed CE.
        epsilon: label smoothing of the CE part loss (unused with AALS).
        block_c: force the class chunk (a power of two); default: heuristic.
        validate: check target and score values (one device sync); callers
            that checked them already pass False.
    Needs Triton and CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set
    before ``pplr_fast.kernels`` was imported (the tests do; slow, for testing only).
    """
    from pplr_fast.kernels.pplr_classification_loss import (SUPPORTED_DTYPES,
                                                            PPLRClassificationLossFunction,
                                                            is_interpreted)
    for name, logits in (("logits_g", logits_g), ("logits_p", logits_p)):
        if logits.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name}: the fused op takes float32/float16/bfloat16, "
                             f"got {logits.dtype}")
    if logits_g.dtype != logits_p.dtype:
        raise ValueError(f"logits_g ({logits_g.dtype}) and logits_p ({logits_p.dtype}) "
                         "must share a dtype")
    if logits_g.dim() != 2 or logits_p.dim() != 3 or logits_p.shape[:2] != logits_g.shape:
        raise ValueError(f"expected logits_g (B, C) and logits_p (B, C, N_p), got "
                         f"{tuple(logits_g.shape)} and {tuple(logits_p.shape)}")
    batch, num_classes, num_parts = logits_p.shape
    if batch == 0 or num_classes < 2 or num_parts == 0:
        raise ValueError(f"need B >= 1, C >= 2 and N_p >= 1, got {tuple(logits_p.shape)}")
    if tuple(targets.shape) != (batch,) or tuple(scores.shape) != (batch, num_parts):
        raise ValueError(f"targets must be ({batch},) and scores ({batch}, {num_parts}), got "
                         f"{tuple(targets.shape)} and {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    devices = {t.device for t in (logits_g, logits_p, targets, scores)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    if validate:
        check_fraction(beta, "beta")
        check_fraction(epsilon, "epsilon")
        check_values(targets, num_classes, scores)
    if logits_g.device.type != "cuda" and not is_interpreted():
        raise RuntimeError("the fused PPLR loss needs CUDA tensors (or TRITON_INTERPRET=1 "
                           "set before pplr_fast.kernels is imported)")
    return PPLRClassificationLossFunction.apply(
        logits_g, logits_p, targets.long(), scores.detach(), beta, use_aals, epsilon, block_c)
