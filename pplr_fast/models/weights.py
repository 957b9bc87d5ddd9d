"""Load torchvision ImageNet ResNet weights from a local file (never downloads).

Accepted files: a raw ``state_dict`` as saved by torchvision (e.g.
``resnet50-0676ba61.pth``), or a dict wrapping one under ``state_dict`` or
``model``; keys may carry ``module.``, ``backbone.`` or ``base.`` prefixes.
``fc.*`` (the ImageNet classifier) is ignored.  Every backbone tensor must be
in the file with the right shape, and the file may hold no other backbone
tensors, so a ResNet-18 or ResNet-101 file never half-loads into a ResNet-50.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from typing import Mapping, Union

import torch
from torch import nn

from .resnet import RESNETS, ResNet

__all__ = ["PretrainedWeightsError", "PretrainedReport", "load_pretrained"]

KEY_PREFIXES = ("module.", "backbone.", "base.")
WRAPPER_KEYS = ("state_dict", "model")
MAX_LISTED_KEYS = 5


class PretrainedWeightsError(ValueError):
    """The pretrained-weights file is missing, unreadable, or not the right ResNet."""


@dataclass(frozen=True)
class PretrainedReport:
    """What :func:`load_pretrained` did."""

    path: str
    num_tensors: int  # tensors copied into the backbone
    ignored_keys: tuple[str, ...]  # ``fc.*`` entries of the file

    def __str__(self) -> str:
        ignored = f", ignored {', '.join(self.ignored_keys)}" if self.ignored_keys else ""
        return f"loaded {self.num_tensors} tensors from {self.path}{ignored}"


def load_pretrained(model_or_backbone: nn.Module,
                    path: Union[str, os.PathLike]) -> PretrainedReport:
    """Copy a torchvision ResNet checkpoint at ``path`` into a backbone.

    Args:
        model_or_backbone: a :class:`ResNet`, or a model holding one as ``.backbone``
            (e.g. :class:`~pplr_fast.models.PPLRNet`).
        path: local checkpoint file.

    Raises:
        PretrainedWeightsError: the file is missing, unreadable, or its tensors do
            not match the backbone (the message lists keys and suggests ``--arch``).
    """
    backbone = _find_backbone(model_or_backbone)
    path = os.fspath(path)
    state_dict = _read_state_dict(path)

    ignored = tuple(k for k in state_dict if k.startswith("fc."))
    file_tensors = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}

    problems = []
    for key, target in expected.items():
        if key not in file_tensors:
            # Checkpoints saved before PyTorch 0.4.1 lack BN batch counters.
            if not key.endswith("num_batches_tracked"):
                problems.append(f"{key} {tuple(target.shape)} missing")
        elif file_tensors[key].shape != target.shape:
            problems.append(f"{key} expected {tuple(target.shape)}, "
                            f"file has {tuple(file_tensors[key].shape)}")
    problems += [f"{key} {tuple(file_tensors[key].shape)} unexpected"
                 for key in file_tensors if key not in expected]
    if problems:
        raise PretrainedWeightsError(_mismatch_message(path, backbone, file_tensors, problems))

    backbone.load_state_dict(file_tensors, strict=False)
    return PretrainedReport(path=path, num_tensors=len(file_tensors), ignored_keys=ignored)


def _find_backbone(model: nn.Module) -> ResNet:
    if isinstance(model, ResNet):
        return model
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, ResNet):
        return backbone
    raise TypeError(f"load_pretrained needs a ResNet or a model with a ResNet .backbone, "
                    f"got {type(model).__name__}")


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """torch.load the file, unwrap it, strip key prefixes; errors name the path."""
    if not os.path.exists(path):
        raise PretrainedWeightsError(f"pretrained weights file {path!r} does not exist")
    if os.path.isdir(path):
        raise PretrainedWeightsError(
            f"pretrained weights path {path!r} is a directory; pass the checkpoint file itself")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for bad files
        if isinstance(error, pickle.UnpicklingError):
            # torch's first line here is advice about weights_only=False, which
            # does not apply: a weights file holds tensors only
            reason = "not a torch.save file holding only tensors"
        else:
            reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        raise PretrainedWeightsError(
            f"cannot read pretrained weights file {path!r} ({reason}); expected a torchvision "
            "ResNet .pth state dict such as resnet50-0676ba61.pth") from error

    for wrapper in WRAPPER_KEYS:
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()):
        raise PretrainedWeightsError(
            f"pretrained weights file {path!r} does not hold a state dict of tensors "
            f"(got {type(checkpoint).__name__}); expected a torchvision ResNet .pth file")
    return {_strip_prefixes(key): tensor for key, tensor in checkpoint.items()}


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def _mismatch_message(path: str, backbone: ResNet, file_tensors: Mapping[str, torch.Tensor],
                      problems: list[str]) -> str:
    listed = "; ".join(problems[:MAX_LISTED_KEYS])
    num_unlisted = len(problems) - MAX_LISTED_KEYS
    more = f" (and {num_unlisted} more)" if num_unlisted > 0 else ""
    message = (f"{path!r} is not a torchvision ResNet-{backbone.depth} checkpoint: "
               f"{len(problems)} keys missing, mismatched or unexpected: {listed}{more}.")
    file_depth = _guess_depth(file_tensors)
    if file_depth is None:
        return message + " The file does not look like a torchvision ResNet at all."
    arch = f"resnet{file_depth}"
    if arch in RESNETS:
        return message + f" It looks like a ResNet-{file_depth} checkpoint: pass --arch {arch}."
    return (message + f" It looks like a ResNet-{file_depth} checkpoint, which pplr_fast does "
            f"not build; use a checkpoint for one of {', '.join(sorted(RESNETS))}.")


def _guess_depth(file_tensors: Mapping[str, torch.Tensor]) -> int | None:
    """Depth of the torchvision ResNet whose keys the file holds, or None."""
    blocks = [set() for _ in range(4)]
    bottleneck = False
    for key in file_tensors:
        match = re.match(r"layer([1-4])\.(\d+)\.conv(\d)\.weight$", key)
        if match:
            blocks[int(match[1]) - 1].add(int(match[2]))
            bottleneck |= match[3] == "3"
    if "conv1.weight" not in file_tensors or not all(blocks):
        return None
    return sum(len(stage) for stage in blocks) * (3 if bottleneck else 2) + 2
