// Entry of the kNN op: pybind11 bindings in front of csrc/cpu/knn_cpu.cpp.
// The GPU path of this op is the Triton kNN of kernels/knn.py (pplr_fast/cluster/fast_cuda.py).
#include "cpu/common.h"
#include "cpu/knn_cpu.h"

#include <memory>

namespace py = pybind11;
using pplr::Array;

static py::tuple exact_rows_topk(Array<float> x, Array<int64_t> rows, int64_t k) {
    pplr::require(x.ndim() == 2 && rows.ndim() == 1, "x must be 2-D and rows 1-D");
    const int64_t n = x.shape(0), r = rows.shape(0);
    pplr::require(k >= 1 && k <= n, "k must lie in [1, n]");
    for (int64_t t = 0; t < r; ++t)
        pplr::require(rows.data()[t] >= 0 && rows.data()[t] < n, "a row is out of range");
    auto out_dist = pplr::new_array<double>({r, k});
    auto out_index = pplr::new_array<int64_t>({r, k});
    {
        py::gil_scoped_release nogil;
        pplr::exact_rows_topk_cpu(x.data(), n, x.shape(1), rows.data(), r, k,
                                  out_dist.mutable_data(), out_index.mutable_data());
    }
    return py::make_tuple(out_dist, out_index);
}

// The symmetric streaming selection, with its sizes remembered for the checks.
struct SymmetricSelection {
    int64_t n, k;
    std::unique_ptr<pplr::SymmetricTopK> state;
};

static SymmetricSelection symmetric_new(int64_t n, int64_t k, Array<double> error_bound,
                                        double output_roundoff) {
    pplr::require(k >= 1 && k <= n, "k must lie in [1, n]");
    pplr::require(n < (int64_t(1) << 31), "at most 2^31 - 1 rows");
    pplr::require(error_bound.ndim() == 1 && error_bound.shape(0) == n, "one error bound per row");
    return {n, k, std::make_unique<pplr::SymmetricTopK>(n, k, error_bound.data(), output_roundoff)};
}

// A block of scores: uint16 arrays hold bf16 bit patterns, float32 arrays fp32 scores.
template <typename Score>
static void symmetric_consume(SymmetricSelection& self, Array<Score> scores, int64_t r0) {
    pplr::require(scores.ndim() == 2, "scores must be 2-D");
    const int64_t rows = scores.shape(0);
    pplr::require(r0 >= 0 && r0 + rows <= self.n && scores.shape(1) == self.n - r0,
                  "a block must hold rows [r0, r0 + rows) and columns [r0, n)");
    py::gil_scoped_release nogil;
    self.state->consume(scores.data(), r0, rows);
}

static py::tuple symmetric_finish(SymmetricSelection& self, Array<float> x, int64_t cap) {
    pplr::require(x.ndim() == 2 && x.shape(0) == self.n, "x must hold the n rows");
    auto out_dist = pplr::new_array<double>({self.n, self.k});
    auto out_index = pplr::new_array<int64_t>({self.n, self.k});
    auto overflow = pplr::new_array<uint8_t>({self.n});
    {
        py::gil_scoped_release nogil;
        self.state->finish(x.data(), x.shape(1), cap, out_dist.mutable_data(),
                           out_index.mutable_data(), overflow.mutable_data());
    }
    return py::make_tuple(out_dist, out_index, overflow);
}

// Rows [a, b) as the candidates another rank needs: (ptr, column int32, score float32).
static py::tuple symmetric_take_rows(SymmetricSelection& self, int64_t a, int64_t b) {
    pplr::require(0 <= a && a <= b && b <= self.n, "rows [a, b) must lie in [0, n)");
    std::vector<int64_t> ptr;
    std::vector<int32_t> col;
    std::vector<float> score;
    {
        py::gil_scoped_release nogil;
        self.state->take_rows(a, b, ptr, col, score);
    }
    auto out_ptr = pplr::new_array<int64_t>({(py::ssize_t)ptr.size()});
    auto out_col = pplr::new_array<int32_t>({(py::ssize_t)col.size()});
    auto out_score = pplr::new_array<float>({(py::ssize_t)score.size()});
    std::copy(ptr.begin(), ptr.end(), out_ptr.mutable_data());
    std::copy(col.begin(), col.end(), out_col.mutable_data());
    std::copy(score.begin(), score.end(), out_score.mutable_data());
    return py::make_tuple(out_ptr, out_col, out_score);
}

static void symmetric_give_rows(SymmetricSelection& self, int64_t a, int64_t b, Array<int64_t> ptr,
                                Array<int32_t> col, Array<float> score) {
    pplr::require(0 <= a && a <= b && b <= self.n, "rows [a, b) must lie in [0, n)");
    pplr::require(ptr.ndim() == 1 && ptr.shape(0) == b - a + 1, "ptr needs b - a + 1 offsets");
    const int64_t total = ptr.data()[b - a];
    pplr::require(ptr.data()[0] == 0 && col.shape(0) == total && score.shape(0) == total,
                  "inconsistent candidate arrays");
    for (int64_t q = 0; q < total; ++q)
        pplr::require(col.data()[q] >= 0 && col.data()[q] < self.n, "a column is out of range");
    py::gil_scoped_release nogil;
    self.state->give_rows(a, b, ptr.data(), col.data(), score.data());
}

static py::tuple symmetric_finish_rows(SymmetricSelection& self, Array<float> x, int64_t a,
                                       int64_t b, int64_t cap) {
    pplr::require(x.ndim() == 2 && x.shape(0) == self.n, "x must hold the n rows");
    pplr::require(0 <= a && a <= b && b <= self.n, "rows [a, b) must lie in [0, n)");
    auto out_dist = pplr::new_array<double>({b - a, self.k});
    auto out_index = pplr::new_array<int64_t>({b - a, self.k});
    auto overflow = pplr::new_array<uint8_t>({b - a});
    {
        py::gil_scoped_release nogil;
        self.state->finish_rows(a, b, x.data(), x.shape(1), cap, out_dist.mutable_data(),
                                out_index.mutable_data(), overflow.mutable_data());
    }
    return py::make_tuple(out_dist, out_index, overflow);
}

// The ring selection of one block's rows (pplr::RingTopK).
struct RingSelection {
    int64_t rows, k;
    std::unique_ptr<pplr::RingTopK> state;
};

static RingSelection ring_new(int64_t rows, int64_t k, Array<double> error_bound,
                              double output_roundoff) {
    pplr::require(k >= 1, "k must be >= 1");
    pplr::require(error_bound.ndim() == 1 && error_bound.shape(0) == rows, "one error bound per row");
    return {rows, k, std::make_unique<pplr::RingTopK>(rows, k, error_bound.data(), output_roundoff)};
}

template <typename Score>
static void ring_consume(RingSelection& self, Array<Score> scores, int64_t a, int64_t c0) {
    pplr::require(scores.ndim() == 2, "scores must be 2-D");
    const int64_t rows = scores.shape(0), width = scores.shape(1);
    pplr::require(a >= 0 && a + rows <= self.rows, "a block must hold rows [a, a + rows)");
    pplr::require(c0 >= 0 && c0 + width < (int64_t(1) << 31), "columns out of range");
    py::gil_scoped_release nogil;
    self.state->consume(scores.data(), a, rows, c0, width);
}

static void ring_rerank(RingSelection& self, Array<float> x_rows, Array<float> x_cols, int64_t c0) {
    pplr::require(x_rows.ndim() == 2 && x_rows.shape(0) == self.rows, "x_rows must hold the rows");
    pplr::require(x_cols.ndim() == 2 && x_cols.shape(1) == x_rows.shape(1),
                  "x_cols must be 2-D with the rows' dimension");
    py::gil_scoped_release nogil;
    self.state->rerank(x_rows.data(), x_cols.data(), x_rows.shape(1), c0);
}

static py::tuple ring_finish(RingSelection& self) {
    auto out_dist = pplr::new_array<double>({self.rows, self.k});
    auto out_index = pplr::new_array<int64_t>({self.rows, self.k});
    self.state->finish(out_dist.mutable_data(), out_index.mutable_data());
    return py::make_tuple(out_dist, out_index);
}

PYBIND11_MODULE(_knn, m) {
    m.doc() = "Exact k-nearest-neighbour selection (CPU, OpenMP).";
    m.def("exact_rows_topk", &exact_rows_topk, py::arg("x"), py::arg("rows"), py::arg("k"));
    py::class_<SymmetricSelection>(m, "SymmetricTopK")
        .def(py::init(&symmetric_new), py::arg("n"), py::arg("k"), py::arg("error_bound"),
             py::arg("output_roundoff"))
        .def("consume_bf16", &symmetric_consume<uint16_t>, py::arg("scores_bf16"), py::arg("r0"))
        .def("consume_fp32", &symmetric_consume<float>, py::arg("scores"), py::arg("r0"))
        .def("finish", &symmetric_finish, py::arg("x"), py::arg("cap"))
        .def("take_rows", &symmetric_take_rows, py::arg("a"), py::arg("b"))
        .def("give_rows", &symmetric_give_rows, py::arg("a"), py::arg("b"), py::arg("ptr"),
             py::arg("col"), py::arg("score"))
        .def("finish_rows", &symmetric_finish_rows, py::arg("x"), py::arg("a"), py::arg("b"),
             py::arg("cap"));
    py::class_<RingSelection>(m, "RingTopK")
        .def(py::init(&ring_new), py::arg("rows"), py::arg("k"), py::arg("error_bound"),
             py::arg("output_roundoff"))
        .def("consume_bf16", &ring_consume<uint16_t>, py::arg("scores_bf16"), py::arg("a"),
             py::arg("c0"))
        .def("consume_fp32", &ring_consume<float>, py::arg("scores"), py::arg("a"), py::arg("c0"))
        .def("rerank", &ring_rerank, py::arg("x_rows"), py::arg("x_cols"), py::arg("c0"))
        .def("finish", &ring_finish);
}
