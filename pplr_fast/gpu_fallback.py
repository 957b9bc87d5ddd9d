"""Loud reports of a fast GPU piece that cannot run, for the run's log and ``metrics.jsonl``.

On a CPU the reference path is a fallback worth a one-line note; on a GPU it
is a silent disaster: the reference DBSCAN is a Python loop over every edge
(minutes at N = 10^6), the dense reference Jaccard needs N x N memory. So a
fast op that falls back to the reference on a CUDA tensor

- warns with a banner (``GPUFallbackWarning``, a ``RuntimeWarning``) and logs
  it on the ``pplr_fast`` logger the first time per (device, op);
- keeps a record per (device, op) until the trainer drains them into that
  epoch's ``metrics.jsonl`` line (``drain_fallback_records``), so every epoch
  that ran slow says so, with the reason and the fix;
- raises ``GPUFallbackError`` instead when ``PPLR_FAST_STRICT_GPU=1`` (for
  benchmarks and CI on GPU machines, where a slow path must fail the run).

A fast piece replaced by another fast piece (DBSCAN by torch label
propagation when CuPy cannot run) is not a fallback to the reference: report
it with ``substitute=`` so the record says what ran instead.
"""
from __future__ import annotations

import logging
import os
import time
import warnings

import torch

STRICT_ENV = "PPLR_FAST_STRICT_GPU"
_pending: dict[str, dict] = {}     # (device, op) -> record, since the last drain
_announced: set[str] = set()


class GPUFallbackWarning(RuntimeWarning):
    """A fast GPU piece did not run; a slower one ran in its place."""


class GPUFallbackError(RuntimeError):
    """A fast GPU piece did not run and ``PPLR_FAST_STRICT_GPU=1`` forbids the slow path."""


def cupy_package_for_torch() -> str:
    """The CuPy wheel that matches this torch's CUDA (``cupy-cuda12x`` / ``cupy-cuda13x``)."""
    cuda = torch.version.cuda or "12"
    return f"cupy-cuda{cuda.split('.')[0]}x"


def cupy_install_hint() -> str:
    """How to install the CuPy matching this torch (offline: a wheel of that name)."""
    package = cupy_package_for_torch()
    extra = "gpu-cuda" + package[len("cupy-cuda"):-1]
    return f"pip install {package} (or pip install -e '.[{extra}]')"


def gpu_fallback_notice(op: str, device, problem: str, fix: str, substitute: str = "reference"
                        ) -> tuple[str, dict]:
    """``(banner text, metrics record)`` of ``op`` on ``device`` running ``substitute``.

    ``problem`` says why the fast piece cannot run, ``fix`` what makes it run.
    """
    device = str(device)
    if substitute == "reference":
        heading = f"SLOW PATH ON {device.upper()}"
        cost = ("the plain-PyTorch reference runs instead: orders of magnitude slower at large N "
                "(DBSCAN: a Python loop over every edge; Jaccard: dense N x N matrices)")
    else:
        heading = f"SUBSTITUTE ON {device.upper()}"
        cost = f"{substitute} runs instead (same results)"
    text = (f"\n{'!' * 78}\npplr_fast: {heading}: the fast {op} cannot run: "
            f"{problem}\n  {cost}.\n  Fix: {fix}\n  (set {STRICT_ENV}=1 to make this an error)"
            f"\n{'!' * 78}")
    record = {"event": "gpu_fallback", "op": op, "device": device, "requested": "fast",
              "ran": substitute, "reason": problem, "fix": fix,
              "first_seen": time.strftime("%Y-%m-%dT%H:%M:%S"), "calls": 0}
    return text, record


def report_gpu_fallback(op: str, device, problem: str, fix: str, substitute: str = "reference"
                        ) -> dict:
    """Announce (once per device and op), record (every call) or, in strict mode, raise."""
    text, record = gpu_fallback_notice(op, device, problem, fix, substitute)
    if os.environ.get(STRICT_ENV, "0") == "1":
        raise GPUFallbackError(" ".join(text.replace("!", "").split()))
    key = f"{record['device']}:{op}:{substitute}"
    if key not in _announced:
        _announced.add(key)
        warnings.warn(text, GPUFallbackWarning, stacklevel=3)
        logging.getLogger("pplr_fast").warning(text)
    record = _pending.setdefault(key, record)
    record["calls"] += 1
    return record


def drain_fallback_records() -> list[dict]:
    """The records since the last drain (for the epoch's ``metrics.jsonl`` line); clears them."""
    records = list(_pending.values())
    _pending.clear()
    return records
