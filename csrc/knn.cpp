// Entry of the kNN op: pybind11 bindings in front of csrc/cpu/knn_cpu.cpp.
// The GPU path of this op is plain cuBLAS + torch.topk (pplr_fast/cluster/fast_knn.py).
#include "cpu/common.h"
#include "cpu/knn_cpu.h"

namespace py = pybind11;
using pplr::Array;

static py::tuple topk_from_distances(Array<float> dist, int64_t k) {
    pplr::require(dist.ndim() == 2, "dist must be 2-D");
    const int64_t rows = dist.shape(0), n = dist.shape(1);
    pplr::require(k >= 1 && k <= n, "k must lie in [1, n]");
    auto out_dist = pplr::new_array<float>({rows, k});
    auto out_index = pplr::new_array<int64_t>({rows, k});
    {
        py::gil_scoped_release nogil;
        pplr::topk_from_distances_cpu(dist.data(), rows, n, k, out_dist.mutable_data(),
                                      out_index.mutable_data());
    }
    return py::make_tuple(out_dist, out_index);
}

static py::tuple topk_rerank(Array<uint16_t> scores_bf16, Array<float> x, int64_t row0, int64_t k,
                             Array<double> error_bound, double output_roundoff, int64_t cap) {
    pplr::require(scores_bf16.ndim() == 2 && x.ndim() == 2, "scores and x must be 2-D");
    const int64_t rows = scores_bf16.shape(0), n = scores_bf16.shape(1), d = x.shape(1);
    pplr::require(x.shape(0) == n, "scores must have one column per row of x");
    pplr::require(row0 >= 0 && row0 + rows <= n, "row block out of range");
    pplr::require(error_bound.ndim() == 1 && error_bound.shape(0) == rows,
                  "one error bound per row");
    pplr::require(k >= 1 && k <= n, "k must lie in [1, n]");
    auto out_dist = pplr::new_array<float>({rows, k});
    auto out_index = pplr::new_array<int64_t>({rows, k});
    auto overflow = pplr::new_array<uint8_t>({rows});
    {
        py::gil_scoped_release nogil;
        pplr::topk_rerank_cpu(scores_bf16.data(), rows, n, x.data(), d, row0, k, error_bound.data(),
                              output_roundoff, cap, out_dist.mutable_data(), out_index.mutable_data(),
                              overflow.mutable_data());
    }
    return py::make_tuple(out_dist, out_index, overflow);
}

PYBIND11_MODULE(_knn, m) {
    m.doc() = "Exact k-nearest-neighbour selection (CPU, OpenMP).";
    m.def("topk_from_distances", &topk_from_distances, py::arg("dist"), py::arg("k"));
    m.def("topk_rerank", &topk_rerank, py::arg("scores_bf16"), py::arg("x"), py::arg("row0"),
          py::arg("k"), py::arg("error_bound"), py::arg("output_roundoff"), py::arg("cap"));
}
