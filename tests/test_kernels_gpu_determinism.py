"""The GPU Jaccard path is deterministic by construction, and bit-equal to the CPU kernel.

Under the Triton interpreter programs run one after the other; the
``shuffled_programs`` fixture makes every launch run its programs in a random
order, so a result that depends on which program runs first (float atomics,
``index_add_``) changes between orders. With PPLR_TEST_GPU=1 the same tests
compare repeated runs on the GPU instead.

The CPU kernel (``pplr_fast._jaccard``) is the twin: given the same V, the
query expansion and the Jaccard values must equal its output bit for bit.
"""
import os

import numpy as np
import pytest
import torch

from cluster_oracles import clustered_features, lattice_features
from pplr_fast.cluster import nearest_neighbours
from pplr_fast.kernels import jaccard as jaccard_kernels

BUDGET = 1 << 30     # device bytes the kernels may plan with

ON_GPU = os.environ.get("PPLR_TEST_GPU", "0") == "1"

FEATURES = {
    "clustered": lambda: clustered_features(90, 16, groups=9, spread=0.6, seed=0),
    "duplicates": lambda: clustered_features(70, 16, groups=6, spread=0.4, seed=1, duplicates=15),
    "lattice-ties": lambda: lattice_features(60, 8, seed=2),
}


@pytest.fixture
def shuffled_programs(monkeypatch):
    """``reshuffle(seed)``: from then on, interpreted launches run programs in random orders."""
    if ON_GPU:
        return lambda seed: None
    from triton.runtime import interpreter
    builder = interpreter.interpreter_builder
    run_program = builder.set_grid_idx
    state = {"rng": np.random.default_rng(0), "order": None}

    def set_grid_idx(x, y, z):
        gx, gy, gz = builder.grid_dim
        flat = (x * gy + y) * gz + z
        if flat == 0:
            state["order"] = state["rng"].permutation(gx * gy * gz)
        p = int(state["order"][flat])
        run_program(p // (gy * gz), (p // gz) % gy, p % gz)

    monkeypatch.setattr(builder, "set_grid_idx", set_grid_idx)

    def reshuffle(seed):
        state["rng"] = np.random.default_rng(seed)

    return reshuffle


def rank_of(x, k):
    return nearest_neighbours(x, k, backend="reference")[1]


def cpu_encoding(x, rank, k1, k2):
    """V' of the CPU kernel as torch CSR tensors (k2 = 1: V itself)."""
    from pplr_fast import _jaccard
    crow, col, val = _jaccard.encode(x.float().contiguous().numpy(), rank.contiguous().numpy(),
                                     k1, round(k1 / 2), k2)
    return torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(val)


def test_shuffled_programs_fixture_changes_the_order(shuffled_programs):
    """The fixture really permutes programs: a kernel recording its program ids sees it."""
    if ON_GPU:
        pytest.skip("program order is only controllable under the interpreter")
    import triton
    import triton.language as tl

    @triton.jit
    def record_order(counter_ptr, out_ptr):
        slot = tl.atomic_add(counter_ptr, 1)
        tl.store(out_ptr + slot, tl.program_id(0))

    shuffled_programs(3)
    counter = torch.zeros(1, dtype=torch.int32)
    out = torch.empty(64, dtype=torch.int32)
    record_order[(64,)](counter, out)
    assert sorted(out.tolist()) == list(range(64)) and out.tolist() != list(range(64))


@pytest.mark.parametrize("name,k1,k2", [("clustered", 20, 6), ("duplicates", 15, 4),
                                        ("lattice-ties", 10, 3)])
def test_jaccard_bit_identical_whatever_the_program_order(name, k1, k2, shuffled_programs, device):
    x = FEATURES[name]().to(device)
    rank = rank_of(x.cpu(), k1).to(device)
    runs = []
    for seed in range(3):
        shuffled_programs(seed)
        runs.append(jaccard_kernels.jaccard_from_neighbours_cuda(x, rank, k1, k2, None, BUDGET))
    for crow, col, val in runs[1:]:
        assert torch.equal(crow, runs[0][0]) and torch.equal(col, runs[0][1])
        assert torch.equal(val, runs[0][2]), "Jaccard values differ between program orders"


@pytest.mark.parametrize("name,k1,k2", [("clustered", 20, 6), ("duplicates", 15, 4),
                                        ("lattice-ties", 10, 3), ("clustered", 11, 2)])
def test_query_expansion_bit_equal_to_cpu_kernel(name, k1, k2, shuffled_programs, device):
    """Same V in, the same V' out as jaccard_cpu.cpp: each sum added in kNN order."""
    x = FEATURES[name]()
    rank = rank_of(x, k1)
    v = cpu_encoding(x, rank, k1, 1)
    expected = cpu_encoding(x, rank, k1, k2)
    shuffled_programs(k2)
    crow, col, val = jaccard_kernels.query_expand_cuda(*(t.to(device) for t in v), rank.to(device), k2)
    assert torch.equal(crow.cpu(), expected[0]) and torch.equal(col.cpu(), expected[1])
    assert torch.equal(val.cpu(), expected[2]), "V' differs from the CPU kernel's"


@pytest.mark.parametrize("name,k1,k2", [("clustered", 20, 6), ("duplicates", 15, 4),
                                        ("lattice-ties", 10, 3)])
@pytest.mark.parametrize("cutoff", [None, 0.55, "at-a-value"])
def test_jaccard_values_bit_equal_to_cpu_kernel(name, k1, k2, cutoff, shuffled_programs, device,
                                                monkeypatch):
    """Same V' in, the same pairs and fp32 distances out as jaccard_cpu.cpp (several row chunks)."""
    from pplr_fast import _jaccard
    x = FEATURES[name]()
    n = x.shape[0]
    crow, col, val = cpu_encoding(x, rank_of(x, k1), k1, k2)
    if cutoff == "at-a-value":      # just below a stored distance: in fp32 it would round onto it
        all_d = _jaccard.jaccard(crow.numpy(), col.numpy(), val.numpy(), -1.0)[2]
        inner = np.sort(all_d[(all_d > 0.3) & (all_d < 0.9)])
        cutoff = float(inner[len(inner) // 2]) - 1e-12
    expected = _jaccard.jaccard(crow.numpy(), col.numpy(), val.numpy(),
                                -1.0 if cutoff is None else cutoff)
    monkeypatch.setattr(jaccard_kernels, "TERM_BYTES", 48 * 300)     # many row chunks
    shuffled_programs(7)
    out = jaccard_kernels.sparse_jaccard(crow.to(device), col.to(device), val.to(device), n, cutoff,
                                         BUDGET)
    assert torch.equal(out[0].cpu(), torch.from_numpy(expected[0]))
    assert torch.equal(out[1].cpu(), torch.from_numpy(expected[1]))
    assert torch.equal(out[2].cpu(), torch.from_numpy(expected[2])), "d differs from the CPU's"


def test_segment_sums_add_left_to_right(shuffled_programs, device):
    """Sums where the order of fp32 additions shows: only left-to-right gives these bits."""
    rng = np.random.default_rng(5)
    counts = torch.from_numpy(rng.integers(0, 9, size=700))
    values = torch.from_numpy((rng.standard_normal(int(counts.sum()))
                               * 10.0 ** rng.integers(-4, 5, size=int(counts.sum())))
                              .astype(np.float32))
    expected, start = [], 0
    for c in counts.tolist():
        total = np.float32(0)
        for v in values[start:start + c].numpy():
            total = np.float32(total + v)
        expected.append(total)
        start += c
    expected = torch.from_numpy(np.array(expected, dtype=np.float32))
    pairwise = torch.tensor([float(values[s:s + c].sum()) for s, c in
                             zip((torch.cumsum(counts, 0) - counts).tolist(), counts.tolist())])
    assert not torch.equal(pairwise.float(), expected), "the data must tell the orders apart"
    shuffled_programs(1)
    out = jaccard_kernels.segment_sums(counts.to(device), values.to(device))
    assert torch.equal(out.cpu(), expected)


def test_float32_at_most():
    for value in (0.55, 0.1, 1.0, 0.3 + 1e-12, -0.25, 2.0 ** -30):
        f = jaccard_kernels.float32_at_most(value)
        assert f <= value and float(np.float32(f)) == f
        assert float(np.nextafter(np.float32(f), np.float32(np.inf))) > value


SPECIALIZATION_SCRIPT = """
import sys

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import compute_cache_key, create_function_from_signature
from pplr_fast.kernels import cross_agreement, jaccard, knn, pair_distance

backend = make_backend(GPUTarget("cuda", 90, 32))
ptr = {name: torch.empty(64, dtype=getattr(torch, name))
       for name in ("int8", "int32", "int64", "float16", "float32", "float64")}
i8, i32, i64, f16, f32, f64 = (ptr[name] for name in ("int8", "int32", "int64", "float16",
                                                      "float32", "float64"))
LAUNCHES = {  # kernel: (arguments for a varying value v, constexprs)
    "pair distance": (pair_distance._pair_sq_distance_kernel,
                      lambda v: (f32, i64, i64, f64, v, v + 3, 256, 256),
                      dict(BLOCK_P=8, BLOCK_D=128, DIFFERENCE=False)),
    "segment sums": (jaccard._segment_sum_kernel, lambda v: (i64, f32, f32, v), dict(BLOCK=512)),
    "pair difference": (pair_distance._pair_sq_distance_kernel,
                        lambda v: (f64, i64, i64, f64, v, v + 3, 256, 256),
                        dict(BLOCK_P=8, BLOCK_D=128, DIFFERENCE=True)),
    "expansion": (jaccard._expansion_kernel,
                  lambda v: (i64, i8, i8, i32, v, v + 5, 30, 30, 16, 510),
                  dict(BLOCK_L1=32, BLOCK_LH=16, CAND_CHUNK=16, MEMBER_CHUNK=8)),
    "reciprocal mask": (jaccard._reciprocal_mask_kernel, lambda v: (i64, i8, v, 30, 30),
                        dict(BLOCK_L=32)),
    "cross agreement": (cross_agreement._cross_agreement_kernel,
                        lambda v: (i64, i64, f32, v, 3, 21, 21, 20), dict(BLOCK_K=32)),
    "kNN filter": (knn._knn_filter_kernel,
                   lambda v: (f16, f64, f32, i32, i32, i8, v + 7, v, 256, 256, 30),
                   dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, CAP=256, CHUNK=64,
                        BISECT_STEPS=16)),
}
for name, (kernel, args, constexprs) in LAUNCHES.items():
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    keys = set()
    for v in (1, 16, 17, 1000, 4096, 12937, 65536 + 3):
        _, specialization, options = binder(*args(v), **constexprs)
        keys.add(compute_cache_key({}, specialization, options))
    print(f"KEYS {name} {len(keys)}")
"""


def test_varying_integer_arguments_compile_once(tmp_path):
    """Row offsets, counts and sizes that change per chunk or per call give one cache key.

    Triton specialises an int argument on its value (== 1, divisible by 16)
    unless ``do_not_specialize`` names it; the binder of the real (compiled)
    launcher computes the kernel-cache key of each launch without a GPU.
    """
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", SPECIALIZATION_SCRIPT], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = {}
    for line in done.stdout.splitlines():
        if line.startswith("KEYS "):
            name, count = line[len("KEYS "):].rsplit(" ", 1)
            keys[name] = int(count)
    assert len(keys) == 7, done.stdout
    for name, count in keys.items():
        assert count == 1, f"{name}: {count} compiled variants for different per-chunk integers"
