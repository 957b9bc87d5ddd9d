"""Checkpoints that are never half-written, safe to share, and say clearly when they are wrong.

A checkpoint is written to a temporary file in the same folder, flushed to
disk, then renamed over the old one (``os.replace`` is atomic on POSIX), so a
crash at any moment leaves either the old or the new file, never a torn one.

Reading one never runs code from it: every file goes through torch's
weights-only unpickler, which builds tensors, dicts, lists, tuples, strings
and numbers and refuses every other object. Format 2 holds nothing else (the
random generator states included); format 1, written before, holds the numpy
generator's state as a numpy array, and is read with exactly the numpy
globals that array needs allow-listed.

What a training checkpoint holds is :func:`training_state`; the checks a
--resume file passes before a run writes anything are
:func:`read_resume_checkpoint`.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_KEY = "pplr_fast_checkpoint"
# 1: random generator states as Python/numpy objects (a numpy array inside);
# 2: every value a tensor, dict, list, tuple, string, number, bool or None.
FORMAT_VERSION = 2

# The commands that read a checkpoint, and the run files each of them accepts
# (best.pth holds no optimizer state; interrupted.pth holds no pseudo-labels
# nor agreement scores).
COMMAND_FILES = {
    "resume": ("last.pth", "interrupted.pth"),
    "evaluate": ("best.pth", "last.pth"),
    "visualize": ("best.pth", "last.pth"),
}
_COMMAND_NAMES = {"resume": "--resume", "evaluate": "python -m pplr_fast.evaluate",
                  "visualize": "python -m pplr_fast.visualize"}

_LEGACY_RECONSTRUCT = np.zeros(1).__reduce__()[0]    # numpy's ndarray unpickling function
# What a format-1 file's numpy generator state (a uint32 ndarray) needs, under
# the names numpy 1.x and 2.x pickle it with.
_LEGACY_NUMPY_GLOBALS = [
    (_LEGACY_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    (_LEGACY_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
    (np.ndarray, "numpy.ndarray"),
    (np.dtype, "numpy.dtype"),
    type(np.dtype(np.uint32)),
]
_LEGACY_NUMPY_NAMES = {name for _, name in _LEGACY_NUMPY_GLOBALS[:-1]}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


class RunCompleteError(CheckpointError):
    """--resume of a checkpoint that has already trained every epoch this run asks for.

    ``epochs_given`` (False when --epochs was left at its default) only words the message.
    """

    def __init__(self, path: str, last_epoch: int, configured: int | None, requested: int,
                 epochs_given: bool = True):
        super().__init__(path)
        self.path, self.last_epoch, self.configured = path, last_epoch, configured
        self.requested, self.epochs_given = requested, epochs_given

    def __str__(self) -> str:
        done = self.last_epoch + 1
        trained = f"epochs 0-{self.last_epoch}" if done > 1 else "epoch 0"
        if self.configured is not None and done >= self.configured:
            status = (f"{self.path} is a finished run: it trained {trained}, all {done} epochs "
                      "it was configured for")
        else:
            configured = ("" if self.configured is None
                          else f" of the {self.configured} it was configured for")
            status = f"{self.path} has already trained {done} epochs ({trained}{configured})"
        asked = (f"--epochs {self.requested} is the total this run asks for" if self.epochs_given
                 else f"without --epochs the total is the default {self.requested}")
        return (f"{status}; {asked}, so there is nothing to train. --epochs is the total of the "
                f"run, not the epochs to add: to train further, resume with --epochs M, M > "
                f"{done} (e.g. --resume {self.path} --epochs {done + 10})")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``state`` (plus the format marker) to ``path``.

    ``state`` may hold only what :func:`load_checkpoint` reads back without
    allow-listing anything (see :func:`_check_plain`); anything else is a
    TypeError here, not a file nobody can load.
    """
    _check_plain(state, "state")
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


_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is built from what the weights-only unpickler accepts."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} key")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN) or isinstance(value, np.generic):
        raise TypeError(f"checkpoint {where} is a {type(value).__module__}."
                        f"{type(value).__qualname__}, which a weights-only load refuses; store "
                        "it as a tensor, list, dict or plain number/string")


def _next_step(path: Path, command: str | None, missing: bool = False) -> str:
    """What to pass instead of ``path``: the run files ``command`` accepts that exist beside it."""
    accepted = COMMAND_FILES.get(command, ("best.pth", "last.pth"))
    beside = (path.parent / name for name in accepted)
    others = [other for other in beside if other.is_file() and other.resolve() != path.resolve()]
    if command == "resume" and others:
        other = others[0]
        which = ("saved when the run was last stopped by a signal"
                 if other.name == "interrupted.pth" else "the last complete epoch")
        if not missing:
            age = "newer" if other.stat().st_mtime >= path.stat().st_mtime else "older"
            which += f"; {age} than {path.name}"
        return f"resume from {other} instead ({which}), or start a new run"
    if others:
        return (f"pass {' or '.join(str(o) for o in others)} instead "
                f"({' and '.join(accepted)} of a run both work)")
    if command == "resume" and not missing:
        return ("start a new run, or resume from another copy of the run's last.pth "
                "(best.pth cannot be resumed: it holds only the weights)")
    return f"pass the {' or '.join(accepted)} of a pplr_fast run"


def _refused_detail(err: Exception) -> str | None:
    """The object torch's weights-only unpickler refused, from its error; None if it is not that."""
    text = str(err)
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", text)
    if found:
        return f"global {found.group(1)}"
    found = re.search(r"(Trying to call reduce for unrecognized function [^\n]+"
                      r"|Can only (?:build|create new object)[^\n]+)", text)
    if found:
        return found.group(1).strip().rstrip(".")
    found = re.search(r"WeightsUnpickler error:\s*([^\n]*\S)", text)
    return found.group(1).strip().rstrip(".") if found else None


def _refuse(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"refusing checkpoint {path}: it contains objects that a safe (weights-only) loader "
        f"refuses ({detail}); pplr_fast never writes such objects, so the file was not written "
        "by pplr_fast or was tampered with. pplr_fast never executes code from a checkpoint: "
        "nothing in it was run; use a checkpoint from a run you trust")


def _weights_only_load(path: Path, map_location) -> Any:
    with warnings.catch_warnings():   # a foreign pickle protocol: the error, if any, says enough
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location=map_location, weights_only=True)


def _torch_load(path: Path, map_location) -> Any:
    """torch.load with weights_only=True; a format-1 file's numpy state with its numpy globals."""
    try:
        return _weights_only_load(path, map_location)
    except pickle.UnpicklingError as err:
        detail = _refused_detail(err)
        if detail is None or detail.removeprefix("global ") not in _LEGACY_NUMPY_NAMES:
            raise
    with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
        state = _weights_only_load(path, map_location)
    if not isinstance(state, dict) or state.get(FORMAT_KEY) != 1:
        # only format 1 stores numpy arrays (its random generator state)
        raise _refuse(path, "numpy arrays in a file that is no format-1 pplr_fast checkpoint")
    return state


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    command: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise CheckpointError.

    Never runs code from the file (weights-only unpickling). ``command``
    ("resume", "evaluate" or "visualize") chooses the advice of the errors:
    the files beside ``path`` that this command accepts. A format-1 state
    comes back in the format-2 layout (see :func:`rng_state`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file); "
                              f"{_next_step(path, command, missing=True)}")
    try:
        state = _torch_load(path, map_location)
    except CheckpointError:
        raise
    except Exception as err:  # any unpickling failure means the same to the user
        detail = _refused_detail(err) if isinstance(err, pickle.UnpicklingError) else None
        if detail is not None:
            raise _refuse(path, detail) from None
        # torch's first sentence names the problem; the rest is general advice
        cause = (str(err).strip().splitlines() or [""])[0].split(". ")[0].strip().rstrip(".")
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read; "
            f"{_next_step(path, command)} (torch.load: {type(err).__name__}: {cause})") from None
    if not isinstance(state, dict) or not isinstance(state.get(FORMAT_KEY), int):
        raise CheckpointError(f"{path} is not a pplr_fast checkpoint (no '{FORMAT_KEY}' marker); "
                              f"{_not_ours_advice(command)}")
    if state[FORMAT_KEY] > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer pplr_fast (format "
                              f"{state[FORMAT_KEY]}); upgrade pplr_fast to read it")
    if isinstance(state.get("rng"), dict):
        state["rng"] = _plain_rng_state(state["rng"])
    return state


def _not_ours_advice(command: str | None) -> str:
    """What a file that is no pplr_fast checkpoint is for, and what ``command`` takes instead."""
    pretrained = "a torchvision ImageNet file goes to --pretrained of python -m pplr_fast.train"
    if command == "resume":
        return f"--resume takes a run's last.pth (or interrupted.pth); {pretrained}"
    if command in COMMAND_FILES:
        return (f"{_COMMAND_NAMES[command]} --checkpoint takes a run's "
                f"{' or '.join(COMMAND_FILES[command])}; {pretrained}")
    return f"pass a run's best.pth or last.pth; {pretrained}"


def rng_state() -> dict[str, Any]:
    """Every random number generator the trainer draws from, as plain values and tensors.

    ``python``: [version, internal state (625 ints), gauss_next]; ``numpy``: the
    legacy MT19937 state as {"algorithm", "keys" (int64 tensor of the 624
    uint32 words), "pos", "has_gauss", "cached_gaussian"}; ``torch`` (and
    ``cuda``, one per device): torch's ByteTensors.
    """
    return _plain_rng_state({"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state(),
                             **({"cuda": torch.cuda.get_rng_state_all()}
                                if torch.cuda.is_available() else {})})


def _plain_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """The format-2 layout of a generator state given as Python/numpy objects (format 1)."""
    state = dict(state)
    if isinstance(state.get("python"), tuple):
        version, internal, gauss_next = state["python"]
        state["python"] = [version, list(internal), gauss_next]
    if isinstance(state.get("numpy"), tuple):
        algorithm, keys, pos, has_gauss, cached = state["numpy"]
        state["numpy"] = {"algorithm": str(algorithm),
                          "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                          "pos": int(pos), "has_gauss": int(has_gauss),
                          "cached_gaussian": float(cached)}
    if "cuda" in state:
        state["cuda"] = list(state["cuda"])
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set every generator from a :func:`rng_state` (either format's layout)."""
    state = _plain_rng_state(state)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["algorithm"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                   config: Any, epoch: int, best_map: float, best_epoch: int,
                   initial_metrics: dict | None, pseudo_labels: torch.Tensor | None,
                   scores: torch.Tensor | None) -> dict[str, Any]:
    """What a training checkpoint holds after ``epoch``: the weights (and classifier size),
    the Adam state (None: best.pth, which evaluation reads, leaves it out), the step
    schedule, the best mAP so far, the epoch's pseudo-labels and agreement scores (None in
    interrupted.pth), every generator's state and the run's settings (``config``, a
    dataclass)."""
    return {
        "model": model.state_dict(),
        "num_classes": model.num_classes,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": {"base_lr": config.lr, "step_size": config.step_size, "gamma": 0.1},
        "epoch": epoch,
        "best_map": best_map,
        "best_epoch": best_epoch,
        "initial_metrics": initial_metrics,
        "pseudo_labels": pseudo_labels,
        "scores": scores,
        "rng": rng_state(),
        "config": dataclasses.asdict(config),
    }


def read_resume_checkpoint(path: str | os.PathLike, config: Any) -> dict[str, Any]:
    """The --resume checkpoint, checked against this run's settings (``config``) before
    anything is written: same arch/parts/method, optimizer state present, epochs left to
    train (else :class:`RunCompleteError`)."""
    state = load_checkpoint(path, map_location="cpu", command="resume")
    saved = state.get("config", {})
    for key in ("arch", "parts", "method"):
        if saved.get(key, "pplr" if key == "method" else None) != getattr(config, key):
            raise CheckpointError(
                f"{path} was trained with --{key} {saved.get(key)}, this run asks for "
                f"--{key} {getattr(config, key)}; resume with the same settings")
    if state.get("optimizer") is None:
        raise CheckpointError(
            f"{path} holds no optimizer state (best.pth keeps only the weights); resume "
            "from the run's last.pth")
    if state["epoch"] + 1 >= config.epochs:
        raise RunCompleteError(path, state["epoch"], state.get("config", {}).get("epochs"),
                               config.epochs)
    return state
