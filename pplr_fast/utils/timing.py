"""The one stage timer of the package: seconds per named stage, the GPU synchronised.

Two ways to use it, whichever reads better where it is used::

    clock = StageClock(device)
    with clock("knn"):          # the block's wall time is added to clock.timings["knn"]
        ...
    clock.lap("encoding")       # or: the time since the previous lap (or the start)

A leaf module: it imports nothing of pplr_fast.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (a no-op off CUDA), so a timer reads finished work."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


class StageClock:
    """Seconds per stage (``timings``), accumulated over the blocks or laps of that name.

    Args:
        device: the device whose work is timed (CUDA is synchronised before and after
            each block and at each lap); None or a CPU device: nothing to wait for.
        timings: a dict to add the seconds to (the caller's), or None for a new one.
    """

    def __init__(self, device: torch.device | str | None = None, timings: dict | None = None):
        self.device = device
        self.timings: dict[str, float] = {} if timings is None else timings
        synchronize(device)
        self._last = time.perf_counter()

    def _add(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    @contextmanager
    def __call__(self, stage: str):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self._last = time.perf_counter()
            self._add(stage, self._last - start)

    def lap(self, stage: str) -> float:
        """Add the seconds since the previous lap, block or the clock's start to ``stage``."""
        synchronize(self.device)
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self._add(stage, seconds)
        return seconds
