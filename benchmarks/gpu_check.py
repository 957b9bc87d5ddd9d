"""One command for a GPU session, in two parts: environment, tests, timings, targets.

    python benchmarks/gpu_check.py --part 1 [--out DIR] [--budget SECONDS]
    python benchmarks/gpu_check.py --part 2 [--out DIR] [--budget SECONDS]
    python benchmarks/gpu_check.py            # both parts, one after the other

Each part fits one call of at most 5 minutes on a cold Triton cache (``--budget``,
280 s per part by default). Each step has its own time budget (a step that cannot
run says "skipped: <why>"), prints each result on its own line the moment it has
it, and the results files, targets included, are rewritten after every step, so a
part stopped by a timeout keeps everything before it.

Part 1:

1. environment: Python, torch, CUDA, GPU, driver, Triton, CuPy, NVRTC,
   compute-sanitizer; which fast pieces run natively on the GPU, which fall
   back to the reference and which run a substitute (another fast piece), and
   why (each piece is run on a small input and compared with the reference;
   the kind is read from the fallback records' fields, pplr_fast.gpu_fallback);
2. the GPU tests: ``PPLR_TEST_GPU=1 pytest -v`` on the test files that take the
   ``device`` fixture (with pytest-xdist and pytest-timeout when installed),
   each failure printed as it happens;
3. the clustering stage at N = 12,936, D = 2048, N_p = 3 (identity-structured
   features of ``benchmarks/features.py``): a warm-up and 3 timed runs per
   stage, labels and scores compared with the CPU fast path, the timed GPU
   runs compared with each other bit for bit (labels, scores, Jaccard values);
4. one line per target of the part: met, missed, or not measured.

Part 2:

1. a scaling probe at N = 250,000, D = 256 (one run after a small warm-up, in a
   subprocess with a timeout), extrapolated to N = 1,000,000 with the kNN taken
   as exactly quadratic and the other stages as linear (given several
   ``--scaling`` sizes, each stage's exponent between them);
2. the training step (``benchmarks/train_step.py --device cuda``);
3. the fused-loss benchmark (``benchmarks/losses.py --device cuda``, C = 500
   and 20,000), the fused variant first;
4. ``compute-sanitizer --tool memcheck`` of a small clustering stage and of a
   fused-loss forward/backward (torch's caching allocator off), when the tool
   exists;
5. one line per target of the part.

Writes ``gpu_check_cuda_part1.{md,json,png}`` / ``gpu_check_cuda_part2.*`` (both
parts in one run: ``gpu_check_cuda.*``), and the tables of the benchmarks it runs
(``train_step_cuda.*``, ``losses_cuda.*``), into ``--out`` (default
``benchmarks/results``). When ``pplr_fast`` is not installed from this checkout
it first runs the offline install (``pip install --no-deps --no-build-isolation
-e .``; ``--no-install`` skips it). On a machine without a GPU either part says so
and exits 0, writing nothing.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import shutil
import statistics
import signal
import subprocess
import sys
import threading
import time
import warnings

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
# The installed pplr_fast, or, before the offline install below has run, this checkout's
# (its pure-Python helpers import unbuilt).
sys.path.append(REPO)
from pplr_fast.utils.errors import one_line as _one_line

RESULT_MARK = "GPU_CHECK_RESULT "
STAGE_ARGS = dict(eps=0.6, k1=30, k2=6, min_samples=4, k=20)     # the benchmarks' defaults
TARGET_SMALL_S = 0.2          # N = 12,936, D = 2048, whole stage
TARGET_1M_S = 30.0            # N = 1,000,000, D = 256, global + 3 parts, whole stage
STEP_BUDGETS = {              # seconds; a step gets less when the part's budget runs short
    # part 1 (sum 255)
    "environment": 60, "tests": 115, "stage": 80,
    # part 2 (sum 260)
    "scaling": 100, "training": 50, "losses": 55, "sanitizer": 55,
}
PART_BUDGET_S = 280.0         # the default --budget of one part
PART_LIMIT_S = 300.0          # the target: one part in one call of at most 5 minutes
MIN_STEP_S = 12               # a later step is always left at least this much


# --------------------------------------------------------------------- small helpers
# An error or an output tail on one line of the report: led by the error's type, cut at 300.
one_line = functools.partial(_one_line, limit=300, with_type=True)


def stage_names() -> tuple[str, ...]:
    """The clustering stage's timed stages, as ``run_cluster_stage`` names them."""
    from pplr_fast.cluster.stage import STAGES
    return STAGES


class Budget:
    """The overall deadline; each step's timeout leaves the later steps their minimum."""

    def __init__(self, total: float, start: float):
        self.total, self.start = total, start

    def elapsed(self) -> float:
        return time.time() - self.start

    def for_step(self, step: str, later_steps: int) -> float:
        remaining = self.total - self.elapsed() - MIN_STEP_S * later_steps
        return max(0.0, min(STEP_BUDGETS[step], remaining))


def run_subprocess(command: list[str], timeout: float, env: dict | None = None,
                   cwd: str = REPO, on_line=None) -> tuple[int | None, str, float]:
    """(return code or None on timeout, stdout + stderr, seconds).

    ``on_line(line)`` is called with every output line the moment the command prints it,
    so a step reports each result as it comes, and a timeout keeps what came before.
    """
    start = time.time()
    environment = {**os.environ, **(env or {})}
    environment.pop("TRITON_INTERPRET", None)
    environment["PYTHONUNBUFFERED"] = "1"
    # the command stays in this process group, so whatever stops this check stops it too
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", env=environment, cwd=cwd)
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
        for pid in [*descendants(process.pid), process.pid]:   # what it started, then itself
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        process.wait()
    reader.join(timeout=5)
    return code, "".join(lines), time.time() - start


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (Linux /proc; none elsewhere)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    children = [int(child) for child in handle.read().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


def worker_results(output: str) -> list:
    """Every JSON a ``--worker`` subprocess printed after RESULT_MARK, in order."""
    return [json.loads(line[len(RESULT_MARK):]) for line in output.splitlines()
            if line.startswith(RESULT_MARK)]


def worker_result(output: str) -> dict | None:
    """The last JSON a ``--worker`` subprocess printed after RESULT_MARK."""
    results = worker_results(output)
    return results[-1] if results else None


def result_of_line(line: str):
    """The JSON of one output line that carries a worker's result, else None."""
    return json.loads(line[len(RESULT_MARK):]) if line.startswith(RESULT_MARK) else None


def gpu_test_files(tests_dir: str) -> list[str]:
    """Test files that run on CUDA with PPLR_TEST_GPU=1 (they take the ``device`` fixture)."""
    pattern = re.compile(r"def test_\w+\([^)]*\bdevice\b")
    files = []
    for name in sorted(os.listdir(tests_dir)):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(tests_dir, name)) as handle:
                if pattern.search(handle.read()):
                    files.append(os.path.join(tests_dir, name))
    return files


_OUTCOME = r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)"
# one test's line of ``pytest -v``: "tests/t.py::test PASSED [ 5%]", or under pytest-xdist
# "[gw0] [  5%] PASSED tests/t.py::test"
_VERBOSE_LINE = re.compile(rf"^\S+::\S+ {_OUTCOME}\b|^\[gw\d+\] \[\s*\d+%\] {_OUTCOME} \S+::")


def test_outcome(line: str) -> str | None:
    """The outcome of one test's ``pytest -v`` line (``passed``, ``failed``, ...), else None."""
    found = _VERBOSE_LINE.match(line)
    if found is None:
        return None
    word = (found.group(1) or found.group(2)).lower()
    return {"xfail": "xfailed", "xpass": "xpassed"}.get(word, word)


def pytest_summary(output: str) -> dict:
    """Counts of a pytest run (its last summary line, or, where it has none because it was
    stopped, its ``-v`` lines so far) and its FAILED/ERROR lines."""
    counts = {}
    for line in output.splitlines()[::-1]:
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", line)
        if found:
            counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(number)
                      for number, kind in found}
            break
    else:
        for line in output.splitlines():
            outcome = test_outcome(line)
            if outcome is not None:
                counts[outcome] = counts.get(outcome, 0) + 1
    failures = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"counts": counts, "failures": failures}


def sanitizer_summary(output: str) -> int | None:
    """The error count of compute-sanitizer's ``ERROR SUMMARY: N errors`` line."""
    found = re.findall(r"ERROR SUMMARY: (\d+) error", output)
    return int(found[-1]) if found else None


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in ("/usr/local/cuda", os.environ.get("CUDA_HOME", ""), "/opt/nvidia"):
        candidate = os.path.join(root, "bin", "compute-sanitizer") if root else ""
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def growth_exponent(t_small: float, t_large: float, ratio: float) -> float:
    """e with t_large = t_small * ratio**e, clipped to [1, 2] (linear .. quadratic)."""
    if t_small <= 0 or t_large <= 0:
        return 2.0
    return min(2.0, max(1.0, math.log(t_large / t_small) / math.log(ratio)))


def extrapolate(small: dict | None, large: dict, n_small: int | None, n_large: int,
                n_target: int) -> dict:
    """Per-stage times at ``n_target`` from the probe's stage times.

    With two sizes each stage grows with its own measured exponent (clipped to
    [1, 2]); with one, the kNN stages are taken as quadratic and the rest as
    linear (an assumption the output states).
    """
    ratio = n_target / n_large
    stages, exponents = {}, {}
    for stage in stage_names():
        if stage not in large["timings"]:
            continue
        if small is not None and stage in small["timings"]:
            exponents[stage] = growth_exponent(small["timings"][stage], large["timings"][stage],
                                               n_large / n_small)
        else:
            exponents[stage] = 2.0 if stage.startswith("knn") else 1.0
        stages[stage] = large["timings"][stage] * ratio ** exponents[stage]
    return {"n": n_target, "stages": stages, "exponents": exponents,
            "total": sum(stages.values()), "measured_sizes": 2 if small else 1}


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value < limit else "missed"


# --------------------------------------------------------------------- installation
def installed_here() -> str | None:
    """None when pplr_fast (kernels included) imports from this checkout, else why not."""
    probe = ("import pplr_fast, pplr_fast.kernels, pplr_fast.csrc_cuda; "
             "print(pplr_fast.__file__)")
    code, out, _ = run_subprocess([sys.executable, "-c", probe], 120, cwd="/")
    if code != 0:
        return f"pplr_fast does not import ({one_line(out.strip().splitlines()[-1] if out.strip() else out)})"
    location = out.strip().splitlines()[-1]
    if not os.path.realpath(location).startswith(os.path.realpath(REPO) + os.sep):
        return f"pplr_fast imports from {location}, not from this checkout"
    return None


def install_offline(timeout: float) -> list[str]:
    """Run the README's offline install; lines for the report."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
               "-e", REPO]
    lines = [f"installing: {' '.join(command[1:])}"]
    code, out, seconds = run_subprocess(command, timeout)
    if code == 0:
        return lines + [f"installed in {seconds:.0f} s"]
    lines.append(f"install failed ({'timeout' if code is None else f'exit {code}'}, {seconds:.0f} s):"
                 f" {one_line(out.strip()[-600:])}")
    code, out, seconds = run_subprocess(command, timeout, env={"PPLR_FAST_SKIP_CPU_KERNELS": "1"})
    if code == 0:
        return lines + [f"installed WITHOUT the C++ CPU kernels (PPLR_FAST_SKIP_CPU_KERNELS=1) in "
                        f"{seconds:.0f} s: the CPU comparison runs the reference path"]
    return lines + [f"install without CPU kernels failed too: {one_line(out.strip()[-600:])}"]


# --------------------------------------------------------------------- step 1: environment
def versions(device) -> dict:
    import torch
    info = {"python": platform.python_version(), "executable": sys.executable,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    props = torch.cuda.get_device_properties(device)
    free, total = torch.cuda.mem_get_info(device)
    info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                multiprocessors=props.multi_processor_count,
                gpu_memory_gib=round(total / 2 ** 30, 1), gpu_free_gib=round(free / 2 ** 30, 1))
    if shutil.which("nvidia-smi"):
        code, out, _ = run_subprocess(["nvidia-smi", "--query-gpu=driver_version",
                                       "--format=csv,noheader"], 30)
        info["driver"] = out.strip().splitlines()[0] if code == 0 and out.strip() else None
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as err:     # a broken install raises more than ImportError
        info["triton"] = f"not importable ({one_line(err)})"
    try:
        import cupy
        info["cupy"] = cupy.__version__
        info["cupy_cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cupy_cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        info["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception as err:
        info.setdefault("cupy", f"not usable ({one_line(err)})")
    sanitizer = find_sanitizer()
    info["compute_sanitizer"] = sanitizer
    if shutil.which("nvcc"):
        code, out, _ = run_subprocess(["nvcc", "--version"], 30)
        info["nvcc"] = out.strip().splitlines()[-1] if code == 0 and out.strip() else None
    try:
        import pplr_fast
        info["pplr_fast"] = os.path.dirname(pplr_fast.__file__)
        import pplr_fast._version as built
        info["cpu_kernels"] = built.build_info()
    except Exception as err:
        info["cpu_kernels"] = f"not built ({one_line(err)})"
    return info


def fallback_status(records: list[dict], caught) -> tuple[str, str] | None:
    """``(status, why)`` of a piece that did not run its own fast code, from what it left.

    ``records``: the ``pplr_fast.gpu_fallback`` records of the piece's calls
    (``drain_fallback_records``); their ``ran`` field says what ran instead: the reference
    ("fallback") or another fast piece ("substitute", e.g. DBSCAN by torch label
    propagation when CuPy cannot run). ``caught``: the warnings of the calls; a CPU op whose
    compiled kernels are missing leaves no record, only its RuntimeWarning from
    ``pplr_fast.backend`` ("falling back to the reference path"). None: the piece ran natively.
    """
    records = [r for r in records if r.get("event") == "gpu_fallback"]
    for record in sorted(records, key=lambda r: r.get("ran") != "reference"):
        status = "fallback" if record.get("ran") == "reference" else "substitute"
        ran = "" if status == "fallback" else f"; {record['ran']} ran instead"
        return status, one_line(f"{record['op']} on {record['device']}: {record['reason']}{ran}")
    from pplr_fast.gpu_fallback import GPUFallbackWarning
    for w in caught:
        message = str(w.message)
        if (not issubclass(w.category, GPUFallbackWarning) and message.startswith("pplr_fast:")
                and "falling back to the reference path" in message):
            return "fallback", one_line(message)
    return None


def probe(name: str, run) -> dict:
    """Run one piece on a small input; native / fallback / substitute / wrong / failed."""
    from pplr_fast.gpu_fallback import drain_fallback_records
    drain_fallback_records()                # the records of earlier pieces are theirs
    start = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ok, detail = run()
        except Exception as err:     # report every failure, keep going
            return {"piece": name, "status": "failed", "why": one_line(err),
                    "seconds": time.time() - start}
    fallback = fallback_status(drain_fallback_records(), caught)
    if not ok:
        status, why = "wrong", detail
    elif fallback:
        status, why = fallback
    else:
        status, why = "native", detail
    return {"piece": name, "status": status, "why": why, "seconds": time.time() - start}


def piece_probes(device):
    """Each fast piece on a small input on ``device``, against the reference on the CPU."""
    import torch
    from pplr_fast.cluster import cross_agreement, dbscan, jaccard_distance, nearest_neighbours

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 48, generator=generator)
    x = torch.nn.functional.normalize(
        centres[torch.arange(300) % 12] + 0.35 * torch.randn(300, 48, generator=generator), dim=1)
    x_p = torch.nn.functional.normalize(x[:, :, None] + 0.3 * torch.randn(300, 48, 3,
                                                                          generator=generator),
                                        dim=1)
    gx, gx_p = x.to(device), x_p.to(device)

    def cpu_kernels():
        for module in ("pplr_fast._knn", "pplr_fast._jaccard", "pplr_fast._dbscan",
                       "pplr_fast._cross_agreement"):
            __import__(module)
        return True, "C++/OpenMP extensions import"

    def triton_runs():
        import triton
        import triton.language as tl

        @triton.jit
        def add_one(x_ptr, n, BLOCK: tl.constexpr):
            offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) + 1,
                     mask=offsets < n)

        values = torch.zeros(1000, device=device)
        add_one[(triton.cdiv(1000, 256),)](values, 1000, BLOCK=256)
        return bool((values == 1).all()), f"a kernel compiled and ran (Triton {triton.__version__})"

    def cupy_nvrtc_runs():
        import cupy
        kernel = cupy.RawKernel(r'''extern "C" __global__ void twice(float* x, int n) {
            int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= 2.0f; }''', "twice")
        values = torch.ones(1000, device=device)
        with cupy.cuda.Device(values.device.index or 0):
            kernel((4,), (256,), (cupy.from_dlpack(values), cupy.int32(1000)))
        torch.cuda.synchronize(device)
        return bool((values == 2).all()), "NVRTC compiled a kernel, CuPy launched it"

    def knn():
        _, rank = nearest_neighbours(gx, 15, backend="fast")
        _, expected = nearest_neighbours(x, 15, backend="reference")
        return torch.equal(rank.cpu(), expected), "same ranks as the reference"

    def jaccard():
        sparse = jaccard_distance(gx, k1=20, k2=6, backend="fast", max_distance=0.6)
        dense = jaccard_distance(x, k1=20, k2=6, backend="reference").to_dense()
        got = sparse.to_dense().cpu()
        near = (got - dense).abs()[dense <= 0.6].max() if bool((dense <= 0.6).any()) else 0.0
        return float(near) < 1e-5, f"max |d - reference| {float(near):.1e} below the cutoff"

    def dbscan_fast():
        sparse = jaccard_distance(gx, k1=20, k2=6, backend="fast", max_distance=0.6)
        dense = jaccard_distance(x, k1=20, k2=6, backend="reference").to_dense()
        got = dbscan(sparse, 0.6, 4, backend="fast").cpu()
        expected = dbscan(dense, 0.6, 4, backend="reference")
        return torch.equal(got, expected), f"same labels as the reference ({int(got.max()) + 1} clusters)"

    def dbscan_propagation():
        from pplr_fast.cluster.dbscan_propagation import dbscan_propagation as propagate
        dense = jaccard_distance(x, k1=20, k2=6, backend="reference").to_dense()
        rows, cols = torch.nonzero(dense <= 0.6, as_tuple=True)
        crow = torch.zeros(301, dtype=torch.int64)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=300), 0)
        got, rounds = propagate(crow.to(device), cols.to(device), 4, return_rounds=True)
        expected = dbscan(dense, 0.6, 4, backend="reference")
        return torch.equal(got.cpu(), expected), f"same labels as the reference, {rounds} rounds"

    def agreement():
        got = cross_agreement(gx, gx_p, k=10, backend="fast").cpu()
        expected = cross_agreement(x, x_p, k=10, backend="reference")
        return torch.equal(got, expected), "bit-identical scores"

    def fused_loss():
        from pplr_fast.losses import pplr_classification_loss
        logits_g = torch.randn(16, 300, generator=generator) * 3
        logits_p = torch.randn(16, 300, 3, generator=generator) * 3
        targets = torch.randint(0, 300, (16,), generator=generator)
        scores = torch.rand(16, 3, generator=generator)
        from pplr_fast.losses import pplr_classification_loss_fused
        got = pplr_classification_loss_fused(logits_g.to(device), logits_p.to(device),
                                             targets.to(device), scores.to(device), use_aals=True)
        want = pplr_classification_loss(logits_g, logits_p, targets, scores, use_aals=True,
                                        backend="reference")
        error = max(float((g.cpu() - w).abs().max()) for g, w in zip(got, want))
        return error < 1e-4, f"Triton kernels; max |loss - reference| {error:.1e}"

    def re_ranking():
        from pplr_fast.rerank import re_rank_features
        got = re_rank_features(gx[:60], gx[60:], k1=20, k2=6).cpu()
        want = torch.from_numpy(re_rank_features(x[:60].numpy(), x[60:].numpy(), k1=20, k2=6))
        error = float((got - want).abs().max())
        return error < 1e-5, f"device path against the CPU kernels; max |difference| {error:.1e}"

    pieces = [("CPU kernels (C++/OpenMP)", cpu_kernels)]
    if device.type == "cuda":
        pieces += [("Triton on the GPU", triton_runs), ("CuPy + NVRTC", cupy_nvrtc_runs)]
    pieces += [("kNN (fast)", knn), ("Jaccard (fast)", jaccard), ("DBSCAN (fast)", dbscan_fast),
               ("DBSCAN by label propagation", dbscan_propagation),
               ("cross-agreement (fast)", agreement), ("re-ranking", re_ranking)]
    if device.type == "cuda":
        pieces.append(("fused classification loss", fused_loss))
    for name, run in pieces:                    # one at a time: each is printed when done
        yield probe(name, run)


# --------------------------------------------------------------------- step 4: the stage
def stage_function():
    """run_cluster_stage from its public home (pplr_fast.cluster, or its stage module)."""
    try:
        from pplr_fast.cluster import run_cluster_stage
    except ImportError:
        from pplr_fast.cluster.stage import run_cluster_stage
    return run_cluster_stage


def make_features(n: int, dim: int, parts: int = 3, seed: int = 0):
    sys.path.insert(0, BENCHMARKS)
    from features import identity_features
    x_g, x_p, _ = identity_features(n, dim, parts, seed=seed)
    return x_g, x_p


def jaccard_snapshot(x_g, device):
    """(crow, col, val) of the fast Jaccard of x_g, for a bit-for-bit comparison."""
    from pplr_fast.cluster import jaccard_distance
    sparse = jaccard_distance(x_g, k1=STAGE_ARGS["k1"], k2=STAGE_ARGS["k2"], backend="fast",
                              max_distance=STAGE_ARGS["eps"])
    return tuple(t.clone() for t in (sparse.crow, sparse.col, sparse.val))


def stage_benchmark(device, n: int, dim: int, repeat: int, cpu_compare: bool) -> dict:
    import torch

    from pplr_fast.pseudo_label_quality import adjusted_rand_index
    from pplr_fast.utils.timing import synchronize
    run_cluster_stage = stage_function()
    start = time.time()
    x_g, x_p = make_features(n, dim)
    result = {"n": n, "dim": dim, "parts": 3, "features_s": time.time() - start,
              **{k: v for k, v in STAGE_ARGS.items()}}
    gx_g, gx_p = x_g.to(device), x_p.to(device)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.time()
    warm = run_cluster_stage(gx_g, gx_p, backend="fast", **STAGE_ARGS)
    synchronize(device)
    result["warmup_s"] = time.time() - start
    result["backend"] = warm.backend
    runs = []
    for _ in range(repeat):
        runs.append(run_cluster_stage(gx_g, gx_p, backend="fast", **STAGE_ARGS))
    if device.type == "cuda":
        result["peak_gpu_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    result["timings"] = {stage: statistics.median(r.timings.get(stage, 0.0) for r in runs)
                         for stage in (*stage_names(), "total")}
    result["total_runs_s"] = [r.timings["total"] for r in runs]
    result["clusters"], result["outliers"] = runs[0].num_clusters, runs[0].num_outliers
    labels, scores = runs[0].labels.cpu(), runs[0].scores.cpu()
    result["runs_bit_identical"] = all(torch.equal(r.labels.cpu(), labels) and
                                       torch.equal(r.scores.cpu(), scores) for r in runs[1:]) \
        and torch.equal(warm.labels.cpu(), labels)
    first, second = jaccard_snapshot(gx_g, device), jaccard_snapshot(gx_g, device)
    result["jaccard_bit_identical"] = all(torch.equal(a, b) for a, b in zip(first, second))
    result["jaccard_nnz"] = int(first[1].numel())
    if cpu_compare:
        start = time.time()
        cpu = run_cluster_stage(x_g, x_p, backend="fast", **STAGE_ARGS)
        result["cpu_backend"], result["cpu_total_s"] = cpu.backend, time.time() - start
        result["labels_equal_cpu"] = bool(torch.equal(cpu.labels, labels))
        result["labels_differing"] = int((cpu.labels != labels).sum())
        result["ari_vs_cpu"] = adjusted_rand_index(cpu.labels.numpy(), labels.numpy())
        result["scores_equal_cpu"] = bool(torch.equal(cpu.scores, scores))
        result["scores_max_diff"] = float((cpu.scores - scores).abs().max()) if n else 0.0
    return result


# --------------------------------------------------------------------- workers (subprocesses)
def worker(kind: str, args) -> None:
    """A step that runs in its own process: under compute-sanitizer, or with a timeout."""
    import torch

    from pplr_fast.utils.timing import synchronize
    device = torch.device(args.device)
    if kind == "pieces":
        for piece in piece_probes(device):
            print(RESULT_MARK + json.dumps(piece), flush=True)
    elif kind == "sanitize-stage":
        from pplr_fast.cluster.dbscan_propagation import dbscan_propagation
        x_g, x_p = make_features(400, 64)
        out = stage_function()(x_g.to(device), x_p.to(device), backend="fast", **STAGE_ARGS)
        crow = torch.tensor([0, 2, 4, 5], device=device)
        dbscan_propagation(crow, torch.tensor([0, 1, 0, 1, 2], device=device), 2)
        synchronize(device)
        print(RESULT_MARK + json.dumps({"clusters": out.num_clusters, "backend": out.backend}))
    elif kind == "sanitize-loss":
        from pplr_fast.losses import pplr_classification_loss_fused
        generator = torch.Generator().manual_seed(0)
        logits_g = (torch.randn(16, 500, generator=generator) * 3).to(device).requires_grad_()
        logits_p = (torch.randn(16, 500, 3, generator=generator) * 3).to(device).requires_grad_()
        targets = torch.randint(0, 500, (16,), generator=generator).to(device)
        scores = torch.rand(16, 3, generator=generator).to(device)
        for use_aals in (True, False):
            loss_g, loss_p = pplr_classification_loss_fused(logits_g, logits_p, targets, scores,
                                                            use_aals=use_aals)
            (loss_g + loss_p).backward()
        synchronize(device)
        print(RESULT_MARK + json.dumps({"loss": float(loss_g)}))
    elif kind == "stage":
        result = stage_benchmark(device, args.n, args.dim, args.repeat, cpu_compare=True)
        print(RESULT_MARK + json.dumps(result))
    elif kind == "scaling":
        run_cluster_stage = stage_function()
        warm_g, warm_p = make_features(2000, args.scaling_dim)
        run_cluster_stage(warm_g.to(device), warm_p.to(device), backend="fast", **STAGE_ARGS)
        x_g, x_p = make_features(args.scaling_n, args.scaling_dim)
        gx_g, gx_p = x_g.to(device), x_p.to(device)
        del x_g, x_p
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        out = run_cluster_stage(gx_g, gx_p, backend="fast", **STAGE_ARGS)
        peak = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else None
        print(RESULT_MARK + json.dumps({"n": args.scaling_n, "dim": args.scaling_dim,
                                        "timings": out.timings, "backend": out.backend,
                                        "clusters": out.num_clusters, "peak_bytes": peak}))
    else:
        raise SystemExit(f"unknown worker {kind!r}")


def worker_command(kind: str, args, **extra) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--device", args.device]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command


# --------------------------------------------------------------------- the report
class Report:
    """Prints each step as it runs and keeps everything for the .md/.json files."""

    def __init__(self, part: int | None):
        self.part = part
        self.steps: list[dict] = []
        self.data: dict = {}
        self.targets: list[tuple[str, str]] = []

    def begin(self, number: int, title: str, budget: float | None) -> dict:
        step = {"number": number, "title": title, "budget_s": budget, "lines": [],
                "start": time.time(), "status": "ran"}
        budget_text = f" (budget {budget:.0f} s)" if budget is not None else ""
        print(f"\n== {number}. {title}{budget_text} ==", flush=True)
        self.steps.append(step)
        return step

    def line(self, step: dict, text: str) -> None:
        step["lines"].append(text)
        print(f"   {text}", flush=True)

    def skip(self, step: dict, why: str) -> None:
        step["status"] = "skipped"
        self.line(step, f"skipped: {why}")

    def end(self, step: dict) -> None:
        step["seconds"] = time.time() - step.pop("start")
        print(f"   ({step['seconds']:.1f} s)", flush=True)

    def markdown(self) -> str:
        command = "python benchmarks/gpu_check.py" + (f" --part {self.part}" if self.part else "")
        lines = ["# GPU check", "", f"Command: `{command}` "
                 f"({self.data.get('total_s', 0):.0f} s in all).", ""]
        for step in self.steps:
            lines += [f"## {step['number']}. {step['title']}", "", "```"] + step["lines"] + \
                     ["```", ""]
        if self.targets:
            lines += ["Targets (rewritten after every step: a target of a step not run yet is "
                      "'not measured'):", "", "| target | verdict |", "|---|---|"]
            lines += [f"| {target} | {result} |" for target, result in self.targets]
            lines.append("")
        return "\n".join(lines)


def fmt_s(value: float | None) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.1f}")


def plot(path: str, stage: dict | None, scaling: dict | None) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    if stage and "timings" in stage:
        axes[0].barh(list(stage_names()), [stage["timings"][s] for s in stage_names()],
                     color="tab:blue")
        axes[0].set_xlabel("seconds (median of the timed runs)")
        axes[0].set_title(f"stage times, N={stage['n']:,}, D={stage['dim']}")
    if scaling and scaling.get("points"):
        points = scaling["points"]
        ns = [p["n"] for p in points]
        axes[1].loglog(ns, [p["timings"]["total"] for p in points], "o-", label="measured")
        if scaling.get("extrapolated"):
            ext = scaling["extrapolated"]
            axes[1].loglog([ns[-1], ext["n"]], [points[-1]["timings"]["total"], ext["total"]],
                           "s--", label="extrapolated")
        axes[1].axhline(TARGET_1M_S, color="tab:red", lw=0.8, label=f"{TARGET_1M_S:.0f} s target")
        axes[1].set_xlabel("N")
        axes[1].set_ylabel("whole stage (s)")
        axes[1].set_title(f"scaling, D={points[-1]['dim']}")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# --------------------------------------------------------------------- the steps
class Check:
    """What every step of one part reads and writes: settings, budget, report, results."""

    def __init__(self, args, part: int | None, steps: list[str], simulated: bool, start: float,
                 install_lines: list[str]):
        import torch
        self.args, self.part, self.steps, self.simulated = args, part, steps, simulated
        self.device = torch.device(args.device)
        self.budget = Budget(args.budget * (len(PARTS) if part is None else 1), start)
        self.report = Report(part)
        self.data = self.report.data
        self.install_lines = install_lines

    def step_budget(self, name: str) -> float:
        return self.budget.for_step(name, len(self.steps) - self.steps.index(name) - 1)

    def left(self, step: dict) -> float:
        """Seconds left of this step's budget."""
        return step["budget_s"] - (time.time() - step["start"])

    def stem(self) -> str:
        name = "gpu_check_cpu-simulated" if self.simulated else "gpu_check_cuda"
        return os.path.join(self.args.out, name + (f"_part{self.part}" if self.part else ""))


def environment_step(check: Check, step: dict) -> None:
    """Versions, and each fast piece on a small input: native, fallback, substitute, wrong."""
    report, data = check.report, check.data
    for line in check.install_lines:
        report.line(step, line)
    info = {} if check.simulated else versions(check.device)
    data["environment"] = info
    for key, value in info.items():
        report.line(step, f"{key}: {value}")
    if info.get("torch_cuda") and isinstance(info.get("cupy_cuda_runtime"), int):
        cupy_major = info["cupy_cuda_runtime"] // 1000
        if str(cupy_major) != info["torch_cuda"].split(".")[0]:
            report.line(step, f"WARNING: CuPy is built for CUDA {cupy_major}, torch for "
                              f"{info['torch_cuda']}: install cupy-cuda{info['torch_cuda'].split('.')[0]}x")
    data["pieces"] = pieces = []

    def piece_done(line: str) -> None:
        piece = result_of_line(line)
        if piece is not None:
            pieces.append(piece)
            report.line(step, f"{piece['piece']:<28}  {piece['status']:<10}  {piece['why']}")

    code, out, seconds = run_subprocess(worker_command("pieces", check.args),
                                        max(MIN_STEP_S, check.left(step)), on_line=piece_done)
    if code != 0:
        why = f"stopped at its budget ({seconds:.0f} s)" if code is None else f"exit {code}"
        raise RuntimeError(f"the piece probes stopped after {len(pieces)} pieces ({why}): "
                           f"{one_line(out.strip()[-1200:], limit=1200)}")


def tests_step(check: Check, step: dict) -> None:
    """The test files that take the ``device`` fixture, on the GPU, each result as it comes."""
    report, data = check.report, check.data
    if check.simulated:
        return report.skip(step, "simulated run on the CPU")
    files = gpu_test_files(os.path.join(REPO, "tests"))
    options = ["-v", "-rfE", "-p", "no:cacheprovider"]
    import importlib.util
    if importlib.util.find_spec("xdist") is not None:
        options += ["-n", "4"]                  # the cold Triton compiles run side by side
    if importlib.util.find_spec("pytest_timeout") is not None:
        options += ["--timeout", "60"]          # one stuck test costs a minute, not the step
    command = [sys.executable, "-m", "pytest", *options, *files]
    report.line(step, "PPLR_TEST_GPU=1 pytest " + " ".join(options) + " "
                + " ".join(os.path.relpath(f, REPO) for f in files))
    counts: dict[str, int] = {}

    def test_done(line: str) -> None:
        outcome = test_outcome(line)
        if outcome is None:
            return
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome in ("failed", "error"):
            report.line(step, line[:300])

    code, out, seconds = run_subprocess(command, check.left(step), env={"PPLR_TEST_GPU": "1"},
                                        on_line=test_done)
    summary = pytest_summary(out)
    data["tests"] = {"files": [os.path.relpath(f, REPO) for f in files], "exit": code,
                     "seconds": seconds, **summary}
    if code is None:
        step["status"] = "timeout"
        report.line(step, f"stopped at its budget ({seconds:.0f} s); the tests so far: {counts}")
    report.line(step, f"result: {summary['counts'] or 'no summary line'} (exit {code})")
    for failure in summary["failures"][:25]:
        report.line(step, failure[:300])
    if code not in (0, None) and not summary["counts"]:
        report.line(step, one_line(out.strip()[-1500:], limit=1500))


def stage_step(check: Check, step: dict) -> None:
    """The clustering stage at N = 12,936, D = 2048: timed, against the CPU and itself."""
    report, args = check.report, check.args
    command = worker_command("stage", args, n=args.n, dim=args.dim, repeat=args.repeat)
    code, out, seconds = run_subprocess(command, check.left(step))
    stage = worker_result(out)
    if stage is None:
        step["status"] = "failed"
        why = f"stopped at its budget ({seconds:.0f} s)" if code is None else f"exit {code}"
        return report.line(step, f"no result: {why}: {one_line(out.strip()[-1200:], limit=1200)}")
    check.data["stage"] = stage
    report.line(step, f"backend {stage['backend']}; features {stage['features_s']:.1f} s; "
                      f"warm-up (compiles) {stage['warmup_s']:.2f} s")
    for name in (*stage_names(), "total"):
        report.line(step, f"{name:<16} {fmt_s(stage['timings'][name]):>8} s")
    report.line(step, "timed runs (total): " + ", ".join(fmt_s(t) for t in stage["total_runs_s"]))
    if "peak_gpu_mib" in stage:
        report.line(step, f"peak GPU memory beyond the features: {stage['peak_gpu_mib']:.0f} MiB")
    report.line(step, f"{stage['clusters']} clusters, {stage['outliers']} outliers; "
                      f"runs bit-identical: {stage['runs_bit_identical']}; Jaccard "
                      f"values bit-identical over two runs: {stage['jaccard_bit_identical']}"
                      f" ({stage['jaccard_nnz']:,} stored pairs)")
    report.line(step, f"vs the CPU fast path ({stage['cpu_backend']}, "
                      f"{stage['cpu_total_s']:.1f} s): labels identical "
                      f"{stage['labels_equal_cpu']} ({stage['labels_differing']} differ, "
                      f"ARI {stage['ari_vs_cpu']:.6f}); scores identical "
                      f"{stage['scores_equal_cpu']} (max diff {stage['scores_max_diff']:.2e})")


def scaling_step(check: Check, step: dict) -> None:
    """The stage at N = 250,000, D = 256, extrapolated to N = 1,000,000."""
    report, args = check.report, check.args
    scaling = check.data["scaling"] = {"points": []}
    for index, n in enumerate(args.scaling):
        remaining = check.left(step)
        if index < len(args.scaling) - 1:     # the smaller sizes get a share
            remaining = min(remaining, step["budget_s"] * 0.3)
        if remaining < MIN_STEP_S:
            report.line(step, f"N={n:,}: skipped: the step's budget is spent")
            continue
        command = worker_command("scaling", args, scaling_n=n, scaling_dim=args.scaling_dim)
        code, out, seconds = run_subprocess(command, remaining)
        point = worker_result(out)
        if point is None:
            why = "stopped at its budget" if code is None else f"exit {code}"
            report.line(step, f"N={n:,}: no result ({why}, {seconds:.0f} s; the stage takes "
                              f"longer than that): {one_line(out.strip()[-400:], limit=400)}")
            scaling.setdefault("failed", []).append({"n": n, "seconds": seconds,
                                                     "timeout": code is None})
            continue
        scaling["points"].append(point)
        peak = f", peak GPU {point['peak_bytes'] / 2 ** 30:.2f} GiB" if point["peak_bytes"] else ""
        report.line(step, f"N={n:,}: whole stage {fmt_s(point['timings']['total'])} s ("
                    + ", ".join(f"{s} {fmt_s(point['timings'].get(s))}" for s in stage_names())
                    + f"){peak}")
    points = scaling["points"]
    if points and points[-1]["n"] == args.scaling[-1]:
        small = points[0] if len(points) > 1 else None
        ext = extrapolate(small, points[-1], small["n"] if small else None, points[-1]["n"],
                          1_000_000)
        scaling["extrapolated"] = ext
        how = "each stage's exponent measured between the two sizes" if small else \
            "one size measured: the kNN taken as exactly quadratic, the other stages as linear"
        report.line(step, f"extrapolated to N=1,000,000: {fmt_s(ext['total'])} s ({how}: "
                    + ", ".join(f"{s} x^{e:.2f}" for s, e in ext["exponents"].items()) + ")")
        if small and small.get("peak_bytes") and points[-1].get("peak_bytes"):
            scaling["memory_exponent"] = math.log(points[-1]["peak_bytes"] / small["peak_bytes"]) \
                / math.log(points[-1]["n"] / small["n"])
            report.line(step, f"peak GPU memory grows as N^{scaling['memory_exponent']:.2f} "
                              "(O(N·k) is N^1)")


def _benchmark_script_step(check: Check, step: dict, key: str, command: list[str]) -> None:
    """Run one benchmark script, passing on each table row and note as it prints it."""
    report = check.report
    if check.simulated:
        return report.skip(step, "simulated run on the CPU")

    def table_line(line: str) -> None:
        if line.startswith(("|", "wrote", "  ")):
            report.line(step, line.strip() if line.startswith("  ") else line)

    code, out, seconds = run_subprocess(command, check.left(step), on_line=table_line)
    check.data[key] = {"exit": code, "seconds": seconds}
    if code != 0:
        step["status"] = "failed"
        report.line(step, f"{'stopped at its budget' if code is None else f'exit {code}'} "
                          f"({seconds:.0f} s): {one_line(out.strip()[-800:], limit=800)}")


def training_step(check: Check, step: dict) -> None:
    """One PPLR training step (ResNet-50, 384x128, batch 64) per backend, on the GPU."""
    _benchmark_script_step(check, step, "training", [
        sys.executable, os.path.join(BENCHMARKS, "train_step.py"), "--device", "cuda",
        "--methods", "pplr", "--repeat", "5", "--warmup", "2", "--out", check.args.out])


def losses_step(check: Check, step: dict) -> None:
    """The fused-loss benchmark, the fused variant first (the one only a GPU measures)."""
    _benchmark_script_step(check, step, "losses", [
        sys.executable, os.path.join(BENCHMARKS, "losses.py"), "--device", "cuda",
        "--variants", "fused", "eager", "compile", "--c", "500", "20000", "--repeat", "30",
        "--out", check.args.out])


def sanitizer_step(check: Check, step: dict) -> None:
    """compute-sanitizer memcheck of a small stage and of the fused loss."""
    report, data, args = check.report, check.data, check.args
    sanitizer = None if check.simulated else find_sanitizer()
    if sanitizer is None:
        return report.skip(step, "compute-sanitizer not found (PATH, /usr/local/cuda/bin)"
                           if not check.simulated else "simulated run on the CPU")
    data["sanitizer"] = {}
    for kind, what in (("sanitize-stage", "clustering stage N=400, D=64 (+ label propagation)"),
                       ("sanitize-loss", "fused loss forward+backward, B=16, C=500")):
        timeout = min(step["budget_s"] / 2, check.left(step))
        if timeout < MIN_STEP_S:
            report.skip(step, f"{what}: the check's overall budget is spent")
            continue
        command = [sanitizer, "--tool", "memcheck", "--leak-check", "no", "--print-limit", "20",
                   *worker_command(kind, args)]
        code, out, seconds = run_subprocess(command, timeout,
                                            env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        errors = sanitizer_summary(out)
        ran = worker_result(out) is not None
        data["sanitizer"][kind] = {"errors": errors, "exit": code, "seconds": seconds,
                                   "completed": ran}
        if code is None:
            report.line(step, f"{what}: stopped at its budget ({seconds:.0f} s)")
        elif errors is None or not ran:
            report.line(step, f"{what}: the tool or the program failed (exit {code}): "
                              f"{one_line(out.strip()[-800:], limit=800)}")
        else:
            report.line(step, f"{what}: {errors} errors ({seconds:.0f} s)")
            if errors:
                for line in [text for text in out.splitlines() if "=========" in text][:20]:
                    report.line(step, line[:240])


# name -> (title, function); PARTS: the steps of each part, in order. Each part fits one call
# of at most 5 minutes on a cold Triton cache.
STEPS = {
    "environment": ("environment and piece probes", environment_step),
    "tests": ("GPU tests (PPLR_TEST_GPU=1)", tests_step),
    "stage": ("clustering stage N={n:,}, D={dim}, N_p=3", stage_step),
    "scaling": ("scaling probe D={scaling_dim}: N = {scaling_sizes}", scaling_step),
    "training": ("training step (benchmarks/train_step.py --device cuda)", training_step),
    "losses": ("fused-loss benchmark (benchmarks/losses.py --device cuda), fused first",
               losses_step),
    "sanitizer": ("compute-sanitizer memcheck", sanitizer_step),
}
PARTS = {1: ["environment", "tests", "stage"], 2: ["scaling", "training", "losses", "sanitizer"]}


def targets(check: Check) -> list[tuple[str, str]]:
    """(target, verdict) of every target of the steps of this run, from what is measured yet."""
    data, args = check.data, check.args
    stage, pieces, tests = data.get("stage", {}), data.get("pieces", []), data.get("tests")
    san, scaling = data.get("sanitizer"), data.get("scaling", {})
    ext = scaling.get("extrapolated")
    scaling_timeout = [f for f in scaling.get("failed", []) if f["n"] == args.scaling[-1]]
    rows = [
        ("environment", "every fast piece runs natively on the GPU (no fallback, no substitute)",
         "not measured" if not pieces else
         ("met" if all(p["status"] == "native" for p in pieces) else
          "missed: " + ", ".join(f"{p['piece']} {p['status']}" for p in pieces
                                 if p["status"] != "native"))),
        ("tests", "GPU tests pass",
         "not measured" if not tests or not tests["counts"] else
         ("met" if tests["exit"] == 0 else f"missed: {tests['counts']}")),
        ("stage", f"N={args.n:,}, D={args.dim}: whole stage under {TARGET_SMALL_S} s",
         verdict(stage.get("timings", {}).get("total"), TARGET_SMALL_S)
         + (f" ({fmt_s(stage['timings']['total'])} s)" if stage.get("timings") else "")),
        ("stage", "same pseudo-labels as the CPU fast path",
         "not measured" if "labels_equal_cpu" not in stage else
         ("met" if stage["labels_equal_cpu"] else
          f"missed ({stage['labels_differing']} labels differ, ARI {stage['ari_vs_cpu']:.6f})")),
        ("stage", "two GPU runs bit for bit (labels, scores, Jaccard values)",
         "not measured" if "runs_bit_identical" not in stage else
         ("met" if stage["runs_bit_identical"] and stage["jaccard_bit_identical"] else "missed")),
        ("scaling", "N=1,000,000, D=256: whole stage under 30 s (extrapolated)",
         (verdict(ext["total"], TARGET_1M_S) + f" ({fmt_s(ext['total'])} s)") if ext else
         (f"missed (N={args.scaling[-1]:,} alone ran past its budget)" if scaling_timeout and
          scaling_timeout[0]["timeout"] else "not measured")),
        ("scaling", "O(N·k) GPU memory (growth exponent <= 1.3 between the probe sizes)",
         "not measured" if "memory_exponent" not in scaling else
         ("met" if scaling["memory_exponent"] <= 1.3 else "missed")
         + f" (N^{scaling.get('memory_exponent', 0):.2f})"),
        ("sanitizer", "compute-sanitizer memcheck clean",
         "not measured" if not san or any(v["errors"] is None for v in san.values()) else
         ("met" if all(v["errors"] == 0 for v in san.values()) else "missed")),
    ]
    chosen = [(target, result) for name, target, result in rows if name in check.steps]
    elapsed = check.budget.elapsed()
    limit = PART_LIMIT_S * (len(PARTS) if check.part is None else 1)
    what = "this part" if check.part else "the check"
    chosen.append((f"{what} under {limit / 60:.0f} minutes",
                   verdict(elapsed, limit) + f" ({elapsed:.0f} s)"))
    return chosen


def write_results(check: Check, final: bool = False) -> None:
    """Rewrite the .md/.json files (and, at the end, the .png) with everything so far."""
    check.data["total_s"] = check.budget.elapsed()
    check.report.targets = targets(check)
    check.data["targets"] = [{"target": t, "verdict": v} for t, v in check.report.targets]
    check.data["steps"] = [{k: v for k, v in s.items() if k != "start"}
                           for s in check.report.steps]
    os.makedirs(check.args.out, exist_ok=True)
    stem = check.stem()
    with open(stem + ".json", "w") as handle:
        json.dump(check.data, handle, indent=2, default=str)
    with open(stem + ".md", "w") as handle:
        handle.write(check.report.markdown())
    if final:
        drawn = plot(stem + ".png", check.data.get("stage"), check.data.get("scaling"))
        print(f"\nwrote {stem}.md, {stem}.json" + (f", {stem}.png" if drawn else ""), flush=True)


def run_steps(check: Check) -> None:
    """Every step of ``check`` in order, the results files rewritten after each, then targets."""
    args, report = check.args, check.report
    titles = {"n": args.n, "dim": args.dim, "scaling_dim": args.scaling_dim,
              "scaling_sizes": ", ".join(f"{n:,}" for n in args.scaling)}
    if check.part:
        print(f"gpu_check part {check.part} of {len(PARTS)}: " + ", ".join(check.steps),
              flush=True)
    for number, name in enumerate(check.steps, 1):
        title, function = STEPS[name]
        step = report.begin(number, title.format(**titles), check.step_budget(name))
        if name in args.skip:
            report.skip(step, f"left out (--skip {name})")
        elif step["budget_s"] < MIN_STEP_S:
            report.skip(step, "the check's overall budget is spent")
        else:
            try:
                function(check, step)
            except Exception as err:     # a failed step is a result; go on
                step["status"] = "failed"
                report.line(step, f"failed: {one_line(err, limit=1500)}")
        report.end(step)
        write_results(check)
    step = report.begin(len(check.steps) + 1, "targets", None)
    check.report.targets = targets(check)
    for target, result in check.report.targets:
        word = "not measured" if result.startswith("not measured") else \
            result.split()[0].rstrip(":")
        detail = result[len(word):].lstrip(": ")
        if detail:
            detail = f" {detail}" if detail.startswith("(") else f": {detail}"
        report.line(step, f"{word:<13} {target}{detail}")
    report.end(step)
    write_results(check, final=True)


# --------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", type=int, choices=sorted(PARTS),
                        help="run one part: 1 = environment, piece probes, GPU tests, the "
                             "clustering stage; 2 = scaling probe, training step, fused loss, "
                             "memcheck (default: both, one after the other)")
    parser.add_argument("--out", default=os.path.join(BENCHMARKS, "results"))
    parser.add_argument("--budget", type=float, default=PART_BUDGET_S,
                        help=f"seconds per part (default {PART_BUDGET_S:.0f}: a part stays "
                             f"under {PART_LIMIT_S / 60:.0f} minutes)")
    parser.add_argument("--no-install", action="store_true",
                        help="never run the offline install, even when pplr_fast is not installed")
    parser.add_argument("--n", type=int, default=12936, help="stage benchmark N")
    parser.add_argument("--dim", type=int, default=2048, help="stage benchmark D")
    parser.add_argument("--repeat", type=int, default=3, help="timed stage runs after the warm-up")
    parser.add_argument("--scaling", type=int, nargs="+", default=[250000],
                        help="scaling probe sizes (the last is extrapolated to 1M)")
    parser.add_argument("--scaling-dim", type=int, default=256)
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(STEPS),
                        help="steps to leave out")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scaling-n", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args)
        return 0
    start = float(os.environ.get("GPU_CHECK_START", time.time()))
    import torch
    simulated = args.device == "cpu"          # a dry run of the whole flow on CPU tensors
    if not simulated and not torch.cuda.is_available():
        what = f"part {args.part}" if args.part else "the check"
        print(f"gpu_check ({what}): no GPU here (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda or 'none'}; torch.cuda.is_available() is False): nothing to "
              "check. Run this on a machine with an NVIDIA GPU.")
        return 0
    install_lines = json.loads(os.environ.get("GPU_CHECK_INSTALL", "[]"))
    if not args.no_install and not simulated:
        problem = installed_here()
        if problem:
            print(f"gpu_check: {problem}; installing offline first", flush=True)
            install_lines = [problem] + install_offline(240)
            for line in install_lines[1:]:
                print(f"   {line}", flush=True)
            env = {**os.environ, "GPU_CHECK_START": str(start),
                   "GPU_CHECK_INSTALL": json.dumps(install_lines)}
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__),
                                       *(argv if argv is not None else sys.argv[1:]),
                                       "--no-install"], env)
    steps = PARTS[args.part] if args.part else [name for part in sorted(PARTS)
                                                for name in PARTS[part]]
    run_steps(Check(args, args.part, steps, simulated, start, install_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
