"""The benchmark scripts run as a user runs them and write complete tables.

Only the structure of the outputs is checked (files, columns, keys, refusal
and skip rows, the backends' agreement), never the timings.
"""
import csv
import importlib.util
import json
import mmap
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
STAGES = ("knn_global", "knn_parts", "encoding", "jaccard", "dbscan", "cross_agreement")


def _has(module):
    return importlib.util.find_spec(module) is not None


def _load(name):
    """A benchmark script imported as a module (they are scripts, not a package)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(BENCHMARKS)


def _run(script, *arguments, timeout=300):
    """Run a benchmark script; OpenMP waits passively so a busy test machine stays quick."""
    environment = {**os.environ, "OMP_WAIT_POLICY": "passive"}
    environment.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *map(str, arguments)],
                          capture_output=True, text=True, timeout=timeout, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _rows(result, n=None):
    return {row["backend"]: row for row in result["rows"] if n is None or row["n"] == n}


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster_stage")
    stdout = _run("cluster_stage.py", "--n", 2000, "--dim", 256, "--repeat", 1, "--device", "cpu",
                  "--out", out)
    with open(out / "cluster_stage_cpu.json") as handle:
        return out, stdout, json.load(handle)


def test_cluster_stage_writes_every_file(cluster_run):
    out, stdout, _ = cluster_run
    for extension in ("md", "json", "csv"):
        assert (out / f"cluster_stage_cpu.{extension}").stat().st_size > 0
    markdown = (out / "cluster_stage_cpu.md").read_text()
    assert markdown in stdout
    header = next(line for line in markdown.splitlines() if line.startswith("| N |"))
    for column in (*STAGES, "total", "× fast", "peak host MiB", "ARI", "max Δscore"):
        assert column in header
    assert "Machine:" in markdown and "identity_features" in markdown
    if _has("matplotlib"):
        assert (out / "cluster_stage_cpu.png").read_bytes()[:4] == b"\x89PNG"


def test_cluster_stage_json_has_every_stage_ratio_and_agreement(cluster_run):
    _, _, result = cluster_run
    machine = result["machine"]
    for key in ("cpu", "cores", "ram_gib", "torch", "numpy", "torch_threads", "device"):
        assert machine[key] is not None
    assert result["generator"]["name"] == "benchmarks.features.identity_features"
    rows = _rows(result, 2000)
    for backend in ("reference", "fast"):
        row = rows[backend]
        assert row["status"] == "ok"
        assert set(row["seconds"]) == {*STAGES, "total"}
        assert row["peak_host_mib"] is not None
        assert 0 < row["outliers"] < 2000 and row["clusters"] > 1
    fast = rows["fast"]
    assert set(fast["fast_over_reference"]) == {*STAGES, "total"}
    assert fast["ari"] == 1.0 and fast["labels_identical"]
    assert fast["max_abs_score_diff"] == 0.0
    assert rows["reference"]["times_fast"] > 0
    if _has("sklearn"):
        assert rows["sklearn"]["status"] == "ok" and rows["sklearn"]["ari"] == 1.0
        assert set(rows["sklearn"]["seconds"]) == {"dbscan", "total"}
    if _has("faiss"):
        assert rows["faiss"]["status"] == "ok"
        assert set(rows["faiss"]["seconds"]) == {"knn_global", "knn_parts", "total"}
        assert 0.99 <= rows["faiss"]["knn_rows_matching_exact"] <= 1


def test_cluster_stage_csv_has_the_columns(cluster_run):
    out, _, result = cluster_run
    with open(out / "cluster_stage_cpu.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(result["rows"])
    fast = next(row for row in table if row["backend"] == "fast")
    for column in (*(f"{stage}_s" for stage in STAGES), "total_s", "peak_host_mib", "ari",
                   "max_abs_score_diff", "fast_over_reference_total"):
        assert fast[column] != "", column


def test_reference_refusal_is_a_row_not_a_crash(tmp_path):
    stdout = _run("cluster_stage.py", "--n", 2000, "--dim", 64, "--repeat", 1, "--device", "cpu",
                  "--backends", "reference", "--extras", "--memory-limit-gib", 0.06,
                  "--out", tmp_path)
    row = _rows(json.loads((tmp_path / "cluster_stage_cpu.json").read_text()))["reference"]
    assert row["status"] == f"refused: needs {row['needs_gib']:.1f} GiB"
    assert row["needs_gib"] > 0.06
    assert "refused: needs" in stdout


def test_size_the_fast_path_cannot_hold_is_skipped(tmp_path):
    _run("cluster_stage.py", "--n", 2000, "--dim", 64, "--device", "cpu", "--extras",
         "--memory-limit-gib", 0.001, "--out", tmp_path)
    rows = _rows(json.loads((tmp_path / "cluster_stage_cpu.json").read_text()))
    assert set(rows) == {"reference", "fast"}
    assert all(row["status"].startswith("skipped: the features alone need")
               for row in rows.values())


def _market_folder(data_dir, train_images):
    """A tiny Market-1501 tree of random images (8 identities, 6 cameras)."""
    rng = np.random.default_rng(0)
    root = data_dir / "Market-1501-v15.09.15"
    for folder, count in (("bounding_box_train", train_images), ("bounding_box_test", 4),
                          ("query", 2)):
        os.makedirs(root / folder)
        for i in range(count):
            pixels = rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(
                root / folder / f"{1 + i % 8:04d}_c{1 + i % 6}s1_{i:06d}_01.jpg")


def test_dataset_mode_extracts_features_in_every_run(tmp_path):
    from pplr_fast.models import PPLRNet
    from pplr_fast.utils.checkpoint import save_checkpoint
    _market_folder(tmp_path, train_images=40)
    model = PPLRNet("resnet18", num_parts=2)
    model.reset_classifiers(torch.randn(5, 512), torch.randn(5, 512, 2))
    save_checkpoint({"model": model.state_dict(), "num_classes": 5, "epoch": 0,
                     "config": {"arch": "resnet18", "parts": 2, "height": 32, "width": 16}},
                    tmp_path / "last.pth")
    _run("cluster_stage.py", "--dataset", "market1501", "--data-dir", tmp_path, "--checkpoint",
         tmp_path / "last.pth", "--repeat", 1, "--device", "cpu", "--extras", "--workers", 0,
         "--out", tmp_path / "out")
    result = json.loads((tmp_path / "out" / "cluster_stage_cpu.json").read_text())
    assert result["config"]["eps"] == 0.6 and result["config"]["dim"] == 512
    rows = _rows(result, 40)
    for backend in ("reference", "fast"):
        assert rows[backend]["status"] == "ok"
        assert set(rows[backend]["seconds"]) == {"extract", *STAGES, "total"}
    assert "extract + total" in (tmp_path / "out" / "cluster_stage_cpu.md").read_text()


def test_adjusted_rand_index_is_the_packages_and_counts_noise_as_a_label():
    from pplr_fast.pseudo_label_quality import adjusted_rand_index
    cluster_stage = _load("cluster_stage")
    assert cluster_stage.adjusted_rand_index is adjusted_rand_index     # one copy
    rng = np.random.default_rng(0)
    assert cluster_stage.adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([5, 5, -1, -1])) == 1
    assert cluster_stage.adjusted_rand_index(np.zeros(5, int), np.zeros(5, int)) == 1
    if _has("sklearn"):
        from sklearn.metrics import adjusted_rand_score
        for _ in range(5):
            a, b = rng.integers(-1, 6, 300), rng.integers(-1, 9, 300)
            b[:150] = a[:150]
            assert cluster_stage.adjusted_rand_index(a, b) == pytest.approx(
                adjusted_rand_score(a, b), abs=1e-12)


def test_identity_features_are_seeded_normalised_and_structured():
    features = _load("features")
    x_g, x_p, identity = features.identity_features(300, dim=64, parts=3, seed=1)
    again = features.identity_features(300, dim=64, parts=3, seed=1)
    assert torch.equal(x_g, again[0]) and torch.equal(x_p, again[1])
    assert x_g.shape == (300, 64) and x_p.shape == (300, 64, 3) and identity.shape == (300,)
    torch.testing.assert_close(x_g.norm(dim=1), torch.ones(300))
    torch.testing.assert_close(x_p.norm(dim=1), torch.ones(300, 3))
    same = identity[:, None] == identity[None, :]
    similarity = x_g @ x_g.T
    assert similarity[same].mean() > similarity[~same].mean() + 0.2
    assert int(identity.bincount().min()) >= 2


def test_train_step_table(tmp_path):
    clustering = {"machine": {"cpu": "test CPU", "gpu": None}, "config": {"device": "cpu"},
                  "rows": [{"n": 2000, "backend": "reference", "status": "ok",
                            "seconds": {"total": 8.0}},
                           {"n": 2000, "backend": "fast", "status": "ok",
                            "seconds": {"total": 0.5}}]}
    (tmp_path / "clustering.json").write_text(json.dumps(clustering))
    stdout = _run("train_step.py", "--arch", "resnet18", "--height", 64, "--width", 32,
                  "--batch-size", 8, "--repeat", 2, "--warmup", 1, "--device", "cpu",
                  "--methods", "pplr", "--cluster-json", tmp_path / "clustering.json", "--out", tmp_path)
    result = json.loads((tmp_path / "train_step_cpu.json").read_text())
    rows = _rows(result)
    assert set(rows) == {"reference", "fast"}
    for row in rows.values():
        assert row["parameters"] == rows["reference"]["parameters"] > 11e6
        assert row["train_s_per_iter"] > 0 and len(row["iterations"]) == 2
    assert rows["reference"]["cluster_s_per_epoch"] == 8.0
    assert rows["fast"]["cluster_s_per_epoch"] == 0.5
    markdown = (tmp_path / "train_step_cpu.md").read_text()
    assert markdown in stdout
    assert "| | parameters (M) | clustering s/epoch | training s/iter |" in markdown
    assert "| PPLR, paper (4x TITAN RTX" in markdown and "| 29.668 | 38.484 | 0.202 |" in markdown


def test_losses_table(tmp_path):
    stdout = _run("losses.py", "--c", 7, 40, "--b", 8, "--repeat", 2, "--out", tmp_path)
    result = json.loads((tmp_path / "losses_cpu.json").read_text())
    by_key = {(r["variant"], r["C"]): r for r in result["rows"]}
    assert set(by_key) == {(v, c) for v in ("eager", "compile", "fused") for c in (7, 40)}
    for c in (7, 40):
        for variant in ("eager", "compile"):
            row = by_key[(variant, c)]
            assert row["median_ms"] > 0 and row["min_ms"] <= row["median_ms"], row
        assert by_key[("fused", c)]["status"].startswith("needs a GPU")
    assert result["machine"]["cores"] == os.cpu_count() and "load_before" in result["machine"]
    markdown = (tmp_path / "losses_cpu.md").read_text()
    assert markdown.strip() in stdout
    assert "Machine: " in markdown and "| C | variant | median ms |" in markdown


def test_cluster_ranks_rows_per_rank_and_same_labels(tmp_path):
    _run("cluster_ranks.py", "--ranks", 1, 2, "--n", 600, "--dim", 64, "--repeat", 1,
         "--device", "cpu", "--threads", 2, "--out", tmp_path)
    with open(tmp_path / "cluster_stage_ranks_cpu.json") as handle:
        result = json.load(handle)
    rows = result["rows"]
    assert [(r["features"], r["ranks"], r["dbscan_on"], r["rank"]) for r in rows] == [
        ("gather", 1, "every", 0), ("gather", 2, "every", 0), ("gather", 2, "every", 1),
        ("gather", 2, "one", 0), ("gather", 2, "one", 1), ("ring", 1, "every", 0),
        ("ring", 2, "every", 0), ("ring", 2, "every", 1)]
    assert all(r["status"] == "ok" and r["same_as_one_rank"] for r in rows)
    assert "features" not in rows[6]["received"] or rows[6]["received"]["features"] < 1024
    assert rows[6]["received"]["knn_global"] == 300 * 64 * 4     # the other block, once
    assert [r["rows"] for r in rows[1:3]] == [[0, 300], [300, 600]]
    assert rows[1]["threads_per_rank"] == 1 and rows[0]["threads_per_rank"] == 2
    assert sum(rows[0]["received"].values()) == 0 < sum(rows[1]["received"].values())
    assert rows[4]["received"].get("dbscan", 0) > 0 == rows[3]["received"].get("dbscan", 0)
    with open(tmp_path / "cluster_stage_ranks_cpu.md") as handle:
        table = handle.read()
    for column in ("threads / rank", "MiB in", "MiB out", "peak MiB", "same as K=1", *STAGES):
        assert column in table


def test_cluster_stage_passes_ranks_on_to_cluster_ranks(tmp_path):
    """The README's ``cluster_stage.py --ranks ...`` still runs the ranks benchmark."""
    _run("cluster_stage.py", "--ranks", 1, "--features", "ring", "--n", 300, "--dim", 32,
         "--repeat", 1, "--device", "cpu", "--threads", 1, "--out", tmp_path)
    result = json.loads((tmp_path / "cluster_stage_ranks_cpu.json").read_text())
    assert [(r["features"], r["ranks"], r["status"]) for r in result["rows"]] == [("ring", 1, "ok")]
    assert not (tmp_path / "cluster_stage_cpu.json").exists()


def test_benchmarks_share_one_peak_rss_reader():
    """clear_refs / VmHWM are read in benchmarks/machine.py only."""
    machine = _load("machine")
    before = machine.reset_peak_rss()
    if before is None:
        pytest.skip("this kernel has no resettable peak-RSS mark (/proc/self/clear_refs)")
    # 64 MiB of fresh pages, touched: an anonymous mapping, never memory the
    # allocator already holds resident from earlier tests of this process
    grown = mmap.mmap(-1, 64 * 2 ** 20)
    grown.write(b"\1" * len(grown))
    assert machine.peak_rss_growth_kib(before) >= 60 * 1024
    grown.close()
    for name in os.listdir(BENCHMARKS):
        if name.endswith(".py") and name != "machine.py":
            text = open(os.path.join(BENCHMARKS, name)).read()
            assert "clear_refs\", \"w\"" not in text and 'proc_status_kib("VmHWM")' not in text, name

