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
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pplr_fast.kernels import cross_agreement, jaccard, pair_distance

KERNELS = [  # (kernel, types of the runtime arguments, constexprs)
    (pair_distance._pair_sq_distance_kernel, "*fp32 *i64 *i64 *fp32 i32 i32 i32 i32",
     dict(BLOCK_P=32, BLOCK_D=128)),
    (jaccard._reciprocal_mask_kernel, "*i64 *i8 i32 i32 i32", dict(BLOCK_L=32)),
    (jaccard._expansion_kernel, "*i64 *i8 *i8 *i32 i32 i32 i32 i32 i32 i32",
     dict(BLOCK_L1=32, BLOCK_LH=16, MEMBER_CHUNK=8)),
    (jaccard._row_softmax_kernel, "*fp32 *i64 *fp32", dict(BLOCK=512)),
    (jaccard._jaccard_accumulate_kernel,
     "*i64 *i64 *fp32 *i64 *i64 *fp32 *fp32 i64 i64 i32 i32", dict(BLOCK_NNZ=64, BLOCK_POSTING=32)),
    (cross_agreement._cross_agreement_kernel, "*i64 *i64 *fp32 i32 i32 i32 i32 i32",
     dict(BLOCK_K=32)),
]
for kernel, types, constexprs in KERNELS:
    runtime = [name for name in kernel.arg_names if name not in constexprs]
    signature = dict(zip(runtime, types.split()))
    signature.update({name: "constexpr" for name in constexprs})
    compiled = triton.compile(ASTSource(kernel, signature, constexprs),
                              target=GPUTarget("cuda", int(sys.argv[1]), 32),
                              options=dict(enable_fp_fusion=True))
    assert compiled.asm["cubin"], kernel.__name__
"""


@pytest.mark.parametrize("arch", [90, 80])
def test_triton_kernels_compile_for_gpus(arch, tmp_path):
    """Every Triton kernel lowers to a cubin (Triton's bundled ptxas), no GPU needed."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this Triton build has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", TRITON_AOT_SCRIPT, str(arch)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


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


def test_cupy_problem_is_a_message_without_a_gpu(monkeypatch):
    """No CuPy or no GPU: one line with the fix, and the dbscan op falls back with it."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    cupy_problem.cache_clear()
    problem = cupy_problem()
    assert isinstance(problem, str) and "\n" not in problem
    monkeypatch.setattr(backend, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backend.resolve_backend("fast", torch.device("cuda"), "dbscan") == "reference"
    assert any(problem in str(w.message) for w in caught)
