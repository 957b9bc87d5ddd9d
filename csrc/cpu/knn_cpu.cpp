#include "knn_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "common.h"

namespace pplr {

namespace {

using Entry = std::pair<float, int64_t>;   // (distance, column): lexicographic order

inline float bf16_to_float(uint16_t bits) {
    uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &wide, sizeof f);
    return f;
}

// Write the k smallest entries of `cand` (by distance, then column), sorted.
void emit_smallest(std::vector<Entry>& cand, int64_t k, float* out_dist, int64_t* out_index) {
    std::partial_sort(cand.begin(), cand.begin() + k, cand.end());
    for (int64_t t = 0; t < k; ++t) {
        out_dist[t] = cand[t].first;
        out_index[t] = cand[t].second;
    }
}

// k-th largest value of row[0..n): a size-k min-heap of the best values seen.
float kth_largest(const float* row, int64_t n, int64_t k, std::vector<float>& heap) {
    heap.assign(row, row + k);
    std::make_heap(heap.begin(), heap.end(), std::greater<float>());
    for (int64_t j = k; j < n; ++j) {
        if (row[j] > heap.front()) {
            std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
            heap.back() = row[j];
            std::push_heap(heap.begin(), heap.end(), std::greater<float>());
        }
    }
    return heap.front();
}

// Lowest score a column may have and still be among the exact top-k.
// With c = error_bound and u = output_roundoff, every score s obeys
// |s - a| <= c + u|s| against the exact fp32 similarity a. The k columns
// scoring >= t (the k-th best score) have a >= t - u|t| - c =: L, so the
// exact k-th best similarity is >= L; a column j can reach L only if
// s_j + u|s_j| >= L - c.
float candidate_floor(float t, double c, double u) {
    const double lowest = static_cast<double>(t) - u * std::abs(static_cast<double>(t)) - 2 * c;
    const double s = lowest >= 0 ? lowest / (1 + u) : lowest / (1 - u);
    return static_cast<float>(s - 1e-6);   // slack for the float compare itself
}

}  // namespace

void topk_from_distances_cpu(const float* dist, int64_t rows, int64_t n, int64_t k,
                             float* out_dist, int64_t* out_index) {
#pragma omp parallel
    {
        std::vector<Entry> cand(n);
#pragma omp for schedule(dynamic, 8)
        for (int64_t r = 0; r < rows; ++r) {
            const float* row = dist + r * n;
            for (int64_t j = 0; j < n; ++j) cand[j] = {row[j], j};
            std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end());
            std::sort(cand.begin(), cand.begin() + k);
            for (int64_t t = 0; t < k; ++t) {
                out_dist[r * k + t] = cand[t].first;
                out_index[r * k + t] = cand[t].second;
            }
        }
    }
}

void topk_rerank_cpu(const uint16_t* scores_bf16, int64_t rows, int64_t n, const float* x,
                     int64_t d, int64_t row0, int64_t k, const double* error_bound,
                     double output_roundoff, int64_t cap,
                     float* out_dist, int64_t* out_index, uint8_t* overflow) {
#pragma omp parallel
    {
        std::vector<float> row(n), heap;
        std::vector<Entry> cand;
#pragma omp for schedule(dynamic, 8)
        for (int64_t r = 0; r < rows; ++r) {
            const uint16_t* src = scores_bf16 + r * n;
            for (int64_t j = 0; j < n; ++j) row[j] = bf16_to_float(src[j]);
            const float floor = candidate_floor(kth_largest(row.data(), n, k, heap),
                                                error_bound[r], output_roundoff);
            cand.clear();
            for (int64_t j = 0; j < n; ++j)
                if (row[j] >= floor) cand.push_back({0.0f, j});
            overflow[r] = static_cast<int64_t>(cand.size()) > cap;
            if (overflow[r]) continue;
            const float* xi = x + (row0 + r) * d;
            for (auto& c : cand) c.first = sq_distance(xi, x + c.second * d, d);
            emit_smallest(cand, k, out_dist + r * k, out_index + r * k);
        }
    }
}

}  // namespace pplr
