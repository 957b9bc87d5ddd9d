"""Soft (margin-free) batch-hard triplet loss on Euclidean distances (docs/method.md §3)."""
import torch
import torch.nn.functional as F
from torch import Tensor

from ._validation import at_least_fp32, check_labels

# Squared distances are clamped here before the square root: a pair of
# distinct but identical features then has distance 1e-6 and no gradient.
_MIN_SQUARED_DISTANCE = 1e-12


def soft_triplet_loss(features: Tensor, targets: Tensor) -> Tensor:
    """``mean_i softplus(d_ap(i) - d_an(i))`` = ``mean_i -log(e^{d_an} / (e^{d_ap} + e^{d_an}))``.

    ``d_ap(i)``: largest distance from anchor i to a sample with its label
    (itself included, at distance 0); ``d_an(i)``: smallest distance to a
    sample with another label. Anchors without a negative in the batch
    contribute 0 (d_an = +inf). Distances are Euclidean on the given,
    unnormalised features; a sample's distance to itself is exactly 0 with
    zero gradient (no NaN from the square root at 0).

    Args:
        features: (B, D) features.
        targets: (B,) integer labels.
    """
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (B, D) tensor, got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    check_labels(targets, "targets", features.shape[0])

    x = at_least_fp32(features)
    squared_norms = (x * x).sum(dim=1)
    squared = squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2.0 * (x @ x.t())
    distance = squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()
    is_self = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    distance = torch.where(is_self, torch.zeros_like(distance), distance)

    same_label = targets.unsqueeze(1) == targets.unsqueeze(0)
    hardest_positive = distance.masked_fill(~same_label, float("-inf")).max(dim=1).values
    hardest_negative = distance.masked_fill(same_label, float("inf")).min(dim=1).values
    per_anchor = F.softplus(hardest_positive - hardest_negative)
    return per_anchor.mean()
