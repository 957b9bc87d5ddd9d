// Host emulation of csrc/cuda/dbscan_cuda.cu: the same source, compiled by g++.
//
// Build: g++ -std=c++17 -shared -fPIC -pthread -I tests -I csrc/cuda tests/dbscan_emulation.cpp
// Each emulate_<kernel>(blocks, threads, seed, preemptive, kernel arguments...)
// runs one launch of <kernel> under a random schedule drawn from `seed`:
// sequential (each thread runs to completion, in a shuffled order) or
// preemptive (one OS thread per CUDA thread, exactly one running at a time,
// and at every atomic the running one hands over to a random unfinished one).
// The host-side loop around the launches is
// pplr_fast.cluster.fast_cuda.dbscan_labels, shared with the GPU path: the
// tests pass it a launcher that calls these functions.
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_host_emulation.h"
#include "dbscan_cuda.cu"

namespace {

// Runs one emulated CUDA thread at a time; the others wait for their turn.
class Scheduler {
public:
    explicit Scheduler(unsigned long long seed) : rng_(seed) {}

    void add(int id) { unfinished_.push_back(id); }

    void start() {
        std::lock_guard<std::mutex> lock(mutex_);
        pick_next();
    }

    void wait_turn(int id) {
        std::unique_lock<std::mutex> lock(mutex_);
        turn_.wait(lock, [&] { return running_ == id; });
    }

    void switch_point(int id) {
        std::unique_lock<std::mutex> lock(mutex_);
        pick_next();
        turn_.wait(lock, [&] { return running_ == id; });
    }

    void finish(int id) {
        std::lock_guard<std::mutex> lock(mutex_);
        unfinished_.erase(std::find(unfinished_.begin(), unfinished_.end(), id));
        pick_next();
    }

private:
    void pick_next() {   // caller holds mutex_
        running_ = unfinished_.empty() ? -1 : unfinished_[rng_() % unfinished_.size()];
        turn_.notify_all();
    }

    std::mutex mutex_;
    std::condition_variable turn_;
    std::vector<int> unfinished_;
    int running_ = -1;
    std::mt19937_64 rng_;
};

Scheduler* active_scheduler = nullptr;
thread_local int emulated_thread = -1;

template <typename Body>
void run_grid(unsigned blocks, unsigned threads, unsigned long long seed, int preemptive,
              Body body) {
    std::vector<std::pair<unsigned, unsigned>> order;
    for (unsigned b = 0; b < blocks; ++b)
        for (unsigned t = 0; t < threads; ++t) order.emplace_back(b, t);
    gridDim = dim3{blocks, 1, 1};
    blockDim = dim3{threads, 1, 1};
    if (!preemptive) {
        std::mt19937_64 rng(seed);
        std::shuffle(order.begin(), order.end(), rng);
        for (const auto& [b, t] : order) {
            blockIdx = dim3{b, 0, 0};
            threadIdx = dim3{t, 0, 0};
            body();
        }
        return;
    }
    Scheduler scheduler(seed);
    active_scheduler = &scheduler;
    std::vector<std::thread> workers;
    for (int id = 0; id < (int)order.size(); ++id) {
        scheduler.add(id);
        workers.emplace_back([&, id] {
            emulated_thread = id;
            blockIdx = dim3{order[id].first, 0, 0};
            threadIdx = dim3{order[id].second, 0, 0};
            scheduler.wait_turn(id);
            body();
            scheduler.finish(id);
        });
    }
    scheduler.start();
    for (auto& w : workers) w.join();
    active_scheduler = nullptr;
}

}  // namespace

void emulation_switch_point() {
    if (active_scheduler != nullptr) active_scheduler->switch_point(emulated_thread);
}

extern "C" {

void emulate_dbscan_init(unsigned blocks, unsigned threads, unsigned long long seed,
                         int preemptive, const long long* crow, long long n,
                         long long min_samples, int* core, long long* parent) {
    run_grid(blocks, threads, seed, preemptive,
             [&] { dbscan_init(crow, n, min_samples, core, parent); });
}

void emulate_dbscan_hook(unsigned blocks, unsigned threads, unsigned long long seed,
                         int preemptive, const long long* crow, const long long* col, long long n,
                         const int* core, long long* parent, int* changed) {
    run_grid(blocks, threads, seed, preemptive,
             [&] { dbscan_hook(crow, col, n, core, parent, changed); });
}

void emulate_dbscan_jump(unsigned blocks, unsigned threads, unsigned long long seed,
                         int preemptive, long long n, long long* parent, int* changed) {
    run_grid(blocks, threads, seed, preemptive, [&] { dbscan_jump(n, parent, changed); });
}

void emulate_dbscan_border(unsigned blocks, unsigned threads, unsigned long long seed,
                           int preemptive, const long long* crow, const long long* col,
                           long long n, const int* core, long long* labels) {
    run_grid(blocks, threads, seed, preemptive,
             [&] { dbscan_border(crow, col, n, core, labels); });
}

}  // extern "C"
