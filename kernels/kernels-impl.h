/* kernels-impl.h — private to kernels/: what every backend shares. How a
 * backend table is boxed so dv_backend_free can release it without knowing
 * the backend, how a backend records the errors of its ops, and the
 * counter-based random numbers in a form hot loops can inline.
 *
 * Every backend allocates a dv_backend_box (the public table first, so a
 * dv_backend * and its box share one address) and sets `destroy`, which
 * releases the backend's ctx; dv_backend_free then frees the box.
 */
#ifndef DV_KERNELS_IMPL_H
#define DV_KERNELS_IMPL_H

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The counter-based generator of dv_rand_hash and dv_rand_uniform, inline
 * so hot loops (the CPU's dropout masks) vectorize it instead of calling
 * out per element. splitmix64's finalizer: a bijection on 64 bits with full
 * avalanche. The CUDA backend repeats these exact steps, so masks match
 * across backends. */
static inline uint64_t dv_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t dv_rand_hash_inl(uint64_t seed, uint64_t counter) {
    return dv_mix64(seed ^ dv_mix64(counter + 0x9e3779b97f4a7c15ULL));
}

/* One element's term of the `fingerprint` op: the bits of x at position
 * i, mixed. The CUDA backend repeats these exact steps. */
static inline uint64_t dv_fingerprint_term(uint32_t bits, uint64_t i) {
    return dv_mix64((uint64_t)bits ^ dv_mix64(i + 0x9e3779b97f4a7c15ULL));
}

/* 24 bits fill a float mantissa exactly, so the result is < 1. */
static inline float dv_rand_uniform_inl(uint64_t seed, uint64_t counter) {
    return (float)(dv_rand_hash_inl(seed, counter) >> 40) * (1.0f / 16777216.0f);
}

/* Ops return void, so each backend keeps the first error its ops meet in a
 * DV_ERR_LEN buffer of its ctx ("" while there is none; later errors are
 * dropped, the first explains the rest), and its `check` hands it over.
 *
 * DV_BAD_ENUM(rec, type, v, count) is nonzero when v is not a member of
 * the enum `type`, whose DV_<ENUM>_COUNT is `count`, after recording in
 * `rec` "file:line: <function>: unknown <type> value <v>". An op tests its
 * enum arguments with it before it does anything, so an unknown value
 * computes nothing and `check` names the op and the value. */
#define DV_BAD_ENUM(rec, type, v, count)                                                           \
    ((unsigned)(v) >= (unsigned)(count)                                                            \
         ? ((void)((rec)[0] || dv_error_at((rec), __FILE__, __LINE__, __func__,                    \
                                           "unknown " #type " value %d", (int)(v))),               \
            1)                                                                                     \
         : 0)

/* The CUDA backend lives in a module (libdive-cuda.so, base.h's
 * dv_module_open) that libdive.so opens only when a run asks for a GPU.
 * The module exports dv_kernels_cuda_module(), which returns this table;
 * dv_backend_cuda_create and dv_backend_cuda_device_count (cuda_load.c)
 * go through it. `abi` and `table_size` refuse a module of another build. */
#define DV_KERNELS_CUDA_ABI 1
typedef struct dv_kernels_cuda_api {
    int abi;           /* DV_KERNELS_CUDA_ABI */
    size_t table_size; /* sizeof(dv_backend) */
    int (*device_count)(void);
    dv_backend *(*create)(int device, dv_precision precision, char *err);
} dv_kernels_cuda_api;

typedef struct dv_backend_box {
    dv_backend be;                   /* must stay first */
    void (*destroy)(dv_backend *be); /* frees be->ctx; NULL: free(be->ctx) */
} dv_backend_box;

#ifdef __cplusplus
}
#endif
#endif
