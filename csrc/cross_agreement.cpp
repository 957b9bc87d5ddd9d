// Entry of the cross-agreement op: bindings in front of csrc/cpu/cross_agreement_cpu.cpp.
// CUDA twin: kernels/cross_agreement.py (Triton).
#include "cpu/common.h"
#include "cpu/cross_agreement_cpu.h"

namespace py = pybind11;
using pplr::Array;

static Array<float> cross_agreement(Array<int64_t> neigh_g, Array<int64_t> neigh_p, int64_t k) {
    pplr::require(neigh_g.ndim() == 2 && neigh_p.ndim() == 2, "neighbour lists must be 2-D");
    const int64_t n = neigh_g.shape(0);
    pplr::require(neigh_p.shape(0) == n, "both lists need one row per image");
    const int64_t need = std::min(k + 1, n);
    pplr::require(neigh_g.shape(1) >= need && neigh_p.shape(1) >= need,
                  "each list needs min(k + 1, n) neighbours, self included");
    auto scores = pplr::new_array<float>({n});
    {
        py::gil_scoped_release nogil;
        pplr::cross_agreement_cpu(neigh_g.data(), neigh_g.shape(1), neigh_p.data(),
                                  neigh_p.shape(1), n, k, scores.mutable_data());
    }
    return scores;
}

// Scores of `rows` consecutive rows of an n-row problem starting at first_row.
static Array<float> cross_agreement_rows(Array<int64_t> neigh_g, Array<int64_t> neigh_p, int64_t k,
                                         int64_t first_row, int64_t n) {
    pplr::require(neigh_g.ndim() == 2 && neigh_p.ndim() == 2, "neighbour lists must be 2-D");
    const int64_t rows = neigh_g.shape(0);
    pplr::require(neigh_p.shape(0) == rows, "both lists need one row per image");
    pplr::require(0 <= first_row && first_row + rows <= n, "rows must lie in [0, n)");
    const int64_t need = std::min(k + 1, n);
    pplr::require(neigh_g.shape(1) >= need && neigh_p.shape(1) >= need,
                  "each list needs min(k + 1, n) neighbours, self included");
    auto scores = pplr::new_array<float>({rows});
    {
        py::gil_scoped_release nogil;
        pplr::cross_agreement_rows_cpu(neigh_g.data(), neigh_g.shape(1), neigh_p.data(),
                                       neigh_p.shape(1), rows, first_row, n, k,
                                       scores.mutable_data());
    }
    return scores;
}

PYBIND11_MODULE(_cross_agreement, m) {
    m.doc() = "Cross-agreement scores of two kNN lists (CPU, OpenMP).";
    m.def("cross_agreement", &cross_agreement, py::arg("neigh_g"), py::arg("neigh_p"), py::arg("k"));
    m.def("cross_agreement_rows", &cross_agreement_rows, py::arg("neigh_g"), py::arg("neigh_p"),
          py::arg("k"), py::arg("first_row"), py::arg("n"));
}
