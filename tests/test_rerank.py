"""pplr_fast.rerank against brute-force numpy versions of what each function documents.

The oracles below are written from the method's description (dense matrices,
full sorts, Python sets), independently of the sparse implementation:

* re-ranking: D = the block matrix [[q_q, q_g], [q_g^T, g_g]] squared (rounded
  to float32), D's row i = the block matrix's column i over its maximum;
  ranks by (value, index); R(i, k) from the first k+1 ranks; the expansion
  with round-half-even(k1/2) and the 2/3 test; weights exp(-D) normalised over
  E(i); query expansion over the first k2 ranks when k2 != 1; Jaccard of the
  query rows; (1 - lambda) jaccard + lambda D on the query-gallery block;
* the public Jaccard distance: kNN lists of k1 images (self included) by
  2 - 2 <x_i, x_j>, F(i, k) = the first min(k+1, k1), softmax weights, query
  expansion over min(k2, k1), 1 - m / (2 - m) clipped at 0, dense.
"""
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pplr_fast import rerank
from pplr_fast.rerank import compute_jaccard_distance, re_rank_features, re_ranking

# --------------------------------------------------------------------------- oracles


def reciprocal_sets(rank, length):
    """R(i, .) for every i, from the first ``length`` entries of each rank list."""
    heads = [list(r[:length]) for r in rank]
    return [[j for j in heads[i] if i in heads[j]] for i in range(len(rank))]


def expanded_sets(rank, k1, r1_length, half_length):
    r1 = reciprocal_sets(rank, r1_length)
    rh = reciprocal_sets(rank, half_length)
    sets = []
    for i in range(len(rank)):
        members = set(r1[i])
        for c in r1[i]:
            if len(set(rh[c]) & set(r1[i])) > 2 / 3 * len(rh[c]):
                members |= set(rh[c])
        sets.append(sorted(members))
    return sets


def oracle_re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    q, g = q_g.shape
    n = q + g
    blocks = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    squared = np.square(blocks).astype(np.float32)
    d = (squared / squared.max(axis=0)).T                 # row i: column i over its maximum
    rank = np.argsort(d, axis=1, kind="stable")
    half = int(np.around(k1 / 2))
    v = np.zeros((n, n))
    for i, members in enumerate(expanded_sets(rank, k1, k1 + 1, half + 1)):
        w = np.exp(-d[i, members].astype(np.float64))
        v[i, members] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    m = np.stack([np.minimum(v[i], v[q:]).sum(axis=1) for i in range(q)])
    return (1 - lambda_value) * (1 - m / (2 - m)) + lambda_value * d[:q, q:]


def oracle_jaccard(x, k1, k2):
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    dist = 2 - 2 * (x[:, None, :] * x[None, :, :]).sum(-1)
    rank = np.argsort(dist, axis=1, kind="stable")[:, :min(k1, n)]
    K = rank.shape[1]
    half = int(np.around(k1 / 2))
    v = np.zeros((n, n))
    for i, members in enumerate(expanded_sets(rank, k1, min(k1 + 1, K), min(half + 1, K))):
        w = np.exp(-dist[i, members])
        v[i, members] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :min(k2, K)]].mean(axis=0) for i in range(n)])
    m = np.stack([np.minimum(v[i], v).sum(axis=1) for i in range(n)])
    return np.maximum(1 - m / (2 - m), 0)


def euclidean(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sqrt(np.maximum(((a[:, None] - b[None]) ** 2).sum(-1), 0))


def assert_same_order_where_untied(ours, reference, gap=1e-5):
    """Rows of ``reference`` whose sorted values are > gap apart rank identically in ``ours``.

    Returns how many rows were compared.
    """
    compared = 0
    for row_ours, row_ref in zip(ours, reference):
        if np.all(np.diff(np.sort(row_ref)) > gap):
            compared += 1
            np.testing.assert_array_equal(np.argsort(row_ours, kind="stable"),
                                          np.argsort(row_ref, kind="stable"))
    return compared


# --------------------------------------------------------------------------- inputs


def features(kind, n, rng, dim=8):
    if kind == "random":
        return rng.normal(size=(n, dim))
    if kind == "clustered":
        centres = rng.normal(size=(max(2, n // 6), dim)) * 3
        return centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, dim))
    if kind == "tied":     # small integers and duplicated rows: many exactly equal distances
        x = rng.integers(0, 3, size=(n, 4)).astype(np.float64)
        x[n // 2:] = x[rng.integers(0, n // 2, n - n // 2)]
        return x
    raise ValueError(kind)


def distance_blocks(x, q, dtype=np.float32):
    a, b = x[:q], x[q:]
    return tuple(euclidean(*pair).astype(dtype) for pair in ((a, b), (a, a), (b, b)))


CASES = [  # kind, Q, G, k1, k2, lambda
    ("random", 7, 40, 20, 6, 0.3),
    ("random", 12, 50, 6, 3, 0.3),
    ("clustered", 10, 60, 8, 4, 0.3),
    ("clustered", 10, 60, 5, 1, 0.3),       # k2 = 1: no query expansion
    ("tied", 9, 45, 6, 3, 0.3),
    ("random", 3, 6, 9, 6, 0.3),            # k1 == N (a larger k1 is refused)
    ("clustered", 8, 40, 7, 3, 0.0),        # lambda 0: Jaccard only
    ("clustered", 8, 40, 7, 3, 1.0),        # lambda 1: the scaled original distance
    ("random", 1, 1, 2, 6, 0.3),            # one query, one gallery image
    ("clustered", 6, 30, 6, 2, 0.3),        # k2 = 2: the shortest query expansion
]


# --------------------------------------------------------------------------- re_ranking


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,q,g,k1,k2,lam", CASES)
def test_re_ranking_matches_oracle(kind, q, g, k1, k2, lam, dtype):
    rng = np.random.default_rng(q * 1000 + g + k1)
    blocks = distance_blocks(features(kind, q + g, rng), q, dtype)
    expected = oracle_re_ranking(*blocks, k1, k2, lam)
    got = re_ranking(*blocks, k1=k1, k2=k2, lambda_value=lam)
    assert got.dtype == np.float32 and got.shape == (q, g)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    compared = assert_same_order_where_untied(got, expected)
    if kind != "tied" and g > 1 and lam > 0:
        assert compared > 0


def test_re_ranking_changes_the_order_of_plain_distances():
    """On clustered data re-ranking is not the identity: it reorders some galleries."""
    rng = np.random.default_rng(5)
    blocks = distance_blocks(features("clustered", 90, rng), 15)
    got = re_ranking(*blocks, k1=8, k2=3)
    plain = np.argsort(blocks[0], axis=1, kind="stable")
    assert (np.argsort(got, axis=1, kind="stable") != plain).any()


def test_float64_distances_are_squared_before_rounding():
    """float32(x * x), as the copied code's float64 square then cast: not float32(x)
    squared, which rounds twice (1 + 2^-12 + 2^-30: the two differ by one float32 ulp)."""
    x = 1 + 2.0 ** -12 + 2.0 ** -30
    assert np.float32(x * x) != np.float32(x) * np.float32(x)
    assert rerank._squared_float32(np.array([x]))[0] == np.float32(x * x)


@pytest.mark.filterwarnings("ignore::pplr_fast.rerank.SquaredDistanceWarning")   # not distances
def test_re_ranking_reads_columns_of_asymmetric_blocks():
    """Blocks that are not symmetric: D's row i is the block matrix's column i."""
    rng = np.random.default_rng(2)
    q, g = 6, 30
    q_g, q_q, g_g = (rng.uniform(0.1, 2, size=s) for s in ((q, g), (q, q), (g, g)))
    expected = oracle_re_ranking(q_g, q_q, g_g, 6, 3)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, 6, 3), expected, atol=1e-5, rtol=0)


def test_re_ranking_tensors_in_tensors_out():
    rng = np.random.default_rng(3)
    blocks = distance_blocks(features("clustered", 50, rng), 10)
    expected = re_ranking(*blocks, k1=6, k2=3)
    got = re_ranking(*(torch.from_numpy(b) for b in blocks), k1=6, k2=3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("kind,q,g,k1,k2,lam", CASES[:6])
def test_torch_path_matches_oracle(kind, q, g, k1, k2, lam):
    """The path CUDA tensors take (torch for the dense passes), run here on CPU tensors."""
    rng = np.random.default_rng(q + g)
    blocks = distance_blocks(features(kind, q + g, rng), q)
    expected = oracle_re_ranking(*blocks, k1, k2, lam)
    got = rerank._re_ranking_torch(*(torch.from_numpy(b) for b in blocks), k1, k2, lam)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)


def test_smallest_by_value_then_index_breaks_ties_by_index():
    s = torch.tensor([[3., 1., 1., 2., 1., 0.],
                      [5., 5., 5., 5., 5., 5.],
                      [0., 2., 1., 2., 2., 9.]])
    got = rerank.smallest_by_value_then_index(s, 3)
    expected = torch.sort(s, dim=1, stable=True).indices[:, :3]
    assert torch.equal(got, expected)


@pytest.mark.parametrize("by_col", [False, True])
def test_rank_rows_ties_created_by_scaling(by_col, rng):
    """Entries one float apart that scaling by the row maximum makes equal go by index.

    Rows drawn with repetition from such values also hold exact duplicates, so
    a tie can reach past the entries a single pass keeps (the rescan case).
    """
    from pplr_fast import _rerank
    # values at the top of a binade over a maximum that lands them at the bottom of one
    base = np.float32(1.99) + np.arange(12, dtype=np.float32) * np.spacing(np.float32(1.99))
    rows = rng.choice(base, size=(200, 30))
    rows[:, -1] = 3.9                                            # the maxima
    scaled = (rows / rows.max(axis=1, keepdims=True)).astype(np.float32)
    assert len(np.unique(scaled)) < len(np.unique(rows))         # scaling did create ties
    expected = np.argsort(scaled, axis=1, kind="stable")[:, :7]
    block = np.ascontiguousarray(rows.T) if by_col else rows
    rank, rowmax, non_finite, zero = _rerank.rank_rows(block, by_col, None, False, 7, False)
    np.testing.assert_array_equal(rank, expected)
    np.testing.assert_array_equal(rowmax, rows.max(axis=1))
    assert non_finite == -1 and zero == -1


def test_re_ranking_errors():
    rng = np.random.default_rng(0)
    q_g, q_q, g_g = distance_blocks(features("random", 20, rng), 5)
    with pytest.raises(ValueError, match=r"q_q_dist must be \(5, 5\)"):
        re_ranking(q_g, q_q[:4, :4], g_g)
    with pytest.raises(ValueError, match=r"g_g_dist must be \(15, 15\)"):
        re_ranking(q_g, q_q, g_g[:3])
    with pytest.raises(ValueError, match="k1 must be an integer >= 1"):
        re_ranking(q_g, q_q, g_g, k1=0)
    with pytest.raises(ValueError, match="k2 must be an integer >= 1"):
        re_ranking(q_g, q_q, g_g, k2=2.5)
    with pytest.raises(ValueError, match="k1 must be an integer >= 1, got True"):
        re_ranking(q_g, q_q, g_g, k1=True)
    with pytest.raises(ValueError, match=r"q_g_dist is empty \(0 queries x 15 gallery images\)"):
        re_ranking(q_g[:0], q_q[:0, :0], g_g)
    with pytest.raises(ValueError, match=r"lambda_value must lie in \[0, 1\]"):
        re_ranking(q_g, q_q, g_g, lambda_value=1.5)
    bad = g_g.copy()
    bad[3, 7] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf .* gallery image 7"):
        re_ranking(q_g, q_q, bad)
    with pytest.raises(ValueError, match="at distance 0 from every image"):
        re_ranking(np.zeros_like(q_g), np.zeros_like(q_q), np.zeros_like(g_g))
    first = q_g.copy()
    first[0, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf .* query 0"):
        re_ranking(first, q_q, g_g)
    with pytest.raises(ValueError, match="NaN or Inf .* query 1"):
        rerank._re_ranking_torch(*(torch.from_numpy(b) for b in (q_g, np.where(
            np.eye(5, k=1) > 0, np.inf, q_q), g_g)), 20, 6, 0.3)


def test_re_ranking_refuses_what_does_not_fit(monkeypatch):
    rng = np.random.default_rng(0)
    blocks = distance_blocks(features("random", 30, rng), 5)
    monkeypatch.setenv("PPLR_FAST_MEMORY_LIMIT_GIB", "1e-7")
    with pytest.raises(MemoryError, match=r"refused: re-ranking 5 queries .* needs about .* GiB "
                                          r"but only .* GiB is available; re-rank the queries in "
                                          r"smaller batches"):
        re_ranking(*blocks)


def test_re_ranking_counts_its_output_in_the_memory_estimate(monkeypatch):
    """The (Q, G) float32 result alone takes 4 Q G bytes: with exactly that much
    available (the guard keeps a tenth free) re-ranking is refused."""
    rng = np.random.default_rng(2)
    q = g = 300
    blocks = distance_blocks(features("random", q + g, rng), q)
    monkeypatch.setenv("PPLR_FAST_MEMORY_LIMIT_GIB", str(4 * q * g / 2 ** 30))
    with pytest.raises(MemoryError, match=r"refused: re-ranking 300 queries"):
        re_ranking(*blocks, k1=1, k2=1)


# --------------------------------------------------------------------------- re_rank_features


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind,q,g,k1,k2,lam", CASES)
def test_re_rank_features_matches_oracle(kind, q, g, k1, k2, lam, dtype):
    rng = np.random.default_rng(q * 7 + g)
    x = features(kind, q + g, rng).astype(dtype)
    expected = oracle_re_ranking(*distance_blocks(x, q, np.float64), k1, k2, lam)
    got = re_rank_features(x[:q], x[q:], k1=k1, k2=k2, lambda_value=lam)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    compared = assert_same_order_where_untied(got, expected)
    if kind != "tied" and g > 1 and lam > 0:
        assert compared > 0


def test_re_rank_features_tensors_and_errors():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(features("clustered", 40, rng)).float()
    got = re_rank_features(x[:8], x[8:], k1=6, k2=3)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), re_rank_features(x[:8].numpy(), x[8:].numpy(), 6, 3),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="differ in dimension: 4 vs 3"):
        re_rank_features(np.ones((2, 4)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="gallery hold NaN or Inf"):
        re_rank_features(np.ones((2, 3)), np.full((3, 3), np.nan))


# --------------------------------------------------------------------------- compute_jaccard_distance


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind,n,k1,k2", [("random", 60, 20, 6), ("clustered", 80, 10, 4),
                                          ("clustered", 50, 6, 1), ("tied", 40, 6, 3),
                                          ("random", 12, 12, 6), ("clustered", 30, 4, 9)])
def test_compute_jaccard_distance_matches_oracle(kind, n, k1, k2, capsys):
    rng = np.random.default_rng(n + k1)
    x = torch.from_numpy(unit_rows(features(kind, n, rng, dim=16))).float()
    expected = oracle_jaccard(x.numpy(), k1, k2)
    got = compute_jaccard_distance(x, k1=k1, k2=k2, search_option=3)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (n, n)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert got.min() >= 0 and (got[expected == 1] == 1).all()
    printed = capsys.readouterr().out
    assert "Computing jaccard distance..." in printed and "time cost" in printed


def test_compute_jaccard_distance_float16_numpy_input_and_quiet(capsys):
    rng = np.random.default_rng(1)
    x = unit_rows(features("clustered", 50, rng, dim=16))
    got = compute_jaccard_distance(x, k1=8, k2=3, print_flag=False, use_float16=True)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), oracle_jaccard(x.astype(np.float32), 8, 3),
                               atol=1e-3, rtol=0)
    assert capsys.readouterr().out == ""


def test_compute_jaccard_distance_refusals(monkeypatch):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(features("random", 30, rng, dim=16)).float()
    with pytest.raises(ValueError, match="must be L2-normalised.*normalize"):
        compute_jaccard_distance(x, print_flag=False)
    monkeypatch.setenv("PPLR_FAST_MEMORY_LIMIT_GIB", "1e-7")
    with pytest.raises(MemoryError, match=r"refused: a dense 30 x 30 float32 Jaccard matrix needs "
                                          r"about .* GiB but only .* GiB is available; use "
                                          r"pplr_fast.cluster.jaccard_distance"):
        compute_jaccard_distance(torch.nn.functional.normalize(x, dim=1), print_flag=False)


# --------------------------------------------------------------------------- the evaluation CLI


def test_evaluate_cli_prints_metrics_with_and_without_re_ranking(tmp_path, capsys):
    from pplr_fast.evaluate import main
    from pplr_fast.models import PPLRNet
    from pplr_fast.utils.checkpoint import save_checkpoint
    rng = np.random.default_rng(0)
    root = tmp_path / "Market-1501-v15.09.15"
    layout = {"bounding_box_train": [(1, 1), (2, 2)],
              "bounding_box_test": [(pid, cam) for pid in range(1, 6) for cam in (1, 2, 3)],
              "query": [(pid, 4) for pid in range(1, 6)]}
    for folder, images in layout.items():
        os.makedirs(root / folder)
        for i, (pid, cam) in enumerate(images):
            Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(
                root / folder / f"{pid:04d}_c{cam}s1_{i:06d}_01.jpg")
    model = PPLRNet("resnet18", num_parts=2)
    model.reset_classifiers(torch.randn(3, 512), torch.randn(3, 512, 2))
    save_checkpoint({"model": model.state_dict(), "num_classes": 3, "epoch": 4,
                     "config": {"arch": "resnet18", "parts": 2, "height": 32, "width": 16,
                                "dataset": "market1501", "data_dir": str(tmp_path)}},
                    tmp_path / "best.pth")
    common = ["--checkpoint", str(tmp_path / "best.pth"), "--device", "cpu", "-j", "0"]
    metrics = main(common + ["--rerank", "--k1", "4", "--k2", "2", "--lambda", "0.5"])
    out = capsys.readouterr().out
    assert "without re-ranking" in out and "re-ranked (k1=4, k2=2, λ=0.5)" in out
    reranked = metrics["reranked"]
    assert set(reranked) == set(metrics) - {"reranked"}
    assert reranked["num_valid_queries"] == metrics["num_valid_queries"] == 5
    # the printed row holds the re-ranked metrics
    row = next(line for line in out.splitlines() if line.startswith("re-ranked"))
    assert row.split()[-5:] == [f"{reranked[k]:.1%}" for k in ("mAP", "rank1", "rank5", "rank10",
                                                               "mINP")]
    main(common + ["--rerank", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["reranked"]) == {"mAP", "rank1", "rank5", "rank10", "mINP",
                                        "num_valid_queries"}
    with pytest.raises(SystemExit, match="--rerank: k1 must be an integer >= 1"):
        main(common + ["--rerank", "--k1", "0"])


# --------------------------------------------------------------------------- squared input


def euclidean_test_features(kind, rng):
    """Features the Euclidean test must judge right: high-dimensional ones too, where squared
    distances satisfy the triangle inequality on nearly every triple."""
    if kind == "random-2048":
        return unit_rows(rng.normal(size=(300, 2048)))
    if kind == "clustered-2048":      # re-ID-like: identities, and duplicated images
        centres = unit_rows(rng.normal(size=(40, 2048)))
        x = unit_rows(centres[rng.integers(0, 40, 300)] + 0.5 * unit_rows(rng.normal(size=(300, 2048))))
        x[250:] = x[rng.integers(0, 250, 50)]
        return x
    if kind == "low-rank-512":        # trained features span few directions
        z = rng.normal(size=(30, 16))[rng.integers(0, 30, 300)] + 0.3 * rng.normal(size=(300, 16))
        return unit_rows(z @ rng.normal(size=(16, 512)))
    return features(kind, 200, rng)   # the oracle tests' random / clustered / tied (dim 8 and 4)


SQUARED_KINDS = ["random-2048", "clustered-2048", "low-rank-512", "random", "clustered", "tied"]


def float32_distance_blocks(x, q):
    """Euclidean distances as a user computes them: float32 GEMM, clamp, sqrt (the rounding
    of near-zero distances is at its worst there)."""
    x = torch.from_numpy(x).float()
    norms = (x * x).sum(1)
    d = (norms[:, None] + norms[None] - 2 * x @ x.T).clamp_(min=0).sqrt_().numpy()
    return d[:q, q:], d[:q, :q], d[q:, q:]


@pytest.mark.parametrize("kind", SQUARED_KINDS)
def test_euclidean_distances_pass_and_squared_ones_warn(kind, rng, monkeypatch):
    # the torch path's test runs before its kernels (slow under the Triton interpreter)
    monkeypatch.setattr(rerank, "_finish_device", lambda *args: torch.zeros(1))
    blocks = float32_distance_blocks(euclidean_test_features(kind, rng), 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rerank.SquaredDistanceWarning)
        for dtype in (np.float32, np.float64, np.float16):
            re_ranking(*(b.astype(dtype) for b in blocks), k1=6, k2=3)
        rerank._re_ranking_torch(*(torch.from_numpy(b) for b in blocks), 6, 3, 0.3)
    assert rerank.euclidean_test(*blocks) > -1e-5
    squared = tuple(b.astype(np.float64) ** 2 for b in blocks)
    assert rerank.euclidean_test(*squared) < -1e-2
    with pytest.warns(rerank.SquaredDistanceWarning,
                      match=r"not Euclidean distances.*squared.*np\.sqrt.*squared=True") as caught:
        re_ranking(*squared, k1=6, k2=3)
    assert caught[0].filename == __file__, "the warning points at the caller's line"
    with pytest.warns(rerank.SquaredDistanceWarning):
        re_ranking(*(torch.from_numpy(b) for b in squared), k1=6, k2=3)
    with pytest.warns(rerank.SquaredDistanceWarning):
        rerank._re_ranking_torch(*(torch.from_numpy(b) for b in squared), 6, 3, 0.3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_squared_true_takes_squared_distances_as_they_are(dtype, rng):
    """re_ranking(d ** 2, squared=True) is re_ranking(d): the square the method takes is the
    caller's (rounded once to float32 either way), so the results are identical."""
    blocks = float32_distance_blocks(features("clustered", 60, rng), 12)
    blocks = tuple(b.astype(dtype) for b in blocks)
    squared = tuple(b * b for b in blocks)
    expected = re_ranking(*blocks, k1=6, k2=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rerank.SquaredDistanceWarning)
        got = re_ranking(*squared, k1=6, k2=3, squared=True)
        np.testing.assert_array_equal(got, expected)
        torch_path = rerank._re_ranking_torch(*(torch.from_numpy(b) for b in squared), 6, 3, 0.3,
                                              squared=True)
    np.testing.assert_allclose(torch_path.numpy(), expected, atol=1e-6, rtol=0)
    with pytest.warns(rerank.SquaredDistanceWarning):
        twice = re_ranking(*squared, k1=6, k2=3)                  # squared again: off
    assert np.abs(twice - expected).max() > 1e-2


def test_euclidean_test_reads_a_bounded_sample(rng, monkeypatch):
    """A few hundred images, whatever the size: the test stays a few milliseconds."""
    seen = []
    real = np.linalg.eigvalsh
    monkeypatch.setattr(np.linalg, "eigvalsh", lambda a: seen.append(a.shape) or real(a))
    x = unit_rows(rng.normal(size=(1500, 16)))
    rerank.euclidean_test(*float32_distance_blocks(x, 500))
    assert seen == [(rerank.EUCLIDEAN_TEST_IMAGES, rerank.EUCLIDEAN_TEST_IMAGES)]
    assert rerank.euclidean_test(*(np.ones((1, 1)),) * 3) == 0.0      # fewer than 3 images
