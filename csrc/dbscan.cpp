// Entry of the DBSCAN op: pybind11 bindings in front of csrc/cpu/dbscan_cpu.cpp.
// CUDA twin: csrc/cuda/dbscan_cuda.cu (compiled at run time by CuPy).
#include "cpu/common.h"
#include "cpu/dbscan_cpu.h"

namespace py = pybind11;
using pplr::Array;

static Array<int64_t> dbscan(Array<int64_t> crow, Array<int64_t> col, int64_t min_samples) {
    const int64_t n = crow.shape(0) - 1;
    pplr::require(n >= 0 && col.shape(0) == crow.data()[n], "inconsistent CSR arrays");
    for (int64_t p = 0; p < col.shape(0); ++p)
        pplr::require(col.data()[p] >= 0 && col.data()[p] < n, "column index out of range");
    auto labels = pplr::new_array<int64_t>({n});
    {
        py::gil_scoped_release nogil;
        pplr::dbscan_cpu(crow.data(), col.data(), n, min_samples, labels.mutable_data());
    }
    return labels;
}

PYBIND11_MODULE(_dbscan, m) {
    m.doc() = "DBSCAN with scikit-learn's numbering on a neighbour graph (CPU).";
    m.def("dbscan", &dbscan, py::arg("crow"), py::arg("col"), py::arg("min_samples"));
}
