"""Checkpoints that are never half-written and say clearly when they are wrong.

A checkpoint is written to a temporary file in the same folder, flushed to
disk, then renamed over the old one (``os.replace`` is atomic on POSIX), so a
crash at any moment leaves either the old or the new file, never a torn one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_KEY = "pplr_fast_checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``state`` (plus the format marker) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({FORMAT_KEY: FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file); "
                              "pass the last.pth or best.pth of a pplr_fast run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        cause = (str(err).strip().splitlines() or [""])[0].strip().rstrip(".")
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read; resume from another "
            f"checkpoint (e.g. best.pth) or start a new run (torch.load: {type(err).__name__}: "
            f"{cause})") from None
    if not isinstance(state, dict) or state.get(FORMAT_KEY) is None:
        raise CheckpointError(
            f"{path} is not a pplr_fast checkpoint (no '{FORMAT_KEY}' marker); a torchvision "
            "ImageNet file goes to --pretrained, not --resume/--checkpoint")
    if state[FORMAT_KEY] > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer pplr_fast (format "
                              f"{state[FORMAT_KEY]}); upgrade pplr_fast to read it")
    return state


def rng_state() -> dict[str, Any]:
    """Every random number generator the trainer draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
