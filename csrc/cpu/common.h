// Helpers shared by the CPU kernels of pplr_fast (header-only).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace pplr {

namespace py = pybind11;

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

// A fresh C-contiguous numpy array of the given shape.
template <typename T>
Array<T> new_array(std::vector<py::ssize_t> shape) {
    return Array<T>(shape);
}

inline void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
}

// Dot product of two fp32 rows, accumulated in fp64 (each product of two
// fp32 numbers is exact in fp64) in a fixed order: 8 interleaved partial
// sums, then a fixed tree. The same inputs always give the same bits, and the
// result is within ~d * 2^-53 of the exact dot product.
inline double dot64(const float* a, const float* b, int64_t d) {
    double acc[8] = {0};
    int64_t t = 0;
    for (; t + 8 <= d; t += 8) {
#pragma omp simd
        for (int u = 0; u < 8; ++u) acc[u] += static_cast<double>(a[t + u]) * b[t + u];
    }
    for (int u = 0; t < d; ++t, ++u) acc[u] += static_cast<double>(a[t]) * b[t];
    for (int w = 4; w > 0; w /= 2)
        for (int u = 0; u < w; ++u) acc[u] += acc[u + w];
    return acc[0];
}

// The project's distance between L2-normalised rows: 2 - 2 <a, b>, in fp64.
inline double sq_distance(const float* a, const float* b, int64_t d) {
    return 2.0 - 2.0 * dot64(a, b, d);
}

// CSR with int64 row pointers and columns, float values.
struct Csr {
    std::vector<int64_t> crow, col;
    std::vector<float> val;
};

// One sparse row (columns ascending where a kernel needs it) of a matrix built row by row.
struct SparseRow {
    std::vector<int64_t> col;
    std::vector<float> val;
};

// The rows as one CSR; each row is released once copied.
inline Csr csr_from_rows(std::vector<SparseRow>& rows) {
    Csr m;
    m.crow.assign(rows.size() + 1, 0);
    for (size_t i = 0; i < rows.size(); ++i) m.crow[i + 1] = m.crow[i] + rows[i].col.size();
    m.col.resize(m.crow.back());
    m.val.resize(m.crow.back());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < (int64_t)rows.size(); ++i) {
        std::copy(rows[i].col.begin(), rows[i].col.end(), m.col.begin() + m.crow[i]);
        std::copy(rows[i].val.begin(), rows[i].val.end(), m.val.begin() + m.crow[i]);
        rows[i] = SparseRow();
    }
    return m;
}

// R(i, k) of the k-reciprocal encoding, for a list length len: the entries j of the first
// len of rank's row i (rank is n x K) whose own first len entries hold i, in rank order.
inline void reciprocal_neighbours(const int64_t* rank, int64_t K, int64_t i, int64_t len,
                                  std::vector<int64_t>& out) {
    out.clear();
    for (int64_t t = 0; t < len; ++t) {
        const int64_t j = rank[i * K + t];
        const int64_t* back = rank + j * K;
        if (std::find(back, back + len, i) != back + len) out.push_back(j);
    }
}

inline py::tuple csr_to_numpy(Csr&& m) {
    auto crow = new_array<int64_t>({(py::ssize_t)m.crow.size()});
    auto col = new_array<int64_t>({(py::ssize_t)m.col.size()});
    auto val = new_array<float>({(py::ssize_t)m.val.size()});
    std::copy(m.crow.begin(), m.crow.end(), crow.mutable_data());
    std::copy(m.col.begin(), m.col.end(), col.mutable_data());
    std::copy(m.val.begin(), m.val.end(), val.mutable_data());
    return py::make_tuple(crow, col, val);
}

}  // namespace pplr
