"""Feature extraction: images -> normalised global and part features."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import ImageDataset, build_test_transform
from .utils import distributed
from .utils.progress import show_progress


@torch.no_grad()
def extract_features(model, samples: Sequence[tuple[str, int, int]], *, height: int, width: int,
                     batch_size: int, workers: int, device: torch.device,
                     desc: str = "extract", progress: bool | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_g (N, D), x_p (N, D, N_p))``, L2-normalised, in the order of ``samples``.

    Under torch.distributed each rank extracts a contiguous shard and the
    shards are gathered, so every rank returns the full tensors.
    """
    shard = distributed.shard_range(len(samples))
    # The test transform draws no random numbers, but a DataLoader seeds its
    # workers from its generator: with the default (global) one, every
    # extraction would shift the training's random stream, so --eval-step
    # would change the augmentations of a run with the same --seed.
    loader = DataLoader(ImageDataset(list(samples[shard.start:shard.stop]),
                                     build_test_transform(height, width)),
                        batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    parts_g, parts_p = [], []
    hide = not show_progress(progress) or not distributed.is_main()
    for images, _, _, _ in tqdm(loader, desc=desc, leave=False, disable=hide):
        f_g, f_p = distributed.unwrap(model).extract(images.to(device, non_blocking=True))
        parts_g.append(f_g)
        parts_p.append(f_p)
    model.train(was_training)
    x_g, x_p = torch.cat(parts_g), torch.cat(parts_p)
    return distributed.gather_shards(x_g, len(samples)), distributed.gather_shards(x_p, len(samples))
