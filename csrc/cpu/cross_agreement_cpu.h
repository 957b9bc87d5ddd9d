// Cross-agreement of two kNN lists (CPU, OpenMP).
#pragma once
#include <cstdint>

namespace pplr {

// neigh_g (n x kg), neigh_p (n x kp): kNN lists sorted by (distance, index),
// self included. For each row: the first k entries other than the row itself
// in each list; score = |intersection| / |union| (0 when both are empty).
void cross_agreement_cpu(const int64_t* neigh_g, int64_t kg, const int64_t* neigh_p, int64_t kp,
                         int64_t n, int64_t k, float* scores);

// cross_agreement_cpu for `rows` rows of an n-row problem, the first being row
// first_row: the lists hold those rows only (self = first_row + row).
void cross_agreement_rows_cpu(const int64_t* neigh_g, int64_t kg, const int64_t* neigh_p,
                              int64_t kp, int64_t rows, int64_t first_row, int64_t n, int64_t k,
                              float* scores);

}  // namespace pplr
