"""One epoch of training iterations (docs/method.md §4): batches of P pseudo identities x K
images -> forward -> the method's losses -> backward -> Adam step.

:class:`TrainingLoop` is the one place a training step is defined. Its pieces
are the seams a change of the step overrides: :meth:`TrainingLoop.forward`
(how the network sees a batch), :meth:`TrainingLoop.compute_losses` (the
method's terms, :data:`~pplr_fast.training.method_losses.METHOD_LOSSES`) and
:meth:`TrainingLoop.forward_backward` (the step itself); :meth:`TrainingLoop.run`
only draws batches, accumulates the terms for the log and honours a stop
request.
"""
from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import TrainConfig
from ..data import ImageDataset, RandomIdentitySampler, build_train_transform
from ..models import PPLROutput
from ..utils import distributed
from ..utils.progress import show_progress
from .camera_proxies import CameraProxies
from .epoch_data import Sample
from .method_losses import METHOD_LOSSES, LossSettings, TrainingBatch

__all__ = ["EndlessSampler", "TrainingLoop"]


class EndlessSampler(torch.utils.data.Sampler):
    """Successive reshuffled passes of an identity sampler, without end.

    An epoch is a fixed number of iterations (docs/method.md §4), which may be
    more or fewer than one pass over the pseudo-labelled images: with few
    clusters a batch spans passes instead of never filling.
    """

    def __init__(self, sampler: RandomIdentitySampler, epoch: int):
        if len(sampler) == 0:
            raise ValueError("no pseudo-labelled images to sample from")
        self.sampler, self.epoch = sampler, epoch

    def __iter__(self):
        for cycle in itertools.count():
            self.sampler.set_epoch(self.epoch * 10_000 + cycle)
            yield from self.sampler


class TrainingLoop:
    """The training iterations of an epoch, for the method ``cfg.method``."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.method_losses = METHOD_LOSSES[cfg.method]

    def loader(self, samples: list[Sample], epoch: int) -> DataLoader:
        """This rank's batches of the pseudo-labelled ``samples``, without end."""
        cfg = self.cfg
        sampler = RandomIdentitySampler([s[1] for s in samples], [s[2] for s in samples],
                                        cfg.num_instances, seed=cfg.seed,
                                        num_replicas=distributed.world_size(),
                                        rank=distributed.rank())
        per_rank_batch = max(cfg.num_instances, cfg.batch_size // distributed.world_size())
        return DataLoader(ImageDataset(samples, build_train_transform(cfg.height, cfg.width)),
                          batch_size=per_rank_batch, sampler=EndlessSampler(sampler, epoch),
                          num_workers=cfg.workers, pin_memory=self.device.type == "cuda")

    def forward(self, net: torch.nn.Module, images: torch.Tensor) -> PPLROutput:
        """The network's train-mode outputs for a batch of images."""
        return net(images)

    def compute_losses(self, batch: TrainingBatch, settings: LossSettings) -> dict[str, torch.Tensor]:
        """The method's named loss terms of ``batch``, in summation order."""
        return self.method_losses(batch, settings)

    def forward_backward(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         images: torch.Tensor, targets: torch.Tensor, cams: torch.Tensor,
                         scores: torch.Tensor, settings: LossSettings,
                         epoch: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One step: forward, losses, backward, optimizer step; (terms, their sum).

        A non-finite total raises FloatingPointError before the weights change.
        """
        out = self.forward(net, images)
        terms = self.compute_losses(TrainingBatch(out, targets, cams, scores), settings)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            values = {k: v.item() for k, v in terms.items()}
            raise FloatingPointError(f"epoch {epoch}: the loss became {loss.item()} ({values}); "
                                     "lower --lr or check the input images")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return terms, loss

    def run(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
            samples: list[Sample], scores: torch.Tensor, proxies: CameraProxies | None,
            stop_requested: Callable[[], bool]) -> tuple[dict, bool]:
        """``cfg.iters`` steps on ``samples`` (``scores`` their agreement scores, on the
        device); returns the epoch's mean loss terms over the ranks (``loss_<name>``,
        ``loss``, ``iters``) and whether a stop request (on any rank) ended it early."""
        cfg = self.cfg
        stream = iter(self.loader(samples, epoch))
        net.train()
        settings = LossSettings(cfg=cfg, use_aals=epoch >= cfg.aals_epoch, proxies=proxies)
        sums: dict[str, float] = {}
        bar = tqdm(range(cfg.iters), desc=f"epoch {epoch}: train", leave=False,
                   disable=not show_progress(cfg.progress) or not distributed.is_main())
        steps, stopped = 0, False
        for _ in bar:
            images, targets, cams, index = next(stream)
            images = images.to(self.device, non_blocking=True)
            targets, cams = targets.to(self.device), cams.to(self.device)
            terms, loss = self.forward_backward(net, optimizer, images, targets, cams,
                                                scores[index.to(self.device)], settings, epoch)
            steps += 1
            for name, value in (*terms.items(), ("loss", loss)):
                sums[name] = sums.get(name, 0.0) + value.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if distributed.any_rank(bool(stop_requested()), self.device):
                stopped = True
                break
        record = {f"loss_{k}" if k != "loss" else k:
                  distributed.all_reduce_mean(v / max(1, steps), self.device)
                  for k, v in sums.items()}
        record["iters"] = steps          # fewer than --iters when a signal stopped the epoch
        return record, stopped
