"""The GPU toolchain of the clustering kernels, without a GPU.

The kernels' results are tested with every other implementation in the
per-op files (test_cluster_knn.py, _jaccard.py, _dbscan.py,
_cross_agreement.py: the Triton kernels through the interpreter, the CUDA C
DBSCAN on a host emulation). Here: every Triton kernel is compiled ahead of
time to sm_90/sm_80 cubins to catch what the interpreter lets through,
``nvcc`` checks the CUDA C source compiles for real GPUs, and a machine
without CuPy or a GPU gets one line with the fix and the reference fallback.
"""
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import triton

from pplr_fast import backend
from pplr_fast.cluster.fast_cuda import cupy_problem

REPO = Path(__file__).resolve().parents[1]
DBSCAN_CU = REPO / "csrc" / "cuda" / "dbscan_cuda.cu"


TRITON_AOT_SCRIPT = """
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pplr_fast.kernels import cross_agreement, jaccard, knn, pair_distance

def expansion(k1):
    l1, lh = triton.next_power_of_2(k1), triton.next_power_of_2(round(k1 / 2) + 1)
    return dict(BLOCK_L1=l1, BLOCK_LH=lh, CAND_CHUNK=jaccard.expansion_candidate_chunk(l1, lh),
                MEMBER_CHUNK=jaccard.MEMBER_CHUNK)

def softmax_block(k1):     # the longest E(i): R(i, k1) and k1 sets R(c, h)
    return triton.next_power_of_2(k1 + k1 * (round(k1 / 2) + 1))

KERNELS = [  # (label, kernel, types of the runtime arguments, constexprs, num_warps)
    ("pair distance D>=128", pair_distance._pair_sq_distance_kernel,
     "*fp32 *i64 *i64 *fp64 i32 i32 i32 i32", dict(zip(("BLOCK_P", "BLOCK_D"),
                                                       pair_distance.block_sizes(2048)),
                                                   DIFFERENCE=False), 4),
    ("pair distance D=16", pair_distance._pair_sq_distance_kernel,
     "*fp32 *i64 *i64 *fp64 i32 i32 i32 i32", dict(zip(("BLOCK_P", "BLOCK_D"),
                                                       pair_distance.block_sizes(16)),
                                                   DIFFERENCE=False), 4),
    ("segment sums", jaccard._segment_sum_kernel, "*i64 *fp32 *fp32 i32",
     dict(BLOCK=jaccard.SEGMENT_BLOCK), 4),
    ("segment sums fp64", jaccard._segment_sum_kernel, "*i64 *fp32 *fp64 i32",
     dict(BLOCK=jaccard.SEGMENT_BLOCK), 4),
    ("pair difference fp32 D>=128", pair_distance._pair_sq_distance_kernel,
     "*fp32 *i64 *i64 *fp64 i32 i32 i32 i32", dict(zip(("BLOCK_P", "BLOCK_D"),
                                                       pair_distance.block_sizes(2048)),
                                                   DIFFERENCE=True), 4),
    ("pair difference fp64 D=16", pair_distance._pair_sq_distance_kernel,
     "*fp64 *i64 *i64 *fp64 i32 i32 i32 i32", dict(zip(("BLOCK_P", "BLOCK_D"),
                                                       pair_distance.block_sizes(16)),
                                                   DIFFERENCE=True), 4),
    ("cross agreement k=20", cross_agreement._cross_agreement_kernel,
     "*i64 *i64 *fp32 i32 i32 i32 i32 i32", dict(BLOCK_K=32), cross_agreement.compare_warps(32)),
    ("cross agreement k=64", cross_agreement._cross_agreement_kernel,
     "*i64 *i64 *fp32 i32 i32 i32 i32 i32", dict(BLOCK_K=128),
     cross_agreement.compare_warps(128)),
]
for k1 in (30, 64):
    KERNELS += [
        (f"reciprocal mask k1={k1}", jaccard._reciprocal_mask_kernel, "*i64 *i8 i32 i32 i32",
         dict(BLOCK_L=triton.next_power_of_2(k1)), 4),
        (f"expansion k1={k1}", jaccard._expansion_kernel,
         "*i64 *i8 *i8 *i32 i32 i32 i32 i32 i32 i32", expansion(k1), 4),
        (f"row softmax k1={k1}", jaccard._row_softmax_kernel, "*fp64 *i64 *fp64",
         dict(BLOCK=softmax_block(k1)), jaccard.softmax_warps(softmax_block(k1))),
    ]
for dim in (256, 2048):
    KERNELS.append((f"kNN filter D={dim}", knn._knn_filter_kernel,
                    "*fp16 *fp64 *fp32 *i32 *i32 *i8 i32 i32 i32 i32 i32",
                    dict(BLOCK_M=knn.BLOCK_M, BLOCK_N=knn.BLOCK_N,
                         BLOCK_K=min(knn.MAX_BLOCK_K, dim), CAP=knn.list_capacity(30),
                         CHUNK=knn.COMPACT_CHUNK, BISECT_STEPS=knn.BISECT_STEPS),
                    knn.FILTER_WARPS))
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
for label, kernel, types, constexprs, num_warps in KERNELS:
    runtime = [name for name in kernel.arg_names if name not in constexprs]
    signature = dict(zip(runtime, types.split()))
    signature.update({name: "constexpr" for name in constexprs})
    compiled = triton.compile(ASTSource(kernel, signature, constexprs),
                              target=GPUTarget("cuda", int(sys.argv[1]), 32),
                              options=dict(enable_fp_fusion=True, num_warps=num_warps))
    assert compiled.asm["cubin"], label
    if not os.path.exists(tool):
        continue
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
    regs, stack = (int(re.search(name + r":(\\d+)", usage).group(1)) for name in ("REG", "STACK"))
    print(f"RESOURCES {label}: {regs} registers, {stack} bytes of stack")
"""


def triton_aot_resources(arch, tmp_path):
    """Compile every Triton kernel for sm_<arch>: {label: (registers, stack bytes)} (cuobjdump)."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this Triton build has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", TRITON_AOT_SCRIPT, str(arch)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    resources = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESOURCES "):
            label, numbers = line[len("RESOURCES "):].split(": ")
            regs, stack = (int(word) for word in numbers.split() if word.isdigit())
            resources[label] = (regs, stack)
    return resources


@pytest.mark.parametrize("arch", [90, 80])
def test_triton_kernels_compile_for_gpus(arch, tmp_path):
    """Every Triton kernel lowers to a cubin (Triton's bundled ptxas), no GPU needed.

    Where Triton bundles cuobjdump, the register use of each kernel (for the
    default k1 = 30 and for k1 = 64) is printed and checked: no spills to the
    stack (a few bytes allowed for the kNN filter on sm_80), and at most 128
    registers a thread (several programs per SM) except
    for the kNN filter, a GEMM that ptxas gives all 255 (one 8-warp program
    per SM, as Triton's own matmuls).
    """
    resources = triton_aot_resources(arch, tmp_path)
    for label, (regs, stack) in sorted(resources.items()):
        print(f"sm_{arch} {label}: {regs} registers, {stack} bytes of stack")
    assert len(resources) in (0, 16), sorted(resources)
    for label, (regs, stack) in resources.items():
        # the kNN filter's tiles are sized for sm_90 (the H100/H200 it targets); sm_80 spills a word
        max_stack = 64 if arch == 80 and label.startswith("kNN filter") else 0
        assert stack <= max_stack, f"{label} spills {stack} bytes a thread on sm_{arch}"
        limit = 255 if label.startswith("kNN filter") else 128
        assert regs <= limit, f"{label} uses {regs} registers a thread on sm_{arch}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_dbscan_cuda_source_compiles_with_nvcc(arch, tmp_path):
    ptx = tmp_path / "dbscan.ptx"
    done = subprocess.run(["nvcc", f"-arch={arch}", "--ptx", str(DBSCAN_CU), "-o", str(ptx)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = ptx.read_text()
    for kernel in ("dbscan_init", "dbscan_hook", "dbscan_jump", "dbscan_border"):
        assert f".entry {kernel}(" in text


def test_cupy_problem_is_a_message_and_dbscan_runs_label_propagation_instead(monkeypatch):
    """No CuPy or no GPU: one line with the fix; the GPU path's DBSCAN then runs label
    propagation in torch ops (same labels), reported as a substitute, never the reference."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from pplr_fast import gpu_fallback
    from pplr_fast.cluster import dbscan, fast_cuda, jaccard_distance
    cupy_problem.cache_clear()
    problem = cupy_problem()
    assert isinstance(problem, str) and "\n" not in problem
    assert backend.resolve_backend("fast", torch.device("cuda"), "dbscan") == "fast"
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(8, 16, generator=g).repeat_interleave(6, 0)
                                      + 0.05 * torch.randn(48, 16, generator=g), dim=1)
    dist = jaccard_distance(x, 10, 3, backend="fast")
    monkeypatch.setattr(gpu_fallback, "_announced", set())
    gpu_fallback.drain_fallback_records()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = fast_cuda.dbscan(dist, 0.5, 4)
    assert torch.equal(labels, dbscan(dist, 0.5, 4, backend="reference"))
    assert any("SUBSTITUTE" in str(w.message) and "label propagation" in str(w.message)
               for w in caught)
    (record,) = gpu_fallback.drain_fallback_records()
    assert record["op"] == "dbscan" and "label propagation" in record["ran"]
