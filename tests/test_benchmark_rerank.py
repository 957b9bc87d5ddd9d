"""benchmarks/rerank.py runs as a user runs it and writes complete tables.

Only the structure of its outputs and the agreement it reports are checked,
never the timings.
"""
import json
import os
import subprocess
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
ROWS = ("numpy re_ranking", "pplr_fast re_ranking", "pplr_fast re_rank_features")


def _run(*arguments, timeout=300):
    environment = {**os.environ, "OMP_WAIT_POLICY": "passive"}
    environment.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "rerank.py"),
                           *map(str, arguments)],
                          capture_output=True, text=True, timeout=timeout, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_rerank_benchmark_tables_and_agreement(tmp_path):
    stdout = _run("--sizes", "40x200", "300x1200", "--dim", 64, "--features-max-n", 500,
                  "--out", tmp_path)
    result = json.loads((tmp_path / "rerank_cpu.json").read_text())
    markdown = (tmp_path / "rerank_cpu.md").read_text()
    assert markdown in stdout
    assert "Machine:" in markdown and "identity_features" in markdown
    assert "| size (Q x G) | row | total s | × faster | peak host MiB |" in markdown
    for key in ("cpu", "cores", "ram_gib", "torch", "numpy", "torch_threads"):
        assert result["machine"][key] is not None
    rows = {(r["size"], r["row"]): r for r in result["rows"]}
    assert set(rows) == {(size, row) for size in ("40x200", "300x1200") for row in ROWS}
    for size in ("40x200", "300x1200"):
        numpy_row, fast = rows[(size, ROWS[0])], rows[(size, ROWS[1])]
        for row in (numpy_row, fast):
            assert row["status"] == "ok" and row["total"] > 0
            assert row["peak_host_mib"] is not None
        assert {"scale", "argsort", "encoding", "jaccard"} <= set(numpy_row["seconds"])
        assert {"ranks", "encoding", "jaccard + output"} <= set(fast["seconds"])
        assert fast["max_abs_diff_vs_numpy"] < 1e-5 and fast["same_map_4_decimals"]
        assert fast["metrics"]["mAP"] != fast["plain_metrics"]["mAP"]   # re-ranking did something
        assert fast["times_faster"] > 0
    small = rows[("40x200", ROWS[2])]
    assert small["status"] == "ok" and small["max_abs_diff_vs_re_ranking"] < 1e-5
    big = rows[("300x1200", ROWS[2])]
    assert big["status"].startswith("not run: N = 1500 > --features-max-n 500; about ")


def test_rerank_benchmark_reports_refusals(tmp_path):
    # numpy needs ~20 MB here, pplr_fast re_ranking ~7 MB
    _run("--sizes", "100x900", "--dim", 32, "--memory-limit-gib", 0.012, "--out", tmp_path)
    rows = {r["row"]: r for r in json.loads((tmp_path / "rerank_cpu.json").read_text())["rows"]}
    numpy_row = rows[ROWS[0]]
    assert numpy_row["status"] == f"refused: needs {numpy_row['needs_gib']:.3g} GiB"
    assert numpy_row["needs_gib"] > 0.012
    assert rows[ROWS[1]]["status"] == "ok"
    assert rows[ROWS[2]]["status"].startswith("refused: needs")    # its GEMM block alone: 256 MiB
    assert "refused" in (tmp_path / "rerank_cpu.md").read_text()
