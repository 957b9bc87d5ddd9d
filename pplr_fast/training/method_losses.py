"""The losses of each training method, behind one hook (docs/method.md §3, §4).

``METHOD_LOSSES[cfg.method](batch, settings)`` returns the named loss terms of
one batch, in the order they are summed and logged (``loss_<name>`` in
metrics.jsonl). Every method's terms are computed from a
:class:`TrainingBatch` alone, so whatever produces the batch (one forward, or
sub-batches gathered across devices) leaves the losses unchanged.

- ``pplr``: PGLR on the global head and AALS (label-smoothed cross-entropy
  before ``aals_epoch``) on the parts, the soft triplet on the global
  features, and with ``--cam`` the inter-camera proxy term.
- ``baseline``: the part-based Baseline, hard pseudo-labels on every head
  (``global_ce`` and ``part``), the same triplet and camera terms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..config import TrainConfig
from ..losses import (baseline_classification_loss, inter_camera_proxy_loss,
                      pplr_classification_loss, soft_triplet_loss)
from ..models import PPLROutput
from .camera_proxies import CameraProxies

__all__ = ["LossSettings", "METHOD_LOSSES", "MethodLosses", "TrainingBatch", "baseline_losses",
           "camera_term", "pplr_losses"]


@dataclass
class TrainingBatch:
    """One step's network outputs and the pseudo-labels of its B images.

    ``targets`` (B,) pseudo-labels, ``cams`` (B,) cameras, ``scores`` (B, N_p)
    the images' cross-agreement scores.
    """

    out: PPLROutput
    targets: Tensor
    cams: Tensor
    scores: Tensor


@dataclass(frozen=True)
class LossSettings:
    """What the losses read besides the batch, fixed for an epoch."""

    cfg: TrainConfig
    use_aals: bool                       # epoch >= cfg.aals_epoch
    proxies: CameraProxies | None        # None: no camera term this epoch


MethodLosses = Callable[[TrainingBatch, LossSettings], "dict[str, Tensor]"]


def camera_term(batch: TrainingBatch, proxies: CameraProxies, lam_cam: float,
                num_parts: int) -> Tensor:
    """lam_cam x (global inter-camera proxy loss + its mean over the parts)."""
    out, targets, cams = batch.out, batch.targets, batch.cams
    cam_g = inter_camera_proxy_loss(out.f_g, targets, cams, proxies.global_features,
                                    proxies.pids, proxies.cams)
    cam_p = torch.stack([inter_camera_proxy_loss(
        out.f_p[:, :, n], targets, cams, proxies.part_features[:, :, n], proxies.pids,
        proxies.cams) for n in range(num_parts)]).mean()
    return lam_cam * (cam_g + cam_p)


def _shared_terms(batch: TrainingBatch, settings: LossSettings) -> dict[str, Tensor]:
    """The terms every method adds after its classification losses."""
    terms = {"triplet": soft_triplet_loss(batch.out.f_g, batch.targets)}
    if settings.proxies is not None:
        terms["camera"] = camera_term(batch, settings.proxies, settings.cfg.lam_cam,
                                      settings.cfg.parts)
    return terms


def pplr_losses(batch: TrainingBatch, settings: LossSettings) -> dict[str, Tensor]:
    """PGLR + AALS (docs/method.md §3), then the triplet and camera terms."""
    cfg = settings.cfg
    loss_g, loss_p = pplr_classification_loss(
        batch.out.logits_g, batch.out.logits_p, batch.targets, batch.scores, beta=cfg.beta,
        use_aals=settings.use_aals, epsilon=cfg.label_smoothing, backend=cfg.backend)
    return {"pglr": loss_g, "part": loss_p, **_shared_terms(batch, settings)}


def baseline_losses(batch: TrainingBatch, settings: LossSettings) -> dict[str, Tensor]:
    """Hard-label cross-entropy on every head (docs/method.md §4), then the shared terms."""
    loss_g, loss_p = baseline_classification_loss(batch.out.logits_g, batch.out.logits_p,
                                                  batch.targets)
    return {"global_ce": loss_g, "part": loss_p, **_shared_terms(batch, settings)}


# Every name of config.METHODS has its losses here (tests/test_training_loop.py checks).
METHOD_LOSSES: dict[str, MethodLosses] = {"pplr": pplr_losses, "baseline": baseline_losses}
