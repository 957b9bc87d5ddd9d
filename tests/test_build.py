"""The compiled CPU kernels exist and were built with OpenMP."""
import pplr_fast._version as version


def test_cpu_extension_built_with_openmp():
    info = dict(kv.split("=") for kv in version.build_info().split())
    assert int(info["openmp_max_threads"]) >= 1
    assert info["simd"] in {"avx512", "avx2", "baseline"}
