#include "knn_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "common.h"

namespace pplr {

namespace {

using Entry = std::pair<double, int64_t>;   // (distance, column): lexicographic order

inline float bf16_to_float(uint16_t bits) {
    uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &wide, sizeof f);
    return f;
}

// The columns of a row's candidates that can still be among its k nearest (at
// or above its floor), into `cand` with their distances left at 0.
template <typename Row>
void surviving_columns(const Row& r, std::vector<Entry>& cand) {
    cand.clear();
    for (const auto& c : r.cand)
        if (c.first >= r.floor) cand.push_back({0.0, c.second});
}

// The exact distances of row xi to the candidates' columns, read from the rows
// of `cols`, whose first row is column c0.
void exact_distances(std::vector<Entry>& cand, const float* xi, const float* cols, int64_t c0,
                     int64_t d) {
    for (auto& c : cand) c.first = sq_distance(xi, cols + (c.second - c0) * d, d);
}

// Write the k smallest entries of `cand` (by distance, then column), sorted.
void emit_smallest(std::vector<Entry>& cand, int64_t k, double* out_dist, int64_t* out_index) {
    std::partial_sort(cand.begin(), cand.begin() + k, cand.end());
    for (int64_t t = 0; t < k; ++t) {
        out_dist[t] = cand[t].first;
        out_index[t] = cand[t].second;
    }
}

// Lowest score a column may have and still be among the exact top-k.
// With c = error_bound and u = output_roundoff, every score s obeys
// |s - a| <= c + u|s| against the exact similarity a. The k columns
// scoring >= t (the k-th best score) have a >= t - u|t| - c =: L, so the
// exact k-th best similarity is >= L; a column j can reach L only if
// s_j + u|s_j| >= L - c.
float candidate_floor(float t, double c, double u) {
    const double lowest = static_cast<double>(t) - u * std::abs(static_cast<double>(t)) - 2 * c;
    const double s = lowest >= 0 ? lowest / (1 + u) : lowest / (1 - u);
    return static_cast<float>(s - 1e-6);   // slack for the float compare itself
}

}  // namespace

void exact_rows_topk_cpu(const float* x, int64_t n, int64_t d, const int64_t* rows, int64_t r,
                         int64_t k, double* out_dist, int64_t* out_index) {
    std::vector<Entry> cand(n);
    for (int64_t t = 0; t < r; ++t) {      // few rows (the overflowing ones): columns in parallel
        const float* xi = x + rows[t] * d;
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < n; ++j) cand[j] = {sq_distance(xi, x + j * d, d), j};
        std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end());
        std::sort(cand.begin(), cand.begin() + k);
        for (int64_t s = 0; s < k; ++s) {
            out_dist[t * k + s] = cand[s].first;
            out_index[t * k + s] = cand[s].second;
        }
    }
}

StreamingTopK::StreamingTopK(int64_t rows, int64_t k, const double* error_bound,
                             double output_roundoff)
    : k_(k), roundoff_(output_roundoff), bound_(error_bound, error_bound + rows), rows_(rows) {}

SymmetricTopK::SymmetricTopK(int64_t n, int64_t k, const double* error_bound,
                             double output_roundoff)
    : StreamingTopK(n, k, error_bound, output_roundoff), n_(n) {}

inline void StreamingTopK::offer(int64_t row, float score, int64_t column) {
    Row& r = rows_[row];
    if (static_cast<int64_t>(r.heap.size()) < k_) {
        r.heap.push_back(score);
        std::push_heap(r.heap.begin(), r.heap.end(), std::greater<float>());
        if (static_cast<int64_t>(r.heap.size()) == k_)
            r.floor = candidate_floor(r.heap.front(), bound_[row], roundoff_);
    } else if (score > r.heap.front()) {
        std::pop_heap(r.heap.begin(), r.heap.end(), std::greater<float>());
        r.heap.back() = score;
        std::push_heap(r.heap.begin(), r.heap.end(), std::greater<float>());
        r.floor = candidate_floor(r.heap.front(), bound_[row], roundoff_);
    }
    if (score < r.floor) return;
    r.cand.push_back({score, static_cast<int32_t>(column)});
    if (r.cand.size() > 2 * std::max<size_t>(r.pruned_size, 64)) {   // drop what fell below
        const float floor = r.floor;
        r.cand.erase(std::remove_if(r.cand.begin(), r.cand.end(),
                                    [floor](const std::pair<float, int32_t>& c) { return c.first < floor; }),
                     r.cand.end());
        r.pruned_size = r.cand.size();
    }
}

void SymmetricTopK::consume(const uint16_t* scores_bf16, int64_t r0, int64_t rows) {
    consume_block(scores_bf16, r0, rows, bf16_to_float);
}

void SymmetricTopK::consume(const float* scores, int64_t r0, int64_t rows) {
    consume_block(scores, r0, rows, [](float s) { return s; });
}

template <typename Score, typename ToFloat>
void SymmetricTopK::consume_block(const Score* scores, int64_t r0, int64_t rows,
                                  ToFloat to_float) {
    const int64_t width = n_ - r0;
    constexpr int64_t kTile = 32;
#pragma omp parallel
    {
        // the block's own rows see columns [r0, n)
#pragma omp for schedule(dynamic, 4)
        for (int64_t b = 0; b < rows; ++b) {
            const Score* src = scores + b * width;
            for (int64_t c = 0; c < width; ++c) offer(r0 + b, to_float(src[c]), r0 + c);
        }
        // rows right of the block see its columns [r0, r0 + rows), read as column tiles
        const int64_t tiles = (width - rows + kTile - 1) / kTile;
#pragma omp for schedule(dynamic, 4)
        for (int64_t t = 0; t < tiles; ++t) {
            const int64_t c0 = rows + t * kTile, c1 = std::min(width, c0 + kTile);
            for (int64_t b = 0; b < rows; ++b) {
                const Score* src = scores + b * width;
                for (int64_t c = c0; c < c1; ++c) offer(r0 + c, to_float(src[c]), r0 + b);
            }
        }
    }
}

void SymmetricTopK::finish(const float* x, int64_t d, int64_t cap, double* out_dist,
                           int64_t* out_index, uint8_t* overflow) {
#pragma omp parallel
    {
        std::vector<Entry> cand;
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < n_; ++i) {
            Row& r = rows_[i];
            surviving_columns(r, cand);
            overflow[i] = static_cast<int64_t>(cand.size()) > cap;
            if (!overflow[i]) {
                exact_distances(cand, x + i * d, x, 0, d);
                emit_smallest(cand, k_, out_dist + i * k_, out_index + i * k_);
            }
            r = Row();
        }
    }
}

void SymmetricTopK::take_rows(int64_t a, int64_t b, std::vector<int64_t>& ptr,
                              std::vector<int32_t>& col, std::vector<float>& score) {
    ptr.assign(b - a + 1, 0);
    for (int64_t i = a; i < b; ++i) {
        const Row& r = rows_[i];
        int64_t kept = 0;
        for (const auto& c : r.cand) kept += c.first >= r.floor;
        ptr[i - a + 1] = ptr[i - a] + kept;
    }
    col.resize(ptr.back());
    score.resize(ptr.back());
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t i = a; i < b; ++i) {
        Row& r = rows_[i];
        int64_t q = ptr[i - a];
        for (const auto& c : r.cand)
            if (c.first >= r.floor) {
                col[q] = c.second;
                score[q++] = c.first;
            }
        r = Row();
    }
}

void SymmetricTopK::give_rows(int64_t a, int64_t b, const int64_t* ptr, const int32_t* col,
                              const float* score) {
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t i = a; i < b; ++i)
        for (int64_t q = ptr[i - a]; q < ptr[i - a + 1]; ++q) offer(i, score[q], col[q]);
}

void SymmetricTopK::finish_rows(int64_t a, int64_t b, const float* x, int64_t d, int64_t cap,
                                double* out_dist, int64_t* out_index, uint8_t* overflow) {
#pragma omp parallel
    {
        std::vector<Entry> cand;
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = a; i < b; ++i) {
            Row& r = rows_[i];
            const int64_t o = i - a;
            surviving_columns(r, cand);
            overflow[o] = static_cast<int64_t>(cand.size()) > cap;
            if (!overflow[o]) {
                exact_distances(cand, x + i * d, x, 0, d);
                emit_smallest(cand, k_, out_dist + o * k_, out_index + o * k_);
            }
            r = Row();
        }
    }
}

RingTopK::RingTopK(int64_t rows, int64_t k, const double* error_bound, double output_roundoff)
    : StreamingTopK(rows, k, error_bound, output_roundoff), best_(rows) {}

void RingTopK::consume(const uint16_t* scores_bf16, int64_t a, int64_t rows, int64_t c0,
                       int64_t width) {
    consume_block(scores_bf16, a, rows, c0, width, bf16_to_float);
}

void RingTopK::consume(const float* scores, int64_t a, int64_t rows, int64_t c0, int64_t width) {
    consume_block(scores, a, rows, c0, width, [](float s) { return s; });
}

template <typename Score, typename ToFloat>
void RingTopK::consume_block(const Score* scores, int64_t a, int64_t rows, int64_t c0,
                             int64_t width, ToFloat to_float) {
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t b = 0; b < rows; ++b) {
        const Score* src = scores + b * width;
        for (int64_t c = 0; c < width; ++c) offer(a + b, to_float(src[c]), c0 + c);
    }
}

void RingTopK::merge(int64_t row, std::vector<Entry>& entries) {
    std::vector<Entry>& best = best_[row];
    best.insert(best.end(), entries.begin(), entries.end());
    const size_t keep = std::min<size_t>(best.size(), static_cast<size_t>(k_));
    std::partial_sort(best.begin(), best.begin() + keep, best.end());
    best.resize(keep);
}

void RingTopK::rerank(const float* x_rows, const float* x_cols, int64_t d, int64_t c0) {
    const int64_t n_rows = rows_.size();
#pragma omp parallel
    {
        std::vector<Entry> cand;
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < n_rows; ++i) {
            Row& r = rows_[i];
            surviving_columns(r, cand);
            r.cand.clear();
            r.pruned_size = 0;
            exact_distances(cand, x_rows + i * d, x_cols, c0, d);
            merge(i, cand);
        }
    }
}

void RingTopK::finish(double* out_dist, int64_t* out_index) {
    const int64_t n_rows = rows_.size();
    for (int64_t i = 0; i < n_rows; ++i) {
        require(static_cast<int64_t>(best_[i].size()) == k_,
                "a row has fewer than k neighbours: not every block visited");
        for (int64_t t = 0; t < k_; ++t) {
            out_dist[i * k_ + t] = best_[i][t].first;
            out_index[i * k_ + t] = best_[i][t].second;
        }
        best_[i] = std::vector<Entry>();
        rows_[i] = Row();
    }
}

}  // namespace pplr
