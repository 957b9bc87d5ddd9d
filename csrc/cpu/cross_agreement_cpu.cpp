#include "cross_agreement_cpu.h"

#include <algorithm>
#include <vector>

namespace pplr {

namespace {

// The first k entries of list[0..len) other than `self`, sorted by index.
void others(const int64_t* list, int64_t len, int64_t self, int64_t k, std::vector<int64_t>& out) {
    out.clear();
    for (int64_t t = 0; t < len && (int64_t)out.size() < k; ++t)
        if (list[t] != self) out.push_back(list[t]);
    std::sort(out.begin(), out.end());
}

}  // namespace

void cross_agreement_rows_cpu(const int64_t* neigh_g, int64_t kg, const int64_t* neigh_p,
                              int64_t kp, int64_t rows, int64_t first_row, int64_t n, int64_t k,
                              float* scores) {
    const int64_t size = std::min(k, n - 1);
#pragma omp parallel
    {
        std::vector<int64_t> g, p;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < rows; ++i) {
            others(neigh_g + i * kg, kg, first_row + i, size, g);
            others(neigh_p + i * kp, kp, first_row + i, size, p);
            std::vector<int64_t>::iterator a = g.begin(), b = p.begin();
            int64_t common = 0;
            while (a != g.end() && b != p.end()) {
                if (*a < *b) ++a;
                else if (*b < *a) ++b;
                else { ++common; ++a; ++b; }
            }
            const int64_t total = g.size() + p.size() - common;
            scores[i] = total > 0 ? static_cast<float>(common) / static_cast<float>(total) : 0.0f;
        }
    }
}

void cross_agreement_cpu(const int64_t* neigh_g, int64_t kg, const int64_t* neigh_p, int64_t kp,
                         int64_t n, int64_t k, float* scores) {
    cross_agreement_rows_cpu(neigh_g, kg, neigh_p, kp, n, 0, n, k, scores);
}

}  // namespace pplr
