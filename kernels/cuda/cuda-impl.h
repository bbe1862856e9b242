/* cuda-impl.h — private to kernels/cuda/: the CUDA backend's context, its
 * error recording, launch helpers, the counter-based RNG on the device, and
 * the ops backend_cuda.cu puts in its table.
 *
 * Every op is queued on ctx->stream and returns without waiting. Ops return
 * void (the backend table is shared with the CPU), so the first CUDA or
 * cuBLAS error is recorded in the context (DV_CUDA_CHECK / DV_CUDA_LAUNCHED)
 * and reported by the table's `check` at the caller's next sync point.
 *
 * The kernels are the CPU ops of kernels/cpu/ops_cpu.c restated for the
 * GPU: same arguments, same contract (kernels.h), same arithmetic where the
 * order of a sum does not have to change. Sums that the CPU does in one
 * order are done here in a fixed tree order, so results do not depend on
 * timing (no float atomics), and they match the CPU within rounding.
 */
#ifndef DV_CUDA_IMPL_H
#define DV_CUDA_IMPL_H

#include "kernels.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

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

/* ---- ops (the table's entries), one file each group ----------------------- */

extern "C" {
/* backend_cuda.cu */
void dv_cuda_gemm(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                  const float *A, const float *B, float beta, float *C);
void dv_cuda_fill(void *ctx, float *x, float value, size_t n);

/* ops_cuda.cu: elementwise, activations, dropout, batch norm, losses,
 * optimizer, reductions */
void dv_cuda_bias_forward(void *ctx, float *y, const float *bias, int B, int C, int S);
void dv_cuda_bias_backward(void *ctx, const float *dy, float *dbias, int B, int C, int S);
void dv_cuda_act_forward(void *ctx, dv_act act, float alpha, const float *x, float *y, size_t n,
                         int cols);
void dv_cuda_act_backward(void *ctx, dv_act act, float alpha, const float *y, const float *dy,
                          float *dx, size_t n, int cols);
void dv_cuda_dropout_forward(void *ctx, float rate, uint64_t seed, const int64_t *row_id, int rows,
                             int cols, const float *x, float *y, float *mask);
void dv_cuda_dropout_backward(void *ctx, const float *mask, const float *dy, float *dx, size_t n);
void dv_cuda_batchnorm_forward(void *ctx, int training, int B, int C, int S, float eps,
                               float momentum, const float *x, const float *gamma,
                               const float *beta, float *running_mean, float *running_var,
                               float *save_mean, float *save_invstd, float *y);
void dv_cuda_batchnorm_backward(void *ctx, int B, int C, int S, const float *x, const float *gamma,
                                const float *save_mean, const float *save_invstd, const float *dy,
                                float *dx, float *dgamma, float *dbeta);
void dv_cuda_xent_loss(void *ctx, const float *logits, const int32_t *labels, int B, int K,
                       float grad_scale, float *dlogits, float *stats);
void dv_cuda_bce_loss(void *ctx, const float *logits, const float *targets, int B, int K,
                      float grad_scale, float *dlogits, float *stats);
void dv_cuda_mse_loss(void *ctx, const float *pred, const float *targets, int B, int K,
                      float grad_scale, float *dpred, float *stats);
void dv_cuda_perceptron_loss(void *ctx, const float *scores, const int32_t *labels, int B, int K,
                             float grad_scale, float *dscores, float *stats);
void dv_cuda_opt_step(void *ctx, const dv_opt_params *p, float *params, const float *grads,
                      float *state1, float *state2, size_t n);
double dv_cuda_sumsq(void *ctx, const float *x, size_t n);
void dv_cuda_scale(void *ctx, float *x, float s, size_t n);
void dv_cuda_axpy(void *ctx, float a, const float *x, float *y, size_t n);

/* conv_cuda.cu: convolution (im2col + cuBLAS) and pooling */
size_t dv_cuda_conv2d_workspace(void *ctx, const dv_conv2d_geom *g);
void dv_cuda_conv2d_forward(void *ctx, const dv_conv2d_geom *g, const float *x, const float *w,
                            const float *b, float *y, float *work);
void dv_cuda_conv2d_backward(void *ctx, const dv_conv2d_geom *g, const float *x, const float *w,
                             const float *dy, float *dx, float *dw, float *db, float *work);
void dv_cuda_pool2d_forward(void *ctx, dv_pool mode, const dv_conv2d_geom *g, const float *x,
                            float *y, int32_t *arg);
void dv_cuda_pool2d_backward(void *ctx, dv_pool mode, const dv_conv2d_geom *g, const float *dy,
                             float *dx, const int32_t *arg);
void dv_cuda_upsample_forward(void *ctx, int n, int H, int W, int s, const float *x, float *y);
void dv_cuda_upsample_backward(void *ctx, int n, int H, int W, int s, const float *dy, float *dx);

/* seq_{cpu,cuda}: gemm_batched, embedding, layernorm, gelu, causal softmax */
void dv_cuda_gemm_batched(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                          const float *A, long long stride_a, const float *B, long long stride_b,
                          float beta, float *C, long long stride_c, int batch);
void dv_cuda_embedding_forward(void *ctx, const int32_t *ids, int N, int D, const float *table,
                               float *y);
void dv_cuda_embedding_backward(void *ctx, const int32_t *ids, int N, int D, int V, const float *dy,
                                float *dtable);
void dv_cuda_layernorm_forward(void *ctx, int N, int C, float eps, const float *x,
                               const float *gamma, const float *beta, float *y, float *save_mean,
                               float *save_rstd);
void dv_cuda_layernorm_backward(void *ctx, int N, int C, const float *x, const float *gamma,
                                const float *save_mean, const float *save_rstd, const float *dy,
                                float *dx, float *dgamma, float *dbeta);
void dv_cuda_transpose(void *ctx, int A, int B, int C, int D, const float *x, float *y);
void dv_cuda_gemm_batched_ld(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, long long stride_a, const float *B, int ldb,
                             long long stride_b, float beta, float *C, int ldc, long long stride_c,
                             int batch);
size_t dv_cuda_gemm_pack_size(void *ctx, int K, int N);
void dv_cuda_gemm_pack(void *ctx, int trans_b, int K, int N, const float *B, float *packed);
void dv_cuda_gemm_packed(void *ctx, int M, int N, int K, float alpha, const float *A,
                         const float *packed, float beta, float *C);
void dv_cuda_gelu_forward(void *ctx, const float *x, float *y, size_t n);
void dv_cuda_gelu_backward(void *ctx, const float *x, const float *dy, float *dx, size_t n);
void dv_cuda_causal_softmax_forward(void *ctx, int BH, int T, float scale, float *s);
void dv_cuda_causal_softmax_backward(void *ctx, int BH, int T, float scale, const float *p,
                                     const float *dp, float *ds);
/* rnn_{cpu,cuda}: recurrent cells */
void dv_cuda_lstm_cell_forward(void *ctx, int B, int H, float *gates, const float *c_prev, float *c,
                               float *h);
void dv_cuda_lstm_cell_backward(void *ctx, int B, int H, const float *gates, const float *c_prev,
                                const float *c, const float *dh, const float *dc, float *dgates,
                                float *dc_prev);
void dv_cuda_gru_cell_forward(void *ctx, int B, int H, const float *gi, const float *gh,
                              const float *h_prev, float *h, float *save);
void dv_cuda_gru_cell_backward(void *ctx, int B, int H, const float *save, const float *h_prev,
                               const float *dh, float *dgi, float *dgh, float *dh_prev);
}

#endif
