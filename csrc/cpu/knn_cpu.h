// Exact k-nearest-neighbour selection on the CPU (OpenMP over rows).
#pragma once
#include <cstdint>

namespace pplr {

// Rows of a block of exact distances `dist` (rows x n): the k smallest of
// each row by (distance, column), sorted.
void topk_from_distances_cpu(const float* dist, int64_t rows, int64_t n, int64_t k,
                             float* out_dist, int64_t* out_index);

// Rows row0 .. row0+rows-1 of the kNN of x (n x d, L2-normalised), from a
// block of low-precision similarity scores (bf16 bit patterns, rows x n).
// error_bound[r] bounds |score - exact fp32 <x_i, x_j>| for row r apart from
// the rounding of the score itself to bf16 (relative, output_roundoff). Every
// column whose score could still beat the exact k-th neighbour under that
// bound is a candidate; candidates are re-ranked with fp32 distances
// 2 - 2<x_i, x_j>, so the result is the exact fp32 top-k.
// A row with more than `cap` candidates is flagged in `overflow` (and its
// output left unset) so the caller can finish it with exact distances.
void topk_rerank_cpu(const uint16_t* scores_bf16, int64_t rows, int64_t n, const float* x,
                     int64_t d, int64_t row0, int64_t k, const double* error_bound,
                     double output_roundoff, int64_t cap,
                     float* out_dist, int64_t* out_index, uint8_t* overflow);

}  // namespace pplr
