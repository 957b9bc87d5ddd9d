"""The part-based baseline's classification loss: hard pseudo-labels everywhere.

The baseline of the PPLR paper (its Fig. 1 and cost table) is the same
part-based network trained with hard pseudo-labels for the global and every
part classifier: no PGLR mixing of the global target, no AALS, and no label
smoothing either (a smoothed target is no longer a hard label; PPLR's
label-smoothed warm-up epochs belong to its part-label refinement schedule).
So the loss is plain cross-entropy on every head, at every epoch; it equals
``pplr_classification_loss(..., beta=1, use_aals=False, epsilon=0)``.
"""
from typing import Tuple

import torch
from torch import Tensor

from ._validation import at_least_fp32, check_labels, check_logits, check_values


def baseline_classification_loss(logits_g: Tensor, logits_p: Tensor,
                                 targets: Tensor) -> Tuple[Tensor, Tensor]:
    """(loss_global, loss_parts): mean cross-entropy of the global logits, and
    the mean over the N_p parts of each part's mean cross-entropy.

    Args:
        logits_g: (B, C) global logits.
        logits_p: (B, C, N_p) part logits, part dimension last (any strides).
        targets: (B,) pseudo-labels in [0, C).
    Half-precision logits are computed in float32; the losses are float32 then.
    The same code runs on every device: ``log_softmax`` + ``gather`` is one
    fused kernel pair in torch already, so there is no separate fast path.
    """
    check_logits(logits_g, "logits_g", 2)
    check_logits(logits_p, "logits_p", 3)
    if logits_p.shape[:2] != logits_g.shape:
        raise ValueError(f"logits_p (B, C, N_p) = {tuple(logits_p.shape)} does not match "
                         f"logits_g (B, C) = {tuple(logits_g.shape)}")
    check_labels(targets, "targets", logits_g.shape[0])
    check_values(targets, logits_g.shape[1], None)
    index = targets.long()
    nll_g = -torch.log_softmax(at_least_fp32(logits_g), dim=1).gather(1, index[:, None])
    log_prob_p = torch.log_softmax(at_least_fp32(logits_p), dim=1)                # (B, C, N_p)
    nll_p = -log_prob_p.gather(1, index[:, None, None].expand(-1, 1, logits_p.shape[2]))
    return nll_g.mean(), nll_p.mean()
