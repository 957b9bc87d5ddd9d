// Entry of the Jaccard op: pybind11 bindings in front of csrc/cpu/jaccard_cpu.cpp.
// CUDA twin: kernels/jaccard.py (Triton).
#include "cpu/common.h"
#include "cpu/jaccard_cpu.h"

namespace py = pybind11;
using pplr::Array;

static py::tuple encode(Array<float> x, Array<int64_t> rank, int64_t k1, int64_t half, int64_t k2) {
    pplr::require(x.ndim() == 2 && rank.ndim() == 2, "x and rank must be 2-D");
    pplr::require(rank.shape(0) == x.shape(0), "rank needs one row per row of x");
    const int64_t n = x.shape(0), K = rank.shape(1);
    for (int64_t p = 0; p < n * K; ++p)
        pplr::require(rank.data()[p] >= 0 && rank.data()[p] < n, "rank holds an index out of range");
    pplr::Csr v;
    {
        py::gil_scoped_release nogil;
        v = pplr::encode_cpu(x.data(), n, x.shape(1), rank.data(), K, k1, half, k2);
    }
    return pplr::csr_to_numpy(std::move(v));
}

static py::tuple jaccard(Array<int64_t> crow, Array<int64_t> col, Array<float> val, double cutoff) {
    const int64_t n = crow.shape(0) - 1;
    pplr::require(n >= 0 && col.shape(0) == crow.data()[n] && val.shape(0) == col.shape(0),
                  "inconsistent CSR arrays");
    pplr::Csr out;
    {
        py::gil_scoped_release nogil;
        out = pplr::jaccard_cpu(crow.data(), col.data(), val.data(), n, cutoff);
    }
    return pplr::csr_to_numpy(std::move(out));
}

static void check_rows(int64_t r0, int64_t r1, int64_t n) {
    pplr::require(0 <= r0 && r0 <= r1 && r1 <= n, "rows [r0, r1) must lie in [0, n)");
}

static py::tuple encode_rows(Array<float> x, Array<int64_t> rank, int64_t k1, int64_t half,
                             int64_t k2, int64_t r0, int64_t r1) {
    pplr::require(x.ndim() == 2 && rank.ndim() == 2, "x and rank must be 2-D");
    pplr::require(rank.shape(0) == x.shape(0), "rank needs one row per row of x");
    const int64_t n = x.shape(0), K = rank.shape(1);
    check_rows(r0, r1, n);
    for (int64_t p = 0; p < n * K; ++p)
        pplr::require(rank.data()[p] >= 0 && rank.data()[p] < n, "rank holds an index out of range");
    pplr::Csr v;
    {
        py::gil_scoped_release nogil;
        v = pplr::encode_rows_cpu(x.data(), n, x.shape(1), rank.data(), K, k1, half, k2, r0, r1);
    }
    return pplr::csr_to_numpy(std::move(v));
}

static py::tuple jaccard_rows(Array<int64_t> crow, Array<int64_t> col, Array<float> val,
                              int64_t r0, int64_t r1, double cutoff) {
    const int64_t n = crow.shape(0) - 1;
    pplr::require(n >= 0 && col.shape(0) == crow.data()[n] && val.shape(0) == col.shape(0),
                  "inconsistent CSR arrays");
    check_rows(r0, r1, n);
    for (int64_t p = 0; p < col.shape(0); ++p)
        pplr::require(col.data()[p] >= 0 && col.data()[p] < n, "a column is out of range");
    pplr::Csr out;
    {
        py::gil_scoped_release nogil;
        out = pplr::jaccard_rows_cpu(crow.data(), col.data(), val.data(), n, r0, r1, cutoff);
    }
    return pplr::csr_to_numpy(std::move(out));
}

PYBIND11_MODULE(_jaccard, m) {
    m.doc() = "k-reciprocal encoding and sparse Jaccard distance (CPU, OpenMP).";
    m.def("encode", &encode, py::arg("x"), py::arg("rank"), py::arg("k1"), py::arg("half"),
          py::arg("k2"));
    m.def("jaccard", &jaccard, py::arg("crow"), py::arg("col"), py::arg("val"),
          py::arg("cutoff"));
    m.def("encode_rows", &encode_rows, py::arg("x"), py::arg("rank"), py::arg("k1"),
          py::arg("half"), py::arg("k2"), py::arg("r0"), py::arg("r1"));
    m.def("jaccard_rows", &jaccard_rows, py::arg("crow"), py::arg("col"), py::arg("val"),
          py::arg("r0"), py::arg("r1"), py::arg("cutoff"));
}
