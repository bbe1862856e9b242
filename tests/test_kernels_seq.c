/* test_kernels_seq.c — the sequence-model ops (gemm_batched, embedding,
 * layer norm, GELU, the fused causal attention).
 *
 * Part A, on the CPU backend: every forward against a naive reference in
 * double, every backward against central finite differences of
 * L = sum(y * r) for a random r (so dy = r), plus the contracts' details
 * (accumulation into parameter gradients, strides with padding, repeated
 * ids, in-place backward, outputs overwritten); the attention also against
 * the reference's analytic gradients (a full softmax per row).
 * Part B, CUDA against the CPU on the same inputs, and run-to-run
 * determinism of the CUDA reductions. Without a usable device Part B prints
 * one line saying why and skips; tests/cuda_emu builds this file against
 * the emulated CUDA backend, where Part B must run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "test_rand.h"

static dv_backend *cpu, *gpu;           /* gpu: FP32 GEMMs */
static dv_backend *gpu_tf32, *gpu_bf16; /* the same device, other GEMM precisions */
static char why[512];

/* CPU vs CUDA: |cuda - cpu| <= tol * (|cpu| + max(1, max|cpu|)). */
#define TOL_EW   1e-5 /* elementwise (libm vs CUDA's tanhf/expf) */
#define TOL_RED  1e-4 /* reductions in another order */
#define TOL_TF32 5e-3
#define TOL_BF16 2e-2

/* ---- helpers ---------------------------------------------------------- */

static float *rand_buf(size_t n, float lo, float hi) {
    float *x = test_fbuf(n);
    test_rand_fill(x, n, lo, hi);
    return x;
}

static float *dup_buf(const float *x, size_t n) {
    float *y = test_fbuf(n);
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* got against a double reference: |got - want| <= tol * (1 + |want|). */
static void expect_ref(const float *got, const double *want, size_t n, double tol,
                       const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= tol * (1.0 + fabs(want[i]))))
            fail_msg("%s[%zu]: got %.9g, reference %.9g", what, i, got[i], want[i]);
}

/* One backend against the other, relative to the largest reference value. */
static void expect_close(const float *got, const float *want, size_t n, double tol,
                         const char *what) {
    const double scale = fmax(1.0, (double)test_max_abs(want, n));
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= tol * (fabs((double)want[i]) + scale)))
            fail_msg("%s[%zu of %zu]: cuda %.9g, cpu %.9g", what, i, n, got[i], want[i]);
    }
}

/* ---- setup ------------------------------------------------------------ */

static dv_backend *create_cuda(dv_precision prec, char *reason, size_t len) {
    char err[DV_ERR_LEN] = "";
    dv_backend *b = dv_backend_cuda_create(0, prec, err);
    if (!b && reason)
        snprintf(reason, len, "%s", err[0] ? err : "dv_backend_cuda_create gave no reason");
    return b;
}

static int setup(void **state) {
    (void)state;
    cpu = dv_backend_cpu_create(1);
    if (!cpu) return -1;
    gpu = create_cuda(DV_PRECISION_FP32, why, sizeof why);
    if (!gpu) {
        printf("test_kernels_seq: no CUDA device (%s); the CUDA comparisons are skipped\n", why);
        fflush(stdout);
        return 0;
    }
    gpu_tf32 = create_cuda(DV_PRECISION_TF32, NULL, 0);
    gpu_bf16 = create_cuda(DV_PRECISION_BF16, NULL, 0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    dv_backend **all[] = {&gpu_bf16, &gpu_tf32, &gpu, &cpu};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        dv_backend_free(*all[i]);
        *all[i] = NULL;
    }
    return 0;
}

/* ======================================================================= */
/* Part A: the CPU backend                                                 */
/* ======================================================================= */

/* ---- gemm_batched ------------------------------------------------------- */

/* Element (r, c) of op(X) for X stored row-major as (rows, cols) of op's
 * transpose when t: op(X) is (R, Cc), X is (R, Cc) or (Cc, R). */
static float op_at(const float *X, int t, int R, int Cc, int r, int c) {
    return t ? X[(size_t)c * R + r] : X[(size_t)r * Cc + c];
}

/* The padding between matrices holds this, which no GEMM may change. */
#define PAD_VALUE 1234.5f

typedef struct gb_case {
    int ta, tb, M, N, K, batch;
    long long sa, sb, sc; /* strides: the matrix plus padding */
    float alpha, beta;
} gb_case;

static gb_case gb_make(int ta, int tb, int M, int N, int K, int batch, float alpha, float beta) {
    gb_case g = {ta,
                 tb,
                 M,
                 N,
                 K,
                 batch,
                 (long long)M * K + 3,
                 (long long)K * N + 5,
                 (long long)M * N + 2,
                 alpha,
                 beta};
    return g;
}

/* Buffers for a case: every matrix random, padding PAD_VALUE. */
static float *gb_buf(long long stride, int batch, size_t used) {
    const size_t n = (size_t)stride * batch;
    float *x = test_fbuf(n);
    for (size_t i = 0; i < n; i++)
        x[i] = (i % (size_t)stride) < used ? test_rand_uniform(-1, 1) : PAD_VALUE;
    return x;
}

static void gb_reference(const gb_case *g, const float *A, const float *B, const float *C0,
                         double *want) {
    for (int b = 0; b < g->batch; b++)
        for (int i = 0; i < g->M; i++)
            for (int j = 0; j < g->N; j++) {
                double s = 0.0;
                for (int k = 0; k < g->K; k++)
                    s += (double)op_at(A + b * g->sa, g->ta, g->M, g->K, i, k) *
                         (double)op_at(B + b * g->sb, g->tb, g->K, g->N, k, j);
                const size_t o = (size_t)b * g->sc + (size_t)i * g->N + j;
                want[o] = g->alpha * s + (g->beta == 0.0f ? 0.0 : (double)g->beta * C0[o]);
            }
}

static void gb_expect_padding(const gb_case *g, const float *C, const char *what) {
    for (size_t i = 0; i < (size_t)g->sc * g->batch; i++)
        if ((i % (size_t)g->sc) >= (size_t)g->M * g->N && C[i] != PAD_VALUE)
            fail_msg("%s: padding at %zu changed to %g", what, i, C[i]);
}

static void run_gb_forward(const gb_case *g) {
    char what[96];
    snprintf(what, sizeof what, "gemm_batched ta=%d tb=%d M=%d N=%d K=%d beta=%g", g->ta, g->tb,
             g->M, g->N, g->K, g->beta);
    float *A = gb_buf(g->sa, g->batch, (size_t)g->M * g->K);
    float *B = gb_buf(g->sb, g->batch, (size_t)g->K * g->N);
    float *C = gb_buf(g->sc, g->batch, (size_t)g->M * g->N);
    const size_t nc = (size_t)g->sc * g->batch;
    double *want = calloc(nc, sizeof *want);
    assert_non_null(want);
    gb_reference(g, A, B, C, want);
    cpu->gemm_batched(cpu->ctx, g->ta, g->tb, g->M, g->N, g->K, g->alpha, A, g->sa, B, g->sb,
                      g->beta, C, g->sc, g->batch);
    for (int b = 0; b < g->batch; b++)
        expect_ref(C + b * g->sc, want + b * g->sc, (size_t)g->M * g->N, 1e-5, what);
    gb_expect_padding(g, C, what);
    free(A), free(B), free(C), free(want);
}

/* The gradient of L = sum(C * R) through C = alpha op(A) op(B), computed
 * with gemm_batched as attention's backward does, against FD. */
typedef struct gb_st {
    gb_case g;
    float *A, *B, *C, *R;
} gb_st;

static double gb_loss(void *p) {
    gb_st *s = p;
    const gb_case *g = &s->g;
    cpu->gemm_batched(cpu->ctx, g->ta, g->tb, g->M, g->N, g->K, g->alpha, s->A, g->sa, s->B, g->sb,
                      0.0f, s->C, g->sc, g->batch);
    return test_dot(s->C, s->R, (size_t)g->sc * g->batch);
}

static void run_gb_grad(int ta, int tb) {
    gb_st s = {.g = gb_make(ta, tb, 4, 5, 3, 2, 0.75f, 0.0f)};
    const gb_case *g = &s.g;
    const int M = g->M, N = g->N, K = g->K;
    s.A = gb_buf(g->sa, g->batch, (size_t)M * K);
    s.B = gb_buf(g->sb, g->batch, (size_t)K * N);
    s.C = gb_buf(g->sc, g->batch, (size_t)M * N);
    s.R = gb_buf(g->sc, g->batch, (size_t)M * N);
    for (size_t i = 0; i < (size_t)g->sc * g->batch; i++) /* dC = R on the matrices only */
        s.R[i] = s.R[i] == PAD_VALUE ? 0.0f : s.R[i];
    float *dA = test_fbuf((size_t)g->sa * g->batch), *dB = test_fbuf((size_t)g->sb * g->batch);
    /* op(A) (M, K): d op(A) = alpha dC op(B)^T; dA is its transpose when ta.
     * op(B) (K, N): d op(B) = alpha op(A)^T dC. */
    if (!ta)
        cpu->gemm_batched(cpu->ctx, 0, !tb, M, K, N, g->alpha, s.R, g->sc, s.B, g->sb, 0.0f, dA,
                          g->sa, g->batch);
    else
        cpu->gemm_batched(cpu->ctx, tb, 1, K, M, N, g->alpha, s.B, g->sb, s.R, g->sc, 0.0f, dA,
                          g->sa, g->batch);
    if (!tb)
        cpu->gemm_batched(cpu->ctx, !ta, 0, K, N, M, g->alpha, s.A, g->sa, s.R, g->sc, 0.0f, dB,
                          g->sb, g->batch);
    else
        cpu->gemm_batched(cpu->ctx, 1, ta, N, K, M, g->alpha, s.R, g->sc, s.A, g->sa, 0.0f, dB,
                          g->sb, g->batch);
    char what[64];
    snprintf(what, sizeof what, "gemm_batched dA ta=%d tb=%d", ta, tb);
    test_fd_check(gb_loss, &s, s.A, dA, (size_t)g->sa * g->batch, 1e-2f, 1e-3, 1e-4, what);
    snprintf(what, sizeof what, "gemm_batched dB ta=%d tb=%d", ta, tb);
    test_fd_check(gb_loss, &s, s.B, dB, (size_t)g->sb * g->batch, 1e-2f, 1e-3, 1e-4, what);
    free(s.A), free(s.B), free(s.C), free(s.R), free(dA), free(dB);
}

/* gemm_batched_ld on blocks of larger matrices (each ld a few floats
 * wider than the block): the result against a double reference, and every
 * float outside C's blocks untouched. run_gbl returns the result (malloc'd)
 * for the CUDA comparison below. */
static float *run_gbl(dv_backend *G, int ta, int tb, int M, int N, int K, float beta) {
    const int batch = 3, ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    const int lda = ac + 3, ldb = bc + 2, ldc = N + 4;
    const long long sa = (long long)ar * lda + 1, sb = (long long)br * ldb + 2,
                    sc = (long long)M * ldc + 3;
    const size_t na = (size_t)sa * batch, nb = (size_t)sb * batch, nc = (size_t)sc * batch;
    float *A = rand_buf(na, -1, 1), *B = rand_buf(nb, -1, 1), *C = test_fbuf(nc);
    for (size_t i = 0; i < nc; i++)
        C[i] = PAD_VALUE;
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(size_t)b * sc + (size_t)i * ldc + j] = (float)(i - j) * 0.25f;
    float *want = dup_buf(C, nc);
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double acc = 0;
                for (int k = 0; k < K; k++) {
                    const float a =
                        ta ? A[b * sa + (size_t)k * lda + i] : A[b * sa + (size_t)i * lda + k];
                    const float v =
                        tb ? B[b * sb + (size_t)j * ldb + k] : B[b * sb + (size_t)k * ldb + j];
                    acc += (double)a * v;
                }
                float *w = want + (size_t)b * sc + (size_t)i * ldc + j;
                *w = (float)(0.5 * acc + beta * *w);
            }
    float *got;
    if (G == cpu) {
        cpu->gemm_batched_ld(cpu->ctx, ta, tb, M, N, K, 0.5f, A, lda, sa, B, ldb, sb, beta, C, ldc,
                             sc, batch);
        got = dup_buf(C, nc);
    } else {
        float *dA = test_dput(G, A, na * sizeof(float)), *dB = test_dput(G, B, nb * sizeof(float));
        float *dC = test_dput(G, C, nc * sizeof(float));
        G->gemm_batched_ld(G->ctx, ta, tb, M, N, K, 0.5f, dA, lda, sa, dB, ldb, sb, beta, dC, ldc,
                           sc, batch);
        test_expect_ok(G, "gemm_batched_ld");
        got = test_dget(G, dC, nc * sizeof(float));
        G->free(G->ctx, dA), G->free(G->ctx, dB), G->free(G->ctx, dC);
    }
    char what[96];
    snprintf(what, sizeof what, "%s gemm_batched_ld ta=%d tb=%d beta=%g", G->name, ta, tb, beta);
    for (size_t i = 0; i < nc; i++)
        if (want[i] == PAD_VALUE && got[i] != PAD_VALUE)
            fail_msg("%s: float %zu outside the blocks changed to %g", what, i, got[i]);
    expect_close(got, want, nc, 1e-5, what);
    free(A), free(B), free(C), free(want);
    return got;
}

static void test_gemm_batched_ld_cpu(void **state) {
    (void)state;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            free(run_gbl(cpu, ta, tb, 5, 6, 7, 0.0f));
            free(run_gbl(cpu, ta, tb, 5, 6, 7, 0.5f));
            /* A B^T goes through the packed kernel (one thread, AVX-512):
             * two 8-row strips and a row, a full panel and a narrow one */
            free(run_gbl(cpu, ta, tb, 17, 40, 33, 0.0f));
            free(run_gbl(cpu, ta, tb, 17, 40, 33, 0.5f));
        }
}

static void test_gemm_batched_cpu(void **state) {
    (void)state;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gb_case g = gb_make(ta, tb, 5, 4, 3, 3, 0.7f, 0.3f);
            run_gb_forward(&g);
            g = gb_make(ta, tb, 7, 6, 9, 2, 1.0f, 0.0f);
            run_gb_forward(&g);
            run_gb_grad(ta, tb);
        }
    gb_case k0 = gb_make(0, 0, 3, 4, 0, 2, 1.0f, 0.5f); /* K == 0: C = beta * C */
    run_gb_forward(&k0);
}

/* ---- embedding ------------------------------------------------------------ */

typedef struct emb_st {
    int N, D;
    const int32_t *ids;
    float *table, *y, *r;
} emb_st;

static double emb_loss(void *p) {
    emb_st *s = p;
    cpu->embedding_forward(cpu->ctx, s->ids, s->N, s->D, s->table, s->y);
    return test_dot(s->y, s->r, (size_t)s->N * s->D);
}

static void test_embedding_cpu(void **state) {
    (void)state;
    enum { V = 7, D = 5, N = 12 };
    /* id 3 four times, 6 never, 0 first and last */
    const int32_t ids[N] = {0, 3, 1, 3, 5, 2, 3, 4, 1, 3, 5, 0};
    emb_st s = {N, D, ids, rand_buf(V * D, -1, 1), test_fbuf(N * D), rand_buf(N * D, -1, 1)};
    cpu->embedding_forward(cpu->ctx, ids, N, D, s.table, s.y);
    for (int i = 0; i < N; i++)
        test_expect_bits(s.y + i * D, s.table + ids[i] * D, D * sizeof(float), "embedding forward");
    /* backward accumulates, the rows of one id in increasing i */
    float *dt = rand_buf(V * D, -1, 1), *want = dup_buf(dt, V * D);
    for (int i = 0; i < N; i++)
        for (int d = 0; d < D; d++)
            want[ids[i] * D + d] += s.r[i * D + d];
    cpu->embedding_backward(cpu->ctx, ids, N, D, V, s.r, dt);
    test_expect_bits(dt, want, V * D * sizeof(float), "embedding backward");
    /* and against FD, from zero */
    memset(dt, 0, V * D * sizeof(float));
    cpu->embedding_backward(cpu->ctx, ids, N, D, V, s.r, dt);
    for (int d = 0; d < D; d++)
        assert_true(dt[6 * D + d] == 0.0f); /* an unused id gets nothing */
    test_fd_check(emb_loss, &s, s.table, dt, V * D, 1e-2f, 1e-3, 1e-4, "embedding dtable");
    free(s.table), free(s.y), free(s.r), free(dt), free(want);
}

/* ---- layer norm ----------------------------------------------------------- */

typedef struct ln_st {
    int N, C;
    float eps;
    float *x, *gamma, *beta, *y, *mean, *rstd, *r;
} ln_st;

static double ln_loss(void *p) {
    ln_st *s = p;
    cpu->layernorm_forward(cpu->ctx, s->N, s->C, s->eps, s->x, s->gamma, s->beta, s->y, s->mean,
                           s->rstd);
    return test_dot(s->y, s->r, (size_t)s->N * s->C);
}

static void run_ln_cpu(int N, int C) {
    const size_t n = (size_t)N * C;
    ln_st s = {N,
               C,
               1e-5f,
               rand_buf(n, 1, 3), /* a mean well away from 0 */
               rand_buf(C, 0.5f, 1.5f),
               rand_buf(C, -0.5f, 0.5f),
               test_fbuf(n),
               test_fbuf(N),
               test_fbuf(N),
               rand_buf(n, -1, 1)};
    ln_loss(&s);
    /* forward against double */
    double *want = calloc(n, sizeof *want);
    assert_non_null(want);
    for (int i = 0; i < N; i++) {
        double m = 0.0, v = 0.0;
        for (int j = 0; j < C; j++)
            m += s.x[i * C + j];
        m /= C;
        for (int j = 0; j < C; j++)
            v += (s.x[i * C + j] - m) * (s.x[i * C + j] - m);
        const double rs = 1.0 / sqrt(v / C + s.eps);
        for (int j = 0; j < C; j++)
            want[i * C + j] = (s.x[i * C + j] - m) * rs * s.gamma[j] + s.beta[j];
        expect_ref(&s.mean[i], &m, 1, 1e-6, "layernorm mean");
        expect_ref(&s.rstd[i], &rs, 1, 1e-5, "layernorm rstd");
    }
    expect_ref(s.y, want, n, 1e-5, "layernorm y");
    free(want);
    /* backward: dgamma, dbeta accumulate onto what is there */
    float *dx = test_fbuf(n), *dg0 = rand_buf(C, -1, 1), *db0 = rand_buf(C, -1, 1);
    float *dg = dup_buf(dg0, C), *db = dup_buf(db0, C);
    cpu->layernorm_backward(cpu->ctx, N, C, s.x, s.gamma, s.mean, s.rstd, s.r, dx, dg, db);
    for (int j = 0; j < C; j++) {
        dg[j] -= dg0[j];
        db[j] -= db0[j];
    }
    test_fd_check(ln_loss, &s, s.x, dx, n, 1e-3f, 1e-2, 2e-3, "layernorm dx");
    test_fd_check(ln_loss, &s, s.gamma, dg, C, 1e-3f, 1e-2, 1e-3, "layernorm dgamma");
    test_fd_check(ln_loss, &s, s.beta, db, C, 1e-3f, 1e-2, 1e-3, "layernorm dbeta");
    /* dx == NULL: the parameter gradients alone, the same bits */
    float *dg2 = dup_buf(dg0, C), *db2 = dup_buf(db0, C);
    cpu->layernorm_backward(cpu->ctx, N, C, s.x, s.gamma, s.mean, s.rstd, s.r, NULL, dg2, db2);
    for (int j = 0; j < C; j++) {
        dg2[j] -= dg0[j];
        db2[j] -= db0[j];
    }
    test_expect_bits(dg2, dg, C * sizeof(float), "layernorm dgamma without dx");
    test_expect_bits(db2, db, C * sizeof(float), "layernorm dbeta without dx");
    free(s.x), free(s.gamma), free(s.beta), free(s.y), free(s.mean), free(s.rstd), free(s.r);
    free(dx), free(dg0), free(db0), free(dg), free(db), free(dg2), free(db2);
}

static void test_layernorm_cpu(void **state) {
    (void)state;
    run_ln_cpu(6, 37);
    run_ln_cpu(3, 130); /* more than one block of columns in the dgamma sums */
}

/* ---- residual + layer norm, fused ------------------------------------------ */

/* got against want, which may differ by a contracted multiply-add:
 * |got - want| <= 1e-6 (1 + |want|). */
static void expect_near(const float *got, const float *want, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(got[i] - want[i]) <= 1e-6f * (1.0f + fabsf(want[i]))))
            fail_msg("%s[%zu]: got %.9g, want %.9g", what, i, got[i], want[i]);
}

/* residual_layernorm_forward against the sum in a loop plus
 * layernorm_forward (the same bits); sum apart, sum == d and sum == x; y
 * NULL (the sum alone). residual_layernorm_backward against
 * layernorm_backward plus axpy: into dres == dx, into another dx, and dres
 * NULL (the bits of layernorm_backward). */
static void run_res_ln_cpu(int N, int C, int with_bias) {
    char what[96];
    const size_t n = (size_t)N * C, fb = sizeof(float);
    float *x = rand_buf(n, 1, 3), *d = rand_buf(n, -1, 1);
    float *bias = with_bias ? rand_buf(C, -1, 1) : NULL;
    float *gamma = rand_buf(C, 0.5f, 1.5f), *beta = rand_buf(C, -0.5f, 0.5f);
    float *s = test_fbuf(n), *y = test_fbuf(n), *mean = test_fbuf(N), *rstd = test_fbuf(N);
    for (size_t i = 0; i < n; i++)
        s[i] = bias ? x[i] + d[i] + bias[i % C] : x[i] + d[i];
    cpu->layernorm_forward(cpu->ctx, N, C, 1e-5f, s, gamma, beta, y, mean, rstd);
    float *s2 = test_fbuf(n), *y2 = test_fbuf(n), *mean2 = test_fbuf(N), *rstd2 = test_fbuf(N);
    for (int alias = 0; alias < 3; alias++) {
        float *xi = dup_buf(x, n), *di = dup_buf(d, n);
        float *sum = alias == 0 ? s2 : alias == 1 ? di : xi;
        snprintf(what, sizeof what, "residual layernorm N=%d C=%d bias=%d alias=%d", N, C,
                 with_bias, alias);
        cpu->residual_layernorm_forward(cpu->ctx, N, C, 1e-5f, xi, di, bias, gamma, beta, sum, y2,
                                        mean2, rstd2);
        test_expect_bits(sum, s, n * fb, what);
        test_expect_bits(y2, y, n * fb, what);
        test_expect_bits(mean2, mean, N * fb, what);
        test_expect_bits(rstd2, rstd, N * fb, what);
        free(xi), free(di);
    }
    float *di = dup_buf(d, n);
    cpu->residual_layernorm_forward(cpu->ctx, N, C, 1e-5f, x, di, bias, NULL, NULL, di, NULL, NULL,
                                    NULL);
    test_expect_bits(di, s, n * fb, "residual add without layer norm");
    free(di);

    /* backward */
    float *dy = rand_buf(n, -1, 1), *dres = rand_buf(n, -1, 1), *t = test_fbuf(n);
    float *dg0 = rand_buf(C, -1, 1), *db0 = rand_buf(C, -1, 1);
    float *dg = dup_buf(dg0, C), *db = dup_buf(db0, C), *want = dup_buf(dres, n);
    cpu->layernorm_backward(cpu->ctx, N, C, s, gamma, mean, rstd, dy, t, dg, db);
    cpu->axpy(cpu->ctx, 1.0f, t, want, n);
    float *dx = dup_buf(dres, n), *dg2 = dup_buf(dg0, C), *db2 = dup_buf(db0, C);
    cpu->residual_layernorm_backward(cpu->ctx, N, C, s, gamma, mean, rstd, dy, dx, dx, dg2, db2);
    snprintf(what, sizeof what, "residual layernorm backward N=%d C=%d", N, C);
    expect_near(dx, want, n, what);
    test_expect_bits(dg2, dg, C * fb, "residual layernorm dgamma");
    test_expect_bits(db2, db, C * fb, "residual layernorm dbeta");
    float *dx2 = rand_buf(n, -1, 1);
    cpu->residual_layernorm_backward(cpu->ctx, N, C, s, gamma, mean, rstd, dy, dres, dx2, NULL,
                                     NULL);
    test_expect_bits(dx2, dx, n * fb, "residual layernorm backward, dres apart");
    cpu->residual_layernorm_backward(cpu->ctx, N, C, s, gamma, mean, rstd, dy, NULL, dx2, NULL,
                                     NULL);
    test_expect_bits(dx2, t, n * fb, "residual layernorm backward, dres NULL");
    free(x), free(d), free(bias), free(gamma), free(beta), free(s), free(y), free(mean), free(rstd);
    free(s2), free(y2), free(mean2), free(rstd2), free(dy), free(dres), free(t), free(dg0);
    free(db0), free(dg), free(db), free(want), free(dx), free(dg2), free(db2), free(dx2);
}

static void test_residual_layernorm_cpu(void **state) {
    (void)state;
    static const int Ns[] = {1, 5}, Cs[] = {1, 7, 64, 768};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++)
            for (int b = 0; b < 2; b++)
                run_res_ln_cpu(Ns[i], Cs[j], b);
}

/* ---- GELU -------------------------------------------------------------------- */

typedef struct gelu_st {
    size_t n;
    float *x, *y, *r;
} gelu_st;

static double gelu_loss(void *p) {
    gelu_st *s = p;
    cpu->gelu_forward(cpu->ctx, s->x, s->y, s->n);
    return test_dot(s->y, s->r, s->n);
}

static void test_transpose_cpu(void **state) {
    (void)state;
    const int A = 2, B = 3, C = 4, D = 5;
    const size_t n = (size_t)A * B * C * D;
    float *x = rand_buf(n, -1, 1), *y = test_fbuf(n), *back = test_fbuf(n);
    cpu->transpose(cpu->ctx, A, B, C, D, x, y);
    for (int a = 0; a < A; a++)
        for (int b = 0; b < B; b++)
            for (int c = 0; c < C; c++)
                for (int d = 0; d < D; d++)
                    assert_true(y[((a * C + c) * B + b) * D + d] ==
                                x[((a * B + b) * C + c) * D + d]);
    cpu->transpose(cpu->ctx, A, C, B, D, y, back); /* the inverse */
    test_expect_bits(back, x, n * sizeof(float), "transpose there and back");
    free(x), free(y), free(back);
}

static void test_gelu_cpu(void **state) {
    (void)state;
    const size_t n = 200;
    gelu_st s = {n, rand_buf(n, -6, 6), test_fbuf(n), rand_buf(n, -1, 1)};
    s.x[0] = 0.0f, s.x[1] = 20.0f, s.x[2] = -20.0f;
    gelu_loss(&s);
    double *want = calloc(n, sizeof *want);
    assert_non_null(want);
    const double k0 = sqrt(2.0 / acos(-1.0));
    for (size_t i = 0; i < n; i++) {
        const double v = s.x[i];
        want[i] = 0.5 * v * (1.0 + tanh(k0 * (v + 0.044715 * v * v * v)));
    }
    expect_ref(s.y, want, n, 2e-6, "gelu forward");
    free(want);
    float *dx = test_fbuf(n);
    cpu->gelu_backward(cpu->ctx, s.x, s.r, dx, n);
    test_fd_check(gelu_loss, &s, s.x, dx, n, 1e-3f, 1e-2, 1e-3, "gelu dx");
    float *inplace = dup_buf(s.r, n); /* dx == dy */
    cpu->gelu_backward(cpu->ctx, s.x, inplace, inplace, n);
    test_expect_bits(inplace, dx, n * sizeof(float), "gelu backward in place");
    free(s.x), free(s.y), free(s.r), free(dx), free(inplace);
}

/* ---- fused causal attention ------------------------------------------------------ */

typedef struct att_st {
    int BH, T, Dh;
    float scale;
    float *q, *k, *v, *r; /* inputs; r = dL/do of L = sum(o * r) */
    float *o, *lse, *work;
} att_st;

static att_st att_make(dv_backend *G, int BH, int T, int Dh, float lo, float hi) {
    const size_t n = (size_t)BH * T * Dh, nw = G->attention_workspace(G->ctx, BH, T, Dh);
    att_st a = {BH,
                T,
                Dh,
                1.0f / sqrtf((float)Dh),
                rand_buf(n, lo, hi),
                rand_buf(n, lo, hi),
                rand_buf(n, -1, 1),
                rand_buf(n, -1, 1),
                test_fbuf(n),
                test_fbuf((size_t)BH * T),
                test_fbuf(nw ? nw : 1)};
    for (size_t i = 0; i < nw; i++)
        a.work[i] = NAN; /* scratch: nothing may be read before it is written */
    return a;
}

static void att_free(att_st *a) {
    free(a->q), free(a->k), free(a->v), free(a->r), free(a->o), free(a->lse), free(a->work);
}

/* The naive reference in double, the full softmax of each row: o, lse and,
 * for do = r, the analytic dq, dk, dv. */
static void att_reference(const att_st *a, double *o, double *lse, double *dq, double *dk,
                          double *dv) {
    const int T = a->T, Dh = a->Dh;
    const size_t n = (size_t)a->BH * T * Dh;
    double *p = malloc((size_t)T * sizeof *p), *dp = malloc((size_t)T * sizeof *dp);
    assert_non_null(p), assert_non_null(dp);
    for (size_t e = 0; e < n; e++)
        dq[e] = dk[e] = dv[e] = 0.0;
    for (int bh = 0; bh < a->BH; bh++) {
        const size_t base = (size_t)bh * T * Dh;
        const float *q = a->q + base, *k = a->k + base, *v = a->v + base, *r = a->r + base;
        for (int i = 0; i < T; i++) {
            double m = -INFINITY, sum = 0.0, dsum = 0.0;
            for (int j = 0; j <= i; j++) {
                double s = 0.0;
                for (int d = 0; d < Dh; d++)
                    s += (double)q[i * Dh + d] * k[j * Dh + d];
                p[j] = s * a->scale;
                m = fmax(m, p[j]);
            }
            for (int j = 0; j <= i; j++)
                sum += p[j] = exp(p[j] - m);
            lse[(size_t)bh * T + i] = m + log(sum);
            for (int j = 0; j <= i; j++) {
                p[j] /= sum;
                dp[j] = 0.0;
                for (int d = 0; d < Dh; d++)
                    dp[j] += (double)r[i * Dh + d] * v[j * Dh + d];
                dsum += p[j] * dp[j];
            }
            for (int d = 0; d < Dh; d++) {
                double acc = 0.0;
                for (int j = 0; j <= i; j++)
                    acc += p[j] * v[j * Dh + d];
                o[base + (size_t)i * Dh + d] = acc;
            }
            for (int j = 0; j <= i; j++) {
                const double ds = p[j] * (dp[j] - dsum) * a->scale;
                for (int d = 0; d < Dh; d++) {
                    dq[base + (size_t)i * Dh + d] += ds * k[j * Dh + d];
                    dk[base + (size_t)j * Dh + d] += ds * q[i * Dh + d];
                    dv[base + (size_t)j * Dh + d] += p[j] * r[i * Dh + d];
                }
            }
        }
    }
    free(p), free(dp);
}

static double att_loss(void *st) {
    att_st *a = st;
    cpu->attention_forward(cpu->ctx, a->BH, a->T, a->Dh, a->scale, a->q, a->k, a->v, a->o, a->lse,
                           a->work);
    return test_dot(a->o, a->r, (size_t)a->BH * a->T * a->Dh);
}

/* Forward and backward against the reference; with fd, the gradients also
 * against finite differences of L through the op. */
static void run_att_cpu(int BH, int T, int Dh, int fd) {
    const size_t n = (size_t)BH * T * Dh, nl = (size_t)BH * T;
    att_st a = att_make(cpu, BH, T, Dh, -1.5f, 1.5f);
    double *ro = malloc(n * sizeof *ro), *rl = malloc(nl * sizeof *rl);
    double *rq = malloc(n * sizeof *rq), *rk = malloc(n * sizeof *rk), *rv = malloc(n * sizeof *rv);
    assert_true(ro && rl && rq && rk && rv);
    att_reference(&a, ro, rl, rq, rk, rv);
    char what[96];
    for (size_t e = 0; e < n; e++)
        a.o[e] = NAN; /* every output is written */
    for (size_t e = 0; e < nl; e++)
        a.lse[e] = NAN;
    att_loss(&a);
    snprintf(what, sizeof what, "attention o BH=%d T=%d Dh=%d", BH, T, Dh);
    expect_ref(a.o, ro, n, 2e-6, what);
    snprintf(what, sizeof what, "attention lse BH=%d T=%d Dh=%d", BH, T, Dh);
    expect_ref(a.lse, rl, nl, 2e-6, what);

    float *dq = test_fbuf(n), *dk = test_fbuf(n), *dv = test_fbuf(n);
    for (size_t e = 0; e < n; e++)
        dq[e] = dk[e] = dv[e] = NAN; /* overwritten, never added to */
    cpu->attention_backward(cpu->ctx, BH, T, Dh, a.scale, a.q, a.k, a.v, a.o, a.lse, a.r, dq, dk,
                            dv, a.work);
    const float *got[3] = {dq, dk, dv};
    const double *want[3] = {rq, rk, rv};
    static const char *const names[3] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; t++) {
        snprintf(what, sizeof what, "attention %s BH=%d T=%d Dh=%d", names[t], BH, T, Dh);
        expect_ref(got[t], want[t], n, 1e-5, what);
    }
    if (fd) {
        float *param[3] = {a.q, a.k, a.v};
        for (int t = 0; t < 3; t++) {
            if (t < 2 && T == 1) continue; /* one key: o = v whatever q and k */
            snprintf(what, sizeof what, "attention FD %s BH=%d T=%d Dh=%d", names[t], BH, T, Dh);
            test_fd_check(att_loss, &a, param[t], got[t], n, 1e-2f, 1e-2, 1e-3, what);
        }
    }
    free(ro), free(rl), free(rq), free(rk), free(rv), free(dq), free(dk), free(dv);
    att_free(&a);
}

static void test_attention_cpu(void **state) {
    (void)state;
    run_att_cpu(3, 1, 8, 1);
    run_att_cpu(1, 7, 16, 1);
    run_att_cpu(3, 7, 8, 1);
    run_att_cpu(1, 65, 64, 0);
    run_att_cpu(3, 65, 16, 1);
    run_att_cpu(1, 130, 8, 0);
    run_att_cpu(3, 130, 64, 0);
    run_att_cpu(1, 64, 16, 0);  /* exactly one block */
    run_att_cpu(1, 128, 32, 0); /* two blocks, the examples' window */
}

/* ======================================================================= */
/* Part B: CUDA against the CPU                                            */
/* ======================================================================= */

#define REQUIRE_GPU()                                                                              \
    do {                                                                                           \
        if (!gpu) {                                                                                \
            skip();                                                                                \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* The device buffer d (n floats) against the CPU's result h. */
static void dexpect(dv_backend *G, const float *d, const float *h, size_t n, double tol,
                    const char *what) {
    float *g = test_dget(G, d, n * sizeof *g);
    if (tol == 0.0)
        test_expect_bits(g, h, n * sizeof *g, what);
    else
        expect_close(g, h, n, tol, what);
    free(g);
}

/* ---- gemm_batched --------------------------------------------------------- */

static void run_gb_cuda(dv_backend *G, const gb_case *g, double tol, const char *tag) {
    char what[128];
    snprintf(what, sizeof what, "%s gemm_batched ta=%d tb=%d M=%d N=%d K=%d beta=%g", tag, g->ta,
             g->tb, g->M, g->N, g->K, g->beta);
    const size_t na = (size_t)g->sa * g->batch, nb = (size_t)g->sb * g->batch;
    const size_t nc = (size_t)g->sc * g->batch;
    float *A = gb_buf(g->sa, g->batch, (size_t)g->M * g->K);
    float *B = gb_buf(g->sb, g->batch, (size_t)g->K * g->N);
    float *C = gb_buf(g->sc, g->batch, (size_t)g->M * g->N);
    float *dA = test_dput(G, A, na * sizeof(float)), *dB = test_dput(G, B, nb * sizeof(float));
    float *dC = test_dput(G, C, nc * sizeof(float));
    cpu->gemm_batched(cpu->ctx, g->ta, g->tb, g->M, g->N, g->K, g->alpha, A, g->sa, B, g->sb,
                      g->beta, C, g->sc, g->batch);
    G->gemm_batched(G->ctx, g->ta, g->tb, g->M, g->N, g->K, g->alpha, dA, g->sa, dB, g->sb, g->beta,
                    dC, g->sc, g->batch);
    test_expect_ok(G, what);
    float *got = test_dget(G, dC, nc * sizeof(float));
    gb_expect_padding(g, got, what);
    expect_close(got, C, nc, tol, what);
    free(got), free(A), free(B), free(C);
    G->free(G->ctx, dA), G->free(G->ctx, dB), G->free(G->ctx, dC);
}

static void test_gemm_batched_ld_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            free(run_gbl(gpu, ta, tb, 5, 6, 7, 0.5f));
}

static void test_gemm_batched_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const gb_case g = gb_make(ta, tb, 17, 13, 9, 3, 0.7f, 0.3f);
            run_gb_cuda(gpu, &g, TOL_RED, "fp32");
            const gb_case z = gb_make(ta, tb, 8, 5, 33, 2, 1.0f, 0.0f);
            run_gb_cuda(gpu, &z, TOL_RED, "fp32");
            if (gpu_tf32) run_gb_cuda(gpu_tf32, &g, TOL_TF32, "tf32");
            if (gpu_bf16) run_gb_cuda(gpu_bf16, &g, TOL_BF16, "bf16");
        }
    const gb_case k0 = gb_make(1, 0, 3, 4, 0, 3, 1.0f, 0.5f);
    run_gb_cuda(gpu, &k0, 0.0, "fp32 K=0");
    const gb_case k0z = gb_make(0, 1, 3, 4, 0, 2, 1.0f, 0.0f);
    run_gb_cuda(gpu, &k0z, 0.0, "fp32 K=0");
}

/* gemm_packed on the GPU against the CPU's plain gemm: both trans_b,
 * beta 0 (C holds NaNs, never read) and beta != 0. */
static void test_gemm_packed_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    static const int shapes[][3] = {{1, 1, 1}, {7, 33, 5}, {32, 96, 64}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        for (int tb = 0; tb < 2; tb++) {
            for (int bz = 0; bz < 2; bz++) {
                const float alpha = 0.7f, beta = bz ? 0.0f : 0.3f;
                float *A = rand_buf((size_t)M * K, -1, 1), *B = rand_buf((size_t)K * N, -1, 1);
                float *C = rand_buf((size_t)M * N, -1, 1), *C0 = dup_buf(C, (size_t)M * N);
                if (bz)
                    for (int i = 0; i < M * N; i++)
                        C0[i] = NAN;
                float *Ad = test_dput(gpu, A, (size_t)M * K * sizeof(float));
                float *Bd = test_dput(gpu, B, (size_t)K * N * sizeof(float));
                float *Cd = test_dput(gpu, C0, (size_t)M * N * sizeof(float));
                float *Pd = test_dalloc(gpu, gpu->gemm_pack_size(gpu->ctx, K, N) * sizeof(float));
                cpu->gemm(cpu->ctx, 0, tb, M, N, K, alpha, A, B, beta, C);
                gpu->gemm_pack(gpu->ctx, tb, K, N, Bd, Pd);
                gpu->gemm_packed(gpu->ctx, M, N, K, alpha, Ad, Pd, beta, Cd);
                char what[80];
                snprintf(what, sizeof what, "gemm_packed %dx%dx%d tb=%d beta=%g", M, N, K, tb,
                         beta);
                dexpect(gpu, Cd, C, (size_t)M * N, TOL_RED, what);
                test_expect_ok(gpu, what);
                free(A), free(B), free(C), free(C0);
                gpu->free(gpu->ctx, Ad), gpu->free(gpu->ctx, Bd), gpu->free(gpu->ctx, Cd);
                gpu->free(gpu->ctx, Pd);
            }
        }
    }
}

/* ---- embedding -------------------------------------------------------------- */

/* N ids in [0, V), with long runs of one id and ids never drawn. */
static int32_t *emb_ids(int N, int V) {
    int32_t *ids = malloc((size_t)N * sizeof *ids);
    assert_non_null(ids);
    for (int i = 0; i < N; i++)
        ids[i] =
            (int32_t)(test_rand_next() % 4 == 0 ? 1
                                                : test_rand_next() % (uint64_t)(V > 2 ? V - 2 : 1));
    ids[N - 1] = V - 1;
    return ids;
}

static float *emb_backward_cuda(int N, int D, int V, const int32_t *ids_d, const float *dy_d,
                                const float *dt0) {
    float *dt = test_dput(gpu, dt0, (size_t)V * D * sizeof(float));
    gpu->embedding_backward(gpu->ctx, ids_d, N, D, V, dy_d, dt);
    float *h = test_dget(gpu, dt, (size_t)V * D * sizeof(float));
    gpu->free(gpu->ctx, dt);
    return h;
}

static void run_emb_cuda(int N, int D, int V) {
    char what[64];
    snprintf(what, sizeof what, "embedding N=%d D=%d V=%d", N, D, V);
    int32_t *ids = emb_ids(N, V);
    float *table = rand_buf((size_t)V * D, -1, 1), *dy = rand_buf((size_t)N * D, -1, 1);
    float *dt0 = rand_buf((size_t)V * D, -1, 1), *dt = dup_buf(dt0, (size_t)V * D);
    float *y = test_fbuf((size_t)N * D);
    int32_t *ids_d = test_dput(gpu, ids, (size_t)N * sizeof *ids);
    float *table_d = test_dput(gpu, table, (size_t)V * D * sizeof(float));
    float *dy_d = test_dput(gpu, dy, (size_t)N * D * sizeof(float));
    float *y_d = test_dalloc(gpu, (size_t)N * D * sizeof(float));
    cpu->embedding_forward(cpu->ctx, ids, N, D, table, y);
    gpu->embedding_forward(gpu->ctx, ids_d, N, D, table_d, y_d);
    dexpect(gpu, y_d, y, (size_t)N * D, 0.0, what);
    /* the same order of adds as the CPU, so the same bits; twice, the same */
    cpu->embedding_backward(cpu->ctx, ids, N, D, V, dy, dt);
    float *g1 = emb_backward_cuda(N, D, V, ids_d, dy_d, dt0);
    float *g2 = emb_backward_cuda(N, D, V, ids_d, dy_d, dt0);
    test_expect_ok(gpu, what);
    test_expect_bits(g1, dt, (size_t)V * D * sizeof(float), what);
    test_expect_bits(g2, g1, (size_t)V * D * sizeof(float), "embedding backward run to run");
    free(ids), free(table), free(dy), free(dt0), free(dt), free(y), free(g1), free(g2);
    gpu->free(gpu->ctx, ids_d), gpu->free(gpu->ctx, table_d), gpu->free(gpu->ctx, dy_d);
    gpu->free(gpu->ctx, y_d);
}

static void test_embedding_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    run_emb_cuda(1, 3, 2);
    run_emb_cuda(300, 70, 50);   /* one sort tile */
    run_emb_cuda(1500, 40, 300); /* several tiles: the global merge steps */
}

/* ---- layer norm ---------------------------------------------------------------- */

typedef struct ln_out {
    float *y, *mean, *rstd, *dx, *dg, *db;
} ln_out;

/* Forward and backward on G from host inputs; results copied to the host. */
static ln_out ln_run(dv_backend *G, int N, int C, const float *x, const float *gamma,
                     const float *beta, const float *dy, const float *dg0, const float *db0) {
    const size_t n = (size_t)N * C, fb = sizeof(float);
    float *xd = test_dput(G, x, n * fb), *gd = test_dput(G, gamma, C * fb),
          *bd = test_dput(G, beta, C * fb);
    float *dyd = test_dput(G, dy, n * fb), *dgd = test_dput(G, dg0, C * fb),
          *dbd = test_dput(G, db0, C * fb);
    float *y = test_dalloc(G, n * fb), *mean = test_dalloc(G, N * fb),
          *rstd = test_dalloc(G, N * fb);
    float *dx = test_dalloc(G, n * fb);
    G->layernorm_forward(G->ctx, N, C, 1e-5f, xd, gd, bd, y, mean, rstd);
    G->layernorm_backward(G->ctx, N, C, xd, gd, mean, rstd, dyd, dx, dgd, dbd);
    test_expect_ok(G, "layernorm");
    ln_out o = {test_dget(G, y, n * fb),  test_dget(G, mean, N * fb), test_dget(G, rstd, N * fb),
                test_dget(G, dx, n * fb), test_dget(G, dgd, C * fb),  test_dget(G, dbd, C * fb)};
    float *bufs[] = {xd, gd, bd, dyd, dgd, dbd, y, mean, rstd, dx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        G->free(G->ctx, bufs[i]);
    return o;
}

static void ln_out_free(ln_out *o) {
    free(o->y), free(o->mean), free(o->rstd), free(o->dx), free(o->dg), free(o->db);
}

static void run_ln_cuda(int N, int C) {
    const size_t n = (size_t)N * C;
    float *x = rand_buf(n, -2, 4), *gamma = rand_buf(C, 0.5f, 1.5f), *beta = rand_buf(C, -1, 1);
    float *dy = rand_buf(n, -1, 1), *dg0 = rand_buf(C, -1, 1), *db0 = rand_buf(C, -1, 1);
    ln_out h = ln_run(cpu, N, C, x, gamma, beta, dy, dg0, db0);
    ln_out d = ln_run(gpu, N, C, x, gamma, beta, dy, dg0, db0);
    ln_out d2 = ln_run(gpu, N, C, x, gamma, beta, dy, dg0, db0);
    expect_close(d.y, h.y, n, TOL_EW, "layernorm y");
    expect_close(d.mean, h.mean, N, TOL_EW, "layernorm mean");
    expect_close(d.rstd, h.rstd, N, TOL_EW, "layernorm rstd");
    expect_close(d.dx, h.dx, n, TOL_RED, "layernorm dx");
    expect_close(d.dg, h.dg, C, TOL_RED, "layernorm dgamma");
    expect_close(d.db, h.db, C, TOL_RED, "layernorm dbeta");
    /* run to run: the same bits */
    test_expect_bits(d2.dx, d.dx, n * sizeof(float), "layernorm dx run to run");
    test_expect_bits(d2.dg, d.dg, C * sizeof(float), "layernorm dgamma run to run");
    test_expect_bits(d2.db, d.db, C * sizeof(float), "layernorm dbeta run to run");
    ln_out_free(&h), ln_out_free(&d), ln_out_free(&d2);
    free(x), free(gamma), free(beta), free(dy), free(dg0), free(db0);
}

static void test_layernorm_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    run_ln_cuda(1, 1);
    run_ln_cuda(37, 300); /* rows of several lane strides */
    run_ln_cuda(600, 70); /* several row chunks in dgamma/dbeta */
}

/* ---- residual + layer norm, fused ---------------------------------------------- */

typedef struct res_ln_out {
    float *sum, *y, *mean, *rstd, *add, *dx, *dg, *db;
} res_ln_out;

/* On G from host inputs: the sum alone (y NULL, in place into a copy of
 * x), forward in place (sum == d), and backward accumulating into a copy of dres;
 * results copied to the host. */
static res_ln_out res_ln_run(dv_backend *G, int N, int C, const float *x, const float *d,
                             const float *bias, const float *gamma, const float *beta,
                             const float *dy, const float *dres, const float *dg0,
                             const float *db0) {
    const size_t n = (size_t)N * C, fb = sizeof(float);
    float *xd = test_dput(G, x, n * fb), *dd = test_dput(G, d, n * fb);
    float *bd = bias ? test_dput(G, bias, C * fb) : NULL;
    float *gd = test_dput(G, gamma, C * fb), *betad = test_dput(G, beta, C * fb);
    float *dyd = test_dput(G, dy, n * fb), *dxd = test_dput(G, dres, n * fb);
    float *dgd = test_dput(G, dg0, C * fb), *dbd = test_dput(G, db0, C * fb);
    float *y = test_dalloc(G, n * fb), *mean = test_dalloc(G, N * fb),
          *rstd = test_dalloc(G, N * fb), *add = test_dput(G, x, n * fb);
    G->residual_layernorm_forward(G->ctx, N, C, 1e-5f, add, dd, bd, NULL, NULL, add, NULL, NULL,
                                  NULL);
    G->residual_layernorm_forward(G->ctx, N, C, 1e-5f, xd, dd, bd, gd, betad, dd, y, mean, rstd);
    G->residual_layernorm_backward(G->ctx, N, C, dd, gd, mean, rstd, dyd, dxd, dxd, dgd, dbd);
    test_expect_ok(G, "residual layernorm");
    res_ln_out o = {test_dget(G, dd, n * fb),   test_dget(G, y, n * fb),
                    test_dget(G, mean, N * fb), test_dget(G, rstd, N * fb),
                    test_dget(G, add, n * fb),  test_dget(G, dxd, n * fb),
                    test_dget(G, dgd, C * fb),  test_dget(G, dbd, C * fb)};
    float *bufs[] = {xd, dd, bd, gd, betad, dyd, dxd, dgd, dbd, y, mean, rstd, add};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) G->free(G->ctx, bufs[i]);
    return o;
}

static void res_ln_out_free(res_ln_out *o) {
    free(o->sum), free(o->y), free(o->mean), free(o->rstd), free(o->add), free(o->dx);
    free(o->dg), free(o->db);
}

static void run_res_ln_cuda(int N, int C, int with_bias) {
    char what[96];
    const size_t n = (size_t)N * C;
    float *x = rand_buf(n, -2, 4), *d = rand_buf(n, -1, 1);
    float *bias = with_bias ? rand_buf(C, -1, 1) : NULL;
    float *gamma = rand_buf(C, 0.5f, 1.5f), *beta = rand_buf(C, -1, 1);
    float *dy = rand_buf(n, -1, 1), *dres = rand_buf(n, -1, 1);
    float *dg0 = rand_buf(C, -1, 1), *db0 = rand_buf(C, -1, 1);
    res_ln_out h = res_ln_run(cpu, N, C, x, d, bias, gamma, beta, dy, dres, dg0, db0);
    res_ln_out g = res_ln_run(gpu, N, C, x, d, bias, gamma, beta, dy, dres, dg0, db0);
    res_ln_out g2 = res_ln_run(gpu, N, C, x, d, bias, gamma, beta, dy, dres, dg0, db0);
    snprintf(what, sizeof what, "residual layernorm N=%d C=%d bias=%d", N, C, with_bias);
    test_expect_bits(g.sum, h.sum, n * sizeof(float), what); /* the same two or three adds */
    test_expect_bits(g.add, h.add, n * sizeof(float), what);
    expect_close(g.y, h.y, n, TOL_EW, what);
    expect_close(g.mean, h.mean, N, TOL_EW, what);
    expect_close(g.rstd, h.rstd, N, TOL_EW, what);
    expect_close(g.dx, h.dx, n, TOL_RED, what);
    expect_close(g.dg, h.dg, C, TOL_RED, what);
    expect_close(g.db, h.db, C, TOL_RED, what);
    test_expect_bits(g2.dx, g.dx, n * sizeof(float), "residual layernorm dx run to run");
    test_expect_bits(g2.dg, g.dg, C * sizeof(float), "residual layernorm dgamma run to run");
    res_ln_out_free(&h), res_ln_out_free(&g), res_ln_out_free(&g2);
    free(x), free(d), free(bias), free(gamma), free(beta), free(dy), free(dres), free(dg0);
    free(db0);
}

static void test_residual_layernorm_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    static const int Ns[] = {1, 5}, Cs[] = {1, 7, 64, 768};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++)
            for (int b = 0; b < 2; b++)
                run_res_ln_cuda(Ns[i], Cs[j], b);
    run_res_ln_cuda(600, 70, 1); /* several row chunks in dgamma/dbeta */
}

/* ---- GELU ------------------------------------------------------------------------ */

static void test_transpose_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    const int A = 3, B = 5, C = 7, D = 11;
    const size_t n = (size_t)A * B * C * D;
    float *x = rand_buf(n, -1, 1), *y = test_fbuf(n);
    float *xd = test_dput(gpu, x, n * sizeof(float)), *yd = test_dalloc(gpu, n * sizeof(float));
    cpu->transpose(cpu->ctx, A, B, C, D, x, y);
    gpu->transpose(gpu->ctx, A, B, C, D, xd, yd);
    float *got = test_dget(gpu, yd, n * sizeof(float));
    test_expect_bits(got, y, n * sizeof(float), "transpose");
    test_expect_ok(gpu, "transpose");
    free(x), free(y), free(got);
    gpu->free(gpu->ctx, xd), gpu->free(gpu->ctx, yd);
}

static void test_gelu_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    const size_t n = 5000;
    float *x = rand_buf(n, -8, 8), *dy = rand_buf(n, -1, 1);
    float *y = test_fbuf(n), *dx = test_fbuf(n);
    float *xd = test_dput(gpu, x, n * sizeof(float)), *dyd = test_dput(gpu, dy, n * sizeof(float));
    float *yd = test_dalloc(gpu, n * sizeof(float));
    cpu->gelu_forward(cpu->ctx, x, y, n);
    cpu->gelu_backward(cpu->ctx, x, dy, dx, n);
    gpu->gelu_forward(gpu->ctx, xd, yd, n);
    dexpect(gpu, yd, y, n, TOL_EW, "gelu forward");
    gpu->gelu_backward(gpu->ctx, xd, dyd, dyd, n); /* in place */
    dexpect(gpu, dyd, dx, n, TOL_EW, "gelu backward");
    test_expect_ok(gpu, "gelu");
    free(x), free(dy), free(y), free(dx);
    gpu->free(gpu->ctx, xd), gpu->free(gpu->ctx, dyd), gpu->free(gpu->ctx, yd);
}

/* ---- fused causal attention ------------------------------------------------------------ */

/* The CUDA op against the CPU's on the same inputs, outputs starting as
 * NaN (every one written); backward twice, for the same bits. */
static void run_att_cuda(int BH, int T, int Dh, float lo, float hi) {
    char what[96];
    const size_t n = (size_t)BH * T * Dh, nl = (size_t)BH * T, b = n * sizeof(float);
    att_st a = att_make(cpu, BH, T, Dh, lo, hi);
    float *dq = test_fbuf(n), *dk = test_fbuf(n), *dv = test_fbuf(n);
    cpu->attention_forward(cpu->ctx, BH, T, Dh, a.scale, a.q, a.k, a.v, a.o, a.lse, a.work);
    cpu->attention_backward(cpu->ctx, BH, T, Dh, a.scale, a.q, a.k, a.v, a.o, a.lse, a.r, dq, dk,
                            dv, a.work);
    float *qd = test_dput(gpu, a.q, b), *kd = test_dput(gpu, a.k, b), *vd = test_dput(gpu, a.v, b);
    float *gd = test_dput(gpu, a.r, b);
    float *od = test_dalloc(gpu, b), *ld = test_dalloc(gpu, nl * sizeof(float));
    const size_t nw = gpu->attention_workspace(gpu->ctx, BH, T, Dh);
    float *wd = test_dalloc(gpu, (nw ? nw : 1) * sizeof(float));
    float *dd[6];
    for (int t = 0; t < 6; t++)
        dd[t] = test_dalloc(gpu, b);
    gpu->fill(gpu->ctx, od, NAN, n);
    gpu->fill(gpu->ctx, ld, NAN, nl);
    gpu->fill(gpu->ctx, wd, NAN, nw ? nw : 1);
    for (int t = 0; t < 6; t++)
        gpu->fill(gpu->ctx, dd[t], NAN, n);
    gpu->attention_forward(gpu->ctx, BH, T, Dh, a.scale, qd, kd, vd, od, ld, wd);
    snprintf(what, sizeof what, "attention o BH=%d T=%d Dh=%d", BH, T, Dh);
    dexpect(gpu, od, a.o, n, TOL_RED, what);
    snprintf(what, sizeof what, "attention lse BH=%d T=%d Dh=%d", BH, T, Dh);
    dexpect(gpu, ld, a.lse, nl, TOL_RED, what);
    /* backward from the CPU's o and lse, so only backward is compared */
    gpu->to_device(gpu->ctx, od, a.o, b);
    gpu->to_device(gpu->ctx, ld, a.lse, nl * sizeof(float));
    for (int rep = 0; rep < 2; rep++)
        gpu->attention_backward(gpu->ctx, BH, T, Dh, a.scale, qd, kd, vd, od, ld, gd, dd[3 * rep],
                                dd[3 * rep + 1], dd[3 * rep + 2], wd);
    const float *want[3] = {dq, dk, dv};
    static const char *const names[3] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; t++) {
        snprintf(what, sizeof what, "attention %s BH=%d T=%d Dh=%d", names[t], BH, T, Dh);
        dexpect(gpu, dd[t], want[t], n, TOL_RED, what);
        float *first = test_dget(gpu, dd[t], b), *again = test_dget(gpu, dd[t + 3], b);
        test_expect_bits(again, first, b, what);
        free(first), free(again);
    }
    test_expect_ok(gpu, what);
    float *dev[] = {qd, kd, vd, gd, od, ld, wd, dd[0], dd[1], dd[2], dd[3], dd[4], dd[5]};
    for (size_t t = 0; t < sizeof dev / sizeof dev[0]; t++)
        gpu->free(gpu->ctx, dev[t]);
    free(dq), free(dk), free(dv);
    att_free(&a);
}

static void test_attention_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    run_att_cuda(3, 1, 8, -1, 1);
    run_att_cuda(1, 7, 16, -1, 1);
    run_att_cuda(3, 65, 64, -1, 1);
    run_att_cuda(1, 130, 8, -2, 2);
    run_att_cuda(1, 130, 64, -1, 1);
    run_att_cuda(2, 70, 33, -1, 1);  /* the Dh <= 64 tiles, half used */
    run_att_cuda(1, 40, 128, -1, 1); /* the Dh <= 128 tiles */
    run_att_cuda(1, 33, 100, -3, 3); /* peaked rows */
    /* a head size over 128 computes nothing and is the backend's error */
    char err[DV_ERR_LEN] = "";
    dv_backend *G = create_cuda(DV_PRECISION_FP32, NULL, 0);
    assert_non_null(G);
    assert_true(G->attention_workspace(G->ctx, 1, 2, 128) != SIZE_MAX);
    assert_true(G->attention_workspace(G->ctx, 1, 2, 129) == SIZE_MAX); /* layers refuse it */
    float *x = test_dalloc(G, 2 * 129 * sizeof(float));
    G->attention_forward(G->ctx, 1, 2, 129, 0.1f, x, x, x, x, x, x);
    assert_int_equal(G->check(G->ctx, err), DV_ERR);
    if (!strstr(err, "head size 129")) fail_msg("unexpected error: %s", err);
    G->free(G->ctx, x);
    dv_backend_free(G);
}

/* After everything above, no error is pending. */
static void test_check_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    test_expect_ok(gpu, "end");
    if (gpu_tf32) test_expect_ok(gpu_tf32, "end (tf32)");
    if (gpu_bf16) test_expect_ok(gpu_bf16, "end (bf16)");
}

int main(void) {
    test_rand_seed(4242);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_batched_cpu),
        cmocka_unit_test(test_embedding_cpu),
        cmocka_unit_test(test_layernorm_cpu),
        cmocka_unit_test(test_gelu_cpu),
        cmocka_unit_test(test_transpose_cpu),
        cmocka_unit_test(test_transpose_cuda),
        cmocka_unit_test(test_gemm_batched_cuda),
        cmocka_unit_test(test_embedding_cuda),
        cmocka_unit_test(test_layernorm_cuda),
        cmocka_unit_test(test_gelu_cuda),
        cmocka_unit_test(test_residual_layernorm_cpu),
        cmocka_unit_test(test_residual_layernorm_cuda),
        cmocka_unit_test(test_gemm_batched_ld_cpu),
        cmocka_unit_test(test_gemm_batched_ld_cuda),
        cmocka_unit_test(test_attention_cpu),
        cmocka_unit_test(test_attention_cuda),
        cmocka_unit_test(test_check_cuda),
        cmocka_unit_test(test_gemm_packed_cuda),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
