"""An epoch's training set: the clustered images with their pseudo-labels, agreement
scores and features, and the per-cluster means the classifiers start from
(docs/method.md §4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cluster.stage import ClusterStageResult

__all__ = ["PseudoLabelledSet", "cluster_means", "pseudo_labelled_set"]

Sample = tuple[str, int, int]          # (image path, label, camera)


def cluster_means(x: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """Mean of the rows of ``x`` per label in [0, count): (count, *x.shape[1:])."""
    sums = torch.zeros((count, *x.shape[1:]), dtype=x.dtype, device=x.device)
    sums.index_add_(0, labels, x)
    members = torch.bincount(labels, minlength=count).to(x.dtype)
    return sums / members.view(-1, *([1] * (x.dim() - 1)))


@dataclass
class PseudoLabelledSet:
    """The images DBSCAN put in a cluster, in training-set order (outliers left out).

    ``samples`` are (path, pseudo-label, camera); ``targets`` (n,), ``scores``
    (n, N_p), ``x_g`` (n, D) and ``x_p`` (n, D, N_p) are on the training device.
    """

    samples: list[Sample]
    targets: torch.Tensor
    scores: torch.Tensor
    x_g: torch.Tensor
    x_p: torch.Tensor
    num_clusters: int

    def centroids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cluster mean features, global (C, D) and per part (C, D, N_p)."""
        return (cluster_means(self.x_g, self.targets, self.num_clusters),
                cluster_means(self.x_p, self.targets, self.num_clusters))

    def cameras(self) -> torch.Tensor:
        """(n,) camera of every sample, on the training device."""
        return torch.tensor([s[2] for s in self.samples], device=self.targets.device)


def pseudo_labelled_set(train_samples: list[Sample], result: ClusterStageResult,
                        x_g: torch.Tensor, x_p: torch.Tensor,
                        device: torch.device) -> PseudoLabelledSet:
    """The training images with a pseudo-label (``result.labels >= 0``), relabelled."""
    keep = torch.nonzero(result.labels >= 0).flatten()
    labels = result.labels[keep]
    samples = [(train_samples[i][0], int(lab), train_samples[i][2])
               for i, lab in zip(keep.tolist(), labels.tolist())]
    return PseudoLabelledSet(samples=samples, targets=labels.to(device),
                             scores=result.scores[keep].to(device),
                             x_g=x_g[keep.to(x_g.device)].to(device),
                             x_p=x_p[keep.to(x_p.device)].to(device),
                             num_clusters=result.num_clusters)
