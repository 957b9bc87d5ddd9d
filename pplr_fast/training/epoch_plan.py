"""What an epoch's pseudo-labels let the trainer do (docs/method.md §4, "Epochs the
clustering leaves little to learn from")."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["CLUSTER_JUMP_FACTOR", "EpochPlan", "FEW_KEPT_FRACTION", "plan_epoch"]

# Below this fraction of images in clusters, an epoch is reported as "few kept".
FEW_KEPT_FRACTION = 0.2
# A cluster count that more than doubles or halves from one epoch to the next is reported.
CLUSTER_JUMP_FACTOR = 2.0


@dataclass
class EpochPlan:
    """What an epoch's clustering result lets the trainer do, and why.

    ``events`` are short codes recorded in metrics.jsonl; ``messages`` are the
    matching log lines, each saying what happened and what the trainer does.
    """

    train: bool = True
    camera_loss: bool = True
    events: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def note(self, event: str, message: str) -> None:
        self.events.append(event)
        self.messages.append(message)


def plan_epoch(labels: torch.Tensor, cams: torch.Tensor, *, eps: float, cam: bool,
               previous_clusters: int | None) -> EpochPlan:
    """Decide, from the pseudo-labels alone, what this epoch can train.

    - no cluster: nothing to train; the epoch is skipped (evaluated and saved as usual);
    - one cluster: every loss needs a second class or a negative; skipped too;
    - with ``cam``, no cluster seen by two cameras: the camera loss has no
      positive anywhere, so the epoch trains without it;
    - few images kept, or a cluster count that jumps: trained as usual, and said.
    """
    plan = EpochPlan()
    n = labels.numel()
    clusters = int(labels.max()) + 1 if n else 0
    kept = int((labels >= 0).sum())
    if clusters == 0:
        plan.train = False
        plan.note("no clusters", f"DBSCAN found no cluster (eps={eps}): all {n} images are "
                  "outliers; skipping training this epoch — if this persists, raise --eps")
        return plan
    if clusters == 1:
        plan.train = False
        plan.note("one cluster", f"DBSCAN put all {kept} kept images into one cluster (eps={eps}): "
                  "with a single pseudo identity no loss has a second class or a negative; "
                  "skipping training this epoch — if this persists, lower --eps (on real data, "
                  "start from ImageNet weights with --pretrained)")
        return plan
    if kept < FEW_KEPT_FRACTION * n:
        plan.note("few kept", f"only {kept} of {n} images ({kept / n:.0%}) are in clusters, the "
                  "rest are outliers; training on those — if this persists, raise --eps")
    if previous_clusters and not (previous_clusters / CLUSTER_JUMP_FACTOR <= clusters
                                  <= previous_clusters * CLUSTER_JUMP_FACTOR):
        plan.note("cluster jump", f"the cluster count jumped from {previous_clusters} to "
                  f"{clusters}; the classifiers are rebuilt from this epoch's centroids as "
                  "every epoch, training goes on")
    if cam:
        member = labels >= 0
        pairs = torch.unique(torch.stack([labels[member], cams[member].to(labels)], 1), dim=0)
        if torch.unique(pairs[:, 0]).numel() == pairs.shape[0]:
            plan.camera_loss = False
            plan.note("no cross-camera cluster",
                      "no cluster holds images of two cameras: the camera loss has no positive; "
                      "training without it this epoch")
    return plan
