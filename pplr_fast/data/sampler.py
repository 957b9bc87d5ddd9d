"""Identity- and camera-aware batch sampling (docs/method.md §4).

A batch is P identities x K instances. Each identity contributes one group
of K consecutive indices per epoch, taken round-robin over its cameras so
the K images come from as many different cameras as it has; identities
with fewer than K images repeat some (drawn at random).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch


class RandomIdentitySampler(torch.utils.data.Sampler[int]):
    """Yields groups of ``num_instances`` indices of one identity, identities shuffled.

    Samples whose pid is negative (DBSCAN noise) are never drawn. All random
    draws come from a private ``torch.Generator`` reseeded with
    ``seed + epoch`` by :meth:`set_epoch`; successive passes within one epoch
    continue that generator, so they differ but are reproducible.

    With ``num_replicas > 1`` every rank builds the same full list of groups
    and keeps every ``num_replicas``-th group starting at ``rank``; the list
    is padded by wrapping around so all ranks yield the same number of
    indices. Use it with ``DataLoader(batch_size=P * num_instances,
    drop_last=True)``.
    """

    def __init__(self, pids: Sequence[int], cams: Sequence[int], num_instances: int,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0):
        pids_array = np.asarray(pids, dtype=np.int64)
        cams_array = np.asarray(cams, dtype=np.int64)
        if pids_array.shape != cams_array.shape or pids_array.ndim != 1:
            raise ValueError(f"pids and cams must be 1-D and the same length, got "
                             f"{pids_array.shape} and {cams_array.shape}")
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        valid = np.flatnonzero(pids_array >= 0)
        if valid.size == 0:
            raise ValueError("no sample has a non-negative pid: nothing to sample")
        self.num_instances = num_instances
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank

        # Samples of valid identities sorted by (pid, camera, index).
        order = valid[np.lexsort((valid, cams_array[valid], pids_array[valid]))]
        self._indices = order
        pid_sorted, cam_sorted = pids_array[order], cams_array[order]
        new_pid = np.r_[True, pid_sorted[1:] != pid_sorted[:-1]]
        new_cam = new_pid | np.r_[True, cam_sorted[1:] != cam_sorted[:-1]]
        self._pid_group = np.cumsum(new_pid) - 1           # identity number of each sample
        self._cam_group = np.cumsum(new_cam) - 1           # (identity, camera) number
        self._pid_start = np.flatnonzero(new_pid)          # first sample of each identity
        self._pid_size = np.diff(np.r_[self._pid_start, order.size])
        self.num_identities = self._pid_start.size
        self._groups_per_rank = math.ceil(self.num_identities / num_replicas)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the sampler's generator with ``seed + epoch``."""
        self.epoch = epoch
        self._generator = torch.Generator().manual_seed(self.seed + epoch)

    def _uniform(self, size: int) -> np.ndarray:
        return torch.rand(size, generator=self._generator, dtype=torch.float64).numpy()

    def _all_groups(self) -> np.ndarray:
        """(num_identities, K) dataset indices, one row per identity, rows shuffled."""
        k = self.num_instances
        # Rank each sample within its (identity, camera) by a random key, and
        # each camera within its identity by another: sorting by (identity,
        # within-camera rank, camera key) visits cameras round-robin.
        sample_key = self._uniform(self._indices.size)
        camera_key = self._uniform(int(self._cam_group[-1]) + 1)[self._cam_group]
        by_camera = np.lexsort((sample_key, self._cam_group))
        within_rank = np.empty_like(by_camera)
        cam_start = np.flatnonzero(np.r_[True, np.diff(self._cam_group[by_camera]) != 0])
        cam_len = np.diff(np.r_[cam_start, by_camera.size])
        within_rank[by_camera] = np.arange(by_camera.size) - np.repeat(cam_start, cam_len)
        round_robin = np.lexsort((camera_key, within_rank, self._pid_group))

        # Row i takes the first K of identity i's round-robin order; an
        # identity with n < K samples fills the rest with random repeats.
        column = np.arange(k)
        size = self._pid_size[:, None]
        repeats = np.floor(self._uniform(self.num_identities * k).reshape(-1, k) * size)
        offset = np.where(column < size, column, repeats).astype(np.int64)
        groups = self._indices[round_robin[self._pid_start[:, None] + offset]]
        order = torch.randperm(self.num_identities, generator=self._generator).numpy()
        return groups[order]

    def __iter__(self) -> Iterator[int]:
        groups = self._all_groups()
        picks = (self.rank + self.num_replicas * np.arange(self._groups_per_rank)) % len(groups)
        return iter(groups[picks].reshape(-1).tolist())

    def __len__(self) -> int:
        return self._groups_per_rank * self.num_instances
