/* gemm_packed_cpu.c — the CPU backend's GEMMs: gemm (dv_cpu_gemm, OpenBLAS
 * or the own kernels below) and GEMM against a matrix packed once and used
 * many times: the recurrent weight W_hh of an RNN, multiplied by one step's
 * (B, H) state T times per pass. OpenBLAS packs both operands on every call;
 * for these small products (32 x 1024 x 256 in fortunes_lstm) the packing
 * is a fifth of the time and the product runs at about 60% of the large-GEMM
 * rate. Here op(B) is packed once into panels of NR = 32 columns (each panel
 * K rows of 32 floats, the last one padded with zeros), and an AVX-512
 * kernel keeps an MR x 32 block of C (MR = 8 rows, 16 zmm accumulators) in
 * registers over all of K, reading A in place: one pass over the panel per
 * 8 rows, no copies of A. Each tile's rows of C are prefetched before its
 * K loop, so the epilogue's beta * C does not wait on memory (0.77x of
 * OpenBLAS without it for 4096 x 512 x 128 with beta = 1, 0.95x with it).
 *
 * dv_cpu_gemm sends large A op(B) products here too (op(B) packed per
 * call, as the CPU's gemm_batched_ld and attention do for A B^T), and
 * A^T B (weight gradients: K is the rows of a batch, thousands) to a
 * blocked variant: KC rows of op(B) packed into panels, MC rows of op(A)
 * packed into strips of 8 rows interleaved along K (kernel_8p), as in a
 * classic GEMM; OpenBLAS packs both too, but clears C in a pass of its own
 * when beta = 0 and runs its kernel a little below this one.
 *
 * Without AVX-512, or when OpenBLAS is given more than one thread (this
 * kernel is single-threaded), the packed form is op(B) itself, row-major
 * (K, N), and the product is cblas_sgemm: the same contract, nothing
 * gained, nothing lost. Which form a backend uses is fixed when it is
 * created (dv_cpu_ctx.pack_own).
 *
 * Below the op files (ops_cpu.c, seq_cpu.c call in here), above core_cpu.c
 * only: fill and scale for K = 0, dv_cpu_alloc for the packing buffers.
 */
#include "cpu-impl.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#define NR 32
#define MR 8
/* Blocks of A^T B (blocked_avx512): KC rows of op(B) packed at a time (a
 * 32 KB panel each; longer blocks re-read C less often but sum longer runs
 * in single precision), MC rows of op(A) per packed block (64 KB, in L2). */
#define KC 256
#define MC 64

int dv_cpu_pack_own(int threads) {
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    return threads == 1 && __builtin_cpu_supports("avx512f");
#else
    (void)threads;
    return 0;
#endif
}

#if defined(__GNUC__) && defined(__x86_64__)
static void pack_b(int trans_b, int N, const float *B, int ldb, int k0, int kc, float *Bp);
#endif

size_t dv_cpu_gemm_pack_size(void *ctx, int K, int N) {
    const dv_cpu_ctx *cx = ctx;
    if (K <= 0 || N <= 0) return 0;
    if (!cx->pack_own) return (size_t)K * N;
    return (size_t)(N + NR - 1) / NR * NR * K;
}

void dv_cpu_gemm_pack(void *ctx, int trans_b, int K, int N, const float *B, float *packed) {
    const dv_cpu_ctx *cx = ctx;
    if (K <= 0 || N <= 0) return;
        /* element (k, n) of op(B) */
#define OPB(k, n) (trans_b ? B[(size_t)(n)*K + (k)] : B[(size_t)(k)*N + (n)])
    if (!cx->pack_own) {
        for (int k = 0; k < K; k++)
            for (int n = 0; n < N; n++)
                packed[(size_t)k * N + n] = OPB(k, n);
        return;
    }
#if defined(__GNUC__) && defined(__x86_64__)
    if (!trans_b) {
        pack_b(0, N, B, N, 0, K, packed); /* the same panels, in vector moves */
        return;
    }
#endif
    for (int n0 = 0; n0 < N; n0 += NR) {
        float *panel = packed + (size_t)n0 * K;
        const int w = N - n0 < NR ? N - n0 : NR;
        for (int k = 0; k < K; k++) {
            float *row = panel + (size_t)k * NR;
            for (int j = 0; j < w; j++)
                row[j] = OPB(k, n0 + j);
            for (int j = w; j < NR; j++)
                row[j] = 0.0f;
        }
    }
#undef OPB
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

typedef __m512 v16;
/* a * w + c with one rounding: the build is ISO C (-std=c11), where GCC
 * contracts nothing, so a * w + c would stay a multiply and an add */
#define FMA(a, w, c) _mm512_fmadd_ps(_mm512_set1_ps(a), (w), (c))

/* C (1 row, w <= 32 columns) = alpha * acc + beta * C, in vector registers
 * with masks for a narrow last panel (a scalar loop here cost as much as
 * the K loop of a K = 128 tile). beta * C + alpha * acc is one FMA. */
__attribute__((target("arch=x86-64-v4"))) static inline void
store_row(float *c, v16 a0, v16 a1, float alpha, float beta, int w) {
    const __mmask16 m0 = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1);
    const __mmask16 m1 =
        w <= 16 ? (__mmask16)0 : (w >= 32 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - 16)) - 1));
    const v16 al = _mm512_set1_ps(alpha);
    v16 r0 = _mm512_mul_ps(a0, al), r1 = _mm512_mul_ps(a1, al);
    if (beta != 0.0f) {
        const v16 be = _mm512_set1_ps(beta);
        r0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, c), be, r0);
        r1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, c + 16), be, r1);
    }
    _mm512_mask_storeu_ps(c, m0, r0);
    _mm512_mask_storeu_ps(c + 16, m1, r1);
}

/* Rows [0, 8) x columns [0, w) of one panel: C = alpha * A P + beta * C.
 * Sixteen named accumulators, so they stay in zmm registers over all of K
 * (an array of them spilled to the stack). */
__attribute__((target("arch=x86-64-v4"))) static void kernel_8(int K, const float *A, int lda,
                                                               const float *P, float alpha,
                                                               float beta, float *C, int ldc,
                                                               int w) {
    const v16 z = _mm512_setzero_ps();
    v16 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
    v16 c40 = z, c41 = z, c50 = z, c51 = z, c60 = z, c61 = z, c70 = z, c71 = z;
    const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * (size_t)lda, *a3 = A + 3 * (size_t)lda;
    const float *a4 = A + 4 * (size_t)lda, *a5 = A + 5 * (size_t)lda, *a6 = A + 6 * (size_t)lda,
                *a7 = A + 7 * (size_t)lda;
    for (int r = 0; r < MR; r++) { /* C's tile arrives during the K loop */
        __builtin_prefetch(C + (size_t)r * ldc, 1, 3);
        __builtin_prefetch(C + (size_t)r * ldc + 16, 1, 3);
    }
    for (int k = 0; k < K; k++) {
        const v16 w0 = _mm512_loadu_ps(P + (size_t)k * NR);
        const v16 w1 = _mm512_loadu_ps(P + (size_t)k * NR + 16);
#define ROW(r)                                                                                     \
    c##r##0 = FMA(a##r[k], w0, c##r##0);                                                           \
    c##r##1 = FMA(a##r[k], w1, c##r##1);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
    }
    store_row(C, c00, c01, alpha, beta, w);
    store_row(C + (size_t)ldc, c10, c11, alpha, beta, w);
    store_row(C + 2 * (size_t)ldc, c20, c21, alpha, beta, w);
    store_row(C + 3 * (size_t)ldc, c30, c31, alpha, beta, w);
    store_row(C + 4 * (size_t)ldc, c40, c41, alpha, beta, w);
    store_row(C + 5 * (size_t)ldc, c50, c51, alpha, beta, w);
    store_row(C + 6 * (size_t)ldc, c60, c61, alpha, beta, w);
    store_row(C + 7 * (size_t)ldc, c70, c71, alpha, beta, w);
}

/* One row (the M % 8 left over). */
__attribute__((target("arch=x86-64-v4"))) static void
kernel_1(int K, const float *A, const float *P, float alpha, float beta, float *C, int w) {
    v16 c0 = _mm512_setzero_ps(), c1 = c0;
    for (int k = 0; k < K; k++) {
        c0 = FMA(A[k], _mm512_loadu_ps(P + (size_t)k * NR), c0);
        c1 = FMA(A[k], _mm512_loadu_ps(P + (size_t)k * NR + 16), c1);
    }
    store_row(C, c0, c1, alpha, beta, w);
}

/* Rows [0, rows) (rows <= 8) x columns [0, w) of one panel, A packed as
 * K groups of 8 floats (element (r, k) at Ap[8 k + r], rows past `rows`
 * zero): each k reads one half cache line of A, in order, and the
 * broadcasts fold into the FMAs as memory operands. */
__attribute__((target("arch=x86-64-v4"))) static void kernel_8p(int K, const float *Ap,
                                                                const float *P, float alpha,
                                                                float beta, float *C, int ldc,
                                                                int w, int rows) {
    const v16 z = _mm512_setzero_ps();
    v16 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
    v16 c40 = z, c41 = z, c50 = z, c51 = z, c60 = z, c61 = z, c70 = z, c71 = z;
    for (int r = 0; r < rows; r++) {
        __builtin_prefetch(C + (size_t)r * ldc, 1, 3);
        __builtin_prefetch(C + (size_t)r * ldc + 16, 1, 3);
    }
    for (int k = 0; k < K; k++) {
        const v16 w0 = _mm512_loadu_ps(P + (size_t)k * NR);
        const v16 w1 = _mm512_loadu_ps(P + (size_t)k * NR + 16);
        const float *a = Ap + (size_t)k * MR;
#define ROW(r)                                                                                     \
    c##r##0 = FMA(a[r], w0, c##r##0);                                                              \
    c##r##1 = FMA(a[r], w1, c##r##1);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
    }
    /* clang-format off */
    store_row(C, c00, c01, alpha, beta, w);
    if (rows > 1) store_row(C + (size_t)ldc, c10, c11, alpha, beta, w);
    if (rows > 2) store_row(C + 2 * (size_t)ldc, c20, c21, alpha, beta, w);
    if (rows > 3) store_row(C + 3 * (size_t)ldc, c30, c31, alpha, beta, w);
    if (rows > 4) store_row(C + 4 * (size_t)ldc, c40, c41, alpha, beta, w);
    if (rows > 5) store_row(C + 5 * (size_t)ldc, c50, c51, alpha, beta, w);
    if (rows > 6) store_row(C + 6 * (size_t)ldc, c60, c61, alpha, beta, w);
    if (rows > 7) store_row(C + 7 * (size_t)ldc, c70, c71, alpha, beta, w);
    /* clang-format on */
}

/* Rows go in blocks of mb (A's block about 32 KB, so it stays in L1/L2),
 * each block against every panel in turn, 8 rows at a time: a panel is
 * read from L2 once per 8 rows and A once in all, however large M is (a
 * panel-outer order reads all of A again for each panel). */
__attribute__((target("arch=x86-64-v4"))) static void packed_avx512(int M, int N, int K,
                                                                    float alpha, const float *A,
                                                                    int lda, const float *packed,
                                                                    float beta, float *C, int ldc) {
    int mb = 8192 / K / MR * MR;
    mb = mb < MR ? MR : (mb > 256 ? 256 : mb);
    for (int m0 = 0; m0 < M; m0 += mb) {
        const int m1 = M - m0 < mb ? M : m0 + mb;
        for (int n0 = 0; n0 < N; n0 += NR) {
            const float *P = packed + (size_t)n0 * K;
            const int w = N - n0 < NR ? N - n0 : NR;
            int m = m0;
            for (; m + MR <= m1; m += MR)
                kernel_8(K, A + (size_t)m * lda, lda, P, alpha, beta, C + (size_t)m * ldc + n0, ldc,
                         w);
            for (; m < m1; m++)
                kernel_1(K, A + (size_t)m * lda, P, alpha, beta, C + (size_t)m * ldc + n0, w);
        }
    }
}

/* op(A) rows [m0, m0 + mc) x columns [k0, k0 + kc) into strips of MR rows,
 * each kc groups of MR floats (pack layout of kernel_8p), the rows of a
 * last short strip zero. A is (M, K), or (K, M) when trans_a. A transposed
 * A is read a row of mc floats at a time, all strips together: its rows
 * are M floats apart (4 KB in an LSTM's weight gradient, a page, which no
 * hardware prefetcher crosses), so whole cache lines are taken once, and
 * the rows PF_ROWS ahead are prefetched (strip by strip, this copy was
 * 11% of an LSTM's weight-gradient time). */
#define PF_ROWS 8
__attribute__((target("arch=x86-64-v4"))) static void
pack_a(int trans_a, const float *A, int lda, int m0, int mc, int k0, int kc, float *Ap) {
    if (trans_a) {
        const int full = mc / MR * MR;
        for (int k = 0; k < kc; k++) {
            const float *src = A + (size_t)(k0 + k) * lda + m0;
            if (k + PF_ROWS < kc)
                for (int j = 0; j < mc; j += 16)
                    __builtin_prefetch(src + (size_t)PF_ROWS * lda + j, 0, 3);
            for (int s = 0; s < full; s += MR)
                _mm256_storeu_ps(Ap + (size_t)s * kc + (size_t)k * MR, _mm256_loadu_ps(src + s));
            if (full < mc) {
                float *dst = Ap + (size_t)full * kc + (size_t)k * MR;
                for (int r = 0; r < MR; r++)
                    dst[r] = full + r < mc ? src[full + r] : 0.0f;
            }
        }
        return;
    }
    for (int s = 0; s < mc; s += MR) {
        float *dst = Ap + (size_t)s * kc;
        const int rows = mc - s < MR ? mc - s : MR;
        for (int r = 0; r < MR; r++) {
            const float *src = A + (size_t)(m0 + s + r) * lda + k0;
            for (int k = 0; k < kc; k++)
                dst[(size_t)k * MR + r] = r < rows ? src[k] : 0.0f;
        }
    }
}

/* dst (8 x 8, row stride ldd) = the transpose of src (8 x 8, lds). */
__attribute__((target("arch=x86-64-v4"))) static inline void
transpose_8x8(const float *src, int lds, float *dst, int ldd) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; i++)
        r[i] = _mm256_loadu_ps(src + (size_t)i * lds);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + (size_t)i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (size_t)(i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}

/* op(B) rows [k0, k0 + kc), every column, into panels of NR columns, kc
 * rows each, the columns past N zero. B is (K, N), or (N, K) when
 * trans_b. */
__attribute__((target("arch=x86-64-v4"))) static void pack_b(int trans_b, int N, const float *B,
                                                             int ldb, int k0, int kc, float *Bp) {
    for (int n0 = 0; n0 < N; n0 += NR) {
        float *panel = Bp + (size_t)n0 * kc;
        const int w = N - n0 < NR ? N - n0 : NR;
        if (trans_b) {
            int k = 0;
            if (w == NR) /* 8 x 8 blocks through registers */
                for (; k + 8 <= kc; k += 8)
                    for (int j = 0; j < NR; j += 8)
                        transpose_8x8(B + (size_t)(n0 + j) * ldb + k0 + k, ldb,
                                      panel + (size_t)k * NR + j, NR);
            for (; k < kc; k++) {
                float *row = panel + (size_t)k * NR;
                for (int j = 0; j < w; j++)
                    row[j] = B[(size_t)(n0 + j) * ldb + k0 + k];
                for (int j = w; j < NR; j++)
                    row[j] = 0.0f;
            }
        } else {
            for (int k = 0; k < kc && w == NR; k++) {
                const float *src = B + (size_t)(k0 + k) * ldb + n0;
                _mm512_storeu_ps(panel + (size_t)k * NR, _mm512_loadu_ps(src));
                _mm512_storeu_ps(panel + (size_t)k * NR + 16, _mm512_loadu_ps(src + 16));
            }
            for (int k = 0; k < kc && w < NR; k++) {
                const float *src = B + (size_t)(k0 + k) * ldb + n0;
                float *row = panel + (size_t)k * NR;
                for (int j = 0; j < w; j++)
                    row[j] = src[j];
                for (int j = w; j < NR; j++)
                    row[j] = 0.0f;
            }
        }
    }
}

/* C = alpha op(A) op(B) + beta C in blocks of KC along K (beta applies to
 * the first, later blocks add) and MC along M; every panel of the block's
 * op(B) against every strip of its op(A). (Packing op(B) whole and keeping
 * a block of C in L2 over all of K measured 0.85-0.95x of this.) */
__attribute__((target("arch=x86-64-v4"))) static void
blocked_avx512(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc, float *Bp, float *Ap) {
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = K - k0 < KC ? K - k0 : KC;
        const float bk = k0 ? 1.0f : beta;
        pack_b(trans_b, N, B, ldb, k0, kc, Bp);
        for (int m0 = 0; m0 < M; m0 += MC) {
            const int mc = M - m0 < MC ? M - m0 : MC;
            pack_a(trans_a, A, lda, m0, mc, k0, kc, Ap);
            for (int n0 = 0; n0 < N; n0 += NR) {
                const float *P = Bp + (size_t)n0 * kc;
                const int w = N - n0 < NR ? N - n0 : NR;
                for (int s = 0; s < mc; s += MR)
                    kernel_8p(kc, Ap + (size_t)s * kc, P, alpha, bk,
                              C + (size_t)(m0 + s) * ldc + n0, ldc, w, mc - s < MR ? mc - s : MR);
            }
        }
    }
}
#endif

/* The ctx's buffer *buf grown to need floats; NULL when out of memory. */
static float *grow(float **buf, size_t *cap, size_t need, void *ctx) {
    if (need > *cap) {
        float *p = dv_cpu_alloc(ctx, need * sizeof *p);
        if (!p) return NULL;
        dv_cpu_free(ctx, *buf);
        *buf = p;
        *cap = need;
    }
    return *buf;
}

/* A product through the own kernels, or 0 to leave it to OpenBLAS. Measured against cblas_sgemm on
 * one thread (best of many calls, AMD EPYC Zen 4): A op(B): op(B) packed whole into the ctx's
 * buffer on each call (where M is large the packing is a sliver of the work) and A read in place.
 *     K >= 512 gains 1.15-1.45x (a layer's dx, an LSTM's input gradient),
 *     K = 64-256 1.0-1.2x with beta = 0 (OpenBLAS clears C in a pass of
 *     its own first) and 0.93-1.07x with beta = 1; so M >= 256 and K >= 64.
 *   A^T B (weight gradients, K the rows of a batch): blocked, both
 *     operands packed (blocked_avx512): 1.02x for 1024 x 256 x 4064 (an
 *     LSTM's W_hh), 1.11x for 1024 x 64 x 4096, 1.01-1.07x for a
 *     Transformer's (128-512) x (128-512) x 4096; so K >= 256 and
 *     M, N >= 64. */
#define OWN_MIN_M      256
#define OWN_MIN_K      64
#define OWN_MAX_B      ((size_t)1 << 22) /* 16 MB of packed B */
#define BLOCKED_MIN_K  KC
#define BLOCKED_MIN_MN 64

int dv_cpu_gemm_own_ld(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C,
                       int ldc) {
    dv_cpu_ctx *cx = ctx;
    if (!cx->pack_own || (trans_a && trans_b) || M <= 0 || N <= 0 || K <= 0) return 0;
#if defined(__GNUC__) && defined(__x86_64__)
    if (trans_a) {
        float *Bp = grow(&cx->pack_buf, &cx->pack_cap, (size_t)(N + NR - 1) / NR * NR * KC, ctx);
        float *Ap = grow(&cx->pack_a, &cx->pack_a_cap, (size_t)(MC + MR - 1) / MR * MR * KC, ctx);
        if (!Bp || !Ap) return 0;
        blocked_avx512(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, Bp, Ap);
        return 1;
    }
    const size_t need = dv_cpu_gemm_pack_size(ctx, K, N);
    if (need > OWN_MAX_B || !grow(&cx->pack_buf, &cx->pack_cap, need, ctx)) return 0;
    pack_b(trans_b, N, B, ldb, 0, K, cx->pack_buf);
    packed_avx512(M, N, K, alpha, A, lda, cx->pack_buf, beta, C, ldc);
    return 1;
#else
    (void)alpha, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
    return 0;
#endif
}

static int gemm_own(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, const float *B, float beta, float *C) {
    if (trans_a ? trans_b || K < BLOCKED_MIN_K || M < BLOCKED_MIN_MN || N < BLOCKED_MIN_MN
                : M < OWN_MIN_M || K < OWN_MIN_K)
        return 0;
    return dv_cpu_gemm_own_ld(ctx, trans_a, trans_b, M, N, K, alpha, A, trans_a ? M : K, B,
                              trans_b ? K : N, beta, C, N);
}

void dv_cpu_gemm(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, const float *B, float beta, float *C) {
    if (M <= 0 || N <= 0) return;
    if (K > 0 && gemm_own(ctx, trans_a, trans_b, M, N, K, alpha, A, B, beta, C)) return;
    if (K <= 0) { /* BLAS returns early here; the contract says C = beta*C */
        if (beta == 0.0f)
            dv_cpu_fill(ctx, C, 0.0f, (size_t)M * N);
        else
            dv_cpu_scale(ctx, C, beta, (size_t)M * N);
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, trans_a ? M : K, B,
                trans_b ? K : N, beta, C, N);
}

void dv_cpu_gemm_packed(void *ctx, int M, int N, int K, float alpha, const float *A,
                        const float *packed, float beta, float *C) {
    const dv_cpu_ctx *cx = ctx;
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || !cx->pack_own) {
        dv_cpu_gemm(ctx, 0, 0, M, N, K, alpha, A, packed, beta, C);
        return;
    }
#if defined(__GNUC__) && defined(__x86_64__)
    packed_avx512(M, N, K, alpha, A, K, packed, beta, C, N);
#endif
}
