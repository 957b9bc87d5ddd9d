#include "jaccard_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

namespace pplr {

namespace {

using Row = SparseRow;

// A dense accumulator that remembers which slots it touched (all additions
// are > 0, so a zero slot is an untouched one).
struct Accumulator {
    std::vector<float> sum;
    std::vector<int64_t> touched;
    explicit Accumulator(int64_t n) : sum(n, 0.0f) {}
    inline void add(int64_t j, float v) {
        if (sum[j] == 0.0f) touched.push_back(j);
        sum[j] += v;
    }
};

// E(i) of docs/method.md §2.1 steps 2-3 (R(i, k1) and the R(c, half) that overlap it
// by more than 2/3), sorted and unique, into `e`. r_half_of(c) returns
// R(c, half) as (pointer, size); in_r1 is a zeroed n-byte scratch.
template <typename RHalf>
void expansion_set(const int64_t* rank, int64_t K, int64_t len1, int64_t i, RHalf r_half_of,
                   std::vector<uint8_t>& in_r1, std::vector<int64_t>& r1,
                   std::vector<int64_t>& e) {
    reciprocal_neighbours(rank, K, i, len1, r1);
    for (int64_t j : r1) in_r1[j] = 1;
    e.assign(r1.begin(), r1.end());
    for (int64_t c : r1) {
        const auto [rc, size] = r_half_of(c);
        int64_t overlap = 0;
        for (int64_t t = 0; t < size; ++t) overlap += in_r1[rc[t]];
        if (3 * overlap > 2 * size) e.insert(e.end(), rc, rc + size);
    }
    for (int64_t j : r1) in_r1[j] = 0;
    std::sort(e.begin(), e.end());
    e.erase(std::unique(e.begin(), e.end()), e.end());
}

// V's weights of one row (docs/method.md §2.1 step 4) from its distances d(i, e) (the
// `size` entries of `dist`, overwritten), into `out`.
void weigh_row(double* dist, int64_t size, float* out) {
    double lowest = INFINITY;
    for (int64_t t = 0; t < size; ++t) lowest = std::min(lowest, dist[t]);
    double total = 0.0;
    for (int64_t t = 0; t < size; ++t) total += (dist[t] = std::exp(lowest - dist[t]));
    for (int64_t t = 0; t < size; ++t) out[t] = static_cast<float>(dist[t] / total);
}

// V[i] (docs/method.md §2.1 steps 2-4) into `out`: E(i), then its weights.
template <typename RHalf>
void v_row(const float* x, int64_t d, const int64_t* rank, int64_t K, int64_t len1, int64_t i,
           RHalf r_half_of, std::vector<uint8_t>& in_r1, std::vector<int64_t>& r1,
           std::vector<int64_t>& e, std::vector<double>& dist, Row& out) {
    expansion_set(rank, K, len1, i, r_half_of, in_r1, r1, e);
    out = Row();
    if (e.empty()) return;
    dist.resize(e.size());
    for (size_t t = 0; t < e.size(); ++t) dist[t] = sq_distance(x + i * d, x + e[t] * d, d);
    out.col = e;
    out.val.resize(e.size());
    weigh_row(dist.data(), e.size(), out.val.data());
}


// R(c, half) of every c in `rows`, stored rows.size() x len_half with counts.
void reciprocal_table(const int64_t* rank, int64_t K, const std::vector<int64_t>& rows,
                      int64_t len_half, std::vector<int64_t>& table, std::vector<int64_t>& size) {
    const int64_t h = rows.size();
    table.assign(h * len_half, 0);
    size.assign(h, 0);
#pragma omp parallel
    {
        std::vector<int64_t> buf;
#pragma omp for schedule(static)
        for (int64_t s = 0; s < h; ++s) {
            reciprocal_neighbours(rank, K, rows[s], len_half, buf);
            std::copy(buf.begin(), buf.end(), table.begin() + s * len_half);
            size[s] = buf.size();
        }
    }
}

// R(c, half) of every c among the first len1 neighbours of `rows`, only those.
struct HalfTable {
    int64_t len_half;
    std::vector<int64_t> slot, table, size;
    HalfTable(const int64_t* rank, int64_t n, int64_t K, int64_t len1, int64_t len_half_,
              const std::vector<int64_t>& rows)
        : len_half(len_half_), slot(n, -1) {
        std::vector<int64_t> half_rows;
        for (int64_t i : rows)
            for (int64_t t = 0; t < len1; ++t) {
                const int64_t c = rank[i * K + t];
                if (slot[c] < 0) {
                    slot[c] = half_rows.size();
                    half_rows.push_back(c);
                }
            }
        reciprocal_table(rank, K, half_rows, len_half, table, size);
    }
    std::pair<const int64_t*, int64_t> of(int64_t c) const {
        const int64_t s = slot[c];
        return {table.data() + s * len_half, size[s]};
    }
};

// V'[i] = mean of V[rank[i, t]] for t < len2 (added in kNN order) into `out`;
// v_of(j) returns the Row V[j].
template <typename VOf>
void expand_row(Accumulator& acc, VOf v_of, const int64_t* rank, int64_t K, int64_t i,
                int64_t len2, Row& out) {
    for (int64_t t = 0; t < len2; ++t) {
        const Row& src = v_of(rank[i * K + t]);
        for (size_t p = 0; p < src.col.size(); ++p) acc.add(src.col[p], src.val[p]);
    }
    std::sort(acc.touched.begin(), acc.touched.end());
    out.col = acc.touched;
    out.val.resize(out.col.size());
    for (size_t p = 0; p < out.col.size(); ++p) {
        out.val[p] = acc.sum[out.col[p]] / static_cast<float>(len2);
        acc.sum[out.col[p]] = 0.0f;
    }
    acc.touched.clear();
}

// The inverted index of a CSR V': for each column, the rows (ascending) holding it.
struct Postings {
    std::vector<int64_t> cptr, prow;
    std::vector<float> pval;
};

Postings postings(const int64_t* crow, const int64_t* col, const float* val, int64_t n) {
    const int64_t nnz = crow[n];
    Postings post{std::vector<int64_t>(n + 1, 0), std::vector<int64_t>(nnz),
                  std::vector<float>(nnz)};
    for (int64_t p = 0; p < nnz; ++p) ++post.cptr[col[p] + 1];
    std::partial_sum(post.cptr.begin(), post.cptr.end(), post.cptr.begin());
    std::vector<int64_t> cursor(post.cptr.begin(), post.cptr.end() - 1);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t p = crow[i]; p < crow[i + 1]; ++p) {
            const int64_t q = cursor[col[p]]++;
            post.prow[q] = i;
            post.pval[q] = val[p];
        }
    return post;
}

// The rows whose V the query expansion of block rows [r0, r1) averages (their
// first len2 ranks), ascending and unique.
std::vector<int64_t> averaged_rows(const int64_t* rank, int64_t K, int64_t r0, int64_t r1,
                                   int64_t len2) {
    std::vector<int64_t> rows;
    for (int64_t i = r0; i < r1; ++i)
        for (int64_t t = 0; t < len2; ++t) rows.push_back(rank[i * K + t]);
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    return rows;
}

// V' of block rows [r0, r1) from the V rows v (row j of V is v[v_slot[j]]), in
// encode_cpu's order of additions.
Csr expand_block(const std::vector<Row>& v, const std::vector<int64_t>& v_slot, int64_t n,
                 const int64_t* rank, int64_t K, int64_t len2, int64_t r0, int64_t r1) {
    std::vector<Row> vq(r1 - r0);
#pragma omp parallel
    {
        Accumulator acc(n);
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = r0; i < r1; ++i)
            expand_row(acc, [&](int64_t j) -> const Row& { return v[v_slot[j]]; }, rank, K, i, len2,
                       vq[i - r0]);
    }
    return csr_from_rows(vq);
}

}  // namespace

Csr encode_cpu(const float* x, int64_t n, int64_t d, const int64_t* rank, int64_t K,
               int64_t k1, int64_t half, int64_t k2) {
    const int64_t len1 = std::min(k1, K), len_half = std::min(half + 1, K);
    std::vector<int64_t> all(n), r_half, r_half_size;
    std::iota(all.begin(), all.end(), int64_t{0});
    reciprocal_table(rank, K, all, len_half, r_half, r_half_size);
    auto r_half_of = [&](int64_t c) {
        return std::pair<const int64_t*, int64_t>(r_half.data() + c * len_half, r_half_size[c]);
    };
    std::vector<Row> v(n);
#pragma omp parallel
    {
        std::vector<int64_t> r1, e;
        std::vector<uint8_t> in_r1(n, 0);
        std::vector<double> dist;
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < n; ++i)
            v_row(x, d, rank, K, len1, i, r_half_of, in_r1, r1, e, dist, v[i]);
    }
    if (k2 <= 1) return csr_from_rows(v);

    // query expansion: V'[i] = mean of V[rank[i, t]] for t < k2
    const int64_t len2 = std::min(k2, K);
    std::vector<Row> vq(n);
#pragma omp parallel
    {
        Accumulator acc(n);
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < n; ++i)
            expand_row(acc, [&](int64_t j) -> const Row& { return v[j]; }, rank, K, i, len2, vq[i]);
    }
    return csr_from_rows(vq);
}

Csr jaccard_cpu(const int64_t* crow, const int64_t* col, const float* val, int64_t n,
                double cutoff) {
    const Postings post = postings(crow, col, val, n);
    const std::vector<int64_t>& cptr = post.cptr;
    const std::vector<int64_t>& prow = post.prow;
    const std::vector<float>& pval = post.pval;
    // upper triangle (j >= i), row by row, with a dense accumulator per thread
    struct Pair { int64_t i, j; float d; };
    const int threads = omp_get_max_threads();
    std::vector<std::vector<Pair>> found(threads);
#pragma omp parallel
    {
        Accumulator acc(n);
        std::vector<Pair>& mine = found[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t p = crow[i]; p < crow[i + 1]; ++p) {
                const int64_t l = col[p];
                const float v = val[p];
                const int64_t* first = prow.data() + cptr[l];
                const int64_t* last = prow.data() + cptr[l + 1];
                for (const int64_t* q = std::lower_bound(first, last, i); q < last; ++q)
                    acc.add(*q, std::min(v, pval[q - prow.data()]));
            }
            for (int64_t j : acc.touched) {
                const float m = acc.sum[j];
                acc.sum[j] = 0.0f;
                const float dist = std::max(0.0f, 1.0f - m / (2.0f - m));
                if (cutoff < 0 || dist <= cutoff) mine.push_back({i, j, dist});
            }
            acc.touched.clear();
        }
    }
    // mirror into a symmetric CSR with sorted columns
    Csr out;
    out.crow.assign(n + 1, 0);
    for (const auto& part : found)
        for (const Pair& e : part) {
            ++out.crow[e.i + 1];
            if (e.j != e.i) ++out.crow[e.j + 1];
        }
    std::partial_sum(out.crow.begin(), out.crow.end(), out.crow.begin());
    out.col.resize(out.crow[n]);
    out.val.resize(out.crow[n]);
    std::vector<int64_t> cursor(out.crow.begin(), out.crow.end() - 1);
    for (const auto& part : found)
        for (const Pair& e : part) {
            int64_t q = cursor[e.i]++;
            out.col[q] = e.j;
            out.val[q] = e.d;
            if (e.j != e.i) {
                q = cursor[e.j]++;
                out.col[q] = e.i;
                out.val[q] = e.d;
            }
        }
#pragma omp parallel
    {
        std::vector<std::pair<int64_t, float>> row;
#pragma omp for schedule(dynamic, 256)
        for (int64_t i = 0; i < n; ++i) {
            row.clear();
            for (int64_t q = out.crow[i]; q < out.crow[i + 1]; ++q) row.push_back({out.col[q], out.val[q]});
            std::sort(row.begin(), row.end());
            for (size_t t = 0; t < row.size(); ++t) {
                out.col[out.crow[i] + t] = row[t].first;
                out.val[out.crow[i] + t] = row[t].second;
            }
        }
    }
    return out;
}


Csr encode_rows_cpu(const float* x, int64_t n, int64_t d, const int64_t* rank, int64_t K,
                    int64_t k1, int64_t half, int64_t k2, int64_t r0, int64_t r1) {
    const int64_t len1 = std::min(k1, K), len_half = std::min(half + 1, K);
    const int64_t len2 = k2 <= 1 ? 1 : std::min(k2, K);
    // the rows whose V is averaged (the block rows themselves when k2 <= 1)
    std::vector<int64_t> v_rows;
    if (k2 <= 1) {
        for (int64_t i = r0; i < r1; ++i) v_rows.push_back(i);
    } else {
        v_rows = averaged_rows(rank, K, r0, r1, len2);
    }
    const HalfTable half_table(rank, n, K, len1, len_half, v_rows);
    auto r_half_of = [&](int64_t c) { return half_table.of(c); };
    std::vector<int64_t> v_slot(n, -1);
    for (size_t s = 0; s < v_rows.size(); ++s) v_slot[v_rows[s]] = s;
    std::vector<Row> v(v_rows.size());
#pragma omp parallel
    {
        std::vector<int64_t> r1_buf, e;
        std::vector<uint8_t> in_r1(n, 0);
        std::vector<double> dist;
#pragma omp for schedule(dynamic, 64)
        for (int64_t s = 0; s < (int64_t)v_rows.size(); ++s)
            v_row(x, d, rank, K, len1, v_rows[s], r_half_of, in_r1, r1_buf, e, dist, v[s]);
    }
    if (k2 <= 1) return csr_from_rows(v);
    return expand_block(v, v_slot, n, rank, K, len2, r0, r1);
}

Csr jaccard_rows_cpu(const int64_t* crow, const int64_t* col, const float* val, int64_t n,
                     int64_t r0, int64_t r1, double cutoff) {
    const Postings post = postings(crow, col, val, n);
    const std::vector<int64_t>& cptr = post.cptr;
    const std::vector<int64_t>& prow = post.prow;
    const std::vector<float>& pval = post.pval;
    std::vector<Row> rows(r1 - r0);
#pragma omp parallel
    {
        Accumulator acc(n);
        std::vector<std::pair<int64_t, float>> kept;
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = r0; i < r1; ++i) {
            for (int64_t p = crow[i]; p < crow[i + 1]; ++p) {
                const int64_t l = col[p];
                const float v = val[p];
                for (int64_t q = cptr[l]; q < cptr[l + 1]; ++q) acc.add(prow[q], std::min(v, pval[q]));
            }
            // keep the pairs under the cutoff first, then sort those few by column
            kept.clear();
            for (int64_t j : acc.touched) {
                const float m = acc.sum[j];
                acc.sum[j] = 0.0f;
                const float dist = std::max(0.0f, 1.0f - m / (2.0f - m));
                if (cutoff < 0 || dist <= cutoff) kept.push_back({j, dist});
            }
            acc.touched.clear();
            std::sort(kept.begin(), kept.end());
            Row& out = rows[i - r0];
            out.col.resize(kept.size());
            out.val.resize(kept.size());
            for (size_t t = 0; t < kept.size(); ++t) {
                out.col[t] = kept[t].first;
                out.val[t] = kept[t].second;
            }
        }
    }
    return csr_from_rows(rows);
}

Csr expansion_sets_cpu(const int64_t* rank, int64_t n, int64_t K, int64_t k1, int64_t half,
                       int64_t r0, int64_t r1) {
    const int64_t len1 = std::min(k1, K), len_half = std::min(half + 1, K);
    std::vector<int64_t> rows(r1 - r0);
    std::iota(rows.begin(), rows.end(), r0);
    const HalfTable half_table(rank, n, K, len1, len_half, rows);
    std::vector<Row> sets(r1 - r0);
#pragma omp parallel
    {
        std::vector<int64_t> r1_buf;
        std::vector<uint8_t> in_r1(n, 0);
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = r0; i < r1; ++i) {
            expansion_set(rank, K, len1, i, [&](int64_t c) { return half_table.of(c); }, in_r1,
                          r1_buf, sets[i - r0].col);
            sets[i - r0].val.assign(sets[i - r0].col.size(), 0.0f);
        }
    }
    return csr_from_rows(sets);
}

void pair_distances_cpu(const float* xa, const int64_t* ia, const float* xb, const int64_t* ib,
                        int64_t pairs, int64_t d, double* out) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < pairs; ++t) out[t] = sq_distance(xa + ia[t] * d, xb + ib[t] * d, d);
}

void weigh_rows_cpu(const int64_t* crow, int64_t rows, double* dist, float* out) {
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t i = 0; i < rows; ++i)
        weigh_row(dist + crow[i], crow[i + 1] - crow[i], out + crow[i]);
}

Csr expand_rows_cpu(const int64_t* v_crow, const int64_t* v_col, const float* v_val, int64_t n,
                    const int64_t* rank, int64_t K, int64_t k2, int64_t r0, int64_t r1) {
    const int64_t len2 = k2 <= 1 ? 1 : std::min(k2, K);
    auto v_of_csr = [&](int64_t j) {
        Row row;
        row.col.assign(v_col + v_crow[j], v_col + v_crow[j + 1]);
        row.val.assign(v_val + v_crow[j], v_val + v_crow[j + 1]);
        return row;
    };
    std::vector<Row> out(r1 - r0);
    if (k2 <= 1) {
        for (int64_t i = r0; i < r1; ++i) out[i - r0] = v_of_csr(i);
        return csr_from_rows(out);
    }
    // the V rows the block averages, copied once each
    const std::vector<int64_t> v_rows = averaged_rows(rank, K, r0, r1, len2);
    std::vector<int64_t> v_slot(n, -1);
    std::vector<Row> v(v_rows.size());
    for (size_t s = 0; s < v_rows.size(); ++s) {
        v_slot[v_rows[s]] = s;
        v[s] = v_of_csr(v_rows[s]);
    }
    return expand_block(v, v_slot, n, rank, K, len2, r0, r1);
}

}  // namespace pplr
