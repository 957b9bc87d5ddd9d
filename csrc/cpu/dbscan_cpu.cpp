#include "dbscan_cpu.h"

#include <algorithm>
#include <vector>

namespace pplr {

namespace {

// Union-find whose root is always the smallest index of its set.
struct MinRootForest {
    std::vector<int64_t> parent;
    explicit MinRootForest(int64_t n) : parent(n) {
        for (int64_t i = 0; i < n; ++i) parent[i] = i;
    }
    int64_t find(int64_t i) {
        while (parent[i] != i) {
            parent[i] = parent[parent[i]];   // path halving
            i = parent[i];
        }
        return i;
    }
    void unite(int64_t a, int64_t b) {
        a = find(a);
        b = find(b);
        if (a < b) parent[b] = a;
        else if (b < a) parent[a] = b;
    }
};

}  // namespace

void dbscan_cpu(const int64_t* crow, const int64_t* col, int64_t n, int64_t min_samples,
                int64_t* labels) {
    std::vector<uint8_t> core(n);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) core[i] = crow[i + 1] - crow[i] >= min_samples;

    MinRootForest forest(n);
    for (int64_t i = 0; i < n; ++i) {
        if (!core[i]) continue;
        for (int64_t p = crow[i]; p < crow[i + 1]; ++p)
            if (col[p] > i && core[col[p]]) forest.unite(i, col[p]);
    }
    // a component's root is its lowest-index core point: number roots in order
    std::vector<int64_t> cluster_of_root(n, -1);
    int64_t clusters = 0;
    for (int64_t i = 0; i < n; ++i)
        if (core[i] && forest.find(i) == i) cluster_of_root[i] = clusters++;
    for (int64_t i = 0; i < n; ++i) labels[i] = core[i] ? cluster_of_root[forest.find(i)] : -1;
    // border points: the lowest-numbered cluster among their core neighbours
#pragma omp parallel for schedule(dynamic, 256)
    for (int64_t i = 0; i < n; ++i) {
        if (core[i]) continue;
        int64_t best = -1;
        for (int64_t p = crow[i]; p < crow[i + 1]; ++p) {
            const int64_t j = col[p];
            if (core[j] && (best < 0 || labels[j] < best)) best = labels[j];
        }
        labels[i] = best;
    }
}

}  // namespace pplr
