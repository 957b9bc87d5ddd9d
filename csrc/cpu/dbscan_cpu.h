// DBSCAN on a neighbour graph, scikit-learn numbering (CPU).
#pragma once
#include <cstdint>

namespace pplr {

// crow/col: CSR of the pairs with d <= eps (symmetric, self included when
// d(i, i) <= eps). Writes labels (n): clusters numbered by their lowest-index
// core point, borders join their lowest-numbered neighbouring cluster, -1 noise.
void dbscan_cpu(const int64_t* crow, const int64_t* col, int64_t n, int64_t min_samples,
                int64_t* labels);

}  // namespace pplr
