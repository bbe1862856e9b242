/* cpu-impl.h — private to kernels/cpu/: the CPU backend's context and the
 * ops that backend_cpu.c puts in its table (defined in ops_cpu.c).
 *
 * Hot loops carry DV_HOT: with GCC on x86-64 each is compiled three times
 * (baseline, AVX2+FMA, AVX-512) and picked at load time, so one binary runs
 * anywhere and still uses the wide vectors where they exist. Loops that call
 * sqrtf are not vectorized by GCC while -fmath-errno is on (the default), so
 * the Adam update also has explicit AVX2/AVX-512 bodies (DV_HAVE_X86_SIMD).
 */
#ifndef DV_CPU_IMPL_H
#define DV_CPU_IMPL_H

#include <stdint.h>

#include "kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define DV_HOT __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#endif
#endif
#ifndef DV_HOT
#define DV_HOT
#endif
/* exp, tanh and the logistic function without a libm call, so the loops
 * of the recurrent cells, GELU and the like vectorize (libm's expf/tanhf
 * are scalar calls: a third of an LSTM step's time). exp: x = n ln2 + r,
 * |r| <= ln2/2, exp(r) by Cephes' degree-6 polynomial, 2^n from the
 * exponent bits; within 2 ulp of expf over [-87, 88], clamped outside
 * (exp(-87.3) ~ 1e-38, exp(88.3) ~ 2e38). tanh: Cephes' odd polynomial
 * below |x| = 0.625, where 1 - 2/(e^2x + 1) would cancel; within 3 ulp. */
static inline float dv_fast_expf(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    /* round to nearest by adding and removing 1.5 * 2^23 (|x log2 e| is far
     * below 2^22): unlike floorf, GCC vectorizes this without -ffast-math */
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f; /* ln2, split so n * hi is exact */
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

static inline float dv_fast_tanhf(float x) {
    const float ax = x < 0 ? -x : x;
    const float s = x * x;
    const float small =
        ((((-5.70498872745e-3f * s + 2.06390887954e-2f) * s - 5.37397155531e-2f) * s +
          1.33314422036e-1f) *
             s -
         3.33332819422e-1f) *
            s * x +
        x;
    const float big = 1.0f - 2.0f / (dv_fast_expf(2.0f * ax) + 1.0f);
    return ax < 0.625f ? small : (x < 0 ? -big : big);
}

static inline float dv_fast_sigmoidf(float x) {
    return 1.0f / (1.0f + dv_fast_expf(-x));
}

/* GCC and clang both take target("avx2") on one function and
 * __builtin_cpu_supports to choose it at run time. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define DV_HAVE_X86_SIMD 1
#endif

typedef struct dv_cpu_ctx {
    int threads;       /* OpenBLAS threads asked for (0: its default) */
    int pack_own;      /* gemm_packed: own AVX-512 kernel (else OpenBLAS) */
    float *pack_buf;   /* dv_cpu_gemm's packed B (dv_cpu_gemm_own) */
    size_t pack_cap;   /* floats in pack_buf */
    float *pack_a;     /* dv_cpu_gemm's packed blocks of op(A) */
    size_t pack_a_cap; /* floats in pack_a */
} dv_cpu_ctx;

void *dv_cpu_alloc(void *ctx, size_t bytes);
void dv_cpu_free(void *ctx, void *p);
void dv_cpu_memcpy(void *ctx, void *dst, const void *src, size_t bytes);
void dv_cpu_fill(void *ctx, float *x, float value, size_t n);
void dv_cpu_sync(void *ctx);

int dv_cpu_pack_own(int threads);
int dv_cpu_gemm_own(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, const float *B, float beta, float *C);
int dv_cpu_gemm_own_ld(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C,
                       int ldc);
void dv_cpu_gemm_batched_ld(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                            const float *A, int lda, long long stride_a, const float *B, int ldb,
                            long long stride_b, float beta, float *C, int ldc, long long stride_c,
                            int batch);
size_t dv_cpu_gemm_pack_size(void *ctx, int K, int N);
void dv_cpu_gemm_pack(void *ctx, int trans_b, int K, int N, const float *B, float *packed);
void dv_cpu_gemm_packed(void *ctx, int M, int N, int K, float alpha, const float *A,
                        const float *packed, float beta, float *C);
void dv_cpu_gemm(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, const float *B, float beta, float *C);
void dv_cpu_bias_forward(void *ctx, float *y, const float *bias, int B, int C, int S);
void dv_cpu_bias_backward(void *ctx, const float *dy, float *dbias, int B, int C, int S);
void dv_cpu_act_forward(void *ctx, dv_act act, float alpha, const float *x, float *y, size_t n,
                        int cols);
void dv_cpu_act_backward(void *ctx, dv_act act, float alpha, const float *y, const float *dy,
                         float *dx, size_t n, int cols);

size_t dv_cpu_conv2d_workspace(void *ctx, const dv_conv2d_geom *g);
void dv_cpu_conv2d_forward(void *ctx, const dv_conv2d_geom *g, const float *x, const float *w,
                           const float *b, float *y, float *work);
void dv_cpu_conv2d_backward(void *ctx, const dv_conv2d_geom *g, const float *x, const float *w,
                            const float *dy, float *dx, float *dw, float *db, float *work);
void dv_cpu_pool2d_forward(void *ctx, dv_pool mode, const dv_conv2d_geom *g, const float *x,
                           float *y, int32_t *arg);
void dv_cpu_pool2d_backward(void *ctx, dv_pool mode, const dv_conv2d_geom *g, const float *dy,
                            float *dx, const int32_t *arg);
void dv_cpu_upsample_forward(void *ctx, int n, int H, int W, int s, const float *x, float *y);
void dv_cpu_upsample_backward(void *ctx, int n, int H, int W, int s, const float *dy, float *dx);

void dv_cpu_dropout_forward(void *ctx, float rate, uint64_t seed, const int64_t *row_id, int rows,
                            int cols, const float *x, float *y, float *mask);
void dv_cpu_dropout_backward(void *ctx, const float *mask, const float *dy, float *dx, size_t n);

void dv_cpu_batchnorm_forward(void *ctx, int training, int B, int C, int S, float eps,
                              float momentum, const float *x, const float *gamma, const float *beta,
                              float *running_mean, float *running_var, float *save_mean,
                              float *save_invstd, float *y);
void dv_cpu_batchnorm_backward(void *ctx, int B, int C, int S, const float *x, const float *gamma,
                               const float *save_mean, const float *save_invstd, const float *dy,
                               float *dx, float *dgamma, float *dbeta);

void dv_cpu_xent_loss(void *ctx, const float *logits, const int32_t *labels, int B, int K,
                      float grad_scale, float *dlogits, float *stats);
void dv_cpu_bce_loss(void *ctx, const float *logits, const float *targets, int B, int K,
                     float grad_scale, float *dlogits, float *stats);
void dv_cpu_mse_loss(void *ctx, const float *pred, const float *targets, int B, int K,
                     float grad_scale, float *dpred, float *stats);
void dv_cpu_perceptron_loss(void *ctx, const float *scores, const int32_t *labels, int B, int K,
                            float grad_scale, float *dscores, float *stats);

void dv_cpu_opt_step(void *ctx, const dv_opt_params *p, float *params, const float *grads,
                     float *state1, float *state2, size_t n);
double dv_cpu_sumsq(void *ctx, const float *x, size_t n);
void dv_cpu_scale(void *ctx, float *x, float s, size_t n);
void dv_cpu_axpy(void *ctx, float a, const float *x, float *y, size_t n);

/* seq_{cpu,cuda}: gemm_batched, embedding, layernorm, gelu, causal softmax */
void dv_cpu_gemm_batched(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                         const float *A, long long stride_a, const float *B, long long stride_b,
                         float beta, float *C, long long stride_c, int batch);
void dv_cpu_embedding_forward(void *ctx, const int32_t *ids, int N, int D, const float *table,
                              float *y);
void dv_cpu_embedding_backward(void *ctx, const int32_t *ids, int N, int D, int V, const float *dy,
                               float *dtable);
void dv_cpu_layernorm_forward(void *ctx, int N, int C, float eps, const float *x,
                              const float *gamma, const float *beta, float *y, float *save_mean,
                              float *save_rstd);
void dv_cpu_layernorm_backward(void *ctx, int N, int C, const float *x, const float *gamma,
                               const float *save_mean, const float *save_rstd, const float *dy,
                               float *dx, float *dgamma, float *dbeta);
void dv_cpu_transpose(void *ctx, int A, int B, int C, int D, const float *x, float *y);
void dv_cpu_gelu_forward(void *ctx, const float *x, float *y, size_t n);
void dv_cpu_gelu_backward(void *ctx, const float *x, const float *dy, float *dx, size_t n);
void dv_cpu_causal_softmax_forward(void *ctx, int BH, int T, float scale, float *s);
void dv_cpu_causal_softmax_backward(void *ctx, int BH, int T, float scale, const float *p,
                                    const float *dp, float *ds);
/* rnn_{cpu,cuda}: recurrent cells */
void dv_cpu_lstm_cell_forward(void *ctx, int B, int H, float *gates, const float *c_prev, float *c,
                              float *h);
void dv_cpu_lstm_cell_backward(void *ctx, int B, int H, const float *gates, const float *c_prev,
                               const float *c, const float *dh, const float *dc, float *dgates,
                               float *dc_prev);
void dv_cpu_gru_cell_forward(void *ctx, int B, int H, const float *gi, const float *gh,
                             const float *h_prev, float *h, float *save);
void dv_cpu_gru_cell_backward(void *ctx, int B, int H, const float *save, const float *h_prev,
                              const float *dh, float *dgi, float *dgh, float *dh_prev);

#endif
