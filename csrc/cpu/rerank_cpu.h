// Test-time k-reciprocal re-ranking (Zhong et al., CVPR 2017) on the CPU (OpenMP).
//
// The (Q+G) x (Q+G) matrix D of the re-ranking is never stored: each of its
// rows is read from the caller's distance blocks (a "segment" is a block read
// row by row or column by column), and only its first K ranks are kept.
#pragma once
#include <cstdint>
#include <vector>

#include "common.h"

namespace pplr {

// One block of a D row: D-row r reads row r (by_col false) or column r
// (by_col true) of a rows x cols array of float or double.
struct Segment {
    const void* data = nullptr;
    bool is_double = false;
    int64_t rows = 0, cols = 0;
    bool by_col = false;
    int64_t length() const { return by_col ? rows : cols; }   // entries it adds to a D row
    int64_t count() const { return by_col ? cols : rows; }    // D rows it serves
};

// Problems found in the input rows (first offending row, -1 if none).
struct RankProblems {
    int64_t non_finite_row = -1;
    int64_t zero_row = -1;
};

// For each D row r = concat(a(r), b(r)): v = float(x * x) (or float(x) when
// square is false), m = max_j v_j, D = v / m in float, and the K smallest
// entries of D by (value, column), sorted: rank (count x K), rowmax (count).
RankProblems rank_rows_cpu(const Segment& a, const Segment& b, int64_t K, bool square,
                           int64_t* rank, float* rowmax);

// The expanded k-reciprocal sets E(i) of every row as CSR (values unset);
// F(i, k) = the first len entries of rank[i] (len1 for k1, len_half for
// round(k1 / 2)).
Csr expansion_cpu(const int64_t* rank, int64_t n, int64_t K, int64_t len1, int64_t len_half);

// Query expansion (mean of V over the first len2 ranks; none when len2 <= 1)
// followed by m(i, g) = sum_l min(V'[i, l], V'[q + g, l]) for every query row
// i < q and every gallery row q + g sharing a column with it: CSR over the q
// query rows, gallery columns g.
Csr query_gallery_overlap_cpu(const int64_t* crow, const int64_t* col, const float* val,
                              int64_t n, const int64_t* rank, int64_t K, int64_t len2, int64_t q);

// The query expansion and overlaps of query_gallery_overlap_cpu, turned
// straight into the dense result (q = qg.rows):
// out[i, g] = (1 - m/(2 - m)) (1 - lambda) + D lambda (m = 0 where the
// supports do not meet), D = float(x * x) / rowmax[i] (float(x) / rowmax[i]
// when square is false) for x = qg[i, g]. out may alias qg when qg is float
// and square is false.
void overlap_combine_cpu(const int64_t* crow, const int64_t* col, const float* val, int64_t n,
                         const int64_t* rank, int64_t K, int64_t len2, const Segment& qg,
                         bool square, const float* rowmax, double lambda, float* out);

// Squared Euclidean distances sum_t (x[i, t] - x[j, t])^2, in double, of the
// pairs (rows[p], cols[p]) of the rows of x (n x d, float or double).
void pair_sq_distance_cpu(const void* x, bool is_double, int64_t d, const int64_t* rows,
                          const int64_t* cols, int64_t pairs, double* out);

}  // namespace pplr
