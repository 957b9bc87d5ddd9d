"""The public clustering ops: input checks, memory refusals and the one backend vocabulary."""
import importlib.util
import os
import sys
import warnings

import pytest
import torch

from cluster_oracles import normalize
from pplr_fast import backend
from pplr_fast.cluster import (ClusterInputError, checks, cross_agreement,
                               cross_agreement_from_neighbours, dbscan, jaccard_distance,
                               jaccard_from_neighbours, nearest_neighbours)


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")


def load_benchmark(name):
    """A benchmark script imported as a module (they are scripts, not a package)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(BENCHMARKS)


def test_bad_inputs_name_the_problem():
    x = normalize(torch.randn(20, 4))
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ClusterInputError, match="NaN or Inf .* row 3"):
        jaccard_distance(bad, 5, 2, backend="reference")
    with pytest.raises(ClusterInputError, match="L2-normalised"):
        jaccard_distance(x * 3, 5, 2, backend="reference")
    with pytest.raises(ClusterInputError, match="k2 .* must not exceed k1"):
        jaccard_distance(x, 3, 6, backend="reference")
    with pytest.raises(ClusterInputError, match="eps must be > 0"):
        dbscan(torch.zeros(3, 3), 0.0, 4, backend="reference")
    with pytest.raises(ClusterInputError, match=r"\(N, D, N_p\)"):
        cross_agreement(x, x, 5, backend="reference")
    with pytest.raises(ValueError, match="backend must be one of"):
        jaccard_distance(x, 5, 2, backend="turbo")


@pytest.mark.parametrize("backend_name", backend.BACKENDS)
def test_bad_neighbour_lists_name_the_problem(backend_name):
    x = normalize(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)))
    rank = nearest_neighbours(x, 8, backend="reference")[1]
    with pytest.raises(ClusterInputError, match=r"has 8 neighbours per row but needs 10"):
        jaccard_from_neighbours(x, rank, 10, 2, backend=backend_name)
    with pytest.raises(ClusterInputError, match=r"\(N=20, K\) tensor of neighbour indices"):
        jaccard_from_neighbours(x, rank[:5], 8, 2, backend=backend_name)
    with pytest.raises(ClusterInputError, match="integer indices"):
        jaccard_from_neighbours(x, rank.double(), 8, 2, backend=backend_name)
    with pytest.raises(ClusterInputError, match=r"outside \[0, 20\)"):
        jaccard_from_neighbours(x, rank + 1, 8, 2, backend=backend_name)
    with pytest.raises(ClusterInputError, match=r"ranks_p\[1\] has 3 neighbours"):
        cross_agreement_from_neighbours(rank, [rank, rank[:, :3]], 5, backend=backend_name)


def test_reference_refuses_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda device: 2 ** 20)
    x = normalize(torch.randn(600, 4))
    with pytest.raises(MemoryError, match=r"needs about .* GiB .* backend='fast'"):
        jaccard_distance(x, 5, 2, backend="reference")


def test_one_backend_vocabulary():
    """The clustering ops, the loss, the trainer's flag and the benchmarks share one tuple."""
    from pplr_fast.losses import classification
    cluster_stage, train_step = load_benchmark("cluster_stage"), load_benchmark("train_step")
    from pplr_fast.train import build_parser
    assert cluster_stage.BACKENDS is train_step.BACKENDS is backend.BACKENDS
    assert backend.DEFAULT_BACKEND in backend.BACKENDS
    flag = next(a for a in build_parser()._actions if a.dest == "backend")
    assert tuple(flag.choices) == backend.BACKENDS and flag.default is None   # config decides
    from pplr_fast.config import RECIPE, make_config
    assert RECIPE["backend"] == make_config("synthetic").backend == backend.DEFAULT_BACKEND
    defaults = [classification.pplr_classification_loss.__kwdefaults__["backend"],
                nearest_neighbours.__defaults__[-1], dbscan.__defaults__[-1],
                cross_agreement.__defaults__[-1]]
    assert defaults == [backend.DEFAULT_BACKEND] * 4


def test_fallback_warns_once_and_runs_the_reference(monkeypatch):
    """A missing CPU kernel: one warning naming it and the fix, then the reference path."""
    monkeypatch.setattr(backend, "_warned", set())
    monkeypatch.setattr(backend, "CPU_MODULES", ("pplr_fast._no_such_kernel",))
    x = normalize(torch.randn(30, 4, generator=torch.Generator().manual_seed(1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = jaccard_distance(x, 6, 2, backend="fast")
        jaccard_distance(x, 6, 2, backend="fast")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "pplr_fast._no_such_kernel" in messages[0]
    assert "pip install -e ." in messages[0]
    assert torch.equal(first.to_dense(), jaccard_distance(x, 6, 2, backend="reference"))
