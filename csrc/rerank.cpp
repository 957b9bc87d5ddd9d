// Entry of the re-ranking op: pybind11 bindings in front of csrc/cpu/rerank_cpu.cpp.
// CUDA tensors take the plain-torch path of pplr_fast/rerank.py instead.
#include "cpu/common.h"
#include "cpu/rerank_cpu.h"

#include <string>

namespace py = pybind11;
using pplr::Array;

// A C-contiguous 2-D float32 or float64 array read as a segment of D rows.
static pplr::Segment segment(const py::array& a, bool by_col, const char* name) {
    pplr::require(a.ndim() == 2, std::string(name) + " must be 2-D");
    pplr::require(a.flags() & py::array::c_style, std::string(name) + " must be C-contiguous");
    const bool is_double = a.dtype().is(py::dtype::of<double>());
    pplr::require(is_double || a.dtype().is(py::dtype::of<float>()),
                  std::string(name) + " must be float32 or float64");
    pplr::Segment s;
    s.data = a.data();
    s.is_double = is_double;
    s.rows = a.shape(0);
    s.cols = a.shape(1);
    s.by_col = by_col;
    return s;
}

static py::tuple rank_rows(py::array a, bool a_by_col, py::object b, bool b_by_col, int64_t k,
                           bool square) {
    const pplr::Segment sa = segment(a, a_by_col, "a");
    pplr::Segment sb;
    py::array b_array;
    if (!b.is_none()) {
        b_array = b.cast<py::array>();
        sb = segment(b_array, b_by_col, "b");
        pplr::require(sb.count() == sa.count(), "a and b must serve the same number of rows");
    }
    const int64_t rows = sa.count(), n = sa.length() + sb.length();
    pplr::require(k >= 1 && k <= n, "k must lie in [1, row length]");
    auto rank = pplr::new_array<int64_t>({rows, k});
    auto rowmax = pplr::new_array<float>({rows});
    pplr::RankProblems problems;
    {
        py::gil_scoped_release nogil;
        problems = pplr::rank_rows_cpu(sa, sb, k, square, rank.mutable_data(), rowmax.mutable_data());
    }
    return py::make_tuple(rank, rowmax, problems.non_finite_row, problems.zero_row);
}

static py::tuple expansion(Array<int64_t> rank, int64_t len1, int64_t len_half) {
    pplr::require(rank.ndim() == 2, "rank must be 2-D");
    const int64_t n = rank.shape(0), K = rank.shape(1);
    pplr::require(len1 >= 1 && len1 <= K && len_half >= 1 && len_half <= K,
                  "list lengths must lie in [1, K]");
    for (int64_t p = 0; p < n * K; ++p)
        pplr::require(rank.data()[p] >= 0 && rank.data()[p] < n, "rank holds an index out of range");
    pplr::Csr sets;
    {
        py::gil_scoped_release nogil;
        sets = pplr::expansion_cpu(rank.data(), n, K, len1, len_half);
    }
    py::tuple csr = pplr::csr_to_numpy(std::move(sets));
    return py::make_tuple(csr[0], csr[1]);
}

static py::tuple query_gallery_overlap(Array<int64_t> crow, Array<int64_t> col, Array<float> val,
                                       Array<int64_t> rank, int64_t len2, int64_t q) {
    const int64_t n = crow.shape(0) - 1;
    pplr::require(n >= 1 && col.shape(0) == crow.data()[n] && val.shape(0) == col.shape(0),
                  "inconsistent CSR arrays");
    pplr::require(rank.ndim() == 2 && rank.shape(0) == n, "rank needs one row per row of V");
    const int64_t K = rank.shape(1);
    pplr::require(len2 >= 1 && len2 <= K, "len2 must lie in [1, K]");
    pplr::require(q >= 0 && q <= n, "q must lie in [0, n]");
    pplr::Csr out;
    {
        py::gil_scoped_release nogil;
        out = pplr::query_gallery_overlap_cpu(crow.data(), col.data(), val.data(), n, rank.data(),
                                              K, len2, q);
    }
    return pplr::csr_to_numpy(std::move(out));
}

static void overlap_combine(Array<int64_t> crow, Array<int64_t> col, Array<float> val,
                            Array<int64_t> rank, int64_t len2, py::array qg, bool square,
                            Array<float> rowmax, double lambda, py::array_t<float> out) {
    const int64_t n = crow.shape(0) - 1;
    pplr::require(n >= 1 && col.shape(0) == crow.data()[n] && val.shape(0) == col.shape(0),
                  "inconsistent CSR arrays");
    pplr::require(rank.ndim() == 2 && rank.shape(0) == n, "rank needs one row per row of V");
    const int64_t K = rank.shape(1);
    pplr::require(len2 >= 1 && len2 <= K, "len2 must lie in [1, K]");
    const pplr::Segment s = segment(qg, false, "qg");
    pplr::require(s.rows + s.cols == n, "qg must be (q, n - q)");
    pplr::require(rowmax.ndim() == 1 && rowmax.shape(0) == s.rows, "one rowmax per query row");
    pplr::require(out.ndim() == 2 && out.shape(0) == s.rows && out.shape(1) == s.cols &&
                  (out.flags() & py::array::c_style), "out must be a C-contiguous (Q, G) float32 array");
    float* dst = out.mutable_data();
    py::gil_scoped_release nogil;
    pplr::overlap_combine_cpu(crow.data(), col.data(), val.data(), n, rank.data(), K, len2, s,
                              square, rowmax.data(), lambda, dst);
}

static py::array_t<double> pair_sq_distance(py::array x, Array<int64_t> rows, Array<int64_t> cols) {
    const pplr::Segment s = segment(x, false, "x");
    pplr::require(rows.ndim() == 1 && cols.ndim() == 1 && rows.shape(0) == cols.shape(0),
                  "rows and cols must be 1-D and of one length");
    const int64_t pairs = rows.shape(0);
    for (int64_t p = 0; p < pairs; ++p)
        pplr::require(rows.data()[p] >= 0 && rows.data()[p] < s.rows && cols.data()[p] >= 0 &&
                      cols.data()[p] < s.rows, "pair index out of range");
    auto out = pplr::new_array<double>({pairs});
    double* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        pplr::pair_sq_distance_cpu(s.data, s.is_double, s.cols, rows.data(), cols.data(), pairs, dst);
    }
    return out;
}

PYBIND11_MODULE(_rerank, m) {
    m.doc() = "Test-time k-reciprocal re-ranking: sparse ranks, encoding and Jaccard (CPU, OpenMP).";
    m.def("rank_rows", &rank_rows, py::arg("a"), py::arg("a_by_col"), py::arg("b"),
          py::arg("b_by_col"), py::arg("k"), py::arg("square"));
    m.def("expansion", &expansion, py::arg("rank"), py::arg("len1"), py::arg("len_half"));
    m.def("query_gallery_overlap", &query_gallery_overlap, py::arg("crow"), py::arg("col"),
          py::arg("val"), py::arg("rank"), py::arg("len2"), py::arg("q"));
    m.def("overlap_combine", &overlap_combine, py::arg("crow"), py::arg("col"), py::arg("val"),
          py::arg("rank"), py::arg("len2"), py::arg("qg"), py::arg("square"), py::arg("rowmax"),
          py::arg("lambda_value"), py::arg("out").noconvert());
    m.def("pair_sq_distance", &pair_sq_distance, py::arg("x"), py::arg("rows"), py::arg("cols"));
}
