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

static void check_rank(const Array<int64_t>& rank, int64_t n) {
    pplr::require(rank.ndim() == 2 && rank.shape(0) == n, "rank must be (n, K)");
    for (int64_t p = 0; p < n * rank.shape(1); ++p)
        pplr::require(rank.data()[p] >= 0 && rank.data()[p] < n, "rank holds an index out of range");
}

// E(i) of rows [r0, r1) as CSR (crow, col).
static py::tuple expansion_sets(Array<int64_t> rank, int64_t k1, int64_t half, int64_t r0,
                                int64_t r1) {
    const int64_t n = rank.shape(0);
    check_rank(rank, n);
    check_rows(r0, r1, n);
    pplr::Csr sets;
    {
        py::gil_scoped_release nogil;
        sets = pplr::expansion_sets_cpu(rank.data(), n, rank.shape(1), k1, half, r0, r1);
    }
    py::tuple csr = pplr::csr_to_numpy(std::move(sets));
    return py::make_tuple(csr[0], csr[1]);
}

static Array<double> pair_distances(Array<float> xa, Array<int64_t> ia, Array<float> xb,
                                    Array<int64_t> ib) {
    pplr::require(xa.ndim() == 2 && xb.ndim() == 2 && xa.shape(1) == xb.shape(1),
                  "xa and xb must be 2-D with the same number of columns");
    pplr::require(ia.ndim() == 1 && ib.ndim() == 1 && ia.shape(0) == ib.shape(0),
                  "ia and ib must be 1-D of equal length");
    const int64_t pairs = ia.shape(0);
    for (int64_t t = 0; t < pairs; ++t)
        pplr::require(ia.data()[t] >= 0 && ia.data()[t] < xa.shape(0) && ib.data()[t] >= 0 &&
                          ib.data()[t] < xb.shape(0), "a pair index is out of range");
    auto out = pplr::new_array<double>({pairs});
    py::gil_scoped_release nogil;
    pplr::pair_distances_cpu(xa.data(), ia.data(), xb.data(), ib.data(), pairs, xa.shape(1),
                             out.mutable_data());
    return out;
}

// V's weights of CSR rows from their distances (float32, one per entry).
static Array<float> weigh_rows(Array<int64_t> crow, Array<double> dist) {
    const int64_t rows = crow.shape(0) - 1;
    pplr::require(rows >= 0 && crow.data()[0] == 0 && dist.ndim() == 1 &&
                      dist.shape(0) == crow.data()[rows], "one distance per CSR entry");
    Array<double> scratch = pplr::new_array<double>({dist.shape(0)});
    std::copy(dist.data(), dist.data() + dist.shape(0), scratch.mutable_data());
    auto out = pplr::new_array<float>({dist.shape(0)});
    py::gil_scoped_release nogil;
    pplr::weigh_rows_cpu(crow.data(), rows, scratch.mutable_data(), out.mutable_data());
    return out;
}

static py::tuple expand_rows(Array<int64_t> crow, Array<int64_t> col, Array<float> val,
                             Array<int64_t> rank, int64_t k2, int64_t r0, int64_t r1) {
    const int64_t n = crow.shape(0) - 1;
    pplr::require(n >= 0 && col.shape(0) == crow.data()[n] && val.shape(0) == col.shape(0),
                  "inconsistent CSR arrays");
    check_rank(rank, n);
    check_rows(r0, r1, n);
    pplr::Csr out;
    {
        py::gil_scoped_release nogil;
        out = pplr::expand_rows_cpu(crow.data(), col.data(), val.data(), n, rank.data(),
                                    rank.shape(1), k2, r0, r1);
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
    m.def("expansion_sets", &expansion_sets, py::arg("rank"), py::arg("k1"), py::arg("half"),
          py::arg("r0"), py::arg("r1"));
    m.def("pair_distances", &pair_distances, py::arg("xa"), py::arg("ia"), py::arg("xb"),
          py::arg("ib"));
    m.def("weigh_rows", &weigh_rows, py::arg("crow"), py::arg("dist"));
    m.def("expand_rows", &expand_rows, py::arg("crow"), py::arg("col"), py::arg("val"),
          py::arg("rank"), py::arg("k2"), py::arg("r0"), py::arg("r1"));
    m.def("jaccard_rows", &jaccard_rows, py::arg("crow"), py::arg("col"), py::arg("val"),
          py::arg("r0"), py::arg("r1"), py::arg("cutoff"));
}
