"""A torch Dataset over ``(path, pid, camid)`` samples."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image

from .datasets import Sample


class ImageReadError(OSError):
    """An image file could not be opened or decoded."""


def read_rgb_image(path: str) -> Image.Image:
    """Open ``path`` as a fully decoded RGB PIL image, or raise ImageReadError."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(
            f"cannot read image {path}: {error}. The file is missing, truncated or not "
            f"an image; remove or replace it.") from error


class ImageDataset(torch.utils.data.Dataset):
    """Items are ``(transform(image), pid, camid, index)``."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor]):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        path, pid, camid = self.samples[index]
        return self.transform(read_rgb_image(path)), pid, camid, index
