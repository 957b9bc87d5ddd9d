"""PPLR-CAM: inter-camera contrastive loss against camera-aware proxies (docs/method.md §3)."""
import torch
import torch.nn.functional as F
from torch import Tensor

from ._validation import at_least_fp32, check_labels


def inter_camera_proxy_loss(features: Tensor, targets: Tensor, cams: Tensor, proxies: Tensor,
                            proxy_pids: Tensor, proxy_cams: Tensor,
                            num_hard_negatives: int = 50, temperature: float = 0.07) -> Tensor:
    """Contrast each sample with its cluster's proxies in other cameras.

    For sample i (features L2-normalised here), with ``s = <f_i, proxy> / T``:
    positives are the proxies of cluster ``targets[i]`` whose camera differs
    from ``cams[i]``; negatives are the ``min(num_hard_negatives, available)``
    most similar proxies of other clusters (ties: lower proxy index first);
    ``loss_i = -mean over positives of log softmax over (positives ∪ negatives)``.
    Samples without a positive are skipped; the sum over the batch is divided
    by the batch size B. Vectorised over the batch.

    Note (vs the public code, pplr/loss/loss.py InterCamProxy): it takes the
    first 50 of a masked sort of all M proxies, so when a sample has fewer
    than 50 negatives the tail of that list holds non-negatives (its own
    cluster's proxies, positives again or same-camera ones), which then enter
    the softmax denominator; here only true negatives do (docs/method.md §6).

    Args:
        features: (B, D) features (any scale; normalised inside).
        targets: (B,) cluster ids.
        cams: (B,) camera ids.
        proxies: (M, D) L2-normalised proxies (buffers: no gradient).
        proxy_pids: (M,) cluster id of each proxy.
        proxy_cams: (M,) camera id of each proxy.
        num_hard_negatives: at most this many negatives per sample.
        temperature: softmax temperature T.
    """
    check_proxy_inputs(features, targets, cams, proxies, proxy_pids, proxy_cams,
                       num_hard_negatives, temperature)
    batch = features.shape[0]
    x = F.normalize(at_least_fp32(features), dim=1)
    similarity = (x @ proxies.detach().to(x.dtype).t()) / temperature             # (B, M)

    same_cluster = targets.unsqueeze(1) == proxy_pids.unsqueeze(0)                 # (B, M)
    positive = same_cluster & (cams.unsqueeze(1) != proxy_cams.unsqueeze(0))
    has_positive = positive.any(dim=1)
    similarity = similarity[has_positive]
    positive = positive[has_positive]
    same_cluster = same_cluster[has_positive]

    # Hard negatives: rank every proxy by similarity with the sample's own
    # cluster pushed to the end, keep the first k that are true negatives.
    k = min(num_hard_negatives, proxies.shape[0])
    ranking = similarity.detach().masked_fill(same_cluster, float("-inf"))
    ranked = torch.sort(ranking, dim=1, descending=True, stable=True).indices[:, :k]
    hard_negative = torch.zeros_like(positive).scatter_(1, ranked, ~same_cluster.gather(1, ranked))

    in_softmax = positive | hard_negative
    log_norm = torch.logsumexp(similarity.masked_fill(~in_softmax, float("-inf")), dim=1,
                               keepdim=True)
    positive_log_prob = (similarity - log_norm).masked_fill(~positive, 0.0).sum(dim=1)
    per_sample = -positive_log_prob / positive.sum(dim=1)
    return per_sample.sum() / batch


def check_proxy_inputs(features: Tensor, targets: Tensor, cams: Tensor, proxies: Tensor,
                       proxy_pids: Tensor, proxy_cams: Tensor, num_hard_negatives: int,
                       temperature: float) -> None:
    """Shape and argument checks of :func:`inter_camera_proxy_loss`."""
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (B, D) tensor, got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    batch, dim = features.shape
    check_labels(targets, "targets", batch)
    check_labels(cams, "cams", batch)
    if proxies.dim() != 2 or proxies.shape[1] != dim:
        raise ValueError(f"proxies must be (M, {dim}), got {tuple(proxies.shape)}")
    check_labels(proxy_pids, "proxy_pids", proxies.shape[0])
    check_labels(proxy_cams, "proxy_cams", proxies.shape[0])
    if num_hard_negatives < 0:
        raise ValueError(f"num_hard_negatives must be >= 0, got {num_hard_negatives}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
