// DBSCAN on the eps-neighbour graph (CSR, symmetric, self loops included), on a GPU.
//
// Compiled at run time by CuPy/NVRTC (pplr_fast/cluster/fast_cuda.py, which
// also holds the host-side loop). The kernels use only grid-stride loops and
// atomics - no shared memory, no barriers - so they are correct under any
// interleaving of their threads; the tests run them on the host, thread by
// thread in random orders (tests/cuda_host_emulation.h).
//
// Invariant of the union-find forest: parent[i] <= i, and parent values only
// ever decrease. A tree therefore has its lowest index at the root, and once
// hooking converges every core point's root is the lowest core index of its
// component: numbering the roots in index order numbers the clusters exactly
// as scikit-learn does.

// The root of i's tree, as far as this thread can see it now.
__device__ long long find_root(const volatile long long* parent, long long i) {
    long long up = parent[i];
    while (up != i) {
        i = up;
        up = parent[i];
    }
    return i;
}

// core[i] = i has at least min_samples neighbours; every point starts as its own root.
extern "C" __global__ void dbscan_init(const long long* crow, long long n, long long min_samples,
                                       int* core, long long* parent) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        core[i] = crow[i + 1] - crow[i] >= min_samples;
        parent[i] = i;
    }
}

// One hooking pass: for every core-core edge (i, j), j > i, whose endpoints have
// different roots, hang the higher root under the lower one (atomicMin). A link
// overwritten by a concurrent hook is lost but its edge is seen again in the next
// pass, which the host runs whenever `changed` was set: a pass that changes
// nothing saw one fixed forest in which every core edge joins a single tree.
extern "C" __global__ void dbscan_hook(const long long* crow, const long long* col, long long n,
                                       const int* core, long long* parent, int* changed) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        if (!core[i]) continue;
        for (long long p = crow[i]; p < crow[i + 1]; ++p) {
            const long long j = col[p];
            if (j <= i || !core[j]) continue;
            const long long ri = find_root(parent, i);
            const long long rj = find_root(parent, j);
            if (ri == rj) continue;
            const long long high = ri > rj ? ri : rj;
            const long long low = ri > rj ? rj : ri;
            if (atomicMin(&parent[high], low) > low) atomicExch(changed, 1);
        }
    }
}

// One pointer-jumping pass: parent[i] = parent[parent[i]]; the host repeats it
// until nothing changes, when every point points straight at its root.
extern "C" __global__ void dbscan_jump(long long n, long long* parent, int* changed) {
    const volatile long long* shared_parent = parent;   // other threads write it meanwhile
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const long long up = shared_parent[i];
        const long long grand = shared_parent[up];
        if (grand != up) {
            parent[i] = grand;
            atomicExch(changed, 1);
        }
    }
}

// Border points: a non-core point takes the smallest label of its core
// neighbours (the lowest-numbered cluster), -1 without any. Core labels are
// final before this kernel runs and it writes only non-core entries.
extern "C" __global__ void dbscan_border(const long long* crow, const long long* col, long long n,
                                         const int* core, long long* labels) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        if (core[i]) continue;
        long long best = -1;
        for (long long p = crow[i]; p < crow[i + 1]; ++p) {
            const long long j = col[p];
            if (core[j] && (best < 0 || labels[j] < best)) best = labels[j];
        }
        labels[i] = best;
    }
}
