/* backend_cuda.cu — the CUDA backend: device memory, streams, uploads from
 * page-locked host buffers, cuBLAS GEMM in the chosen precision, error
 * recording, and the table that points at the ops of ops_cuda.cu and
 * conv_cuda.cu.
 *
 * Two streams: `stream` runs every op in order; `copy_stream` only moves
 * batches from the host, so the next batch crosses PCIe while the current
 * step computes. Both are non-blocking streams, so nothing here ever
 * synchronizes with CUDA's legacy default stream (NCCL and comm/ use their
 * own streams too).
 */
#include "cuda-impl.h"
#include "kernels-impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static dv_status cuda_check(void *ctx, char *err) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    /* a kernel that faulted shows up only here, at the next query */
    DV_CUDA_CHECK(cx, cudaGetLastError());
    if (!cx->err[0]) return DV_OK;
    if (!err) return DV_ERR;
    memcpy(err, cx->err, sizeof(cx->err));
    return dv_error_context(err, "CUDA device %d", cx->device);
}

/* ---- memory ------------------------------------------------------------ */

static void *cuda_alloc(void *ctx, size_t bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    void *p = NULL;
    /* cudaMalloc of 0 bytes gives NULL, which callers read as failure */
    if (cudaMalloc(&p, bytes ? bytes : 256) != cudaSuccess) {
        cudaGetLastError(); /* out of memory is not sticky: callers report it */
        return NULL;
    }
    /* zeroed on return for every stream, not only for work queued on ours
     * (allocations happen at set-up, so the wait costs nothing that matters) */
    if (DV_CUDA_CHECK(cx, cudaMemsetAsync(p, 0, bytes, cx->stream)) ||
        DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream))) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(void *ctx, void *p) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!p) return;
    /* cudaFree waits for the device, so work still reading p finishes first */
    DV_CUDA_CHECK(cx, cudaFree(p));
}

static void cuda_to_device(void *ctx, void *dst, const void *src, size_t bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!bytes) return;
    /* synchronous: the caller may free or reuse src at once (batches go
     * through `upload`, which overlaps) */
    DV_CUDA_CHECK(cx, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cx->stream));
    DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream));
}

static void cuda_to_host(void *ctx, void *dst, const void *src, size_t bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!bytes) return;
    DV_CUDA_CHECK(cx, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cx->stream));
    DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream));
}

static void cuda_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!bytes || dst == src) return;
    DV_CUDA_CHECK(cx, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cx->stream));
}

static __global__ void fill_kernel(float *x, float v, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = v;
}

extern "C" void dv_cuda_fill(void *ctx, float *x, float value, size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!n) return;
    if (value == 0.0f && !signbit(value)) { /* all-zero bits: memset is faster */
        DV_CUDA_CHECK(cx, cudaMemsetAsync(x, 0, n * sizeof(float), cx->stream));
        return;
    }
    fill_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(x, value, n);
    DV_CUDA_LAUNCHED(cx, "fill_kernel");
}

static void cuda_sync(void *ctx) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream));
}

static void *cuda_host_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 64, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

static void cuda_host_free(void *ctx, void *p) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (p) DV_CUDA_CHECK(cx, cudaFreeHost(p));
}

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

/* Batches: host -> staging on the copy stream (overlapping the compute
 * already queued), then staging -> dst on the compute stream. The staging
 * area is reused only after the compute stream has copied it out
 * (staging_free), and the host returns once the host->device copy is done,
 * so the caller may refill src at once. */
/* Each upload's piece of the staging area starts on a 256-byte boundary. */
static size_t staged_size(size_t bytes) {
    return (bytes + 255) / 256 * 256;
}

static void cuda_upload(void *ctx, int n, void *const *dst, const void *const *src,
                        const size_t *bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += staged_size(bytes[i]);
    if (!total) return;
    if (total > cx->staging_bytes) {
        DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream));
        if (cx->staging) DV_CUDA_CHECK(cx, cudaFree(cx->staging));
        cx->staging = NULL;
        cx->staging_bytes = 0;
        if (DV_CUDA_CHECK(cx, cudaMalloc(&cx->staging, total))) return;
        cx->staging_bytes = total;
    }
    char *stage = (char *)cx->staging;
    DV_CUDA_CHECK(cx, cudaStreamWaitEvent(cx->copy_stream, cx->staging_free, 0));
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        if (bytes[i])
            DV_CUDA_CHECK(cx, cudaMemcpyAsync(stage + off, src[i], bytes[i], cudaMemcpyHostToDevice,
                                              cx->copy_stream));
        off += staged_size(bytes[i]);
    }
    DV_CUDA_CHECK(cx, cudaEventRecord(cx->staged, cx->copy_stream));
    DV_CUDA_CHECK(cx, cudaEventSynchronize(cx->staged));
    DV_CUDA_CHECK(cx, cudaStreamWaitEvent(cx->stream, cx->staged, 0));
    off = 0;
    for (int i = 0; i < n; i++) {
        if (bytes[i])
            DV_CUDA_CHECK(cx, cudaMemcpyAsync(dst[i], stage + off, bytes[i],
                                              cudaMemcpyDeviceToDevice, cx->stream));
        off += staged_size(bytes[i]);
    }
    DV_CUDA_CHECK(cx, cudaEventRecord(cx->staging_free, cx->stream));
}

/* ---- GEMM ----------------------------------------------------------------
 * cuBLAS is column-major. A row-major (M, N) matrix is its column-major
 * transpose, so C = op(A) op(B) in row-major is C^T = op(B)^T op(A)^T in
 * column-major: swap the operands and M with N, keep the transpose flags. */

extern "C" void dv_cuda_scale(void *ctx, float *x, float s, size_t n);

extern "C" void dv_cuda_gemm(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
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
    cublasComputeType_t ct = cx->precision == DV_PRECISION_BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                                : CUBLAS_COMPUTE_32F_FAST_TF32;
    DV_CUBLAS_CHECK(cx, cublasGemmEx(cx->blas, opb, opa, N, M, K, &alpha, B, CUDA_R_32F, ldb, A,
                                     CUDA_R_32F, lda, &beta, C, CUDA_R_32F, N, ct,
                                     CUBLAS_GEMM_DEFAULT));
}

/* ---- create / destroy --------------------------------------------------- */

static void cuda_destroy(dv_backend *be) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)be->ctx;
    if (!cx) return;
    if (cx->stream) cudaStreamSynchronize(cx->stream);
    if (cx->copy_stream) cudaStreamSynchronize(cx->copy_stream);
    if (cx->blas) cublasDestroy(cx->blas);
    cudaFree(cx->staging);
    cudaFree(cx->scratch);
    if (cx->host_sum) cudaFreeHost(cx->host_sum);
    if (cx->staged) cudaEventDestroy(cx->staged);
    if (cx->staging_free) cudaEventDestroy(cx->staging_free);
    if (cx->copy_stream) cudaStreamDestroy(cx->copy_stream);
    if (cx->stream) cudaStreamDestroy(cx->stream);
    free(cx);
}

extern "C" int dv_backend_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error left by a missing driver */
        return 0;
    }
    return n;
}

extern "C" dv_backend *dv_backend_cuda_create(int device, dv_precision precision, char *err) {
    int count = dv_backend_cuda_device_count();
    if (count < 1) {
        DV_ERROR(err, "no GPU is visible to CUDA (check the driver and CUDA_VISIBLE_DEVICES)");
        return NULL;
    }
    if (device < 0 || device >= count) {
        DV_ERROR(err, "CUDA device %d does not exist (%d visible)", device, count);
        return NULL;
    }
    dv_backend_box *box = (dv_backend_box *)calloc(1, sizeof(*box));
    dv_cuda_ctx *cx = (dv_cuda_ctx *)calloc(1, sizeof(*cx));
    if (!box || !cx) {
        free(box);
        free(cx);
        DV_ERROR(err, "out of memory");
        return NULL;
    }
    cx->device = device;
    cx->precision = precision;
    dv_backend *be = &box->be;
    be->ctx = cx;
    box->destroy = cuda_destroy;
    /* cudaSetDevice first: every later call (and NCCL) uses this device */
    int fail = DV_CUDA_CHECK(cx, cudaSetDevice(device));
    fail = fail || DV_CUDA_CHECK(cx, cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking));
    fail = fail ||
           DV_CUDA_CHECK(cx, cudaStreamCreateWithFlags(&cx->copy_stream, cudaStreamNonBlocking));
    fail = fail || DV_CUDA_CHECK(cx, cudaEventCreateWithFlags(&cx->staged, cudaEventDisableTiming));
    fail = fail ||
           DV_CUDA_CHECK(cx, cudaEventCreateWithFlags(&cx->staging_free, cudaEventDisableTiming));
    fail = fail || DV_CUDA_CHECK(cx, cudaHostAlloc((void **)&cx->host_sum, sizeof(double),
                                                   cudaHostAllocDefault));
    fail = fail || DV_CUDA_CHECK(cx, cudaDeviceGetAttribute(
                                         &cx->num_sms, cudaDevAttrMultiProcessorCount, device));
    fail = fail || DV_CUBLAS_CHECK(cx, cublasCreate(&cx->blas));
    fail = fail || DV_CUBLAS_CHECK(cx, cublasSetStream(cx->blas, cx->stream));
    /* fp32 means fp32: no silent TF32 in cublasSgemm */
    fail = fail || DV_CUBLAS_CHECK(cx, cublasSetMathMode(cx->blas, CUBLAS_DEFAULT_MATH));
    if (fail) {
        if (err) {
            memcpy(err, cx->err, sizeof(cx->err));
            dv_error_context(err, "CUDA device %d", device);
        }
        dv_backend_free(be);
        return NULL;
    }
    be->name = "cuda";
    be->stream = cx->stream;
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->to_device = cuda_to_device;
    be->to_host = cuda_to_host;
    be->copy = cuda_copy;
    be->fill = dv_cuda_fill;
    be->sync = cuda_sync;
    be->host_alloc = cuda_host_alloc;
    be->host_free = cuda_host_free;
    be->upload = cuda_upload;
    be->check = cuda_check;
    be->gemm = dv_cuda_gemm;
    be->bias_forward = dv_cuda_bias_forward;
    be->bias_backward = dv_cuda_bias_backward;
    be->act_forward = dv_cuda_act_forward;
    be->act_backward = dv_cuda_act_backward;
    be->conv2d_workspace = dv_cuda_conv2d_workspace;
    be->conv2d_forward = dv_cuda_conv2d_forward;
    be->conv2d_backward = dv_cuda_conv2d_backward;
    be->pool2d_forward = dv_cuda_pool2d_forward;
    be->pool2d_backward = dv_cuda_pool2d_backward;
    be->upsample_forward = dv_cuda_upsample_forward;
    be->upsample_backward = dv_cuda_upsample_backward;
    be->dropout_forward = dv_cuda_dropout_forward;
    be->dropout_backward = dv_cuda_dropout_backward;
    be->batchnorm_forward = dv_cuda_batchnorm_forward;
    be->batchnorm_backward = dv_cuda_batchnorm_backward;
    be->xent_loss = dv_cuda_xent_loss;
    be->bce_loss = dv_cuda_bce_loss;
    be->mse_loss = dv_cuda_mse_loss;
    be->perceptron_loss = dv_cuda_perceptron_loss;
    be->opt_step = dv_cuda_opt_step;
    be->gemm_batched = dv_cuda_gemm_batched;
    be->gemm_batched_ld = dv_cuda_gemm_batched_ld;
    be->gemm_pack_size = dv_cuda_gemm_pack_size;
    be->gemm_pack = dv_cuda_gemm_pack;
    be->gemm_packed = dv_cuda_gemm_packed;
    be->embedding_forward = dv_cuda_embedding_forward;
    be->embedding_backward = dv_cuda_embedding_backward;
    be->layernorm_forward = dv_cuda_layernorm_forward;
    be->layernorm_backward = dv_cuda_layernorm_backward;
    be->transpose = dv_cuda_transpose;
    be->gelu_forward = dv_cuda_gelu_forward;
    be->gelu_backward = dv_cuda_gelu_backward;
    be->causal_softmax_forward = dv_cuda_causal_softmax_forward;
    be->causal_softmax_backward = dv_cuda_causal_softmax_backward;
    be->lstm_cell_forward = dv_cuda_lstm_cell_forward;
    be->lstm_cell_backward = dv_cuda_lstm_cell_backward;
    be->gru_cell_forward = dv_cuda_gru_cell_forward;
    be->gru_cell_backward = dv_cuda_gru_cell_backward;
    be->sumsq = dv_cuda_sumsq;
    be->scale = dv_cuda_scale;
    be->axpy = dv_cuda_axpy;
    return be;
}
