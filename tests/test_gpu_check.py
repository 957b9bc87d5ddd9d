"""benchmarks/gpu_check.py: its no-GPU path, its parsing and extrapolation, and a CPU dry run.

The GPU path itself runs only on a GPU machine; here the whole flow runs on
CPU tensors (the hidden ``--device cpu``), which exercises the workers, the
report and the target lines with small sizes.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "gpu_check.py")


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*arguments, env=None, timeout=300):
    environment = {**os.environ, "OMP_WAIT_POLICY": "passive", **(env or {})}
    environment.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, SCRIPT, *map(str, arguments)], capture_output=True,
                          text=True, timeout=timeout, env=environment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    done = run_script("--out", tmp_path / "out", env={"CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no GPU" in done.stdout and "torch" in done.stdout
    assert not (tmp_path / "out").exists()               # nothing written, nothing installed


def test_extrapolation_uses_each_stage_growth():
    check = load_gpu_check()
    # jaccard grows as N^1.5; encoding faster than N^2 and dbscan slower than N
    # (overheads) are clipped to quadratic and linear
    small = {"n": 1000, "timings": {"knn_global": 1.0, "dbscan": 1.0, "jaccard": 1.0,
                                    "encoding": 1.0}}
    large = {"n": 4000, "timings": {"knn_global": 16.0, "dbscan": 2.0, "jaccard": 8.0,
                                    "encoding": 64.0}}
    ext = check.extrapolate(small, large, 1000, 4000, 16000)
    assert ext["exponents"] == pytest.approx({"knn_global": 2.0, "dbscan": 1.0, "jaccard": 1.5,
                                              "encoding": 2.0})
    assert ext["stages"] == pytest.approx({"knn_global": 256.0, "dbscan": 8.0, "jaccard": 64.0,
                                           "encoding": 1024.0})
    assert ext["total"] == pytest.approx(1352.0)
    one = check.extrapolate(None, large, None, 4000, 8000)
    assert one["stages"]["knn_global"] == 64.0 and one["stages"]["dbscan"] == 4.0
    assert check.growth_exponent(1.0, 8.0, 4.0) == pytest.approx(1.5)


def test_output_parsers_and_test_selection():
    check = load_gpu_check()
    out = "....F\nFAILED tests/test_x.py::test_y - AssertionError\n1 failed, 4 passed in 2.0s\n"
    assert check.pytest_summary(out) == {"counts": {"failed": 1, "passed": 4},
                                         "failures": ["FAILED tests/test_x.py::test_y - "
                                                      "AssertionError"]}
    assert check.sanitizer_summary("x\n========= ERROR SUMMARY: 3 errors\n") == 3
    assert check.sanitizer_summary("========= ERROR SUMMARY: 0 errors") == 0
    assert check.sanitizer_summary("Device not supported") is None
    assert check.worker_result("noise\n" + check.RESULT_MARK + '{"a": 1}\n') == {"a": 1}
    files = {os.path.basename(f) for f in check.gpu_test_files(
        os.path.join(os.path.dirname(BENCHMARKS), "tests"))}
    assert {"test_dbscan_propagation.py", "test_losses_fused.py"} <= files
    assert "test_gpu_check.py" not in files and "test_triton_compat.py" not in files


def test_budget_leaves_later_steps_their_minimum():
    check = load_gpu_check()
    budget = check.Budget(100.0, start=0.0)
    budget.elapsed = lambda: 40.0
    assert budget.for_step("tests", later_steps=0) == 60.0
    assert budget.for_step("tests", later_steps=2) == 60.0 - 2 * check.MIN_STEP_S
    budget.elapsed = lambda: 99.0
    assert budget.for_step("stage", later_steps=1) == 0.0


@pytest.mark.slow
def test_dry_run_on_cpu_writes_a_complete_report(tmp_path):
    done = run_script("--device", "cpu", "--n", 400, "--dim", 32, "--repeat", 2,
                      "--scaling", 300, 600, "--scaling-dim", 16, "--out", tmp_path, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    order = [text.index(f"== {i}.") for i in range(1, 8)]
    assert order == sorted(order)
    with open(tmp_path / "gpu_check_cpu-simulated.json") as handle:
        data = json.load(handle)
    assert {p["status"] for p in data["pieces"]} == {"native"}
    assert "re-ranking" in {p["piece"] for p in data["pieces"]}
    assert data["stage"]["labels_equal_cpu"] and data["stage"]["runs_bit_identical"]
    assert [p["n"] for p in data["scaling"]["points"]] == [300, 600]
    assert data["scaling"]["extrapolated"]["n"] == 1_000_000
    verdicts = {t["target"]: t["verdict"] for t in data["targets"]}
    assert verdicts["same pseudo-labels as the CPU fast path"] == "met"
    assert verdicts["GPU tests pass"] == "not measured"
    assert (tmp_path / "gpu_check_cpu-simulated.md").read_text().count("## ") == 7
