/* attn_cpu.c — fused causal self-attention on the CPU, forward and backward
 * (contracts in ops.def), flash style: no (T, T) matrix is ever formed.
 *
 * Each (batch, head) is walked in blocks of QB query rows [i0, i1); a block
 * sees keys [0, i1) only (causal), so its scores are one (i1 - i0, i1)
 * product, the softmax runs on those rows in place, and O = P V is a second
 * product: the GEMMs do about half of the (T, T) work, and the scratch is
 * QB * T floats (two such blocks for backward), never T * T.
 *
 * Forward, per block: S = Q_blk K[0:i1]^T; row i becomes softmax over j <= i
 * of scale * S (max, exp, sum, then scaled by 1/sum; zeros at j > i) and
 * lse_i = max + log(sum); O_blk = P V[0:i1]. The row loop is the one of the
 * unfused causal softmax this replaced, and at T = 2 QB (the examples'
 * window of 128) the products are the ones it made (rows split at T/2), so
 * forward does the same arithmetic as before.
 *
 * Backward, per block, the blocks taken last to first (the last one covers
 * every key, so it overwrites dk and dv, and the others add to them):
 * S again, P_ij = exp(scale S_ij - lse_i) at j <= i, dP = dO_blk V[0:i1]^T,
 * D_i = sum_j P_ij dP_ij (= do_i . o_i), dS = scale P (dP - D), then dV[0:i1]
 * += P^T dO_blk, dQ_blk = dS K[0:i1], dK[0:i1] += dS^T Q_blk.
 *
 * Threads: like every CPU op, the loops here run on the calling thread and
 * the products are OpenBLAS's (threaded by it, `threads` of the backend) or,
 * for A B^T on one thread with AVX-512, the own packed kernel
 * (dv_cpu_gemm_own_ld), as gemm_batched_ld does.
 *
 * Assumes: host memory; q, k, v, o, do_, dq, dk, dv (BH, T, Dh) that do not
 * overlap the outputs; work of attention_workspace floats.
 */
#include "cpu-impl.h"

#include <cblas.h>
#include <math.h>

/* Query rows per block: 64 keeps the products of a T = 128 window the ones
 * of the unfused path (64 x 64 and 64 x 128 scores). */
#define QB 64

/* Row reductions keep LANES partial results, one per vector lane, so GCC
 * vectorizes them without -ffast-math; exp is dv_fast_expf. */
#define LANES 16

size_t dv_cpu_attention_workspace(void *ctx, int BH, int T, int Dh) {
    (void)ctx, (void)BH, (void)Dh;
    return T > 0 ? 2 * (size_t)QB * (size_t)T : 0;
}

/* C (M, N) = alpha A B^T + beta C, all row-major with leading dimensions. */
static void gemm_nt(void *ctx, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
    if (dv_cpu_gemm_own_ld(ctx, 0, 1, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
}

static void gemm_nn(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                    int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
}

/* C (M, N) = A^T B + beta C, A stored (K, M). */
static void gemm_tn(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, beta, C,
                ldc);
}

/* One row of scores (w entries, n <= w of them causal) into probabilities
 * in place: softmax of scale * row over [0, n), zeros over [n, w). Returns
 * the log-sum-exp of the scaled scores. */
static inline float softmax_row(float *row, int n, int w, float scale) {
    float mx[LANES], sm[LANES];
    for (int l = 0; l < LANES; l++)
        mx[l] = -INFINITY, sm[l] = 0.0f;
    int j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; l++) {
            const float v = row[j + l] * scale;
            row[j + l] = v;
            mx[l] = v > mx[l] ? v : mx[l];
        }
    float m = -INFINITY;
    for (; j < n; j++) {
        row[j] *= scale;
        m = row[j] > m ? row[j] : m;
    }
    for (int l = 0; l < LANES; l++)
        m = mx[l] > m ? mx[l] : m;
    for (j = 0; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; l++) {
            const float e = dv_fast_expf(row[j + l] - m);
            row[j + l] = e;
            sm[l] += e;
        }
    float sum = 0.0f;
    for (; j < n; j++) {
        row[j] = dv_fast_expf(row[j] - m);
        sum += row[j];
    }
    for (int l = 0; l < LANES; l++)
        sum += sm[l];
    const float inv = 1.0f / sum;
    for (j = 0; j < n; j++)
        row[j] *= inv;
    for (; j < w; j++)
        row[j] = 0.0f;
    return m + logf(sum);
}

/* Backward of one row: p (w entries) gets exp(scale * s - lse) over [0, n)
 * and zeros over [n, w); dp (the row of dO V^T) becomes dS = scale * P (dP
 * - D), D = sum P dP, with zeros over [n, w). */
static inline void softmax_row_backward(float *p, float *dp, int n, int w, float scale, float lse) {
    float dl[LANES] = {0};
    int j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; l++) {
            const float e = dv_fast_expf(p[j + l] * scale - lse);
            p[j + l] = e;
            dl[l] += e * dp[j + l];
        }
    float dot = 0.0f;
    for (; j < n; j++) {
        p[j] = dv_fast_expf(p[j] * scale - lse);
        dot += p[j] * dp[j];
    }
    for (int l = 0; l < LANES; l++)
        dot += dl[l];
    for (j = 0; j < n; j++)
        dp[j] = p[j] * (dp[j] - dot) * scale;
    for (; j < w; j++)
        p[j] = dp[j] = 0.0f;
}

DV_HOT void dv_cpu_attention_forward(void *ctx, int BH, int T, int Dh, float scale, const float *q,
                                     const float *k, const float *v, float *o, float *lse,
                                     float *work) {
    if (BH <= 0 || T <= 0 || Dh <= 0) return;
    const size_t hs = (size_t)T * Dh;
    for (int bh = 0; bh < BH; bh++) {
        const float *qh = q + bh * hs, *kh = k + bh * hs, *vh = v + bh * hs;
        float *oh = o + bh * hs, *lh = lse + (size_t)bh * T;
        for (int i0 = 0; i0 < T; i0 += QB) {
            const int i1 = i0 + QB < T ? i0 + QB : T, rows = i1 - i0;
            float *S = work; /* (rows, i1) */
            gemm_nt(ctx, rows, i1, Dh, 1.0f, qh + (size_t)i0 * Dh, Dh, kh, Dh, 0.0f, S, i1);
            for (int r = 0; r < rows; r++)
                lh[i0 + r] = softmax_row(S + (size_t)r * i1, i0 + r + 1, i1, scale);
            gemm_nn(rows, Dh, i1, 1.0f, S, i1, vh, Dh, 0.0f, oh + (size_t)i0 * Dh, Dh);
        }
    }
}

DV_HOT void dv_cpu_attention_backward(void *ctx, int BH, int T, int Dh, float scale, const float *q,
                                      const float *k, const float *v, const float *o,
                                      const float *lse, const float *do_, float *dq, float *dk,
                                      float *dv, float *work) {
    (void)o; /* D_i is summed as P dP, row by row */
    if (BH <= 0 || T <= 0 || Dh <= 0) return;
    const size_t hs = (size_t)T * Dh;
    float *P = work, *dS = work + (size_t)QB * T; /* (rows, i1) each */
    for (int bh = 0; bh < BH; bh++) {
        const float *qh = q + bh * hs, *kh = k + bh * hs, *vh = v + bh * hs;
        const float *gh = do_ + bh * hs, *lh = lse + (size_t)bh * T;
        float *dqh = dq + bh * hs, *dkh = dk + bh * hs, *dvh = dv + bh * hs;
        const int last = (T - 1) / QB * QB;
        for (int i0 = last; i0 >= 0; i0 -= QB) {
            const int i1 = i0 + QB < T ? i0 + QB : T, rows = i1 - i0;
            const float beta = i0 == last ? 0.0f : 1.0f; /* the last block writes every key */
            const float *qb = qh + (size_t)i0 * Dh, *gb = gh + (size_t)i0 * Dh;
            gemm_nt(ctx, rows, i1, Dh, 1.0f, qb, Dh, kh, Dh, 0.0f, P, i1);
            gemm_nt(ctx, rows, i1, Dh, 1.0f, gb, Dh, vh, Dh, 0.0f, dS, i1);
            for (int r = 0; r < rows; r++)
                softmax_row_backward(P + (size_t)r * i1, dS + (size_t)r * i1, i0 + r + 1, i1, scale,
                                     lh[i0 + r]);
            gemm_tn(i1, Dh, rows, P, i1, gb, Dh, beta, dvh, Dh);
            gemm_nn(rows, Dh, i1, 1.0f, dS, i1, kh, Dh, 0.0f, dqh + (size_t)i0 * Dh, Dh);
            gemm_tn(i1, Dh, rows, dS, i1, qb, Dh, beta, dkh, Dh);
        }
    }
}
