"""Cross-entropy with ordinary label smoothing (the part loss before ``aals_epoch``)."""
import torch
from torch import Tensor

from ._validation import at_least_fp32, check_fraction, check_labels, check_logits, check_values


def cross_entropy_label_smoothing(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    """Mean over the batch of ``-Σ_c t_c log softmax(logits)_c`` with
    ``t = (1-ε) onehot(y) + ε / C``.

    Args:
        logits: (B, C), or (B, C, N_p) with the part dimension last; with
            parts the loss is also averaged over them.
        targets: (B,) labels in [0, C).
        epsilon: smoothing weight in [0, 1].
    Half-precision logits are computed in float32; the loss is float32 then.
    """
    check_label_smoothing_inputs(logits, targets, epsilon)
    check_values(targets, logits.shape[1], None)
    return cross_entropy_label_smoothing_unchecked(logits, targets, epsilon)


def check_label_smoothing_inputs(logits: Tensor, targets: Tensor, epsilon: float) -> None:
    """Shape and dtype checks of :func:`cross_entropy_label_smoothing` (no device sync)."""
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (B, C) or (B, C, N_p), got {tuple(logits.shape)}")
    check_logits(logits, "logits", logits.dim())
    check_labels(targets, "targets", logits.shape[0])
    check_fraction(epsilon, "epsilon")


def cross_entropy_label_smoothing_unchecked(logits: Tensor, targets: Tensor,
                                            epsilon: float) -> Tensor:
    """:func:`cross_entropy_label_smoothing` without input checks."""
    log_prob = torch.log_softmax(at_least_fp32(logits), dim=1)
    target_index = targets.long().view((-1, 1) + (1,) * (logits.dim() - 2))
    target_index = target_index.expand((-1, 1) + logits.shape[2:])
    nll = -log_prob.gather(1, target_index).squeeze(1)
    uniform_nll = -log_prob.mean(dim=1)
    return ((1.0 - epsilon) * nll + epsilon * uniform_nll).mean()
