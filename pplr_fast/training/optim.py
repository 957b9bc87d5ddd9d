"""The optimiser and its step schedule (docs/method.md §4)."""
from __future__ import annotations

import torch

from ..config import TrainConfig
from ..models import PPLRNet

__all__ = ["build_optimizer", "learning_rate"]


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The step schedule: ``cfg.lr`` divided by 10 every ``cfg.step_size`` epochs."""
    return cfg.lr * 0.1 ** (epoch // cfg.step_size)


def build_optimizer(model: PPLRNet, cfg: TrainConfig, epoch: int,
                    previous: torch.optim.Optimizer | None) -> torch.optim.Adam:
    """Adam over the backbone (its state carried over from ``previous``) and this epoch's
    new classifiers, at the epoch's learning rate."""
    old = previous.state if previous is not None else {}
    backbone = list(model.backbone_parameters())
    groups = [{"params": backbone}, {"params": list(model.classifier_parameters())}]
    optimizer = torch.optim.Adam(groups, lr=learning_rate(cfg, epoch),
                                 weight_decay=cfg.weight_decay)
    for p in backbone:
        if p in old:
            optimizer.state[p] = old[p]
    return optimizer
