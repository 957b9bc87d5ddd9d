"""The public clustering ops: input checks, memory refusals and the one backend vocabulary."""
import importlib.util
import os
import re
import sys
import warnings

import pytest
import torch

from cluster_oracles import normalize
from pplr_fast import backend
from pplr_fast.cluster import (ClusterInputError, cross_agreement,
                               cross_agreement_from_neighbours, dbscan, jaccard_distance,
                               jaccard_from_neighbours, nearest_neighbours)
from pplr_fast.cluster.stage import run_cluster_stage
from pplr_fast.utils import memory


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
    monkeypatch.setattr(memory, "available_memory", lambda device: 2 ** 20)
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
    monkeypatch.setitem(backend.OP_MODULES, "jaccard",
                        {"cpu": ("pplr_fast._no_such_kernel",), "cuda": ("triton",)})
    x = normalize(torch.randn(30, 4, generator=torch.Generator().manual_seed(1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = jaccard_distance(x, 6, 2, backend="fast")
        jaccard_distance(x, 6, 2, backend="fast")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "pplr_fast._no_such_kernel" in messages[0]
    assert "pip install -e ." in messages[0]
    assert torch.equal(first.to_dense(), jaccard_distance(x, 6, 2, backend="reference").to_dense())


def test_argument_boundaries_are_refused_or_accepted_exactly():
    """Each check at its boundary: the smallest refused value and the largest accepted one."""
    x = normalize(torch.randn(20, 4, generator=torch.Generator().manual_seed(2)))
    for k1, k2, name in ((0, 1, "k1"), (5, 0, "k2")):
        with pytest.raises(ClusterInputError, match=f"{name} must be an integer >= 1, got 0"):
            jaccard_distance(x, k1, k2, backend="reference")
    with pytest.raises(ClusterInputError, match="k must be an integer >= 1, got 0"):
        nearest_neighbours(x, 0, backend="reference")
    with pytest.raises(ClusterInputError, match="min_samples must be an integer >= 1, got 0"):
        dbscan(torch.zeros(3, 3), 0.5, 0, backend="reference")
    with pytest.raises(ClusterInputError, match=r"k2 \(6\) must not exceed k1 \(5\)"):
        jaccard_distance(x, 5, 6, backend="reference")
    jaccard_distance(x, 5, 5, backend="reference")                     # k2 == k1 is allowed
    for bad in (1.5, -0.1):
        with pytest.raises(ClusterInputError, match=r"max_distance must lie in \[0, 1\]"):
            jaccard_distance(x, 5, 2, backend="fast", max_distance=bad)
    rank = nearest_neighbours(x, 9, backend="reference")[1]
    with pytest.raises(ClusterInputError, match="has 9 neighbours per row but needs 10"):
        jaccard_from_neighbours(x, rank, 10, 2, backend="reference")   # one column short


@pytest.mark.parametrize("backend_name", backend.BACKENDS)
def test_k1_above_the_number_of_images_is_refused_by_every_public_op(backend_name):
    """k1 > N would make every neighbourhood the whole set (one cluster, no word): the
    trainer refuses it, and so does every public op that takes k1; k1 == N is accepted."""
    from pplr_fast.cluster.distributed_stage import run_distributed_cluster_stage
    from pplr_fast.rerank import compute_jaccard_distance, re_rank_features, re_ranking
    x = normalize(torch.randn(20, 4, generator=torch.Generator().manual_seed(4)))
    x_p = torch.stack([x, x], dim=2)
    rank = nearest_neighbours(x, 20, backend="reference")[1]
    d = torch.cdist(x, x).numpy()
    message = r"k1=30 exceeds the number of images N=20.*pass k1 <= 20"
    calls = {
        "jaccard_distance": lambda k1: jaccard_distance(x, k1, 6, backend=backend_name),
        "jaccard_from_neighbours": lambda k1: jaccard_from_neighbours(
            x, rank, k1, 6, backend=backend_name),
        "run_cluster_stage": lambda k1: run_cluster_stage(x, x_p, eps=0.5, k1=k1,
                                                          backend=backend_name),
        "run_distributed_cluster_stage": lambda k1: run_distributed_cluster_stage(
            x, x_p, eps=0.5, k1=k1, backend=backend_name),
        "compute_jaccard_distance": lambda k1: compute_jaccard_distance(x, k1=k1, print_flag=False),
        "re_ranking": lambda k1: re_ranking(d[:5, 5:], d[:5, :5], d[5:, 5:], k1=k1),
        "re_ranking (tensors)": lambda k1: re_ranking(*(torch.from_numpy(b) for b in (
            d[:5, 5:], d[:5, :5], d[5:, 5:])), k1=k1),
        "re_rank_features": lambda k1: re_rank_features(x[:5], x[5:], k1=k1),
    }
    for call in calls.values():
        with pytest.raises(ClusterInputError, match=message):
            call(30)
        call(20)                                   # k1 == N: every list holds all N images


def test_features_must_be_normalised_to_a_tenth_of_a_percent():
    """A row 1% off unit norm is refused; the rounding of a float16 copy is not."""
    x = normalize(torch.randn(20, 8, generator=torch.Generator().manual_seed(3)))
    off = x.clone()
    off[4] *= 1.01
    with pytest.raises(ClusterInputError, match=r"row 4 has norm 1\.01"):
        nearest_neighbours(off, 3, backend="reference")
    rounded = x.half().float()
    assert float((rounded.norm(dim=1) - 1).abs().max()) > 1e-5      # not exactly unit rows
    nearest_neighbours(rounded, 3, backend="reference")


def test_memory_refusals_state_the_dense_matrices_they_need(monkeypatch):
    """The reference Jaccard holds five fp64 N x N matrices (8 N^2 bytes each) plus
    the sort's chunk buffers (at most 3 x 256 MiB): the refusal states that size."""
    n = 20000
    x = normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(4)))
    monkeypatch.setattr(memory, "available_memory", lambda device: 2 ** 30)
    with pytest.raises(MemoryError) as err:
        jaccard_distance(x, 5, 2, backend="reference")
    needs = float(re.search(r"needs about ([0-9.]+) GiB", str(err.value)).group(1))
    matrices = 5 * 8 * n * n / 2 ** 30
    assert matrices - 0.05 <= needs <= matrices + 0.75 + 0.05, str(err.value)
    with pytest.raises(MemoryError, match=r"five dense N x N matrices") as err:
        run_cluster_stage(x, x[:, :, None], eps=0.5, backend="reference")
    needs = float(re.search(r"needs about ([0-9.]+) GiB", str(err.value)).group(1))
    assert matrices - 0.05 <= needs <= matrices + 0.75 + 0.05, str(err.value)


def test_memory_guard_keeps_a_tenth_free_and_obeys_the_limit_variable(monkeypatch):
    """ensure_fits refuses what would use more than 90% of the available memory, and
    PPLR_FAST_MEMORY_LIMIT_GIB caps what counts as available."""
    monkeypatch.setattr(memory, "measured_memory", lambda device: 1000 * 2 ** 20)
    cpu = torch.device("cpu")
    memory.ensure_fits(899 * 2 ** 20, cpu, "a test allocation", "a hint")
    with pytest.raises(MemoryError, match="refused: a test allocation needs about .*; a hint"):
        memory.ensure_fits(901 * 2 ** 20, cpu, "a test allocation", "a hint")
    monkeypatch.setenv("PPLR_FAST_MEMORY_LIMIT_GIB", "0.5")
    assert memory.available_memory(cpu) == 2 ** 29
    with pytest.raises(MemoryError, match="only 0.5 GiB is available"):
        memory.ensure_fits(2 ** 29, cpu, "a test allocation", "a hint")
