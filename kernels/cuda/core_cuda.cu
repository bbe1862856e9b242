/* core_cuda.cu — what the CUDA op files share: error recording and the
 * table's check, the per-op scratch buffer, fill, scale, and GEMM through
 * cuBLAS in the backend's precision. The op files (ops_cuda.cu,
 * conv_cuda.cu, seq_cuda.cu, rnn_cuda.cu), memory_cuda.cu and
 * backend_cuda.cu call these; nothing here calls them back. Also the
 * table of the devices' peak FLOP/s, for MFU.
 *
 * Assumes: every launch goes on cx->stream and nothing here synchronizes
 * but check's query of the last error; dv_cuda_ctx.precision is a
 * dv_precision (dv_backend_cuda_create refuses other values).
 */
#include "cuda-impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- peak FLOP/s (docs/gpu.md, "Throughput and MFU") ---------------------- */

/* Per compute capability, a reference part's dense peak (no sparsity) in
 * TFLOP/s at fp32 (CUDA cores), tf32 and bf16 (tensor cores), with its SM
 * count and boost clock; another part of the same capability scales by SMs
 * x clock (an H100 PCIe, 114 SMs at 1755 MHz, gets 757 bf16 TFLOP/s). */
typedef struct peak_entry {
    int major, minor;
    double tflops[DV_PRECISION_COUNT];
    int sms, mhz;
} peak_entry;

static const peak_entry peak_table[] = {
    {8, 0, {19.5, 156.0, 312.0}, 108, 1410}, /* A100 SXM */
    {9, 0, {66.9, 494.7, 989.4}, 132, 1980}, /* H100 / H200 SXM */
};

double dv_cuda_device_peak_flops(int device, dv_precision precision) {
    int major = 0, minor = 0, sms = 0, khz = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, device) != cudaSuccess) {
        cudaGetLastError(); /* not knowing the peak is no error */
        return 0;
    }
    if ((unsigned)precision >= DV_PRECISION_COUNT || sms <= 0 || khz <= 0) return 0;
    for (size_t i = 0; i < sizeof peak_table / sizeof peak_table[0]; i++) {
        const peak_entry *e = &peak_table[i];
        if (e->major != major || e->minor != minor) continue;
        return e->tflops[precision] * 1e12 * ((double)sms / e->sms) *
               ((double)khz / 1000.0 / e->mhz);
    }
    return 0;
}

double dv_cuda_peak_flops(void *ctx) {
    return ((dv_cuda_ctx *)ctx)->peak_flops;
}

/* ---- errors ------------------------------------------------------------ */

void dv_cuda_record(dv_cuda_ctx *cx, const char *file, int line, const char *call,
                    const char *msg) {
    if (cx->err[0]) return; /* the first error is the one that explains the rest */
    dv_error_at(cx->err, file, line, call, "%s", msg);
}

int dv_cuda_check_(dv_cuda_ctx *cx, cudaError_t rc, const char *file, int line, const char *call) {
    if (rc == cudaSuccess) return 0;
    char msg[256];
    snprintf(msg, sizeof(msg), "%s (%s)", cudaGetErrorString(rc), cudaGetErrorName(rc));
    dv_cuda_record(cx, file, line, call, msg);
    return 1;
}

int dv_cublas_check_(dv_cuda_ctx *cx, cublasStatus_t rc, const char *file, int line,
                     const char *call) {
    if (rc == CUBLAS_STATUS_SUCCESS) return 0;
    char msg[256];
    snprintf(msg, sizeof(msg), "cuBLAS status %s (%d)", cublasGetStatusName(rc), (int)rc);
    dv_cuda_record(cx, file, line, call, msg);
    return 1;
}

dv_status dv_cuda_check(void *ctx, char *err) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    /* a kernel that faulted shows up only here, at the next query */
    DV_CUDA_CHECK(cx, cudaGetLastError());
    if (!cx->err[0]) return DV_OK;
    if (!err) return DV_ERR;
    memcpy(err, cx->err, sizeof(cx->err));
    return dv_error_context(err, "CUDA device %d", cx->device);
}

/* ---- scratch, fill, scale ---------------------------------------------- */

void *dv_cuda_scratch(dv_cuda_ctx *cx, size_t bytes) {
    if (bytes <= cx->scratch_bytes) return cx->scratch;
    /* ops queued earlier may still read the old scratch: cudaFree waits */
    if (cx->scratch) DV_CUDA_CHECK(cx, cudaFree(cx->scratch));
    cx->scratch = NULL;
    cx->scratch_bytes = 0;
    size_t want = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes;
    if (DV_CUDA_CHECK(cx, cudaMalloc(&cx->scratch, want))) return NULL;
    cx->scratch_bytes = want;
    return cx->scratch;
}

static __global__ void fill_kernel(float *x, float v, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = v;
}

void dv_cuda_fill(void *ctx, float *x, float value, size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!n) return;
    if (value == 0.0f && !signbit(value)) { /* all-zero bits: memset is faster */
        DV_CUDA_CHECK(cx, cudaMemsetAsync(x, 0, n * sizeof(float), cx->stream));
        return;
    }
    fill_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(x, value, n);
    DV_CUDA_LAUNCHED(cx, "fill_kernel");
}

static __global__ void scale_kernel(float *x, float s, size_t n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        x[i] *= s;
}

void dv_cuda_scale(void *ctx, float *x, float s, size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (n == 0) return;
    scale_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(x, s, n);
    DV_CUDA_LAUNCHED(cx, "scale_kernel");
}

/* ---- GEMM ----------------------------------------------------------------
 * cuBLAS is column-major. A row-major (M, N) matrix is its column-major
 * transpose, so C = op(A) op(B) in row-major is C^T = op(B)^T op(A)^T in
 * column-major: swap the operands and M with N, keep the transpose flags. */

int dv_cuda_compute_type(dv_cuda_ctx *cx, const char *op, cublasComputeType_t *ct) {
    switch (cx->precision) {
    case DV_PRECISION_FP32:
        *ct = CUBLAS_COMPUTE_32F;
        return 0;
    case DV_PRECISION_TF32:
        *ct = CUBLAS_COMPUTE_32F_FAST_TF32;
        return 0;
    case DV_PRECISION_BF16:
        *ct = CUBLAS_COMPUTE_32F_FAST_16BF;
        return 0;
    case DV_PRECISION_COUNT:
        break;
    }
    if (!cx->err[0])
        dv_error_at(cx->err, __FILE__, __LINE__, op, "unknown dv_precision value %d",
                    (int)cx->precision);
    return 1;
}

void dv_cuda_gemm(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                  const float *A, const float *B, float beta, float *C) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* the contract says C = beta * C */
        if (beta == 0.0f)
            dv_cuda_fill(ctx, C, 0.0f, (size_t)M * N);
        else
            dv_cuda_scale(ctx, C, beta, (size_t)M * N);
        return;
    }
    cublasOperation_t opa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    int lda = trans_a ? M : K, ldb = trans_b ? K : N;
    if (cx->precision == DV_PRECISION_FP32) {
        DV_CUBLAS_CHECK(
            cx, cublasSgemm(cx->blas, opb, opa, N, M, K, &alpha, B, ldb, A, lda, &beta, C, N));
        return;
    }
    cublasComputeType_t ct;
    if (dv_cuda_compute_type(cx, "dv_cuda_gemm", &ct)) return;
    DV_CUBLAS_CHECK(cx, cublasGemmEx(cx->blas, opb, opa, N, M, K, &alpha, B, CUDA_R_32F, ldb, A,
                                     CUDA_R_32F, lda, &beta, C, CUDA_R_32F, N, ct,
                                     CUBLAS_GEMM_DEFAULT));
}
