"""PPLR-CAM's camera proxies: one normalised mean feature per (cluster, camera) pair
(docs/method.md §3)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .epoch_data import cluster_means

__all__ = ["CameraProxies"]


@dataclass(frozen=True)
class CameraProxies:
    """The P (cluster, camera) pairs of an epoch and their proxies.

    ``global_features`` (P, D) and ``part_features`` (P, D, N_p) are L2-normalised
    along D; ``pids`` (P,) and ``cams`` (P,) name each proxy's cluster and camera.
    """

    global_features: torch.Tensor
    part_features: torch.Tensor
    pids: torch.Tensor
    cams: torch.Tensor

    @classmethod
    def from_clusters(cls, labels: torch.Tensor, cams: torch.Tensor, x_g: torch.Tensor,
                      x_p: torch.Tensor) -> "CameraProxies":
        """Proxies of the samples with pseudo-labels ``labels`` seen by cameras ``cams``."""
        pairs, which = torch.unique(torch.stack([labels, cams], 1), dim=0, return_inverse=True)
        return cls(global_features=F.normalize(cluster_means(x_g, which, len(pairs)), dim=1),
                   part_features=F.normalize(cluster_means(x_p, which, len(pairs)), dim=1),
                   pids=pairs[:, 0], cams=pairs[:, 1])
