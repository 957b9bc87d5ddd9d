"""PGLR: part-guided label refinement of the global classifier's target (docs/method.md §3)."""
import torch
from torch import Tensor

from ._validation import (at_least_fp32, check_fraction, check_labels, check_logits,
                          check_scores_shape, check_values)


def pglr_loss(logits_g: Tensor, logits_p: Tensor, targets: Tensor, scores: Tensor,
              beta: float = 0.5) -> Tensor:
    """Cross-entropy of the global logits against the refined soft target.

    ``w = softmax over parts of scores``; ``q = Σ_n w_n softmax(logits_p[..., n])``
    (no gradient); ``t = β onehot(y) + (1-β) q``;
    loss = mean over the batch of ``-Σ_c t_c log softmax(logits_g)_c``.

    Args:
        logits_g: (B, C) global logits.
        logits_p: (B, C, N_p) part logits, part dimension last (any strides).
        targets: (B,) pseudo-labels in [0, C).
        scores: (B, N_p) agreement scores in [0, 1]; constants (no gradient).
        beta: weight of the one-hot label in the target.
    Half-precision logits are computed in float32; the loss is float32 then.
    """
    check_pglr_inputs(logits_g, logits_p, targets, scores, beta)
    check_values(targets, logits_g.shape[1], scores)
    return pglr_loss_unchecked(logits_g, logits_p, targets, scores, beta)


def check_pglr_inputs(logits_g: Tensor, logits_p: Tensor, targets: Tensor, scores: Tensor,
                      beta: float) -> None:
    """Shape and dtype checks of :func:`pglr_loss` (no device sync)."""
    check_logits(logits_g, "logits_g", 2)
    check_logits(logits_p, "logits_p", 3)
    if logits_p.shape[:2] != logits_g.shape:
        raise ValueError(f"logits_p (B, C, N_p) = {tuple(logits_p.shape)} does not match "
                         f"logits_g (B, C) = {tuple(logits_g.shape)}")
    check_labels(targets, "targets", logits_g.shape[0])
    check_scores_shape(scores, (logits_g.shape[0], logits_p.shape[2]))
    check_fraction(beta, "beta")


def pglr_loss_unchecked(logits_g: Tensor, logits_p: Tensor, targets: Tensor, scores: Tensor,
                        beta: float) -> Tensor:
    """:func:`pglr_loss` without input checks."""
    log_prob_g = torch.log_softmax(at_least_fp32(logits_g), dim=1)
    with torch.no_grad():
        part_weights = torch.softmax(scores.to(log_prob_g.dtype), dim=1)            # (B, N_p)
        prob_p = torch.softmax(logits_p.to(log_prob_g.dtype), dim=1)                # (B, C, N_p)
        ensembled = (prob_p * part_weights.unsqueeze(1)).sum(dim=2)                  # (B, C)
        refined = (1.0 - beta) * ensembled
        refined.scatter_add_(1, targets.long().unsqueeze(1),
                             torch.full_like(refined[:, :1], beta))
    return -(refined * log_prob_g).sum(dim=1).mean()
