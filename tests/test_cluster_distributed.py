"""The clustering stage across 2 gloo ranks equals the one-process stage bit for bit.

Every case starts the ranks as subprocesses (``tests/distributed_stage_worker.py``),
compares each rank's labels and scores with ``run_cluster_stage`` in this
process, and checks that a rank failing mid-stage stops every rank promptly
with a clear error.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from pplr_fast.cluster import fast_cpu, row_blocks, run_cluster_stage
from pplr_fast.cluster.distributed_stage import block_bounds, strips_of

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_stage_worker.py")
PARAMS = dict(eps=0.6, k1=30, k2=6, min_samples=4, k=20)


def clustered_features(n: int, dim: int = 24, parts: int = 2, seed: int = 0):
    """Identities with noisy members, normalised; part features share the identities."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, max(1, n // 10), (n,), generator=g)
    centres = torch.randn(max(1, n // 10), dim, parts + 1, generator=g)
    x = centres[ids] + 0.45 * torch.randn(n, dim, parts + 1, generator=g)
    x = F.normalize(x, dim=1)
    return x[:, :, 0].contiguous(), x[:, :, 1:].contiguous()


def with_duplicates(x_g, x_p, rows):
    """Rows ``rows`` become exact copies of the first of them (duplicated images)."""
    x_g, x_p = x_g.clone(), x_p.clone()
    x_g[rows] = x_g[rows[0]].clone()
    x_p[rows] = x_p[rows[0]].clone()
    return x_g, x_p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path, x_g, x_p, *, counts=None, gathered=False, params=None, fail="none",
              fail_rank=1, timeout=60.0, world=2, forbid_feature_gather=False, rank_params=None):
    """Start ``world`` ranks; returns ([result per rank or None], [stderr per rank], seconds).

    ``rank_params`` maps a rank to settings that only it passes."""
    params = dict(PARAMS, **(params or {}))
    n = x_g.shape[0]
    counts = counts or [n * (r + 1) // world - n * r // world for r in range(world)]
    inputs = str(tmp_path / "inputs.pt")
    torch.save({"x_g": x_g, "x_p": x_p, "counts": counts, "gathered": gathered,
                "params": params, "rank_params": rank_params or {}}, inputs)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(WORKER)), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    procs = [subprocess.Popen(
        [sys.executable, WORKER, "--rank", str(r), "--world", str(world), "--port", str(port),
         "--inputs", inputs, "--out", str(tmp_path / f"rank{r}.pt"), "--fail", fail,
         "--fail-rank", str(fail_rank), "--timeout", str(timeout)]
        + (["--forbid-feature-gather"] if forbid_feature_gather else []),
        env=env, stderr=subprocess.PIPE, text=True) for r in range(world)]
    errors = []
    for p in procs:
        try:
            errors.append(p.communicate(timeout=timeout + 60)[1])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung past its timeout") from None
    seconds = time.perf_counter() - start
    results = [torch.load(tmp_path / f"rank{r}.pt") if p.returncode == 0 else None
               for r, p in enumerate(procs)]
    return results, errors, seconds


def one_process(x_g, x_p, params=None, backend="fast"):
    return run_cluster_stage(x_g, x_p, backend=backend, **dict(PARAMS, **(params or {})))


def assert_same_as_one_process(results, errors, expected):
    for r, (result, err) in enumerate(zip(results, errors)):
        assert result is not None, f"rank {r} failed:\n{err}"
        assert torch.equal(result["labels"], expected.labels), f"rank {r}: labels differ"
        assert torch.equal(result["scores"], expected.scores), f"rank {r}: scores differ"


def test_strips_cover_the_upper_triangle_once_in_equal_shares():
    for world in (1, 2, 3, 4):
        for n in (0, 1, 7, 1000, 1001):
            strips = [s for r in range(world) for s in strips_of(r, world, n)]
            covered = sorted(strips)
            assert covered[0][0] == 0 and covered[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
            if n >= 1000:
                work = [sum((s1 - s0) * (n - s0) for s0, s1 in strips_of(r, world, n))
                        for r in range(world)]
                assert max(work) < 1.01 * min(work) + n


def boundary_duplicates_case(n: int, boundary: int):
    """Clustered features with copies around the 2-rank block boundary and far apart, and
    the one-process result."""
    x_g, x_p = clustered_features(n, seed=1)
    x_g, x_p = with_duplicates(x_g, x_p, list(range(boundary - 3, boundary + 4)))
    x_g, x_p = with_duplicates(x_g, x_p, [5, 1500, 1999])
    return x_g, x_p, one_process(x_g, x_p)


def test_two_ranks_odd_n_with_duplicates_across_the_boundary(tmp_path):
    n, boundary = 2001, 1000
    x_g, x_p, expected = boundary_duplicates_case(n, boundary)
    assert 2 <= expected.num_clusters and 0 < expected.num_outliers < n   # a non-trivial graph
    results, errors, _ = run_ranks(tmp_path, x_g, x_p)
    assert_same_as_one_process(results, errors, expected)
    assert [r["rows"] for r in results] == [(0, boundary), (boundary, n)]
    assert results[0]["received"]["knn_global"] > 0      # candidates did travel


def test_two_ranks_gathered_features_and_dbscan_on_one_rank(tmp_path):
    x_g, x_p = clustered_features(1500, parts=3, seed=2)
    expected = one_process(x_g, x_p)
    results, errors, _ = run_ranks(tmp_path, x_g, x_p, gathered=True,
                                   params={"dbscan_on": "one"})
    assert_same_as_one_process(results, errors, expected)
    assert "features" not in results[1]["received"]       # nothing gathered twice


@pytest.mark.parametrize("n, counts", [(1, [0, 1]), (3, [3, 0]), (40, [0, 40]), (41, [17, 24])])
def test_two_ranks_tiny_n_and_an_empty_block(tmp_path, n, counts):
    x_g, x_p = clustered_features(n, seed=3)
    params = {"eps": 0.7, "k1": min(30, n), "k2": min(6, n)}    # k1 > N is refused
    expected = one_process(x_g, x_p, params)
    results, errors, _ = run_ranks(tmp_path, x_g, x_p, counts=counts, params=params)
    assert_same_as_one_process(results, errors, expected)


def test_two_ranks_reference_backend(tmp_path):
    x_g, x_p = clustered_features(300, seed=4)
    x_g, x_p = with_duplicates(x_g, x_p, [148, 149, 150, 151])
    expected = one_process(x_g, x_p, backend="reference")
    results, errors, _ = run_ranks(tmp_path, x_g, x_p, params={"backend": "reference"})
    assert_same_as_one_process(results, errors, expected)


def test_a_rank_that_raises_stops_every_rank_with_a_clear_error(tmp_path):
    x_g, x_p = clustered_features(600, seed=5)
    results, errors, seconds = run_ranks(tmp_path, x_g, x_p, fail="raise", timeout=120)
    assert results == [None, None]
    assert "rank 1 failed in the encoding of the block (RuntimeError: injected failure)" in errors[1]
    assert "rank 1 failed in the encoding of the block" in errors[0]
    assert seconds < 60          # promptly, long before the 120 s timeout


def test_a_rank_that_dies_makes_the_others_raise_instead_of_hanging(tmp_path):
    x_g, x_p = clustered_features(600, seed=6)
    results, errors, seconds = run_ranks(tmp_path, x_g, x_p, fail="exit", timeout=20)
    assert results == [None, None]
    assert "STAGE ERROR" in errors[0] and "a collective in step 'encoding' failed" in errors[0]
    assert seconds < 60


# ------------------------------------------------------------------ features="ring"
RING = {"features": "ring"}


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_ring_kernels_equal_the_one_process_kernels(monkeypatch, precision):
    """Blocks visiting a block's rows give nearest_neighbours' rows, and the ring's encoding
    pieces give encode's V', bit for bit (an empty block, copies across block boundaries)."""
    monkeypatch.setenv("PPLR_FAST_KNN_PRECISION", precision)
    fast_cpu.cpu_has_native_bf16.cache_clear()
    try:
        n, counts, k = 901, [400, 0, 501], 31
        x, x_p = clustered_features(n, seed=7)
        x, x_p = with_duplicates(x, x_p, [397, 398, 399, 400, 401, 402, 5])
        bounds = block_bounds(counts)
        blocks = [x[bounds[s]:bounds[s + 1]] for s in range(len(counts))]
        maxima = [row_blocks.ring_maxima(b) for b in blocks]
        maxima = (max(m for m, _ in maxima), max(r for _, r in maxima))
        dist, index = fast_cpu.nearest_neighbours(x, k)
        for r, block in enumerate(blocks):
            ring = row_blocks.RingNeighbours(block, k, n, maxima)
            for t in range(len(counts)):
                s = (r - t) % len(counts)
                ring.visit(blocks[s], bounds[s])
            d_r, i_r = ring.finish()
            assert torch.equal(i_r, index[bounds[r]:bounds[r + 1]]), f"block {r}: kNN differs"
            assert torch.equal(d_r, dist[bounds[r]:bounds[r + 1]]), f"block {r}: distances differ"
    finally:
        fast_cpu.cpu_has_native_bf16.cache_clear()
    rank = index[:, :30]
    whole = fast_cpu.encode(x, rank, 30, 6)
    rows = []
    for r, block in enumerate(blocks):
        crow, col = row_blocks.expansion_sets(rank, 30, bounds[r], bounds[r + 1])
        row_of = torch.arange(counts[r]).repeat_interleave(torch.from_numpy(crow).diff()).numpy()
        d = row_blocks.pair_distances(block, row_of, x, col)
        rows.append((crow, col, row_blocks.weigh_rows(crow, d)))
    v_crow = torch.cat([torch.zeros(1, dtype=torch.int64)]
                       + [torch.from_numpy(c).diff() for c, _, _ in rows]).cumsum(0).numpy()
    v = (v_crow, torch.cat([torch.from_numpy(c) for _, c, _ in rows]).numpy(),
         torch.cat([torch.from_numpy(w) for _, _, w in rows]).numpy())
    parts = [row_blocks.expand_rows(v, rank, 30, 6, bounds[r], bounds[r + 1]) for r in range(3)]
    for got, want in zip((torch.cat([torch.from_numpy(p[1]) for p in parts]),
                          torch.cat([torch.from_numpy(p[2]) for p in parts])),
                         (torch.from_numpy(whole[1]), torch.from_numpy(whole[2]))):
        assert torch.equal(got, want), "the ring's V' differs from encode's"


def test_two_ranks_ring_odd_n_with_duplicates_never_moves_the_whole_features(tmp_path):
    n, boundary = 2001, 1000
    x_g, x_p, expected = boundary_duplicates_case(n, boundary)
    assert 2 <= expected.num_clusters and 0 < expected.num_outliers < n
    results, errors, _ = run_ranks(tmp_path, x_g, x_p, params=RING, forbid_feature_gather=True)
    assert_same_as_one_process(results, errors, expected)
    block_bytes = (n - boundary) * x_g.shape[1] * (1 + x_p.shape[2]) * 4
    for result in results:      # the other block once per space in the kNN, x_g once more
        received = result["received"]
        assert received["features"] < 1024
        assert received["knn_global"] + received["knn_parts"] <= block_bytes
        assert received["encoding"] > 0


def test_the_feature_gather_guard_trips_without_the_ring(tmp_path):
    x_g, x_p = clustered_features(200, seed=8)
    results, errors, _ = run_ranks(tmp_path, x_g, x_p, forbid_feature_gather=True)
    assert results == [None, None]
    assert "all_gather moved features" in errors[0]


@pytest.mark.parametrize("n, counts", [(1, [0, 1]), (3, [3, 0]), (41, [17, 24]), (301, [300, 1])])
def test_two_ranks_ring_tiny_n_and_an_empty_block(tmp_path, n, counts):
    x_g, x_p = clustered_features(n, seed=3)
    x_g, x_p = with_duplicates(x_g, x_p, [0, n - 1])
    params = {"eps": 0.7, "k1": min(30, n), "k2": min(6, n)}    # k1 > N is refused
    expected = one_process(x_g, x_p, params)
    results, errors, _ = run_ranks(tmp_path, x_g, x_p, counts=counts, params=dict(params, **RING))
    assert_same_as_one_process(results, errors, expected)


def test_ring_mode_rejects_the_paths_it_does_not_run(tmp_path):
    x_g, x_p = clustered_features(50, seed=9)
    results, errors, _ = run_ranks(tmp_path, x_g, x_p,
                                   params={"backend": "reference", **RING})
    assert results == [None, None]
    assert "features='ring' needs the fast CPU path" in errors[0]


def test_ranks_called_with_different_settings_all_stop_naming_them(tmp_path):
    x_g, x_p = clustered_features(60, seed=10)
    results, errors, _ = run_ranks(tmp_path, x_g, x_p,
                                   rank_params={1: {"eps": 0.55, **RING}})
    assert results == [None, None]
    for err in errors:
        assert "rank 1 was called with eps=0.55 (rank 0: 0.6), features='ring' (rank 0: " \
               "'gather')" in err, err


def test_a_rank_that_raises_mid_ring_stops_every_rank(tmp_path):
    x_g, x_p = clustered_features(600, seed=5)
    results, errors, seconds = run_ranks(tmp_path, x_g, x_p, params=RING, fail="ring",
                                         timeout=120)
    assert results == [None, None]
    assert "rank 1 failed in the kNN ring, step 2 of 2 (RuntimeError: injected failure" in errors[1]
    assert "rank 1 failed in the kNN ring, step 2 of 2" in errors[0]
    assert seconds < 60


def test_a_rank_that_dies_mid_ring_makes_the_others_raise(tmp_path):
    x_g, x_p = clustered_features(600, seed=6)
    results, errors, seconds = run_ranks(tmp_path, x_g, x_p, params=RING, fail="ring-exit",
                                         timeout=20)
    assert results == [None, None]
    assert "STAGE ERROR" in errors[0] and "a collective in step 'knn_global' failed" in errors[0]
    assert seconds < 60
