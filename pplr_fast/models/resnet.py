"""ResNet-18/34/50 backbones (He et al., CVPR 2016) with an adjustable last stride.

The module tree mirrors torchvision's ResNet (v1.5: a Bottleneck downsamples on
its 3x3 ``conv2``), so ``state_dict()`` keys and shapes are exactly
torchvision's and an ImageNet checkpoint file loads by name
(see :func:`pplr_fast.models.weights.load_pretrained`).

Re-ID models use last stride 1: layer4's first block keeps the resolution of
layer3, so a 384x128 image gives a 24x8 map instead of 12x4.
"""
from __future__ import annotations

from typing import Callable, Optional, Type, Union

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "RESNETS"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, plus a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


def make_stage(block: Block, in_channels: int, planes: int, num_blocks: int,
               stride: int) -> nn.Sequential:
    """One stage; its first block changes resolution/width, with a 1x1 conv + BN shortcut."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride),
                                   nn.BatchNorm2d(out_channels))
    blocks = [block(in_channels, planes, stride, downsample)]
    blocks += [block(out_channels, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages, global pool, ``fc``.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in each of the four stages.
        last_stride: stride of layer4's first block (2 as in ImageNet ResNet, 1 for re-ID).
        num_classes: outputs of ``fc``; 0 replaces ``fc`` by an identity (no ``fc.*`` keys).
    """

    def __init__(self, block: Block, layers: tuple[int, int, int, int],
                 last_stride: int = 2, num_classes: int = 1000) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.depth = sum(layers) * (2 if block is BasicBlock else 3) + 2
        self.last_stride = last_stride
        self.feature_dim = 512 * block.expansion

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        e = block.expansion
        self.layer1 = make_stage(block, 64, 64, layers[0], stride=1)
        self.layer2 = make_stage(block, 64 * e, 128, layers[1], stride=2)
        self.layer3 = make_stage(block, 128 * e, 256, layers[2], stride=2)
        self.layer4 = make_stage(block, 256 * e, 512, layers[3], stride=last_stride)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.feature_dim, num_classes) if num_classes > 0 else nn.Identity()

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> layer4 map (B, feature_dim, H/32 or H/16, ...)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> ``fc`` logits (or pooled features when ``num_classes=0``)."""
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def resnet18(last_stride: int = 1, num_classes: int = 1000) -> ResNet:
    """ResNet-18, 512-d features."""
    return ResNet(BasicBlock, (2, 2, 2, 2), last_stride, num_classes)


def resnet34(last_stride: int = 1, num_classes: int = 1000) -> ResNet:
    """ResNet-34, 512-d features."""
    return ResNet(BasicBlock, (3, 4, 6, 3), last_stride, num_classes)


def resnet50(last_stride: int = 1, num_classes: int = 1000) -> ResNet:
    """ResNet-50, 2048-d features."""
    return ResNet(Bottleneck, (3, 4, 6, 3), last_stride, num_classes)


RESNETS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
}
