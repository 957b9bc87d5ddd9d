"""PPLR network: a ResNet with one global and ``num_parts`` horizontal-stripe heads (docs/method.md §1).

Layout convention (the whole project): the part dimension is LAST.
``f_p`` is (B, D, N_p) and ``logits_p`` is (B, C, N_p).  ``logits_p`` is a
permuted view of part-major storage: it is built as
``torch.stack(part_logits, 0).permute(1, 2, 0)``, so
``logits_p.permute(2, 0, 1)`` is a contiguous (N_p, B, C) tensor that the
fused loss kernels read without a copy.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import RESNETS, ResNet

__all__ = ["PPLRNet", "PPLROutput"]


class PPLROutput(NamedTuple):
    """Train-mode outputs. Features are the BN-neck outputs, not normalised."""

    f_g: torch.Tensor  # (B, D) global feature
    f_p: torch.Tensor  # (B, D, N_p) part features, contiguous
    logits_g: torch.Tensor  # (B, C)
    logits_p: torch.Tensor  # (B, C, N_p), a view of contiguous (N_p, B, C) storage


def bn_neck(dim: int) -> nn.BatchNorm1d:
    """BatchNorm1d with weight 1 and a bias frozen at 0."""
    bn = nn.BatchNorm1d(dim)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def classifier(in_features: int, num_classes: int) -> nn.Linear:
    """Bias-free linear classifier, weights ~ N(0, 0.001^2)."""
    with warnings.catch_warnings():
        # Before the first clustering C is 0, and nn.Linear's own init warns on a (0, D) weight.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        linear = nn.Linear(in_features, num_classes, bias=False)
        nn.init.normal_(linear.weight, std=0.001)
    return linear


class PPLRNet(nn.Module):
    """ResNet backbone + global and part BN necks + one classifier per feature space.

    Args:
        arch: backbone name, a key of ``RESNETS``.
        num_parts: number of horizontal stripes N_p.
        num_classes: classifier outputs C (the number of clusters; set each
            epoch by :meth:`reset_classifiers`).
        last_stride: stride of the backbone's layer4 (1 for re-ID).

    The backbone has no ``fc``; load ImageNet weights with
    ``load_pretrained(model, path)``.
    """

    def __init__(self, arch: str = "resnet50", num_parts: int = 3, num_classes: int = 0,
                 last_stride: int = 1) -> None:
        super().__init__()
        if arch not in RESNETS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(RESNETS)}")
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        self.arch = arch
        self.num_parts = num_parts
        self.backbone: ResNet = RESNETS[arch](last_stride=last_stride, num_classes=0)
        self.feature_dim = self.backbone.feature_dim
        self.global_bn = bn_neck(self.feature_dim)
        self.part_bns = nn.ModuleList(bn_neck(self.feature_dim) for _ in range(num_parts))
        self.global_classifier = classifier(self.feature_dim, num_classes)
        self.part_classifiers = nn.ModuleList(
            classifier(self.feature_dim, num_classes) for _ in range(num_parts))

    @property
    def num_classes(self) -> int:
        """Number of classifier outputs C."""
        return self.global_classifier.out_features

    def _global_feature(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Layer4 map (B, D, H, W) -> BN-neck global feature (B, D)."""
        return self.global_bn(feature_map.mean(dim=(2, 3)))

    def _part_features(self, feature_map: torch.Tensor) -> list[torch.Tensor]:
        """Layer4 map -> N_p BN-neck stripe features, each (B, D), top stripe first."""
        stripes = F.adaptive_avg_pool2d(feature_map, (self.num_parts, 1)).flatten(2)
        return [bn(stripes[:, :, n]) for n, bn in enumerate(self.part_bns)]

    def forward(self, x: torch.Tensor) -> PPLROutput | torch.Tensor:
        """Train mode: :class:`PPLROutput`. Eval mode: L2-normalised f_g (B, D)."""
        feature_map = self.backbone.forward_features(x)
        f_g = self._global_feature(feature_map)
        if not self.training:
            return F.normalize(f_g, dim=1)
        part_features = self._part_features(feature_map)
        part_logits = [head(f) for head, f in zip(self.part_classifiers, part_features)]
        return PPLROutput(
            f_g=f_g,
            f_p=torch.stack(part_features, dim=-1),
            logits_g=self.global_classifier(f_g),
            logits_p=torch.stack(part_logits, dim=0).permute(1, 2, 0),
        )

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features for clustering: normalised f_g (B, D) and f_p (B, D, N_p).

        Each part is normalised over D.  Call in eval mode: in train mode the
        BN necks would use (and update) batch statistics.
        """
        feature_map = self.backbone.forward_features(x)
        f_g = F.normalize(self._global_feature(feature_map), dim=1)
        f_p = F.normalize(torch.stack(self._part_features(feature_map), dim=-1), dim=1)
        return f_g, f_p

    @classmethod
    def from_checkpoint(cls, state: dict | str | os.PathLike,
                        device: torch.device | str = "cpu") -> "PPLRNet":
        """The network of a pplr_fast checkpoint, in eval mode.

        ``state`` is a checkpoint file (read with ``utils.checkpoint.load_checkpoint``:
        weights-only, never running code from the file) or the dict it returned.
        Architecture and part count come from the checkpoint's config; the
        classifiers are sized to the checkpoint's last epoch.
        """
        if not isinstance(state, dict):
            from ..utils.checkpoint import load_checkpoint
            state = load_checkpoint(state, command="evaluate")
        cfg = state["config"]
        model = cls(cfg["arch"], num_parts=cfg["parts"])
        model.resize_classifiers(state["num_classes"])
        model.load_state_dict(state["model"])
        return model.to(device).eval()

    def resize_classifiers(self, num_classes: int) -> None:
        """Classifiers with ``num_classes`` outputs, weights to be loaded from a state dict."""
        d, p = self.feature_dim, self.num_parts
        like = self.global_classifier.weight
        self.reset_classifiers(torch.ones(num_classes, d, device=like.device),
                               torch.ones(num_classes, d, p, device=like.device))

    @torch.no_grad()
    def reset_classifiers(self, centroids_g: torch.Tensor, centroids_p: torch.Tensor) -> None:
        """Re-create every classifier with C outputs, weights = L2-normalised centroids.

        Args:
            centroids_g: (C, D) cluster centroids in the global feature space.
            centroids_p: (C, D, N_p) cluster centroids in each part space.

        The classifiers become new Parameters: rebuild the optimizer's param
        groups afterwards (see :meth:`classifier_parameters`).
        """
        num_classes, dim = centroids_g.shape
        expected_p = (num_classes, dim, self.num_parts)
        if dim != self.feature_dim or tuple(centroids_p.shape) != expected_p:
            raise ValueError(
                f"centroids must be (C, {self.feature_dim}) and (C, {self.feature_dim}, "
                f"{self.num_parts}); got {tuple(centroids_g.shape)} and {tuple(centroids_p.shape)}")
        weight = self.global_classifier.weight
        self.global_classifier = self._classifier_from(centroids_g, weight)
        self.part_classifiers = nn.ModuleList(
            self._classifier_from(centroids_p[:, :, n], weight) for n in range(self.num_parts))

    def _classifier_from(self, centroids: torch.Tensor, like: torch.Tensor) -> nn.Linear:
        """Bias-free Linear whose weight is the row-normalised centroids (C, D)."""
        linear = nn.Linear(self.feature_dim, centroids.shape[0], bias=False,
                           device=like.device, dtype=like.dtype)
        linear.weight.copy_(F.normalize(centroids.to(like), dim=1))
        return linear

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters of the global and part classifiers."""
        for head in (self.global_classifier, *self.part_classifiers):
            yield from (p for p in head.parameters() if p.requires_grad)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters of everything but the classifiers (backbone and BN necks)."""
        for module in (self.backbone, self.global_bn, self.part_bns):
            yield from (p for p in module.parameters() if p.requires_grad)
