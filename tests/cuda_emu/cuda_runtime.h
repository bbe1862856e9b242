/* cuda_runtime.h — the CUDA kernel language as the .cu files of kernels/cuda/ use it,
 * emulated on the CPU (tests/cuda_emu/cuda_emu.cpp says how, and what it
 * does not check). With it, a .cu file whose launches have been rewritten
 * (emu_cu.cmake turns `k<<<grid, block, shmem, stream>>>(args);` into
 * `DV_EMU_LAUNCH(k, dv_emu_cfg(grid, block, shmem, stream), args);`)
 * compiles as ordinary C++:
 *  - __global__/__device__ functions are host functions; __shared__ is
 *    `static` (blocks run one after another, so one copy serves them all)
 *    and refilled with NaN bytes before every block;
 *  - threadIdx, blockIdx, blockDim and gridDim are globals the scheduler sets
 *    before it resumes a thread (every thread of a block is a fiber);
 *  - __syncthreads, __syncwarp and the warp shuffles and votes suspend the
 *    calling fiber until every thread they wait for has arrived, and check
 *    that it can (no lane of the mask exited, none waits elsewhere);
 *  - the _rn intrinsics are the host's IEEE operations, never fused (the
 *    emulation is built with -ffp-contract=off).
 * C files get only the host API (cuda_runtime_api.h), as with NVIDIA's
 * header.
 */
#ifndef DV_CUDA_EMU_RUNTIME_H
#define DV_CUDA_EMU_RUNTIME_H

#include "cuda_runtime_api.h"

#ifdef __cplusplus

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- qualifiers --------------------------------------------------------- */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__    __attribute__((noinline))
/* __shared__ variables are statics in one section, which the scheduler
 * fills with NaN bytes before each block, as real shared memory starts as
 * garbage (dynamic `extern __shared__` arrays are not emulated). */
#define __shared__ static __attribute__((section("dv_emu_shared")))
#define __launch_bounds__(...)

/* ---- vector types and the thread coordinates ---------------------------- */

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) int4 {
    int x, y, z, w;
};

static inline float2 make_float2(float x, float y) {
    float2 r = {x, y};
    return r;
}
static inline float4 make_float4(float x, float y, float z, float w) {
    float4 r = {x, y, z, w};
    return r;
}
static inline int4 make_int4(int x, int y, int z, int w) {
    int4 r = {x, y, z, w};
    return r;
}

/* Set by the scheduler for the thread it runs (one host thread runs every
 * emulated thread, so plain globals do). */
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
#define warpSize 32

/* ---- arithmetic intrinsics: correctly rounded, never fused --------------- */

static inline float __fadd_rn(float a, float b) {
    return a + b;
}
static inline float __fsub_rn(float a, float b) {
    return a - b;
}
static inline float __fmul_rn(float a, float b) {
    return a * b;
}
static inline float __fdiv_rn(float a, float b) {
    return a / b;
}
static inline float __frcp_rn(float a) {
    return 1.0f / a;
}
static inline float __fsqrt_rn(float a) {
    return sqrtf(a);
}
static inline float __fmaf_rn(float a, float b, float c) {
    return fmaf(a, b, c);
}
static inline double __dadd_rn(double a, double b) {
    return a + b;
}
static inline double __dmul_rn(double a, double b) {
    return a * b;
}
/* ---- bit casts ----------------------------------------------------------- */

static inline unsigned int __float_as_uint(float x) {
    unsigned int u;
    memcpy(&u, &x, sizeof u);
    return u;
}
static inline float __uint_as_float(unsigned int u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Not here: __expf, __logf and the other fast approximations (glibc
 * declares functions of those names); add them, as the host's expf ..., if
 * a kernel starts to use them. */

/* ---- synchronization, shuffles, votes ----------------------------------- */

enum {
    DV_EMU_SHFL_IDX,
    DV_EMU_SHFL_UP,
    DV_EMU_SHFL_DOWN,
    DV_EMU_SHFL_XOR,
    DV_EMU_VOTE_ALL,
    DV_EMU_VOTE_ANY,
    DV_EMU_VOTE_BALLOT,
    DV_EMU_SYNCWARP
};

/* The calling thread waits at a block barrier / a warp operation. */
void dv_emu_syncthreads(void);
/* out (bytes) = the value of in (bytes) that the operation `op` gives this
 * lane; b is the lane, delta or xor mask; every lane of mask takes part. */
void dv_emu_warp_op(int op, unsigned int mask, const void *in, void *out, size_t bytes, int b,
                    int width);

static inline void __syncthreads(void) {
    dv_emu_syncthreads();
}
static inline void __syncwarp(unsigned int mask = 0xffffffffu) {
    dv_emu_warp_op(DV_EMU_SYNCWARP, mask, NULL, NULL, 0, 0, 32);
}

#define DV_EMU_SHUFFLES(T)                                                                         \
    static inline T __shfl_sync(unsigned int mask, T v, int src, int width = 32) {                 \
        T r;                                                                                       \
        dv_emu_warp_op(DV_EMU_SHFL_IDX, mask, &v, &r, sizeof v, src, width);                       \
        return r;                                                                                  \
    }                                                                                              \
    static inline T __shfl_up_sync(unsigned int mask, T v, unsigned int d, int width = 32) {       \
        T r;                                                                                       \
        dv_emu_warp_op(DV_EMU_SHFL_UP, mask, &v, &r, sizeof v, (int)d, width);                     \
        return r;                                                                                  \
    }                                                                                              \
    static inline T __shfl_down_sync(unsigned int mask, T v, unsigned int d, int width = 32) {     \
        T r;                                                                                       \
        dv_emu_warp_op(DV_EMU_SHFL_DOWN, mask, &v, &r, sizeof v, (int)d, width);                   \
        return r;                                                                                  \
    }                                                                                              \
    static inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {       \
        T r;                                                                                       \
        dv_emu_warp_op(DV_EMU_SHFL_XOR, mask, &v, &r, sizeof v, lane_mask, width);                 \
        return r;                                                                                  \
    }
DV_EMU_SHUFFLES(int)
DV_EMU_SHUFFLES(unsigned int)
DV_EMU_SHUFFLES(long)
DV_EMU_SHUFFLES(unsigned long)
DV_EMU_SHUFFLES(long long)
DV_EMU_SHUFFLES(unsigned long long)
DV_EMU_SHUFFLES(float)
DV_EMU_SHUFFLES(double)
#undef DV_EMU_SHUFFLES

static inline int __all_sync(unsigned int mask, int pred) {
    int r;
    dv_emu_warp_op(DV_EMU_VOTE_ALL, mask, &pred, &r, sizeof pred, 0, 32);
    return r;
}
static inline int __any_sync(unsigned int mask, int pred) {
    int r;
    dv_emu_warp_op(DV_EMU_VOTE_ANY, mask, &pred, &r, sizeof pred, 0, 32);
    return r;
}
static inline unsigned int __ballot_sync(unsigned int mask, int pred) {
    unsigned int r;
    dv_emu_warp_op(DV_EMU_VOTE_BALLOT, mask, &pred, &r, sizeof pred, 0, 32);
    return r;
}

/* ---- launches ----------------------------------------------------------- */

typedef struct dv_emu_launch_cfg {
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;
} dv_emu_launch_cfg;

static inline dv_emu_launch_cfg dv_emu_cfg(dim3 grid, dim3 block, size_t shmem = 0,
                                           cudaStream_t stream = NULL) {
    dv_emu_launch_cfg c = {grid, block, shmem, stream};
    return c;
}

/* Runs fn(arg) once per thread of the grid, a block at a time; a bad
 * configuration sets cudaGetLastError's error instead, as a launch does. */
void dv_emu_launch(const dv_emu_launch_cfg *cfg, const char *name, void (*fn)(void *), void *arg);

/* The one template: calls a launch's lambda through a plain pointer. */
template <typename F> static void dv_emu_call(void *f) {
    (*(F *)f)();
}

/* The arguments are evaluated in each thread from copies taken at the
 * launch (the lambda captures by value), as a kernel gets its own copies. */
#define DV_EMU_LAUNCH(kernel, cfg, ...)                                                            \
    do {                                                                                           \
        const dv_emu_launch_cfg dv_emu_cfg_ = cfg;                                                 \
        auto dv_emu_fn_ = [=]() { kernel(__VA_ARGS__); };                                          \
        dv_emu_launch(&dv_emu_cfg_, #kernel, dv_emu_call<decltype(dv_emu_fn_)>, &dv_emu_fn_);      \
    } while (0)

#endif /* __cplusplus */
#endif
