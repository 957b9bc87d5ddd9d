"""The device path of re-ranking (``pplr_fast.kernels.rerank``) against the CPU path and the oracle.

CUDA tensors take ``pplr_fast.rerank._re_ranking_torch`` /
``_re_rank_features_device``: torch for the dense passes, the Triton kernels
for the sparse stages. Here they run on CPU tensors through the Triton
interpreter (CUDA tensors with ``PPLR_TEST_GPU=1``) and are compared with
the CPU path (``re_ranking`` / ``re_rank_features`` on numpy, the C++
kernels) and the brute-force oracle of ``test_rerank.py``; each stage is
compared with the CPU kernel it replaces or with a sequential numpy
version of the arithmetic it documents; repeated runs in shuffled program
orders give the same bits.
"""
import os

import numpy as np
import pytest
import torch

from pplr_fast import _rerank, rerank
from pplr_fast.kernels import jaccard as jaccard_kernels
from pplr_fast.kernels import pair_distance
from pplr_fast.kernels import rerank as kernels
from test_kernels_gpu_determinism import shuffled_programs  # noqa: F401  (a fixture)
from test_rerank import CASES, assert_same_order_where_untied, distance_blocks, oracle_re_ranking
from test_rerank import features as rerank_inputs

ON_GPU = os.environ.get("PPLR_TEST_GPU", "0") == "1"

DEVICE_CASES = CASES + [  # kind, Q, G, k1, k2, lambda
    ("clustered", 1, 30, 6, 3, 0.3),         # one query
    ("clustered", 12, 1, 6, 3, 0.3),         # one gallery image
    ("copies", 4, 40, 3, 2, 0.5),            # groups of copies longer than F(i, k1): empty E(i)
]


def features(kind, n, rng, dim=8):
    """The inputs of test_rerank.py, and "copies": five distinct rows, each repeated n / 5 times."""
    if kind == "copies":
        return rng.normal(size=(5, dim))[np.arange(n) % 5]
    return rerank_inputs(kind, n, rng, dim)


def as_tensors(blocks, device):
    return tuple(torch.from_numpy(b).to(device) for b in blocks)


def ranks_of(blocks, k):
    """(rank, rowmax) of D's rows as the oracle defines them (dense argsort)."""
    q_g, q_q, g_g = blocks
    squared = np.square(np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)).astype(np.float32)
    rowmax = squared.max(axis=0)
    d = (squared / rowmax).T
    return np.ascontiguousarray(np.argsort(d, axis=1, kind="stable")[:, :k]), rowmax, squared.T


# --------------------------------------------------------------------------- the whole path


@pytest.mark.parametrize("kind,q,g,k1,k2,lam", DEVICE_CASES)
def test_device_re_ranking_matches_cpu_path_and_oracle(kind, q, g, k1, k2, lam, device):
    rng = np.random.default_rng(q * 1000 + g + k1)
    blocks = distance_blocks(features(kind, q + g, rng), q)
    expected = oracle_re_ranking(*blocks, k1, k2, lam)
    cpu = rerank.re_ranking(*blocks, k1=k1, k2=k2, lambda_value=lam)
    got = rerank._re_ranking_torch(*as_tensors(blocks, device), k1, k2, lam)
    assert got.device.type == device.type and got.dtype == torch.float32 and got.shape == (q, g)
    got = got.cpu().numpy()
    np.testing.assert_allclose(got, cpu, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    compared = assert_same_order_where_untied(got, expected)
    assert_same_order_where_untied(got, cpu)
    if kind not in ("tied", "copies") and g > 1 and lam > 0:
        assert compared > 0


@pytest.mark.parametrize("kind,q,g,k1,k2,lam", DEVICE_CASES)
def test_device_re_rank_features_matches_cpu_path_and_oracle(kind, q, g, k1, k2, lam, device):
    rng = np.random.default_rng(q * 7 + g)
    x = features(kind, q + g, rng).astype(np.float32 if k1 % 2 else np.float64)
    expected = oracle_re_ranking(*distance_blocks(x, q, np.float64), k1, k2, lam)
    cpu = rerank.re_rank_features(x[:q], x[q:], k1=k1, k2=k2, lambda_value=lam)
    got = rerank._re_rank_features_device(torch.from_numpy(x).to(device), q, k1, k2, lam)
    assert got.device.type == device.type and got.dtype == torch.float32 and got.shape == (q, g)
    got = got.cpu().numpy()
    np.testing.assert_allclose(got, cpu, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    compared = assert_same_order_where_untied(got, expected)
    if kind not in ("tied", "copies") and g > 1 and lam > 0:
        assert compared > 0


def test_device_path_never_calls_the_cpu_kernels(monkeypatch, device):
    """The sparse stages of the device path run without ``pplr_fast._rerank``."""
    rng = np.random.default_rng(11)
    x = features("clustered", 50, rng)
    blocks = distance_blocks(x, 10)
    expected = rerank.re_ranking(*blocks, k1=6, k2=3)
    expected_features = rerank.re_rank_features(x[:10], x[10:], k1=6, k2=3)

    def refuse(*args, **kwargs):
        raise AssertionError("the device path called a CPU re-ranking kernel")

    for name in ("rank_rows", "expansion", "query_gallery_overlap", "overlap_combine",
                 "pair_sq_distance"):
        monkeypatch.setattr(_rerank, name, refuse)
    got = rerank._re_ranking_torch(*as_tensors(blocks, device), 6, 3, 0.3)
    np.testing.assert_allclose(got.cpu().numpy(), expected, atol=1e-6, rtol=0)
    got = rerank._re_rank_features_device(torch.from_numpy(x).to(device), 10, 6, 3, 0.3)
    np.testing.assert_allclose(got.cpu().numpy(), expected_features, atol=1e-6, rtol=0)


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA tensors (PPLR_TEST_GPU=1)")
def test_cuda_tensors_stay_on_the_gpu(monkeypatch):
    """re_ranking / re_rank_features of CUDA tensors: the device path, no copy to the host."""
    rng = np.random.default_rng(12)
    x = features("clustered", 300, rng)
    blocks = distance_blocks(x, 40)
    expected = rerank.re_ranking(*blocks)
    expected_features = rerank.re_rank_features(x[:40], x[40:])
    taken, copies = [], []
    finish = rerank._finish_device

    def spy(*args, **kwargs):
        taken.append(True)
        return finish(*args, **kwargs)

    monkeypatch.setattr(rerank, "_finish_device", spy)
    for name in ("cpu", "numpy"):
        method = getattr(torch.Tensor, name)

        def recording(self, *args, _method=method, _name=name, **kwargs):
            copies.append((_name, tuple(self.shape)))
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, recording)
    got = rerank.re_ranking(*as_tensors(blocks, "cuda"))
    got_features = rerank.re_rank_features(torch.from_numpy(x[:40]).cuda(),
                                           torch.from_numpy(x[40:]).cuda())
    assert taken == [True, True] and copies == [], copies
    monkeypatch.undo()
    assert got.is_cuda and got_features.is_cuda
    np.testing.assert_allclose(got.cpu().numpy(), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got_features.cpu().numpy(), expected_features, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- stage by stage


@pytest.mark.parametrize("kind,n,k1,k", [("clustered", 50, 8, 9), ("tied", 40, 5, 6),
                                         ("random", 30, 9, 10), ("random", 8, 20, 8),
                                         ("tied", 45, 6, 7), ("copies", 40, 4, 5)])
def test_expanded_sets_equal_the_cpu_kernel(kind, n, k1, k, device):
    """E(i) with re-ranking's lengths (F(i, k1) of k1 + 1 entries; k1 = 5, 9: round half to
    even; n = 8 < k1; copies: empty sets) equals the CPU kernel's, entry for entry."""
    rng = np.random.default_rng(n + k1)
    rank = ranks_of(distance_blocks(features(kind, n, rng), n // 4), k)[0]
    l1, lh = kernels.expansion_lengths(k1, k)
    assert (l1, lh) == (min(k1 + 1, k), min(int(np.around(k1 / 2)) + 1, k))
    expected_crow, expected_col = _rerank.expansion(rank, l1, lh)
    if kind == "copies":
        assert (np.diff(expected_crow) == 0).any()
    crow, col, rows = kernels.reranking_sets(torch.from_numpy(rank).to(device), k1)
    assert torch.equal(crow.cpu(), torch.from_numpy(expected_crow))
    assert torch.equal(col.cpu(), torch.from_numpy(expected_col))
    assert torch.equal(rows.cpu(), torch.from_numpy(np.repeat(np.arange(n), np.diff(expected_crow))))


def sequential_weights(crow, entries, rowmax):
    """V as documented: fp32 scaled, fp32 exp (correctly rounded), fp64 row sums left to right."""
    val = np.empty(len(entries), dtype=np.float32)
    for i in range(len(crow) - 1):
        scaled = entries[crow[i]:crow[i + 1]] / rowmax[i]
        weight = np.exp(-scaled.astype(np.float64)).astype(np.float32)
        total = 0.0
        for w in weight:
            total += float(w)
        val[crow[i]:crow[i + 1]] = (weight.astype(np.float64) / total).astype(np.float32)
    return val


@pytest.mark.parametrize("kind,n,k1", [("clustered", 60, 8), ("tied", 40, 5)])
def test_weights_are_the_documented_arithmetic(kind, n, k1, shuffled_programs, device):
    rng = np.random.default_rng(n)
    blocks = distance_blocks(features(kind, n, rng), n // 5)
    rank, rowmax, squared = ranks_of(blocks, k1 + 1)
    crow, col = _rerank.expansion(rank, k1 + 1, round(k1 / 2) + 1)
    rows = np.repeat(np.arange(n), np.diff(crow))
    entries = squared[rows, col]
    expected = sequential_weights(crow, entries, rowmax)
    shuffled_programs(2)
    got = kernels.reciprocal_weights(*(torch.from_numpy(a).to(device) for a in
                                       (crow, rows, entries, rowmax)))
    assert got.dtype == torch.float32
    assert torch.equal(got.cpu(), torch.from_numpy(expected))
    # the CPU path's weights (numpy's fp32 exp) agree to float32 rounding
    cpu = rerank._encode(rank, lambda r, c: squared[r, c], rowmax, k1)[2]
    np.testing.assert_allclose(got.cpu().numpy(), cpu, rtol=1e-6, atol=0)


def sequential_overlaps(crow, col, val, rank, expansion, q):
    """m(i, j) of queries with gallery rows: V' in fp64 (times 1 / count), then fp32 sums of
    min(V'[i, l], V'[j, l]) over ascending l, added one at a time."""
    n = len(crow) - 1
    dense = np.zeros((n, n))
    for i in range(n):
        dense[i, col[crow[i]:crow[i + 1]]] = val[crow[i]:crow[i + 1]]
    if expansion > 1:
        dense = np.stack([sum_in_order(dense[rank[i, :expansion]]) * (1.0 / expansion)
                          for i in range(n)])
    dense = dense.astype(np.float32)
    found = {}
    for i in range(q):
        for j in range(q, n):
            shared = np.flatnonzero((dense[i] > 0) & (dense[j] > 0))
            if len(shared):
                m = np.float32(0)
                for col in shared:
                    m = np.float32(m + min(dense[i, col], dense[j, col]))
                found[(i, j)] = m
    return found


def sum_in_order(rows):
    total = np.zeros(rows.shape[1])
    for r in rows:
        total = total + r
    return total


@pytest.mark.parametrize("kind,q,g,k1,k2", [("clustered", 8, 40, 7, 3), ("tied", 6, 30, 5, 4),
                                             ("random", 5, 25, 6, 1), ("random", 3, 6, 20, 6)])
def test_overlaps_are_the_documented_arithmetic(kind, q, g, k1, k2, shuffled_programs, device,
                                                monkeypatch):
    """Query-gallery overlaps bit-equal to sequential sums (over several term chunks), the
    same pairs as the CPU kernel, values within its fp64 accumulation's rounding."""
    rng = np.random.default_rng(q + g)
    blocks = distance_blocks(features(kind, q + g, rng), q)
    k = min(q + g, max(k1 + 1, k2))
    rank, rowmax, squared = ranks_of(blocks, k)
    crow, col, val = rerank._encode(rank, lambda r, c: squared[r, c], rowmax, k1)
    expansion = rerank._expansion_length(k2, k)
    expected = sequential_overlaps(crow, col, val, rank, expansion, q)
    monkeypatch.setattr(jaccard_kernels, "TERM_BYTES", 48 * 40)      # many row chunks
    shuffled_programs(5)
    i, j, m = kernels.query_gallery_overlaps(*(torch.from_numpy(a).to(device) for a in
                                               (crow, col, val, rank)), expansion, q, 1 << 30)
    pairs = list(zip(i.cpu().tolist(), j.cpu().tolist()))
    assert pairs == sorted(expected) and len(pairs) > 0
    assert m.dtype == torch.float32
    assert m.cpu().numpy().tolist() == [float(expected[p]) for p in pairs]
    cpu_crow, cpu_col, cpu_m = _rerank.query_gallery_overlap(crow, col, val, rank, expansion, q)
    assert pairs == [(a, b + q) for a in range(q) for b in cpu_col[cpu_crow[a]:cpu_crow[a + 1]]]
    np.testing.assert_allclose(m.cpu().numpy(), cpu_m, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [5, 300])
def test_pair_sq_difference(dtype, dim, device):
    """Squared Euclidean distances in fp64 for any rows (not 2 - 2 <x, y>): as the CPU kernel,
    exact 0 for copies, symmetric."""
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(30, dim)) * 3 + 1
    x[7] = x[3]
    x = torch.from_numpy(x).to(dtype)
    rows = torch.from_numpy(rng.integers(0, 30, 200))
    cols = torch.from_numpy(rng.integers(0, 30, 200))
    rows[:2], cols[:2] = torch.tensor([3, 7]), torch.tensor([7, 3])
    got = pair_distance.pair_sq_difference(x.to(device), rows.to(device), cols.to(device)).cpu()
    back = pair_distance.pair_sq_difference(x.to(device), cols.to(device), rows.to(device)).cpu()
    assert got.dtype == torch.float64 and got[0] == 0 and got[1] == 0
    assert torch.equal(got, back)
    exact = ((x[rows].double() - x[cols].double()) ** 2).sum(dim=1)
    np.testing.assert_allclose(got.numpy(), exact.numpy(), rtol=1e-13, atol=0)
    cpu = _rerank.pair_sq_distance(x.numpy(), rows.numpy(), cols.numpy())
    np.testing.assert_allclose(got.numpy(), cpu, rtol=1e-13, atol=0)


def test_segment_sums_in_fp64_add_left_to_right(shuffled_programs, device):
    """fp64 sums of fp32 values, where the order of fp64 additions shows."""
    rng = np.random.default_rng(6)
    counts = torch.from_numpy(rng.integers(0, 9, size=600))
    size = int(counts.sum())
    values = (rng.standard_normal(size) * 10.0 ** rng.integers(-12, 13, size=size)).astype(np.float32)
    expected, start = [], 0
    for c in counts.tolist():
        total = 0.0
        for v in values[start:start + c]:
            total += float(v)
        expected.append(total)
        start += c
    expected = torch.tensor(expected, dtype=torch.float64)
    in_fp32 = jaccard_kernels.segment_sums(counts, torch.from_numpy(values))
    assert not torch.equal(in_fp32.double(), expected), "the data must tell fp32 from fp64"
    shuffled_programs(4)
    got = jaccard_kernels.segment_sums(counts.to(device), torch.from_numpy(values).to(device),
                                       torch.float64)
    assert got.dtype == torch.float64 and torch.equal(got.cpu(), expected)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind,q,g,k1,k2", [("clustered", 10, 60, 8, 4), ("tied", 9, 45, 6, 3)])
def test_device_path_bit_identical_whatever_the_program_order(kind, q, g, k1, k2,
                                                              shuffled_programs, device):
    rng = np.random.default_rng(3)
    x = features(kind, q + g, rng)
    blocks = as_tensors(distance_blocks(x, q), device)
    runs, feature_runs = [], []
    for seed in range(3):
        shuffled_programs(seed)
        runs.append(rerank._re_ranking_torch(*blocks, k1, k2, 0.3).cpu())
        feature_runs.append(rerank._re_rank_features_device(torch.from_numpy(x).to(device), q, k1,
                                                            k2, 0.3).cpu())
    for run, feature_run in zip(runs[1:], feature_runs[1:]):
        assert torch.equal(run, runs[0]), "re-ranked distances differ between program orders"
        assert torch.equal(feature_run, feature_runs[0])
