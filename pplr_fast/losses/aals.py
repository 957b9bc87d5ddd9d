"""AALS: agreement-aware label smoothing of a part classifier (docs/method.md §3)."""
import torch
from torch import Tensor

from ._validation import at_least_fp32, check_labels, check_logits, check_scores_shape, check_values


def aals_loss(logits: Tensor, targets: Tensor, score: Tensor) -> Tensor:
    """``mean_i [A_i CE(logits_i, y_i) + (1 - A_i) KL(u || softmax(logits_i))]``.

    u is uniform over the C classes and ``KL(u || p) = Σ_c u_c (log u_c - log p_c)``.

    Args:
        logits: (B, C) logits of one part, or (B, C, N_p) of all parts (part
            dimension last); with parts the loss is also averaged over them,
            i.e. it is the mean over parts of the per-part losses.
        targets: (B,) pseudo-labels in [0, C).
        score: agreement scores A in [0, 1], shaped like ``logits`` without
            the class dimension: (B,) or (B, N_p); constants (no gradient).
    Half-precision logits are computed in float32; the loss is float32 then.
    """
    check_aals_inputs(logits, targets, score)
    check_values(targets, logits.shape[1], score)
    return aals_loss_unchecked(logits, targets, score)


def check_aals_inputs(logits: Tensor, targets: Tensor, score: Tensor) -> None:
    """Shape and dtype checks of :func:`aals_loss` (no device sync)."""
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (B, C) or (B, C, N_p), got {tuple(logits.shape)}")
    check_logits(logits, "logits", logits.dim())
    check_labels(targets, "targets", logits.shape[0])
    check_scores_shape(score, logits.shape[:1] + logits.shape[2:])


def aals_loss_unchecked(logits: Tensor, targets: Tensor, score: Tensor) -> Tensor:
    """:func:`aals_loss` without input checks."""
    log_prob = torch.log_softmax(at_least_fp32(logits), dim=1)
    target_index = targets.long().view((-1, 1) + (1,) * (logits.dim() - 2))
    target_index = target_index.expand((-1, 1) + logits.shape[2:])
    cross_entropy = -log_prob.gather(1, target_index).squeeze(1)
    # log C as a tensor op: torch.compile then keeps C symbolic (math.log would
    # pin it and recompile for every new number of clusters).
    log_num_classes = torch.full((), logits.shape[1], dtype=log_prob.dtype,
                                 device=log_prob.device).log()
    kl_uniform = -log_num_classes - log_prob.mean(dim=1)
    agreement = score.detach().to(log_prob.dtype)
    return (agreement * cross_entropy + (1.0 - agreement) * kl_uniform).mean()
