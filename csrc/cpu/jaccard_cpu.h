// k-reciprocal encoding and sparse Jaccard distance on the CPU (OpenMP).
#pragma once
#include <cstdint>

#include "common.h"

namespace pplr {

// V' of docs/method.md §2.1 steps 2-5 as CSR: rank is the (n x K) kNN list (sorted by
// (distance, index), self included), half = round(k1 / 2) as Python rounds.
Csr encode_cpu(const float* x, int64_t n, int64_t d, const int64_t* rank, int64_t K,
               int64_t k1, int64_t half, int64_t k2);

// Jaccard distances of every pair of rows of V' (CSR) that share a column,
// as a symmetric CSR (diagonal included, columns sorted). Pairs with
// distance > cutoff are dropped when cutoff >= 0. Each pair is computed once
// (j >= i) and mirrored, so the result is exactly symmetric.
Csr jaccard_cpu(const int64_t* crow, const int64_t* col, const float* val, int64_t n,
                double cutoff);

// Rows [r0, r1) of encode_cpu's V', bit for bit, from the whole kNN list:
// only the V rows those rows average (their first k2 neighbours) and the
// R(c, half) sets those need are computed. CSR of r1 - r0 rows.
Csr encode_rows_cpu(const float* x, int64_t n, int64_t d, const int64_t* rank, int64_t K,
                    int64_t k1, int64_t half, int64_t k2, int64_t r0, int64_t r1);

// Rows [r0, r1) of jaccard_cpu's result, bit for bit, from the whole V' (CSR
// of n rows): every pair of a block row is computed from that row's side; m
// sums the shared columns in ascending order from either side, so d(i, j) has
// the same bits as jaccard_cpu's. CSR of r1 - r0 rows, columns sorted.
Csr jaccard_rows_cpu(const int64_t* crow, const int64_t* col, const float* val, int64_t n,
                     int64_t r0, int64_t r1, double cutoff);

// The ring of the distributed stage computes encode_rows_cpu's V' without
// the other blocks' features, in three steps with the same arithmetic:
// expansion_sets_cpu: E(i) of rows [r0, r1) (docs/method.md §2.1 steps 2-3) from the
// whole kNN list, as CSR (columns sorted; val zeros); the caller computes
// d(i, e) = pair_distances_cpu (sq_distance of rows xa[ia[t]], xb[ib[t]])
// for every (i, e) while e's block is here; weigh_rows_cpu turns each row's
// distances into V's weights (step 4; `dist` is overwritten); and
// expand_rows_cpu gives rows [r0, r1) of V' (step 5) from the whole V (CSR of
// n rows). Each step is the code encode_cpu runs, so V' has the same bits.
Csr expansion_sets_cpu(const int64_t* rank, int64_t n, int64_t K, int64_t k1, int64_t half,
                       int64_t r0, int64_t r1);
void pair_distances_cpu(const float* xa, const int64_t* ia, const float* xb, const int64_t* ib,
                        int64_t pairs, int64_t d, double* out);
void weigh_rows_cpu(const int64_t* crow, int64_t rows, double* dist, float* out);
Csr expand_rows_cpu(const int64_t* v_crow, const int64_t* v_col, const float* v_val, int64_t n,
                    const int64_t* rank, int64_t K, int64_t k2, int64_t r0, int64_t r1);

}  // namespace pplr
