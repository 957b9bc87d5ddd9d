"""The trainer's classification loss: PGLR on the global logits plus the mean
part loss (AALS, or label-smoothed CE before ``aals_epoch``), with a backend
switch between the plain PyTorch twin and the fastest exact path."""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from pplr_fast.backend import DEFAULT_BACKEND, check_backend, resolve_backend, warn_once

from ._validation import check_fraction, check_values
from .aals import aals_loss_unchecked
from .label_smoothing import cross_entropy_label_smoothing_unchecked
from .pglr import check_pglr_inputs, pglr_loss_unchecked


def pplr_classification_loss(logits_g: Tensor, logits_p: Tensor, targets: Tensor,
                             scores: Tensor, *, beta: float = 0.5, use_aals: bool,
                             epsilon: float = 0.1,
                             backend: str = DEFAULT_BACKEND) -> Tuple[Tensor, Tensor]:
    """(loss_global, loss_parts) of one mini-batch (docs/method.md §3).

    loss_global is :func:`pglr_loss`; loss_parts is the mean over the N_p parts
    of :func:`aals_loss` (``use_aals``) or of
    :func:`cross_entropy_label_smoothing` with ``epsilon``.

    Args:
        logits_g: (B, C) global logits.
        logits_p: (B, C, N_p) part logits, part dimension last (any strides).
        targets: (B,) pseudo-labels in [0, C).
        scores: (B, N_p) agreement scores in [0, 1]; constants (no gradient).
        backend: ``"reference"``: the plain PyTorch twin, eager.
            ``"fast"``, by device:
            CUDA logits of dtype float32/float16/bfloat16, Triton installed:
            the fused Triton op (``pplr_fast.kernels.pplr_classification_loss``);
            CPU logits: ``torch.compile`` of the twin (faster than the eager
            twin and lighter in peak memory: benchmarks/results/losses_cpu.md);
            it compiles (a few seconds) on first use with each part loss and
            once more when C first exceeds 4096, not for every new C; if
            compilation fails, a warning is issued and the eager twin is used;
            anything else (CUDA float64; CUDA without Triton, which
            :func:`pplr_fast.backend.resolve_backend` warns about once): the
            eager twin.
    Both losses are float32 for half-precision logits.
    """
    check_backend(backend)
    check_pglr_inputs(logits_g, logits_p, targets, scores, beta)
    check_fraction(epsilon, "epsilon")
    check_values(targets, logits_g.shape[1], scores)
    args = (logits_g, logits_p, targets, scores, beta, use_aals, epsilon)
    if resolve_backend(backend, logits_g.device, "classification_loss") == "fast":
        if _fused_op_applies(logits_g, logits_p):
            from .fused import pplr_classification_loss_fused
            return pplr_classification_loss_fused(logits_g, logits_p, targets, scores, beta=beta,
                                                  use_aals=use_aals, epsilon=epsilon,
                                                  validate=False)
        if logits_g.device.type == "cpu":
            return _compiled_twin_or_eager(*args)
    return classification_loss_twin(*args)


def classification_loss_twin(logits_g: Tensor, logits_p: Tensor, targets: Tensor, scores: Tensor,
                             beta: float, use_aals: bool, epsilon: float) -> Tuple[Tensor, Tensor]:
    """The plain PyTorch twin without input checks (what ``backend="reference"`` runs)."""
    loss_global = pglr_loss_unchecked(logits_g, logits_p, targets, scores, beta)
    if use_aals:
        loss_parts = aals_loss_unchecked(logits_p, targets, scores)
    else:
        loss_parts = cross_entropy_label_smoothing_unchecked(logits_p, targets, epsilon)
    return loss_global, loss_parts


def _fused_op_applies(logits_g: Tensor, logits_p: Tensor) -> bool:
    """The fused op runs on CUDA float32/float16/bfloat16 logits (Triton is there:
    the backend resolved to ``fast`` on CUDA)."""
    if logits_g.device.type != "cuda" or logits_p.device != logits_g.device:
        return False
    from pplr_fast.kernels.pplr_classification_loss import SUPPORTED_DTYPES
    return logits_g.dtype == logits_p.dtype and logits_g.dtype in SUPPORTED_DTYPES


_compiled_twin: Optional[Callable] = None
_compile_failed = False


def _compiled_twin_or_eager(*args) -> Tuple[Tensor, Tensor]:
    """``torch.compile(classification_loss_twin)``, built once; the eager twin
    for good after a compilation failure (the inputs are already checked)."""
    global _compiled_twin, _compile_failed
    if not _compile_failed:
        if _compiled_twin is None:
            # dynamic=True: C changes every epoch; with symbolic shapes a run
            # compiles once per part-loss mode (and once more past C = 4096).
            _compiled_twin = torch.compile(classification_loss_twin, dynamic=True)
        try:
            return _compiled_twin(*args)
        except Exception as error:  # no C++ compiler, unsupported platform...
            _compile_failed = True
            warn_once("cpu:classification_loss:compile",
                      f"pplr_classification_loss: torch.compile failed "
                      f"({type(error).__name__}: {error}); using the eager twin")
    return classification_loss_twin(*args)
