// Just enough of CUDA C for the kernels of csrc/cuda to compile with g++ as C++.
//
// The driver (tests/dbscan_emulation.cpp) runs the threads of a launch in a
// random schedule: one at a time, each either to completion (a sequential
// order) or preempted at every atomic operation, where the driver may switch to
// any other unfinished thread. Every such schedule is a legal interleaving of a
// CUDA kernel without barriers, so kernels that are correct under any
// interleaving must give the right answer for all of them.
#pragma once

#define __global__
#define __device__

struct dim3 {
    unsigned x, y, z;
};

// The launch geometry, and the indices of the thread being emulated.
inline dim3 gridDim, blockDim;
inline thread_local dim3 blockIdx, threadIdx;

// Defined by the driver: a point where another thread may be scheduled.
void emulation_switch_point();

inline long long atomicMin(long long* address, long long value) {
    emulation_switch_point();
    const long long old = *address;
    if (value < old) *address = value;
    return old;
}

inline int atomicExch(int* address, int value) {
    emulation_switch_point();
    const int old = *address;
    *address = value;
    return old;
}
