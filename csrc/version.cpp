// Smallest op: reports how the CPU kernels were built (OpenMP threads, SIMD).
#include <pybind11/pybind11.h>
#include <omp.h>
#include <string>

namespace py = pybind11;

static std::string build_info() {
    std::string s = "openmp_max_threads=" + std::to_string(omp_get_max_threads());
#if defined(__AVX512F__)
    s += " simd=avx512";
#elif defined(__AVX2__)
    s += " simd=avx2";
#else
    s += " simd=baseline";
#endif
    return s;
}

PYBIND11_MODULE(_version, m) {
    m.doc() = "Build information of the pplr_fast CPU kernels.";
    m.def("build_info", &build_info);
}
