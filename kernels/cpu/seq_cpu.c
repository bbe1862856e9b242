/* seq_cpu.c — the CPU ops for sequence models: batched GEMM, token
 * embedding, layer norm (alone and fused with a residual add), transpose and
 * GELU (contracts in ops.def; the fused
 * attention is attn_cpu.c).
 * Like ops_cpu.c these are the reference the CUDA versions
 * (kernels/cuda/seq_cuda.cu) are tested against, so they are plain loops;
 * the orders of their sums are the ones the CUDA kernels restate where the
 * results should agree bit for bit (embedding backward).
 *
 * Assumes: host memory; sizes fit in int where the interface says int; ops
 * never allocate (the per-column sums of layer norm backward use a small
 * stack block of doubles), but for the batched GEMM's packing buffer, the
 * ctx's, grown once to its largest size.
 */
#include "cpu-impl.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* ---- batched GEMM --------------------------------------------------------- */

/* One GEMM per matrix: the matrices of attention are small and many, but
 * OpenBLAS threads each call. */
void dv_cpu_gemm_batched(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                         const float *A, long long stride_a, const float *B, long long stride_b,
                         float beta, float *C, long long stride_c, int batch) {
    dv_cpu_gemm_batched_ld(ctx, trans_a, trans_b, M, N, K, alpha, A, trans_a ? M : K, stride_a, B,
                           trans_b ? K : N, stride_b, beta, C, N, stride_c, batch);
}

void dv_cpu_gemm_batched_ld(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                            const float *A, int lda, long long stride_a, const float *B, int ldb,
                            long long stride_b, float beta, float *C, int ldc, long long stride_c,
                            int batch) {
    if (M <= 0 || N <= 0) return;
    /* A B^T (the attention's scores, K = the head size) through the packed
     * kernel: 64 x 64..128 x 32 products at 91 GFLOP/s against 60-75 for
     * OpenBLAS's small-matrix kernels (best of 30, one thread); A B and
     * A^T B (K = T) stay with OpenBLAS, as fast or faster there (the
     * packed kernel 0.8-1.0x). */
    const int use_own = !trans_a && trans_b;
    for (int b = 0; b < batch; b++) {
        float *Cb = C + (ptrdiff_t)b * stride_c;
        if (K <= 0) { /* C = beta * C, row by row (the gaps between rows untouched) */
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++)
                    Cb[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * Cb[(size_t)i * ldc + j];
            continue;
        }
        if (use_own &&
            dv_cpu_gemm_own_ld(ctx, trans_a, trans_b, M, N, K, alpha, A + (ptrdiff_t)b * stride_a,
                               lda, B + (ptrdiff_t)b * stride_b, ldb, beta, Cb, ldc))
            continue;
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha,
                    A + (ptrdiff_t)b * stride_a, lda, B + (ptrdiff_t)b * stride_b, ldb, beta, Cb,
                    ldc);
    }
}

/* ---- embedding ------------------------------------------------------------ */

void dv_cpu_embedding_forward(void *ctx, const int32_t *ids, int N, int D, const float *table,
                              float *y) {
    (void)ctx;
    for (int i = 0; i < N; i++)
        memcpy(y + (size_t)i * D, table + (size_t)ids[i] * D, (size_t)D * sizeof *y);
}

/* Each row of dy is added straight into its table row, in increasing i: the
 * order the contract fixes, and the one the CUDA kernel reproduces after
 * sorting (id, i), so both give the same bits. */
DV_HOT void dv_cpu_embedding_backward(void *ctx, const int32_t *ids, int N, int D, int V,
                                      const float *dy, float *dtable) {
    (void)ctx;
    (void)V;
    for (int i = 0; i < N; i++) {
        float *restrict t = dtable + (size_t)ids[i] * D;
        const float *restrict g = dy + (size_t)i * D;
        for (int d = 0; d < D; d++)
            t[d] += g[d];
    }
}

/* ---- layer norm ----------------------------------------------------------- */

/* Statistics in double, two passes (mean, then the centred sum of squares),
 * as batch norm: a large mean costs no precision. */
/* Row sums in double, DLANES partial sums (one per lane) so they
 * vectorize without -ffast-math. */
#define DLANES 8

/* One row of layer norm; xr is read three times (in cache for a row). */
static inline void ln_row(int C, float eps, const float *xr, const float *gamma, const float *beta,
                          float *yr, float *mean_out, float *rstd_out) {
    double sl[DLANES] = {0}, ql[DLANES] = {0}, sum = 0.0, ss = 0.0;
    int j = 0;
    for (; j + DLANES <= C; j += DLANES)
        for (int l = 0; l < DLANES; l++)
            sl[l] += xr[j + l];
    for (; j < C; j++)
        sum += xr[j];
    for (int l = 0; l < DLANES; l++)
        sum += sl[l];
    const double m = sum / C;
    for (j = 0; j + DLANES <= C; j += DLANES)
        for (int l = 0; l < DLANES; l++) {
            const double d = xr[j + l] - m;
            ql[l] += d * d;
        }
    for (; j < C; j++) {
        const double d = xr[j] - m;
        ss += d * d;
    }
    for (int l = 0; l < DLANES; l++)
        ss += ql[l];
    const float mean = (float)m;
    const float rstd = (float)(1.0 / sqrt(ss / C + eps));
    if (mean_out) *mean_out = mean;
    if (rstd_out) *rstd_out = rstd;
    if (gamma && beta)
        for (j = 0; j < C; j++)
            yr[j] = (xr[j] - mean) * rstd * gamma[j] + beta[j];
    else
        for (j = 0; j < C; j++) {
            const float g = gamma ? gamma[j] : 1.0f, b = beta ? beta[j] : 0.0f;
            yr[j] = (xr[j] - mean) * rstd * g + b;
        }
}

DV_HOT void dv_cpu_layernorm_forward(void *ctx, int N, int C, float eps, const float *x,
                                     const float *gamma, const float *beta, float *y,
                                     float *save_mean, float *save_rstd) {
    (void)ctx;
    if (C <= 0) return;
    for (int r = 0; r < N; r++)
        ln_row(C, eps, x + (size_t)r * C, gamma, beta, y + (size_t)r * C,
               save_mean ? save_mean + r : NULL, save_rstd ? save_rstd + r : NULL);
}

/* Row by row: the sum written, then the same row (still in L1) through
 * ln_row, so y is the bits of layernorm_forward on sum. sum may be x or
 * d: each element is read before it is written. */
DV_HOT void dv_cpu_residual_layernorm_forward(void *ctx, int N, int C, float eps, const float *x,
                                              const float *d, const float *bias, const float *gamma,
                                              const float *beta, float *sum, float *y,
                                              float *save_mean, float *save_rstd) {
    (void)ctx;
    if (C <= 0) return;
    for (int r = 0; r < N; r++) {
        const size_t o = (size_t)r * C;
        const float *xr = x + o, *dr = d + o;
        float *sr = sum + o;
        if (bias)
            for (int j = 0; j < C; j++)
                sr[j] = xr[j] + dr[j] + bias[j];
        else
            for (int j = 0; j < C; j++)
                sr[j] = xr[j] + dr[j];
        if (y)
            ln_row(C, eps, sr, gamma, beta, y + o, save_mean ? save_mean + r : NULL,
                   save_rstd ? save_rstd + r : NULL);
    }
}

/* Columns summed over the rows in blocks of this many, so dgamma and dbeta
 * are double sums read row by row (no allocation, no strided walk). */
#define LN_COLS 64

/* Both backward ops: dx = dres + the row's gradient (dres NULL: zero). */
static inline void ln_backward(int N, int C, const float *x, const float *gamma,
                               const float *save_mean, const float *save_rstd, const float *dy,
                               const float *dres, float *dx, float *dgamma, float *dbeta) {
    if (N <= 0 || C <= 0) return;
    /* dx = rstd * (g dy - mean(g dy) - xhat * mean(g dy xhat)) per row */
    for (int r = 0; dx && r < N; r++) {
        const float *xr = x + (size_t)r * C, *dr = dy + (size_t)r * C;
        float *out = dx + (size_t)r * C;
        const float mean = save_mean[r], rstd = save_rstd[r];
        double al[DLANES] = {0}, bl[DLANES] = {0}, a = 0.0, b = 0.0;
        int j = 0;
        for (; j + DLANES <= C; j += DLANES)
            for (int l = 0; l < DLANES; l++) {
                const float gd = (gamma ? gamma[j + l] : 1.0f) * dr[j + l];
                const float xh = (xr[j + l] - mean) * rstd;
                al[l] += gd;
                bl[l] += (double)gd * xh;
            }
        for (; j < C; j++) {
            const float gd = (gamma ? gamma[j] : 1.0f) * dr[j];
            const float xh = (xr[j] - mean) * rstd;
            a += gd;
            b += (double)gd * xh;
        }
        for (int l = 0; l < DLANES; l++)
            a += al[l], b += bl[l];
        const float ma = (float)(a / C), mb = (float)(b / C);
        const float *res = dres ? dres + (size_t)r * C : NULL;
        if (res) /* res may be out: each element read, then written */
            for (j = 0; j < C; j++) {
                const float gd = (gamma ? gamma[j] : 1.0f) * dr[j];
                const float xh = (xr[j] - mean) * rstd;
                out[j] = res[j] + rstd * (gd - ma - xh * mb);
            }
        else
            for (j = 0; j < C; j++) {
                const float gd = (gamma ? gamma[j] : 1.0f) * dr[j];
                const float xh = (xr[j] - mean) * rstd;
                out[j] = rstd * (gd - ma - xh * mb);
            }
    }
    if (!dgamma && !dbeta) return;
    for (int j0 = 0; j0 < C; j0 += LN_COLS) {
        const int nc = C - j0 < LN_COLS ? C - j0 : LN_COLS;
        double sg[LN_COLS] = {0}, sb[LN_COLS] = {0};
        for (int r = 0; r < N; r++) {
            const float *xr = x + (size_t)r * C + j0, *dr = dy + (size_t)r * C + j0;
            const float mean = save_mean[r], rstd = save_rstd[r];
            for (int j = 0; j < nc; j++) {
                const float xh = (xr[j] - mean) * rstd;
                sg[j] += (double)dr[j] * xh;
                sb[j] += dr[j];
            }
        }
        for (int j = 0; j < nc; j++) {
            if (dgamma) dgamma[j0 + j] += (float)sg[j];
            if (dbeta) dbeta[j0 + j] += (float)sb[j];
        }
    }
}

DV_HOT void dv_cpu_layernorm_backward(void *ctx, int N, int C, const float *x, const float *gamma,
                                      const float *save_mean, const float *save_rstd,
                                      const float *dy, float *dx, float *dgamma, float *dbeta) {
    (void)ctx;
    ln_backward(N, C, x, gamma, save_mean, save_rstd, dy, NULL, dx, dgamma, dbeta);
}

DV_HOT void dv_cpu_residual_layernorm_backward(void *ctx, int N, int C, const float *x,
                                               const float *gamma, const float *save_mean,
                                               const float *save_rstd, const float *dy,
                                               const float *dres, float *dx, float *dgamma,
                                               float *dbeta) {
    (void)ctx;
    ln_backward(N, C, x, gamma, save_mean, save_rstd, dy, dres, dx, dgamma, dbeta);
}

/* ---- transpose of the middle dims ------------------------------------------ */

void dv_cpu_transpose(void *ctx, int A, int B, int C, int D, const float *x, float *y) {
    (void)ctx;
    const size_t d = (size_t)D * sizeof(float);
    for (size_t a = 0; a < (size_t)A; a++)
        for (size_t b = 0; b < (size_t)B; b++)
            for (size_t c = 0; c < (size_t)C; c++)
                memcpy(y + ((a * C + c) * B + b) * D, x + ((a * B + b) * C + c) * D, d);
}

/* ---- GELU ------------------------------------------------------------------ */

#define GELU_K0 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_K1 0.044715f

/* 0.5 (1 + tanh(u)) is the logistic function of 2u, so y = x s with s =
 * 1 / (1 + exp(-2u)): one exp and one division per element, where tanh
 * takes an exp, a division and a polynomial for small |u| (and, computed
 * branch-free in a vector, all of them). The logistic form also avoids
 * tanh's cancellation in 1 + tanh(u) for very negative u. */
static inline float gelu_s(float v) {
    return 1.0f / (1.0f + dv_fast_expf(-2.0f * GELU_K0 * (v + GELU_K1 * v * v * v)));
}

DV_HOT void dv_cpu_gelu_forward(void *ctx, const float *x, float *y, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] * gelu_s(x[i]);
}

/* d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) u', t = tanh(u), u' = k0 (1 + 3 k1
 * x^2); with s = 0.5 (1 + t): 0.5 (1 - t^2) = 2 s (1 - s), so d/dx = s + 2
 * x s (1 - s) u'. dx == dy is allowed: each element is read first. */
DV_HOT void dv_cpu_gelu_backward(void *ctx, const float *x, const float *dy, float *dx, size_t n) {
    (void)ctx;
    DV_IVDEP
    for (size_t i = 0; i < n; i++) {
        const float v = x[i], sv = gelu_s(v);
        const float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * v * v);
        dx[i] = dy[i] * (sv + 2.0f * v * sv * (1.0f - sv) * du);
    }
}
