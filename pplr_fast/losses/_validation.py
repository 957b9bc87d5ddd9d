"""Input checks shared by the losses: shapes, dtypes and value ranges.

Value checks (target range, score range) read device memory, so each entry
point gathers them into one tensor and synchronises once.
"""
from typing import Optional

import torch
from torch import Tensor


def check_logits(logits: Tensor, name: str, ndim: int) -> None:
    """``logits`` is a floating tensor of ``ndim`` dims with at least 2 classes (dim 1)."""
    if logits.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {logits.dtype}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if logits.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got C = {logits.shape[1]}")


def check_labels(labels: Tensor, name: str, batch: int) -> None:
    """``labels`` is an integer vector of length ``batch``."""
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {labels.dtype}")


def check_scores_shape(scores: Tensor, shape: tuple) -> None:
    """Agreement scores have exactly ``shape`` and a floating dtype."""
    if tuple(scores.shape) != tuple(shape):
        raise ValueError(f"scores must have shape {tuple(shape)}, got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")


def check_fraction(value: float, name: str) -> None:
    """A mixing weight such as beta or epsilon lies in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def check_values(targets: Tensor, num_classes: int, scores: Optional[Tensor]) -> None:
    """Targets in [0, num_classes) and scores (if given) in [0, 1], with one sync."""
    flags = [targets.min() < 0, targets.max() >= num_classes]
    if scores is not None:
        flags += [scores.isnan().any(), ((scores < 0) | (scores > 1)).any()]
    bad = torch.stack(flags).tolist()
    if bad[0] or bad[1]:
        raise ValueError(f"targets must lie in [0, {num_classes}), got values in "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    if scores is not None and bad[2]:
        raise ValueError("scores contain NaN")
    if scores is not None and bad[3]:
        raise ValueError("scores must lie in [0, 1]")


def at_least_fp32(tensor: Tensor) -> Tensor:
    """Half and bfloat16 tensors are computed in float32 (as autocast does for
    log_softmax); float32 and float64 are kept."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor
