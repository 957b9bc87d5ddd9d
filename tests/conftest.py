"""Test setup shared by every test module.

Triton kernels run on the CPU through the Triton interpreter in CI; the
interpreter must be switched on before the first ``@triton.jit`` runs, so this
happens here, before any test module imports ``pplr_fast.kernels``.  On a GPU
machine run the tests with ``PPLR_TEST_GPU=1`` to execute the kernels for real.
"""
import os
import warnings

if os.environ.get("PPLR_TEST_GPU", "0") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

# PPLR_TEST_THREADS: the thread count of torch's kernels (tests/test_exact_ties.py runs
# the tie cases with 1 and 2)
torch.set_num_threads(int(os.environ.get("PPLR_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture(autouse=True)
def no_fallback(request):
    """In modules marked ``pytestmark = pytest.mark.no_fallback`` every RuntimeWarning
    is an error: a silent fallback to the reference path (a warning) would make a
    test of the fast path compare the reference with itself."""
    if request.node.get_closest_marker("no_fallback") is None:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


@pytest.fixture
def rng():
    """A seeded numpy Generator, fresh per test."""
    return np.random.default_rng(0)


@pytest.fixture
def device():
    """The device kernels are tested on: CUDA when PPLR_TEST_GPU=1, else CPU."""
    if os.environ.get("PPLR_TEST_GPU", "0") == "1":
        return torch.device("cuda")
    return torch.device("cpu")
