/*
 * Runs this library's CUDA kernels on the CPU, for tests on machines without a GPU.
 *
 * Compiled only with -DSPECDET_CPU_EMULATION by a host C++ compiler (the
 * target specdet_kernels_emu): the very kernel source files are compiled as
 * C++, each CUDA thread becomes a fiber (ucontext) and __syncthreads() a
 * switch back to the block's scheduler, which runs the block's fibers round
 * by round until all of them reach the barrier or return. Blocks run one
 * after the other, so __shared__ arrays can be function statics. Device
 * pointers are host pointers. A block whose threads split between a barrier
 * and returning (a divergent __syncthreads, undefined on a GPU) aborts.
 *
 * What this checks: the kernels' indexing, tiling, bounds, masks and
 * arithmetic. What it cannot: warp-level behaviour, memory ordering between
 * blocks, the float rounding of GPU math functions, cuFFT.
 */
#ifndef SPECDET_EMULATION_H
#define SPECDET_EMULATION_H

#include <cuda_fp16.h>        // __half and its host conversions
#include <cuda_runtime_api.h> // dim3, cudaStream_t (types only; nothing is called)

#include <ucontext.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

// The CUDA headers define these for host compilers as attributes GCC ignores
// or rejects; in the emulation they mean nothing, and shared memory is static.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#undef __restrict__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict

// swapcontext returns like setjmp, so GCC warns that the scheduler's loop
// counters "might be clobbered"; they are not (swapcontext restores them).
#pragma GCC diagnostic ignored "-Wclobbered"

namespace specdet_emu {

inline dim3 g_thread_idx;
inline dim3 g_block_idx;
inline dim3 g_block_dim;
inline dim3 g_grid_dim;

constexpr size_t kFiberStack = 64 * 1024; // the kernels keep a few dozen locals

struct Fiber {
    ucontext_t context{};
    std::unique_ptr<char[]> stack{new char[kFiberStack]}; // uninitialised: allocated once, reused by every launch
    dim3 thread;
    bool done = false;
};

inline ucontext_t g_scheduler;
inline std::vector<Fiber>* g_fibers = nullptr;
inline int g_current = 0;
inline const std::function<void()>* g_body = nullptr;

// One pool for every launch: launches run one at a time (the emulation is not thread-safe).
inline std::vector<Fiber>& fiber_pool() {
    static std::vector<Fiber> pool;
    return pool;
}

inline void fiber_main() {
    (*g_body)();
    (*g_fibers)[g_current].done = true;
    // returns to uc_link: the scheduler
}

inline void syncthreads() {
    swapcontext(&(*g_fibers)[g_current].context, &g_scheduler);
}

template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
    std::function<void()> body = [&]() { kernel(args...); };
    int const n = static_cast<int>(block.x * block.y * block.z);
    std::vector<Fiber>& fibers = fiber_pool();
    if (static_cast<int>(fibers.size()) < n) {
        fibers.resize(n);
    }
    g_fibers = &fibers;
    g_body = &body;
    g_grid_dim = grid;
    g_block_dim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz) {
        for (unsigned by = 0; by < grid.y; ++by) {
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                g_block_idx = dim3(bx, by, bz);
                for (int i = 0; i < n; ++i) {
                    Fiber& f = fibers[i];
                    getcontext(&f.context);
                    f.context.uc_stack.ss_sp = f.stack.get();
                    f.context.uc_stack.ss_size = kFiberStack;
                    f.context.uc_link = &g_scheduler;
                    makecontext(&f.context, fiber_main, 0);
                    f.done = false;
                    f.thread = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
                }
                for (bool running = true; running;) {
                    int finished = 0, waiting = 0;
                    for (int i = 0; i < n; ++i) {
                        if (fibers[i].done) {
                            continue;
                        }
                        g_current = i;
                        g_thread_idx = fibers[i].thread;
                        swapcontext(&g_scheduler, &fibers[i].context);
                        (fibers[i].done ? finished : waiting) += 1;
                    }
                    if (finished > 0 && waiting > 0) {
                        std::fprintf(stderr, "specdet emulation: divergent __syncthreads in block (%u, %u, %u)\n", bx, by, bz);
                        std::abort();
                    }
                    running = waiting > 0;
                }
            }
        }
    }
    g_fibers = nullptr;
    g_body = nullptr;
}

} // namespace specdet_emu

#define threadIdx (::specdet_emu::g_thread_idx)
#define blockIdx (::specdet_emu::g_block_idx)
#define blockDim (::specdet_emu::g_block_dim)
#define gridDim (::specdet_emu::g_grid_dim)
#define __syncthreads() (::specdet_emu::syncthreads())

#endif // SPECDET_EMULATION_H
