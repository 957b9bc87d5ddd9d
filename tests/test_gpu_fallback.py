"""A fast GPU piece that cannot run is loud: banner once, a record per epoch, an error in strict mode."""
import json
import warnings

import pytest
import torch

from pplr_fast import gpu_fallback
from pplr_fast.gpu_fallback import (GPUFallbackError, GPUFallbackWarning, cupy_install_hint,
                                    cupy_package_for_torch, drain_fallback_records,
                                    report_gpu_fallback)


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(gpu_fallback, "_pending", {})
    monkeypatch.setattr(gpu_fallback, "_announced", set())
    monkeypatch.delenv(gpu_fallback.STRICT_ENV, raising=False)


def test_banner_once_record_every_call_drained_per_epoch():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            report_gpu_fallback("dbscan", torch.device("cuda", 0), "CuPy is not installed",
                                "pip install cupy-cuda13x")
    banners = [w for w in caught if issubclass(w.category, GPUFallbackWarning)]
    assert len(banners) == 1
    text = str(banners[0].message)
    assert "SLOW PATH ON CUDA:0" in text and "dbscan" in text and "CuPy is not installed" in text
    assert "pip install cupy-cuda13x" in text and "reference" in text
    records = drain_fallback_records()
    assert len(records) == 1 and records[0]["calls"] == 3
    assert records[0]["op"] == "dbscan" and records[0]["ran"] == "reference"
    json.dumps(records)                                   # fits a metrics.jsonl line
    assert drain_fallback_records() == []                 # the next epoch starts clean
    with warnings.catch_warnings(record=True) as caught:  # ... and is recorded again, quietly
        warnings.simplefilter("always")
        report_gpu_fallback("dbscan", "cuda:0", "CuPy is not installed", "fix")
    assert not caught and drain_fallback_records()[0]["calls"] == 1


def test_substitute_is_named_and_kept_apart():
    with pytest.warns(GPUFallbackWarning, match="SUBSTITUTE ON CUDA:0(.|\n)*label propagation "
                                                "runs instead"):
        report_gpu_fallback("dbscan", "cuda:0", "NVRTC fails", "fix", substitute="label propagation")
    with pytest.warns(GPUFallbackWarning, match="plain-PyTorch reference"):
        report_gpu_fallback("dbscan", "cuda:0", "NVRTC fails", "fix")
    assert sorted(r["ran"] for r in drain_fallback_records()) == ["label propagation", "reference"]


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv(gpu_fallback.STRICT_ENV, "1")
    with pytest.raises(GPUFallbackError, match="jaccard cannot run: triton is not installed"):
        report_gpu_fallback("jaccard", "cuda:0", "triton is not installed", "pip install triton")
    assert drain_fallback_records() == []


@pytest.mark.parametrize("cuda, package", [("13.0", "cupy-cuda13x"), ("12.8", "cupy-cuda12x"),
                                           (None, "cupy-cuda12x")])
def test_cupy_package_follows_torch_cuda(monkeypatch, cuda, package):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    assert cupy_package_for_torch() == package
    assert package in cupy_install_hint() and f"gpu-cuda{package[9:11]}" in cupy_install_hint()
