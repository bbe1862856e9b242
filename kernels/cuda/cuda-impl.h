/* cuda-impl.h — private to kernels/cuda/: the CUDA backend's context, its
 * error recording, launch helpers, the counter-based RNG on the device, and
 * the dv_cuda_<op> functions of every op of ops.def (which backend_cuda.cu
 * puts in its table).
 *
 * Every op is queued on ctx->stream and returns without waiting. Ops return
 * void (the backend table is shared with the CPU), so the first CUDA or
 * cuBLAS error, or enum value outside its enum (DV_BAD_ENUM), is recorded
 * in the context (DV_CUDA_CHECK / DV_CUDA_LAUNCHED) and reported by the
 * table's `check` at the caller's next sync point.
 *
 * The kernels are the CPU ops of kernels/cpu/ restated for the GPU: same
 * arguments, same contract (ops.def), same arithmetic where the order of a
 * sum does not have to change. Sums that the CPU does in one order are done
 * here in a fixed tree order, so results do not depend on timing (no float
 * atomics), and they match the CPU within rounding.
 *
 * Where the ops live: core_cuda.cu has what the op files share (error
 * recording and check, scratch, fill, scale, gemm) and calls none of them;
 * memory_cuda.cu the memory ops; ops_cuda.cu, conv_cuda.cu, seq_cuda.cu,
 * attn_cuda.cu and rnn_cuda.cu the rest, calling core_cuda.cu only; backend_cuda.cu
 * only builds the table (and creates and destroys the backend). So no
 * file calls one that calls it back (tests/lint_layers.sh checks).
 */
#ifndef DV_CUDA_IMPL_H
#define DV_CUDA_IMPL_H

#include "kernels-impl.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* A live block of `alloc` (dv_cuda_ctx.blocks). */
typedef struct dv_cuda_block {
    void *p;
    size_t bytes;
} dv_cuda_block;

typedef struct dv_cuda_ctx {
    int device;
    dv_precision precision;
    cudaStream_t stream;      /* compute: every op */
    cudaStream_t copy_stream; /* uploads */
    cudaEvent_t staged;       /* an upload's host->device copy is done */
    cudaEvent_t staging_free; /* compute has copied the staging area out */
    cublasHandle_t blas;
    void *staging; /* device staging for uploads */
    size_t staging_bytes;
    void *scratch; /* per-op scratch (reductions), grown on demand */
    size_t scratch_bytes;
    double *host_sum; /* pinned: sumsq's result */
    int num_sms;
    double peak_flops; /* dv_cuda_peak_flops: from the device's table entry, 0 unknown */
    /* Dive's accounting of alloc / free: every live block and its size
     * (allocations are few, made at set-up), the bytes now and at most */
    dv_cuda_block *blocks;
    size_t nblocks, cap_blocks, cur_bytes, peak_bytes;
    char err[DV_ERR_LEN]; /* first error recorded (dv_error_at); "" while none */
} dv_cuda_ctx;

/* Records "[rank] file:line: call: message" (dv_error_at) as the
 * context's first error. */
void dv_cuda_record(dv_cuda_ctx *cx, const char *file, int line, const char *call, const char *msg);

/* Check a cudaError_t (records it; evaluates to nonzero on failure). */
#define DV_CUDA_CHECK(cx, expr) dv_cuda_check_((cx), (expr), __FILE__, __LINE__, #expr)
/* After a <<<launch>>>: records a launch error. */
#define DV_CUDA_LAUNCHED(cx, name)                                                                 \
    dv_cuda_check_((cx), cudaGetLastError(), __FILE__, __LINE__, (name))
/* Check a cublasStatus_t. */
#define DV_CUBLAS_CHECK(cx, expr) dv_cublas_check_((cx), (expr), __FILE__, __LINE__, #expr)

int dv_cuda_check_(dv_cuda_ctx *cx, cudaError_t rc, const char *file, int line, const char *call);
int dv_cublas_check_(dv_cuda_ctx *cx, cublasStatus_t rc, const char *file, int line,
                     const char *call);

/* Scratch device memory of at least `bytes`, valid until the next call
 * (ops run in stream order, so one op's scratch is never another's).
 * NULL (error recorded) when it cannot be had. */
void *dv_cuda_scratch(dv_cuda_ctx *cx, size_t bytes);

/* The peak dense-GEMM FLOP/s of the current device at `precision`, from
 * its compute capability, SM count and clock (core_cuda.cu; the table is
 * in docs/gpu.md, "Throughput and MFU"); 0 when the device is not in the
 * table or cannot say. */
double dv_cuda_device_peak_flops(int device, dv_precision precision);

/* Threads per block for elementwise kernels, and a grid covering n with a
 * grid-stride loop (capped so huge n does not make huge grids). */
#define DV_CUDA_THREADS 256
static inline unsigned dv_cuda_blocks(const dv_cuda_ctx *cx, size_t n) {
    size_t b = (n + DV_CUDA_THREADS - 1) / DV_CUDA_THREADS;
    size_t cap = (size_t)(cx->num_sms > 0 ? cx->num_sms : 80) * 32;
    if (b > cap) b = cap;
    return b < 1 ? 1u : (unsigned)b;
}

/* The counter-based RNG of kernels.c (splitmix64 finalizer), on the device:
 * the same (seed, counter) gives the same bits as dv_rand_hash. */
__device__ __forceinline__ uint64_t dv_cuda_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
__device__ __forceinline__ float dv_cuda_rand_uniform(uint64_t seed, uint64_t counter) {
    uint64_t h = dv_cuda_mix64(seed ^ dv_cuda_mix64(counter + 0x9e3779b97f4a7c15ULL));
    return (float)(h >> 40) * (1.0f / 16777216.0f);
}

/* The compute type of the cuBLAS *Ex GEMMs for the backend's precision
 * (TF32 or BF16 inputs, fp32 sums); FP32 GEMMs are cublasSgemm*, which
 * callers choose themselves. Nonzero, with the error recorded against
 * `op`, for a value dv_precision does not have (dv_backend_cuda_create
 * refuses those, so this only keeps every precision chain closed). */
int dv_cuda_compute_type(dv_cuda_ctx *cx, const char *op, cublasComputeType_t *ct);

/* Every op of ops.def: ret dv_cuda_<name>(params), with C linkage (the
 * table is C's). */
extern "C" {
#define DV_OP(ret, name, params) ret dv_cuda_##name params;
#include "ops.def"
}

#endif
