"""Image transforms for training and testing (docs/method.md §4), Pillow + torch only.

Every random choice draws from torch's global RNG, so ``torch.manual_seed``
(and the per-worker seeding of ``DataLoader``) makes augmentation reproducible.

Train: resize (bicubic) -> horizontal flip (p=0.5) -> zero-pad 10 -> random
crop back to (height, width) -> float CHW tensor in [0, 1] -> ImageNet
normalisation -> random erasing (p=0.5).
Test: resize -> tensor -> normalisation.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(t) for t in self.transforms)})"


class Resize:
    """Resize a PIL image to exactly (height, width), bicubic."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.resize((self.width, self.height), Image.BICUBIC)

    def __repr__(self) -> str:
        return f"Resize({self.height}, {self.width})"


class RandomHorizontalFlip:
    """Mirror a PIL image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()) < self.p:
            return image.transpose(Image.FLIP_LEFT_RIGHT)
        return image

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Pad:
    """Add ``padding`` black pixels on every side of a PIL image."""

    def __init__(self, padding: int):
        self.padding = padding

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.expand(image, border=self.padding, fill=0)

    def __repr__(self) -> str:
        return f"Pad({self.padding})"


class RandomCrop:
    """Crop a (height, width) window at a uniformly random position."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def __call__(self, image: Image.Image) -> Image.Image:
        top = int(torch.randint(image.height - self.height + 1, ()))
        left = int(torch.randint(image.width - self.width + 1, ()))
        return image.crop((left, top, left + self.width, top + self.height))

    def __repr__(self) -> str:
        return f"RandomCrop({self.height}, {self.width})"


class ToTensor:
    """PIL RGB image -> float32 CHW tensor in [0, 1]."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8))
        return pixels.permute(2, 0, 1).float().div_(255.0).contiguous()

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """Per-channel ``(x - mean) / std`` on a CHW tensor."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomErasing:
    """With probability ``p``, fill a random rectangle of a CHW tensor with ``fill``.

    The rectangle covers a uniform fraction in ``area`` of the image, with an
    aspect ratio (height / width) uniform in ``aspect``; up to 100 draws are
    tried until one fits strictly inside the image, else nothing is erased.

    The default ``fill`` is the ImageNet mean written *into the normalised
    tensor*, as the public PPLR/SpCL code does (their RandomErasing runs after
    Normalize with ``mean=[0.485, 0.456, 0.406]``). In pixel terms that is
    about (0.60, 0.56, 0.50), not the mean colour; pass ``fill=(0, 0, 0)`` to
    erase with the true mean instead.
    """

    def __init__(self, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 aspect: tuple[float, float] = (0.3, 1 / 0.3),
                 fill: Sequence[float] = IMAGENET_MEAN, attempts: int = 100):
        self.p, self.area, self.aspect, self.attempts = p, area, aspect, attempts
        self.fill = torch.tensor(fill, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return tensor
        _, height, width = tensor.shape
        for _ in range(self.attempts):
            area_frac, aspect_t = torch.rand(2).tolist()
            target = height * width * (self.area[0] + area_frac * (self.area[1] - self.area[0]))
            aspect = self.aspect[0] + aspect_t * (self.aspect[1] - self.aspect[0])
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if h < height and w < width:
                top = int(torch.randint(height - h + 1, ()))
                left = int(torch.randint(width - w + 1, ()))
                erased = tensor.clone()
                erased[:, top:top + h, left:left + w] = self.fill
                return erased
        return tensor

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, area={self.area}, aspect={self.aspect})"


def build_train_transform(height: int, width: int, padding: int = 10,
                          flip_p: float = 0.5, erasing_p: float = 0.5) -> Compose:
    """The training augmentation of docs/method.md §4 (PIL image -> normalised tensor)."""
    return Compose([
        Resize(height, width),
        RandomHorizontalFlip(flip_p),
        Pad(padding),
        RandomCrop(height, width),
        ToTensor(),
        Normalize(),
        RandomErasing(erasing_p),
    ])


def build_test_transform(height: int, width: int) -> Compose:
    """Deterministic test transform: resize -> tensor -> ImageNet normalisation."""
    return Compose([Resize(height, width), ToTensor(), Normalize()])
