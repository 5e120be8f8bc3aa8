// The slice of CUDA that ExLlamaV2's packing and reconstruction kernels use, on the CPU, so
// that their own source compiles with g++ (tests/exl2_oracle/exllamav2_cpu.py). Half precision
// is _Float16; every half operation is computed exactly in double and rounded once to nearest
// even, as the GPU's half instructions round (exact for the kernels' operands: small integers,
// powers of two and scales). A grid runs block by block; a block's threads run one after
// another, or as real threads with a barrier for kernels that call __syncthreads() (its
// __shared__ arrays are statics, shared by the block's threads).
#pragma once

#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

using std::max;
using std::min;

// A class, as CUDA's __half is: an integer converts to uint16_t rather than to it.
struct half {
    _Float16 v;
};
struct half2 {
    half x, y;
};
typedef void* cudaStream_t;

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3_ {
    unsigned x, y, z;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

static thread_local uint3_ threadIdx;
static uint3_ blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<>* block_barrier = nullptr;
#define __syncthreads() block_barrier->arrive_and_wait()

static inline half round_half(double v) { return {(_Float16)v}; }
static inline double wide(half h) { return (double)h.v; }
static inline half __float2half_rn(float f) { return {(_Float16)f}; }
static inline half __int2half_rn(int i) { return round_half((double)i); }
static inline float __half2float(half h) { return (float)h.v; }
static inline half __hmul(half a, half b) { return round_half(wide(a) * wide(b)); }
static inline half __hadd(half a, half b) { return round_half(wide(a) + wide(b)); }
static inline half __hsub(half a, half b) { return round_half(wide(a) - wide(b)); }
static inline half2 __halves2half2(half a, half b) { return {a, b}; }
static inline half2 __half2half2(half a) { return {a, a}; }
static inline half __low2half(half2 a) { return a.x; }
static inline half __high2half(half2 a) { return a.y; }
static inline half2 __hmul2(half2 a, half2 b) { return {__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
static inline half2 __hadd2(half2 a, half2 b) { return {__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
static inline half2 __hsub2(half2 a, half2 b) { return {__hsub(a.x, b.x), __hsub(a.y, b.y)}; }
static inline half2 __hfma2(half2 a, half2 b, half2 c) {
    return {round_half(wide(a.x) * wide(b.x) + wide(c.x)), round_half(wide(a.y) * wide(b.y) + wide(c.y))};
}
// (hi:lo) >> min(shift, 32), low word
static inline uint32_t __funnelshift_rc(uint32_t lo, uint32_t hi, uint32_t shift) {
    uint64_t v = ((uint64_t)hi << 32) | lo;
    return (uint32_t)(v >> std::min(shift, 32u));
}

// Run f() as every thread of every block of the grid.
template <class F>
void launch(dim3 grid, dim3 block, bool syncs, F f) {
    gridDim = grid;
    blockDim = block;
    unsigned n = block.x * block.y;
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
            blockIdx = {bx, by, 0};
            if (!syncs) {
                for (unsigned ty = 0; ty < block.y; ty++)
                    for (unsigned tx = 0; tx < block.x; tx++) {
                        threadIdx = {tx, ty, 0};
                        f();
                    }
                continue;
            }
            std::barrier<> bar(n);
            block_barrier = &bar;
            std::vector<std::thread> threads;
            for (unsigned ty = 0; ty < block.y; ty++)
                for (unsigned tx = 0; tx < block.x; tx++)
                    threads.emplace_back([&, tx, ty] {
                        threadIdx = {tx, ty, 0};
                        f();
                        bar.arrive_and_drop();  // a thread that has returned no longer holds the block back
                    });
            for (auto& t : threads) t.join();
        }
}
