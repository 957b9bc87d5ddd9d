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


@pytest.mark.parametrize("part", [None, 1, 2])
def test_without_a_gpu_each_part_says_so_and_exits_0(tmp_path, part):
    arguments = ("--out", tmp_path / "out") + (("--part", part) if part else ())
    done = run_script(*arguments, env={"CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no GPU" in done.stdout and "torch" in done.stdout
    if part:
        assert f"part {part}" in done.stdout
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
    two = check.RESULT_MARK + '{"a": 1}\nnoise\n' + check.RESULT_MARK + '{"a": 2}\n'
    assert check.worker_results(two) == [{"a": 1}, {"a": 2}]
    # a run stopped before its summary line: counted from its -v lines so far
    stopped = ("tests/test_x.py::test_a PASSED  [ 10%]\n"
               "[gw1] [ 20%] FAILED tests/test_x.py::test_b\n"
               "[gw0] [ 30%] PASSED tests/test_x.py::test_c[cuda]\n"
               "tests/test_x.py::test_d SKIPPED (no cupy)  [ 40%]\n")
    assert check.pytest_summary(stopped)["counts"] == {"passed": 2, "failed": 1, "skipped": 1}
    assert check.test_outcome("FAILED tests/test_x.py::test_b - AssertionError") is None
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
    order = [text.index(f"== {i}.") for i in range(1, 9)]     # both parts' 7 steps, targets
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
    assert (tmp_path / "gpu_check_cpu-simulated.md").read_text().count("## ") == 8


def _defined_names(module_name):
    """The names module ``module_name`` defines (imported; or read, where it needs a GPU library)."""
    import importlib
    try:
        return set(dir(importlib.import_module(module_name)))
    except ImportError as err:
        if (err.name or "").startswith("pplr_fast"):
            raise
        return _top_level_names(importlib.util.find_spec(module_name).origin)


def _top_level_names(path):
    """The names a Python file binds at its top level, read without running it."""
    import ast
    names = set()
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_every_name_any_branch_of_gpu_check_imports_exists():
    """A dry run of every import of every branch, the CUDA-only ones included.

    The CPU dry run never enters the CUDA branches (the fused-loss probe, the loss
    memcheck), so a name they import that does not exist would first fail on a GPU.
    """
    import ast
    tree = ast.parse(open(SCRIPT).read())
    checked = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pplr_fast"):
            defined = _defined_names(node.module)
            for alias in node.names:
                assert alias.name in defined, \
                    f"gpu_check line {node.lineno}: {node.module} has no {alias.name}"
                checked.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("features", "cluster_stage"):
            # benchmark scripts it may import through sys.path: only the feature generator
            assert node.module == "features", f"gpu_check line {node.lineno} imports a benchmark"
            assert {a.name for a in node.names} <= _top_level_names(
                os.path.join(BENCHMARKS, "features.py"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pplr_fast"):
                    _defined_names(alias.name)
                    checked.append(alias.name)
    assert "pplr_fast.losses.pplr_classification_loss_fused" in checked
    assert len(checked) >= 15


SUBSTITUTE = "torch label propagation (dbscan_propagation.py)"


def test_a_substitute_record_is_reported_as_substitute_and_a_reference_one_as_fallback():
    from pplr_fast.gpu_fallback import gpu_fallback_notice
    check = load_gpu_check()
    text, record = gpu_fallback_notice("dbscan", "cuda:0", "CuPy fails to import", "pip install cupy",
                                       substitute=SUBSTITUTE)
    # the banner has none of the words a text match looked for: only its fields tell
    assert "fall" not in text.lower() and "slow path" not in text.lower()
    status, why = check.fallback_status([record], [])
    assert status == "substitute"
    assert "CuPy fails to import" in why and SUBSTITUTE in why
    _, slow = gpu_fallback_notice("jaccard", "cuda:0", "triton is not installed", "pip install triton")
    assert check.fallback_status([record, slow], [])[0] == "fallback"    # the worse one wins
    assert check.fallback_status([], []) is None


def test_a_piece_that_ran_a_substitute_is_probed_as_substitute(monkeypatch):
    import warnings

    from pplr_fast import gpu_fallback
    check = load_gpu_check()
    monkeypatch.delenv(gpu_fallback.STRICT_ENV, raising=False)

    def dbscan_by_propagation():
        gpu_fallback.report_gpu_fallback("dbscan", "cuda:0", "CuPy fails to import",
                                         "pip install cupy", substitute=SUBSTITUTE)
        return True, "same labels as the reference"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check.probe("DBSCAN (fast)", dbscan_by_propagation)
        after = check.probe("cross-agreement (fast)", lambda: (True, "bit-identical scores"))
    assert result["status"] == "substitute" and SUBSTITUTE in result["why"]
    assert after["status"] == "native"            # the earlier piece's record is not its
    missing = check.fallback_status([], [warnings.WarningMessage(
        "pplr_fast: the fast knn kernels are unavailable on cpu: x; falling back to the "
        "reference path (rebuild).", RuntimeWarning, "f.py", 1)])
    assert missing[0] == "fallback"


def test_the_results_are_rewritten_after_every_step_so_a_timeout_keeps_them(tmp_path, monkeypatch):
    check = load_gpu_check()
    args = check.parse_args(["--device", "cpu", "--part", "1", "--out", str(tmp_path)])
    seen = {}

    def environment(run, step):
        run.data["pieces"] = [{"piece": "kNN (fast)", "status": "substitute", "why": "x"}]
        run.report.line(step, "kNN (fast)  substitute  x")

    def tests(run, step):                     # what is on disk when the next step starts
        seen["md"] = (tmp_path / "gpu_check_cpu-simulated_part1.md").read_text()
        seen["json"] = json.loads((tmp_path / "gpu_check_cpu-simulated_part1.json").read_text())
        raise TimeoutError("the session ended here")

    monkeypatch.setitem(check.STEPS, "environment", ("environment", environment))
    monkeypatch.setitem(check.STEPS, "tests", ("tests", tests))
    monkeypatch.setitem(check.STEPS, "stage", ("stage", lambda run, step: None))
    run = check.Check(args, 1, check.PARTS[1], True, check.time.time(), [])
    check.run_steps(run)
    assert "kNN (fast)  substitute  x" in seen["md"]
    assert "| every fast piece runs natively on the GPU (no fallback, no substitute) | " \
           "missed: kNN (fast) substitute |" in seen["md"]
    assert seen["json"]["pieces"][0]["status"] == "substitute"
    verdicts = {t["target"]: t["verdict"] for t in seen["json"]["targets"]}
    assert verdicts["GPU tests pass"] == "not measured"
    assert not any("memcheck" in t for t in verdicts)           # part 2's targets are not here
    final = json.loads((tmp_path / "gpu_check_cpu-simulated_part1.json").read_text())
    assert [s["status"] for s in final["steps"]] == ["ran", "failed", "ran", "ran"]
    assert "TimeoutError: the session ended here" in final["steps"][1]["lines"][-1]


def test_the_parts_split_the_steps_and_part_2_runs_the_fused_loss_first():
    check = load_gpu_check()
    assert check.PARTS == {1: ["environment", "tests", "stage"],
                           2: ["scaling", "training", "losses", "sanitizer"]}
    for names in check.PARTS.values():
        assert sum(check.STEP_BUDGETS[n] for n in names) + check.MIN_STEP_S <= check.PART_BUDGET_S
    assert check.PART_BUDGET_S < check.PART_LIMIT_S == 300
    assert check.parse_args([]).scaling == [250000]
    commands = []
    run = check.Check(check.parse_args(["--device", "cpu"]), 2, check.PARTS[2], False,
                      check.time.time(), [])
    check.run_subprocess = lambda command, *a, **k: (commands.append(command), (0, "", 0.0))[1]
    step = {"budget_s": 60.0, "start": check.time.time(), "lines": []}
    check.losses_step(run, step)
    variants = commands[0][commands[0].index("--variants") + 1:][:3]
    assert variants[0] == "fused" and sorted(variants) == ["compile", "eager", "fused"]


def test_a_step_that_runs_past_its_budget_is_stopped_with_what_it_started_and_keeps_its_lines():
    check = load_gpu_check()
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print('CHILD', child.pid, flush=True)\n"
              "print('first result', flush=True)\n"
              "time.sleep(60)\n")
    seen = []
    start = check.time.time()
    code, out, seconds = check.run_subprocess([sys.executable, "-c", script], 3.0,
                                              on_line=seen.append)
    assert code is None and seconds < 20 and check.time.time() - start < 20
    assert "first result" in seen and "first result" in out        # kept, and given as it came
    child = int(next(line for line in seen if line.startswith("CHILD")).split()[1])
    check.time.sleep(0.2)
    state = open(f"/proc/{child}/stat").read().split()[2] if os.path.exists(f"/proc/{child}") else "gone"
    assert state in ("gone", "Z", "X")                              # the grandchild is stopped too
