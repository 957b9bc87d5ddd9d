#include "rerank_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <numeric>

namespace pplr {

namespace {

// D rows a thread streams together when a segment is read by column: each
// array row contributes one contiguous run of this many entries.
constexpr int64_t COLUMN_RUN = 2048;

inline float squared_float(float x) {   // rounded once, as numpy's float32 x**2 (and as float(double(x)^2))
    return x * x;
}
inline float squared_float(double x) {  // double square, then rounded to float: as x**2 .astype(f32)
    return static_cast<float>(x * x);
}
template <typename T>
inline float entry_value(T x, bool square) {
    return square ? squared_float(x) : static_cast<float>(x);
}

// Insert (v, j) into the sorted list best/index of `count` entries (at most K): a full
// list drops its last entry. Equal values keep their order (columns arrive ascending).
inline void insert_sorted(float* best, int64_t* index, int64_t& count, int64_t K, float v,
                          int64_t j) {
    int64_t pos = count < K ? count++ : K - 1;
    while (pos > 0 && best[pos - 1] > v) {
        best[pos] = best[pos - 1];
        index[pos] = index[pos - 1];
        --pos;
    }
    best[pos] = v;
    index[pos] = j;
}

// Running state of a block of D rows, before scaling: the maximum, a
// non-finite flag, and the `keep` smallest entries by (value, column);
// bar[r] is the value an entry must beat to enter row r (+inf until it is full).
struct RowStates {
    int64_t keep;
    std::vector<float> max, bar, best;
    std::vector<int64_t> index, count;
    std::vector<uint8_t> non_finite;
    RowStates(int64_t rows, int64_t keep)
        : keep(keep), max(rows, 0.0f), bar(rows, std::numeric_limits<float>::infinity()),
          best(rows * keep), index(rows * keep), count(rows, 0), non_finite(rows, 0) {}
    // Offer entry (column j, value v < bar[r]) to row r; columns arrive in ascending order,
    // so an entry equal to the last kept one stays out (ties go to the lower column).
    inline void offer(int64_t r, int64_t j, float v) {
        float* b = best.data() + r * keep;
        insert_sorted(b, index.data() + r * keep, count[r], keep, v, j);
        if (count[r] == keep) bar[r] = b[keep - 1];
    }
};

// Feeds the entries of segment s (columns offset ..) to the rows' states.
template <typename T>
void feed(const Segment& s, bool square, int64_t offset, RowStates& st) {
    const T* p = static_cast<const T*>(s.data);
    const int64_t len = s.length(), rows = s.count();
    constexpr int64_t BLOCK = 64;   // entries screened at once against the bar(s)
    if (s.by_col) {
        // D row r is column r: stream the array's rows over a run of columns
        const int64_t runs = (rows + COLUMN_RUN - 1) / COLUMN_RUN;
#pragma omp parallel
        {
            std::vector<float> v(COLUMN_RUN), total(COLUMN_RUN);
#pragma omp for schedule(dynamic, 1)
            for (int64_t run = 0; run < runs; ++run) {
                const int64_t r0 = run * COLUMN_RUN, width = std::min(rows - r0, COLUMN_RUN);
                float* top = st.max.data() + r0;
                const float* bar = st.bar.data() + r0;
                std::fill(total.begin(), total.end(), 0.0f);
                for (int64_t j = 0; j < len; ++j) {
                    const T* src = p + j * s.cols + r0;
#pragma omp simd
                    for (int64_t t = 0; t < width; ++t) {
                        v[t] = entry_value(src[t], square);
                        top[t] = std::max(top[t], v[t]);
                        total[t] += v[t];      // NaN stays NaN: the non-finite check
                    }
                    for (int64_t t0 = 0; t0 < width; t0 += BLOCK) {
                        const int64_t t1 = std::min(width, t0 + BLOCK);
                        int below = 0;
#pragma omp simd reduction(| : below)
                        for (int64_t t = t0; t < t1; ++t) below |= v[t] < bar[t];
                        if (!below) continue;
                        for (int64_t t = t0; t < t1; ++t)
                            if (v[t] < bar[t]) st.offer(r0 + t, offset + j, v[t]);
                    }
                }
                for (int64_t t = 0; t < width; ++t)
                    st.non_finite[r0 + t] |= std::isnan(total[t]) || std::isinf(top[t]);
            }
        }
    } else {
#pragma omp parallel
        {
            std::vector<float> v(BLOCK);
#pragma omp for schedule(dynamic, 16)
            for (int64_t r = 0; r < rows; ++r) {
                const T* src = p + r * s.cols;
                float m = st.max[r], total = 0.0f;
                for (int64_t j0 = 0; j0 < len; j0 += BLOCK) {
                    const int64_t w = std::min(len - j0, BLOCK);
                    float low = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m) reduction(min : low) reduction(+ : total)
                    for (int64_t t = 0; t < w; ++t) {
                        v[t] = entry_value(src[j0 + t], square);
                        m = std::max(m, v[t]);
                        low = std::min(low, v[t]);
                        total += v[t];      // NaN stays NaN: the non-finite check
                    }
                    if (!(low < st.bar[r])) continue;
                    for (int64_t t = 0; t < w; ++t)
                        if (v[t] < st.bar[r]) st.offer(r, offset + j0 + t, v[t]);
                }
                st.max[r] = m;
                st.non_finite[r] |= std::isnan(total) || std::isinf(m);
            }
        }
    }
}

void feed_segment(const Segment& s, bool square, int64_t offset, RowStates& st) {
    if (s.length() == 0) return;
    if (s.is_double) feed<double>(s, square, offset, st);
    else feed<float>(s, square, offset, st);
}

// Entry j of D row r before scaling (random access, for the rare rescans).
template <typename T>
float segment_entry(const Segment& s, int64_t r, int64_t j, bool square) {
    const T* p = static_cast<const T*>(s.data);
    return entry_value(s.by_col ? p[j * s.cols + r] : p[r * s.cols + j], square);
}
float row_entry(const Segment& a, const Segment& b, int64_t r, int64_t j, bool square) {
    const Segment& s = j < a.length() ? a : b;
    const int64_t k = j < a.length() ? j : j - a.length();
    return s.is_double ? segment_entry<double>(s, r, k, square) : segment_entry<float>(s, r, k, square);
}

// The K smallest entries of row (length n) by (value, column), sorted.
void select_smallest(const float* row, int64_t n, int64_t K, float* best, int64_t* index) {
    int64_t count = 0;
    for (int64_t j = 0; j < n; ++j) {
        const float v = row[j];
        if (count == K && !(v < best[K - 1])) continue;
        insert_sorted(best, index, count, K, v, j);
    }
}

// A dense double accumulator that lists the slots it touched.
struct Accumulator {
    std::vector<double> sum;
    std::vector<uint8_t> seen;
    std::vector<int64_t> touched;
    explicit Accumulator(int64_t n) : sum(n, 0.0), seen(n, 0) {}
    inline void add(int64_t j, double v) {
        if (!seen[j]) {
            seen[j] = 1;
            touched.push_back(j);
        }
        sum[j] += v;
    }
    // Sorted touched slots and their sums, then reset.
    void drain(SparseRow& out, double scale) {
        std::sort(touched.begin(), touched.end());
        out.col = touched;
        out.val.resize(touched.size());
        for (size_t p = 0; p < touched.size(); ++p) {
            const int64_t j = touched[p];
            out.val[p] = static_cast<float>(sum[j] * scale);
            sum[j] = 0.0;
            seen[j] = 0;
        }
        touched.clear();
    }
};

template <typename T>
double pair_distance(const T* a, const T* b, int64_t d) {
    double acc[4] = {0, 0, 0, 0};
    int64_t t = 0;
    for (; t + 4 <= d; t += 4)
        for (int u = 0; u < 4; ++u) {
            const double e = static_cast<double>(a[t + u]) - static_cast<double>(b[t + u]);
            acc[u] += e * e;
        }
    for (; t < d; ++t) {
        const double e = static_cast<double>(a[t]) - static_cast<double>(b[t]);
        acc[0] += e * e;
    }
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

}  // namespace

RankProblems rank_rows_cpu(const Segment& a, const Segment& b, int64_t K, bool square,
                           int64_t* rank, float* rowmax) {
    const int64_t rows = a.count(), n = a.length() + b.length();
    // One pass over the data keeps the K + 1 smallest unscaled entries of each
    // row. Scaling (v / max, in float) never reverses an order but can create
    // ties, so the K smallest scaled entries by (value, column) are among
    // them unless the (K+1)-th scales to the K-th's value: such rows are
    // rescanned in full.
    const int64_t keep = std::min(K + 1, n);
    RowStates st(rows, keep);
    feed_segment(a, square, 0, st);
    feed_segment(b, square, a.length(), st);
    RankProblems problems;
    std::vector<int64_t> rescan;
    for (int64_t r = 0; r < rows; ++r) {
        const float m = st.max[r];
        if (st.non_finite[r] || !(m > 0.0f)) {
            if (st.non_finite[r] && problems.non_finite_row < 0) problems.non_finite_row = r;
            if (!st.non_finite[r] && problems.zero_row < 0) problems.zero_row = r;
            std::fill(rank + r * K, rank + (r + 1) * K, 0);
            rowmax[r] = m;
            continue;
        }
        rowmax[r] = m;
        std::vector<std::pair<float, int64_t>> scaled(keep);
        for (int64_t t = 0; t < keep; ++t)
            scaled[t] = {st.best[r * keep + t] / m, st.index[r * keep + t]};
        std::sort(scaled.begin(), scaled.end());
        if (keep > K && !(scaled[K].first > scaled[K - 1].first)) {
            rescan.push_back(r);
            continue;
        }
        for (int64_t t = 0; t < K; ++t) rank[r * K + t] = scaled[t].second;
    }
#pragma omp parallel
    {
        std::vector<float> row(n), best(K);
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < (int64_t)rescan.size(); ++p) {
            const int64_t r = rescan[p];
            for (int64_t j = 0; j < n; ++j) row[j] = row_entry(a, b, r, j, square) / rowmax[r];
            select_smallest(row.data(), n, K, best.data(), rank + r * K);
        }
    }
    return problems;
}

Csr expansion_cpu(const int64_t* rank, int64_t n, int64_t K, int64_t len1, int64_t len_half) {
    // R(c, round(k1 / 2)) of every c, n x len_half with sizes
    std::vector<int64_t> half(n * len_half), half_size(n);
#pragma omp parallel
    {
        std::vector<int64_t> buf;
#pragma omp for schedule(static)
        for (int64_t c = 0; c < n; ++c) {
            reciprocal_neighbours(rank, K, c, len_half, buf);
            std::copy(buf.begin(), buf.end(), half.begin() + c * len_half);
            half_size[c] = buf.size();
        }
    }
    std::vector<SparseRow> sets(n);
#pragma omp parallel
    {
        std::vector<int64_t> r1, e;
        std::vector<uint8_t> in_r1(n, 0);
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < n; ++i) {
            reciprocal_neighbours(rank, K, i, len1, r1);
            for (int64_t j : r1) in_r1[j] = 1;
            e = r1;
            for (int64_t c : r1) {
                const int64_t* rc = half.data() + c * len_half;
                const int64_t size = half_size[c];
                int64_t overlap = 0;
                for (int64_t t = 0; t < size; ++t) overlap += in_r1[rc[t]];
                if (3 * overlap > 2 * size) e.insert(e.end(), rc, rc + size);   // > 2/3 |R(c, h)|
            }
            for (int64_t j : r1) in_r1[j] = 0;
            std::sort(e.begin(), e.end());
            e.erase(std::unique(e.begin(), e.end()), e.end());
            sets[i].col = e;
        }
    }
    Csr out = csr_from_rows(sets);
    out.val.clear();
    return out;
}

namespace {

// V' = mean of V over the first len2 ranks (V itself when len2 <= 1), CSR.
Csr query_expansion(const int64_t* crow, const int64_t* col, const float* val, int64_t n,
                    const int64_t* rank, int64_t K, int64_t len2) {
    if (len2 <= 1) {
        Csr v;
        v.crow.assign(crow, crow + n + 1);
        v.col.assign(col, col + crow[n]);
        v.val.assign(val, val + crow[n]);
        return v;
    }
    std::vector<SparseRow> expanded(n);
#pragma omp parallel
    {
        Accumulator acc(n);
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t t = 0; t < len2; ++t) {
                const int64_t j = rank[i * K + t];
                for (int64_t p = crow[j]; p < crow[j + 1]; ++p) acc.add(col[p], val[p]);
            }
            acc.drain(expanded[i], 1.0 / static_cast<double>(len2));
        }
    }
    return csr_from_rows(expanded);
}

// For each column, the gallery rows q .. n-1 holding it (as g = row - q, ascending) and their values.
struct Postings {
    std::vector<int64_t> ptr, row;
    std::vector<float> val;
};

Postings gallery_postings(const Csr& v, int64_t n, int64_t q) {
    Postings p;
    p.ptr.assign(n + 1, 0);
    for (int64_t e = v.crow[q]; e < v.crow[n]; ++e) ++p.ptr[v.col[e] + 1];
    std::partial_sum(p.ptr.begin(), p.ptr.end(), p.ptr.begin());
    p.row.resize(p.ptr[n]);
    p.val.resize(p.ptr[n]);
    std::vector<int64_t> cursor(p.ptr.begin(), p.ptr.end() - 1);
    for (int64_t j = q; j < n; ++j)
        for (int64_t e = v.crow[j]; e < v.crow[j + 1]; ++e) {
            const int64_t slot = cursor[v.col[e]]++;
            p.row[slot] = j - q;
            p.val[slot] = v.val[e];
        }
    return p;
}

}  // namespace

Csr query_gallery_overlap_cpu(const int64_t* crow, const int64_t* col, const float* val,
                              int64_t n, const int64_t* rank, int64_t K, int64_t len2, int64_t q) {
    const Csr v = query_expansion(crow, col, val, n, rank, K, len2);
    const Postings post = gallery_postings(v, n, q);
    std::vector<SparseRow> found(q);
#pragma omp parallel
    {
        Accumulator acc(std::max<int64_t>(n - q, 1));
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < q; ++i) {
            for (int64_t e = v.crow[i]; e < v.crow[i + 1]; ++e) {
                const int64_t l = v.col[e];
                const float w = v.val[e];
                for (int64_t s = post.ptr[l]; s < post.ptr[l + 1]; ++s)
                    acc.add(post.row[s], std::min(w, post.val[s]));
            }
            acc.drain(found[i], 1.0);
        }
    }
    return csr_from_rows(found);
}

namespace {

template <typename T>
void overlap_combine(const Csr& v, const Postings& post, const T* qg, int64_t q, int64_t g,
                     bool square, const float* rowmax, double lambda, float* out) {
    const float keep = static_cast<float>(1.0 - lambda), mix = static_cast<float>(lambda);
#pragma omp parallel
    {
        std::vector<float> m(g, 0.0f);   // overlaps m(i, g); exactly 0 where supports do not meet
#pragma omp for schedule(dynamic, 8)
        for (int64_t i = 0; i < q; ++i) {
            for (int64_t e = v.crow[i]; e < v.crow[i + 1]; ++e) {
                const int64_t l = v.col[e];
                const float w = v.val[e];
                for (int64_t s = post.ptr[l]; s < post.ptr[l + 1]; ++s)
                    m[post.row[s]] += std::min(w, post.val[s]);
            }
            const T* src = qg + i * g;
            float* dst = out + i * g;
            float* overlap = m.data();
            const float top = rowmax[i];
#pragma omp simd
            for (int64_t j = 0; j < g; ++j) {
                const float jaccard = 1.0f - overlap[j] / (2.0f - overlap[j]);   // 1 where m = 0
                dst[j] = jaccard * keep + (entry_value(src[j], square) / top) * mix;
                overlap[j] = 0.0f;
            }
        }
    }
}

}  // namespace

void overlap_combine_cpu(const int64_t* crow, const int64_t* col, const float* val, int64_t n,
                         const int64_t* rank, int64_t K, int64_t len2, const Segment& qg,
                         bool square, const float* rowmax, double lambda, float* out) {
    const int64_t q = qg.rows;
    const Csr v = query_expansion(crow, col, val, n, rank, K, len2);
    const Postings post = gallery_postings(v, n, q);
    if (qg.is_double)
        overlap_combine(v, post, static_cast<const double*>(qg.data), q, qg.cols, square, rowmax,
                        lambda, out);
    else
        overlap_combine(v, post, static_cast<const float*>(qg.data), q, qg.cols, square, rowmax,
                        lambda, out);
}

void pair_sq_distance_cpu(const void* x, bool is_double, int64_t d, const int64_t* rows,
                          const int64_t* cols, int64_t pairs, double* out) {
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) {
        if (is_double) {
            const double* base = static_cast<const double*>(x);
            out[p] = pair_distance(base + rows[p] * d, base + cols[p] * d, d);
        } else {
            const float* base = static_cast<const float*>(x);
            out[p] = pair_distance(base + rows[p] * d, base + cols[p] * d, d);
        }
    }
}

}  // namespace pplr
