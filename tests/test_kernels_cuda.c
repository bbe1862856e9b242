/* test_kernels_cuda.c — every op of the CUDA backend against the CPU backend
 * (the reference, itself checked by test_kernels.c): the same random inputs
 * go to both, and the CUDA results must match within a tolerance, or
 * exactly where the contract leaves no room (dropout masks, pooling's arg,
 * counts). Also: the memory entries (upload, host_alloc), GEMM-based ops in
 * TF32 and BF16 with loose tolerances, run-to-run determinism of the
 * reductions, and the refusal of enum values outside their enums.
 *
 * Without a usable device (no GPU, no driver, or Dive built without CUDA)
 * every test prints one line saying why and is skipped, never failed.
 * Tolerances: |cuda - cpu| <= rtol*|cpu| + atol*max(1, max|cpu|).
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
static char why[512], why_tf32[512], why_bf16[512];

/* Tolerances (rtol = atol) for ops that do not use GEMMs, and for the
 * GEMM-based ones per precision. fp32 conv is looser than elementwise ops:
 * the CPU sums in another order (and through Winograd for 5x5 layers). */
#define TOL_EW   1e-5
#define TOL_RED  1e-4
#define TOL_FP32 1e-4
#define TOL_TF32 5e-3
#define TOL_BF16 2e-2

#define REQUIRE_GPU()                                                                              \
    do {                                                                                           \
        if (!gpu) {                                                                                \
            printf("test_kernels_cuda: no CUDA device (%s); CUDA op tests skipped\n", why);        \
            fflush(stdout);                                                                        \
            skip();                                                                                \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* ---- helpers ---------------------------------------------------------- */

static void expect_close(const float *got, const float *want, size_t n, double rtol, double atol,
                         const char *what) {
    double scale = 1.0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(want[i]) && fabs((double)want[i]) > scale) scale = fabs((double)want[i]);
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        int ok;
        if (isnan(w))
            ok = isnan(g);
        else if (isinf(w))
            ok = g == w;
        else
            ok = fabs(g - w) <= rtol * fabs(w) + atol * scale;
        if (!ok) fail_msg("%s[%zu of %zu]: cuda %.9g, cpu %.9g", what, i, n, got[i], want[i]);
    }
}

/* One tensor on both backends: h is the CPU backend's buffer, d the CUDA
 * backend's, holding the same values until the ops under test run. */
typedef struct pair {
    float *h, *d;
    size_t n;
} pair;

static pair pair_from(dv_backend *G, const float *src, size_t n) {
    pair p = {test_fbuf(n), NULL, n};
    if (src) memcpy(p.h, src, n * sizeof *p.h);
    p.d = test_dput(G, p.h, n * sizeof *p.h);
    return p;
}

static pair pair_rand(dv_backend *G, size_t n, float lo, float hi) {
    float *t = test_fbuf(n);
    test_rand_fill(t, n, lo, hi);
    pair p = pair_from(G, t, n);
    free(t);
    return p;
}

static pair pair_fill(dv_backend *G, size_t n, float v) {
    float *t = test_fbuf(n);
    for (size_t i = 0; i < n; i++)
        t[i] = v;
    pair p = pair_from(G, t, n);
    free(t);
    return p;
}

static void pair_expect(dv_backend *G, const pair *p, double rtol, double atol, const char *what) {
    float *g = test_dget(G, p->d, p->n * sizeof *g);
    expect_close(g, p->h, p->n, rtol, atol, what);
    free(g);
}

static void pair_expect_bits(dv_backend *G, const pair *p, const char *what) {
    float *g = test_dget(G, p->d, p->n * sizeof *g);
    test_expect_bits(g, p->h, p->n * sizeof *g, what);
    free(g);
}

static void pair_free(dv_backend *G, pair *p) {
    free(p->h);
    G->free(G->ctx, p->d);
    p->h = p->d = NULL;
}

/* ---- setup ------------------------------------------------------------ */

static dv_backend *create_cuda(dv_precision prec, char *reason, size_t len) {
    char err[DV_ERR_LEN] = "";
    dv_backend *b = dv_backend_cuda_create(0, prec, err);
    if (!b) snprintf(reason, len, "%s", err[0] ? err : "dv_backend_cuda_create gave no reason");
    return b;
}

static int setup(void **state) {
    (void)state;
    cpu = dv_backend_cpu_create(1);
    if (!cpu) return -1;
    int count = dv_backend_cuda_device_count();
    gpu = create_cuda(DV_PRECISION_FP32, why, sizeof why);
    if (gpu && count == 0) { /* never expected: the count is the gate */
        dv_backend_free(gpu);
        gpu = NULL;
        snprintf(why, sizeof why, "dv_backend_cuda_device_count() is 0");
    }
    if (!gpu) return 0; /* every test skips, saying why */
    gpu_tf32 = create_cuda(DV_PRECISION_TF32, why_tf32, sizeof why_tf32);
    gpu_bf16 = create_cuda(DV_PRECISION_BF16, why_bf16, sizeof why_bf16);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    dv_backend_free(gpu_bf16);
    dv_backend_free(gpu_tf32);
    dv_backend_free(gpu);
    dv_backend_free(cpu);
    gpu = gpu_tf32 = gpu_bf16 = cpu = NULL;
    return 0;
}

/* ---- the table, memory ------------------------------------------------ */

static void test_table(void **state) {
    (void)state;
    REQUIRE_GPU();
    assert_string_equal(gpu->name, "cuda");
    assert_non_null(gpu->ctx);
    assert_non_null(gpu->stream);
    /* every slot of the table is filled */
#define DV_OP(ret, name, params)                                                                   \
    if (!gpu->name) fail_msg("table slot %s is NULL", #name);
#include "ops.def"
    test_expect_ok(gpu, "a fresh backend");
}

static void test_memory(void **state) {
    (void)state;
    REQUIRE_GPU();
    dv_backend *G = gpu;
    /* alloc gives zeroed memory */
    const size_t n = 1000;
    float *d = test_dalloc(G, n * sizeof *d);
    float *h = test_dget(G, d, n * sizeof *h);
    for (size_t i = 0; i < n; i++)
        if (h[i] != 0.0f) fail_msg("alloc: element %zu is %g, not 0", i, h[i]);
    free(h);
    /* to_device / to_host of an odd number of bytes at an odd offset */
    unsigned char bytes[13], back[13];
    for (int i = 0; i < 13; i++)
        bytes[i] = (unsigned char)(17 * i + 3);
    G->to_device(G->ctx, (unsigned char *)d + 3, bytes, sizeof bytes);
    G->to_host(G->ctx, back, (unsigned char *)d + 3, sizeof back);
    assert_memory_equal(bytes, back, sizeof bytes);
    G->free(G->ctx, d);
    G->free(G->ctx, NULL);

    /* upload: n buffers at once; the source may be reused on return, and
     * the work queued after it sees the new data */
    const size_t sizes[3] = {37 * sizeof(float), 5, 4097 * sizeof(float)};
    void *src[3], *dst[3], *want[3];
    for (int i = 0; i < 3; i++) {
        src[i] = G->host_alloc(G->ctx, sizes[i]);
        assert_non_null(src[i]);
        want[i] = malloc(sizes[i]);
        assert_non_null(want[i]);
        for (size_t k = 0; k < sizes[i]; k++)
            ((unsigned char *)want[i])[k] = (unsigned char)(test_rand_next() & 0xff);
        memcpy(src[i], want[i], sizes[i]);
        dst[i] = test_dalloc(G, sizes[i]);
    }
    G->upload(G->ctx, 3, dst, (const void *const *)src, sizes);
    for (int i = 0; i < 3; i++)
        memset(src[i], 0xab, sizes[i]); /* allowed once upload returned */
    for (int i = 0; i < 3; i++) {
        void *got = test_dget(G, dst[i], sizes[i]);
        assert_memory_equal(got, want[i], sizes[i]);
        free(got);
    }
    /* ordered before the ops queued after it */
    float *f0 = src[0];
    for (int k = 0; k < 37; k++)
        f0[k] = (float)k;
    G->upload(G->ctx, 1, dst, (const void *const *)src, sizes);
    G->scale(G->ctx, dst[0], 2.0f, 37);
    float *s0 = test_dget(G, dst[0], sizes[0]);
    for (int k = 0; k < 37; k++)
        if (s0[k] != 2.0f * (float)k) fail_msg("upload then scale: [%d] = %g", k, s0[k]);
    free(s0);
    /* a larger upload than before (the staging area grows) */
    const size_t big = (size_t)3 << 20;
    unsigned char *bsrc = G->host_alloc(G->ctx, big), *bdst = test_dalloc(G, big);
    assert_non_null(bsrc);
    for (size_t k = 0; k < big; k++)
        bsrc[k] = (unsigned char)(k * 7 + 1);
    void *bd[1] = {bdst};
    const void *bs[1] = {bsrc};
    size_t bb[1] = {big};
    G->upload(G->ctx, 1, bd, bs, bb);
    unsigned char *bback = test_dget(G, bdst, big);
    for (size_t k = 0; k < big; k++)
        if (bback[k] != (unsigned char)(k * 7 + 1)) fail_msg("big upload: byte %zu", k);
    free(bback);
    G->host_free(G->ctx, bsrc);
    G->free(G->ctx, bdst);
    for (int i = 0; i < 3; i++) {
        G->host_free(G->ctx, src[i]);
        G->free(G->ctx, dst[i]);
        free(want[i]);
    }
    G->host_free(G->ctx, NULL);
    G->sync(G->ctx);
    test_expect_ok(G, "memory");
}

/* fill, copy, scale, axpy, sumsq on sub-buffers at an odd offset (params + 1
 * as the trainer's views are), for sizes around the vector widths. */
static void test_blas1(void **state) {
    (void)state;
    REQUIRE_GPU();
    dv_backend *G = gpu;
    const size_t sizes[] = {1, 3, 37, 1000, 1000003};
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        const size_t n = sizes[t];
        char what[64];
        pair x = pair_rand(G, n + 2, -2, 2), y = pair_rand(G, n + 2, -2, 2);

        double sc = cpu->sumsq(cpu->ctx, x.h + 1, n), sg = G->sumsq(G->ctx, x.d + 1, n);
        if (!(fabs(sg - sc) <= 1e-6 * sc))
            fail_msg("sumsq n=%zu: cuda %.12g, cpu %.12g", n, sg, sc);
        uint64_t fc = cpu->fingerprint(cpu->ctx, x.h + 1, n),
                 fg = G->fingerprint(G->ctx, x.d + 1, n);
        if (fc != fg)
            fail_msg("fingerprint n=%zu: cuda %016llx, cpu %016llx", n, (unsigned long long)fg,
                     (unsigned long long)fc);

        cpu->scale(cpu->ctx, x.h + 1, 0.75f, n);
        G->scale(G->ctx, x.d + 1, 0.75f, n);
        snprintf(what, sizeof what, "scale n=%zu", n);
        pair_expect(G, &x, TOL_EW, TOL_EW, what);

        cpu->axpy(cpu->ctx, -1.25f, x.h + 1, y.h + 1, n);
        G->axpy(G->ctx, -1.25f, x.d + 1, y.d + 1, n);
        snprintf(what, sizeof what, "axpy n=%zu", n);
        pair_expect(G, &y, TOL_EW, TOL_EW, what);

        cpu->copy(cpu->ctx, y.h + 1, x.h + 1, n * sizeof(float));
        G->copy(G->ctx, y.d + 1, x.d + 1, n * sizeof(float));
        snprintf(what, sizeof what, "copy n=%zu", n);
        pair_expect_bits(G, &y, what);

        cpu->fill(cpu->ctx, x.h + 1, 3.5f, n);
        G->fill(G->ctx, x.d + 1, 3.5f, n);
        cpu->fill(cpu->ctx, y.h + 1, 0.0f, n);
        G->fill(G->ctx, y.d + 1, 0.0f, n);
        snprintf(what, sizeof what, "fill n=%zu", n);
        pair_expect_bits(G, &x, what);
        pair_expect_bits(G, &y, what);
        pair_free(G, &x);
        pair_free(G, &y);
    }
    test_expect_ok(G, "blas1");
}

/* ---- gemm ------------------------------------------------------------- */

static void run_gemm(dv_backend *G, int M, int N, int K, double tol, const char *tag) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int b = 0; b < 2; b++) {
                const float alpha = 1.5f, beta = b ? -0.5f : 0.0f;
                pair A = pair_rand(G, (size_t)M * K, -1, 1), B = pair_rand(G, (size_t)K * N, -1, 1);
                /* beta = 0 must overwrite C, whatever it held */
                pair C =
                    b ? pair_rand(G, (size_t)M * N, -1, 1) : pair_fill(G, (size_t)M * N, 1e30f);
                cpu->gemm(cpu->ctx, ta, tb, M, N, K, alpha, A.h, B.h, beta, C.h);
                G->gemm(G->ctx, ta, tb, M, N, K, alpha, A.d, B.d, beta, C.d);
                char what[96];
                snprintf(what, sizeof what, "%s gemm %dx%dx%d ta=%d tb=%d beta=%g", tag, M, N, K,
                         ta, tb, beta);
                pair_expect(G, &C, tol, tol, what);
                pair_free(G, &A);
                pair_free(G, &B);
                pair_free(G, &C);
            }
    test_expect_ok(G, tag);
}

static void test_gemm(void **state) {
    (void)state;
    REQUIRE_GPU();
    run_gemm(gpu, 7, 5, 9, TOL_FP32, "fp32");
    run_gemm(gpu, 1, 1, 1, TOL_FP32, "fp32");
    run_gemm(gpu, 64, 33, 129, TOL_FP32, "fp32");
    run_gemm(gpu, 300, 200, 150, TOL_FP32, "fp32");
    run_gemm(gpu, 6, 4, 0, TOL_FP32, "fp32"); /* K = 0: C = beta * C */
}

/* ---- bias ------------------------------------------------------------- */

static void test_bias(void **state) {
    (void)state;
    REQUIRE_GPU();
    dv_backend *G = gpu;
    const int B = 3, C = 5, Ss[] = {1, 7, 1000};
    for (int t = 0; t < 3; t++) {
        const int S = Ss[t];
        const size_t n = (size_t)B * C * S;
        pair y = pair_rand(G, n, -1, 1), bias = pair_rand(G, C, -1, 1);
        pair dy = pair_rand(G, n, -1, 1), db = pair_fill(G, C, 0.25f); /* db accumulates */
        cpu->bias_forward(cpu->ctx, y.h, bias.h, B, C, S);
        G->bias_forward(G->ctx, y.d, bias.d, B, C, S);
        pair_expect(G, &y, TOL_EW, TOL_EW, "bias_forward");
        cpu->bias_backward(cpu->ctx, dy.h, db.h, B, C, S);
        G->bias_backward(G->ctx, dy.d, db.d, B, C, S);
        pair_expect(G, &db, TOL_RED, TOL_RED, "bias_backward");
        pair_free(G, &y), pair_free(G, &bias), pair_free(G, &dy), pair_free(G, &db);
    }
    test_expect_ok(G, "bias");
}

/* ---- activations ------------------------------------------------------ */

static void run_act(dv_act act, const char *name, int rows, int cols, float range) {
    dv_backend *G = gpu;
    const size_t n = (size_t)rows * cols;
    const float alpha = 0.1f;
    char what[96];
    pair x = pair_rand(G, n, -range, range);
    for (size_t i = 0; i < n; i++) /* keep clear of relu's kink */
        if (fabsf(x.h[i]) < 1e-3f) x.h[i] = 0.5f;
    G->to_device(G->ctx, x.d, x.h, n * sizeof(float));

    pair y = pair_fill(G, n, 1e30f); /* overwritten */
    cpu->act_forward(cpu->ctx, act, alpha, x.h, y.h, n, cols);
    G->act_forward(G->ctx, act, alpha, x.d, y.d, n, cols);
    snprintf(what, sizeof what, "%s forward (%d, %d)", name, rows, cols);
    pair_expect(G, &y, TOL_EW, TOL_EW, what);

    pair xi = pair_from(G, x.h, n); /* in place */
    cpu->act_forward(cpu->ctx, act, alpha, xi.h, xi.h, n, cols);
    G->act_forward(G->ctx, act, alpha, xi.d, xi.d, n, cols);
    snprintf(what, sizeof what, "%s forward in place (%d, %d)", name, rows, cols);
    pair_expect(G, &xi, TOL_EW, TOL_EW, what);

    /* backward from the same y on both, so only the backward is compared */
    pair yc = pair_from(G, y.h, n), dy = pair_rand(G, n, -1, 1), dx = pair_fill(G, n, 1e30f);
    cpu->act_backward(cpu->ctx, act, alpha, yc.h, dy.h, dx.h, n, cols);
    G->act_backward(G->ctx, act, alpha, yc.d, dy.d, dx.d, n, cols);
    snprintf(what, sizeof what, "%s backward (%d, %d)", name, rows, cols);
    pair_expect(G, &dx, TOL_EW, TOL_EW, what);

    cpu->act_backward(cpu->ctx, act, alpha, yc.h, dy.h, dy.h, n, cols); /* dx == dy */
    G->act_backward(G->ctx, act, alpha, yc.d, dy.d, dy.d, n, cols);
    snprintf(what, sizeof what, "%s backward in place (%d, %d)", name, rows, cols);
    pair_expect(G, &dy, TOL_EW, TOL_EW, what);

    pair_free(G, &x), pair_free(G, &y), pair_free(G, &xi), pair_free(G, &yc);
    pair_free(G, &dy), pair_free(G, &dx);
}

static void test_act(void **state) {
    (void)state;
    REQUIRE_GPU();
    const dv_act acts[] = {DV_ACT_LINEAR,  DV_ACT_RELU, DV_ACT_LEAKY_RELU,
                           DV_ACT_SIGMOID, DV_ACT_TANH, DV_ACT_SOFTMAX};
    const char *names[] = {"linear", "relu", "leaky_relu", "sigmoid", "tanh", "softmax"};
    for (int a = 0; a < 6; a++) {
        run_act(acts[a], names[a], 13, 37, 3.0f);
        run_act(acts[a], names[a], 3, 1, 3.0f);
        run_act(acts[a], names[a], 2049, 3, 3.0f);
    }
    /* softmax: wide rows, and logits large enough to overflow a naive exp */
    run_act(DV_ACT_SOFTMAX, "softmax", 5, 1000, 3.0f);
    run_act(DV_ACT_SOFTMAX, "softmax", 7, 129, 80.0f);
    run_act(DV_ACT_SOFTMAX, "softmax", 2, 5000, 200.0f);
    test_expect_ok(gpu, "act");
}

/* ---- conv2d ----------------------------------------------------------- */

typedef struct conv_case {
    int B, C, H, W, F, KH, KW, stride, pad, bias;
} conv_case;

static const conv_case conv_cases[] = {
    {1, 1, 7, 7, 3, 3, 3, 1, 1, 1},     /* B = 1, C = 1, 3x3 "same" */
    {3, 3, 7, 6, 4, 3, 3, 1, 0, 1},     /* stride 1, pad 0 */
    {2, 2, 8, 9, 3, 3, 3, 2, 2, 1},     /* stride 2, pad 2 */
    {3, 3, 9, 7, 2, 5, 5, 2, 0, 0},     /* 5x5, stride 2, no bias */
    {2, 1, 9, 9, 4, 5, 5, 1, 2, 1},     /* the CNN's first layer, small */
    {5, 8, 14, 14, 16, 5, 5, 1, 2, 1},  /* CPU runs Winograd here */
    {4, 4, 5, 5, 3, 1, 1, 1, 0, 1},     /* pointwise */
    {2, 2, 5, 5, 3, 1, 1, 2, 1, 0},     /* 1x1 with stride and pad */
    {2, 2, 6, 7, 3, 3, 2, 2, 1, 1},     /* non-square window */
    {2, 2, 3, 4, 2, 5, 5, 1, 2, 1},     /* window larger than the image */
    {1, 2, 3, 3, 2, 2, 2, 3, 2, 1},     /* some windows see padding only */
    {8, 16, 16, 16, 32, 3, 3, 1, 1, 1}, /* big enough for real GEMM tiles */
};

static void run_conv(dv_backend *G, const conv_case *c, double tol, const char *tag) {
    dv_conv2d_geom g = {.B = c->B,
                        .C = c->C,
                        .H = c->H,
                        .W = c->W,
                        .F = c->F,
                        .KH = c->KH,
                        .KW = c->KW,
                        .stride = c->stride,
                        .pad = c->pad};
    assert_int_equal(dv_conv2d_geom_init(&g), 0);
    const size_t nx = (size_t)g.B * g.C * g.H * g.W, nw = (size_t)g.F * g.C * g.KH * g.KW;
    const size_t ny = (size_t)g.B * g.F * g.OH * g.OW;
    char what[160], base[112];
    snprintf(base, sizeof base, "%s conv B%d C%d %dx%d F%d k%dx%d s%d p%d%s", tag, g.B, g.C, g.H,
             g.W, g.F, g.KH, g.KW, g.stride, g.pad, c->bias ? "" : " nobias");

    pair x = pair_rand(G, nx, -1, 1), w = pair_rand(G, nw, -1, 1), b = pair_rand(G, g.F, -1, 1);
    pair y = pair_fill(G, ny, 1e30f), dy = pair_rand(G, ny, -1, 1);
    pair dx = pair_fill(G, nx, 1e30f);                              /* overwritten */
    pair dw = pair_fill(G, nw, 0.5f), db = pair_fill(G, g.F, 0.5f); /* accumulated */
    float *cwork = test_fbuf(cpu->conv2d_workspace(cpu->ctx, &g));
    float *gwork = test_dalloc(G, G->conv2d_workspace(G->ctx, &g) * sizeof(float));

    cpu->conv2d_forward(cpu->ctx, &g, x.h, w.h, c->bias ? b.h : NULL, y.h, cwork);
    G->conv2d_forward(G->ctx, &g, x.d, w.d, c->bias ? b.d : NULL, y.d, gwork);
    snprintf(what, sizeof what, "%s: y", base);
    pair_expect(G, &y, tol, tol, what);

    cpu->conv2d_backward(cpu->ctx, &g, x.h, w.h, dy.h, dx.h, dw.h, c->bias ? db.h : NULL, cwork);
    G->conv2d_backward(G->ctx, &g, x.d, w.d, dy.d, dx.d, dw.d, c->bias ? db.d : NULL, gwork);
    snprintf(what, sizeof what, "%s: dx", base);
    pair_expect(G, &dx, tol, tol, what);
    snprintf(what, sizeof what, "%s: dw", base);
    pair_expect(G, &dw, tol, tol, what);
    snprintf(what, sizeof what, "%s: db", base);
    pair_expect(G, &db, tol, tol, what); /* untouched (0.5) without bias */

    /* dx == NULL (a first layer): dw alone, into fresh accumulators */
    float *dw2 = test_dalloc(G, nw * sizeof(float));
    G->fill(G->ctx, dw2, 0.5f, nw);
    G->conv2d_backward(G->ctx, &g, x.d, w.d, dy.d, NULL, dw2, NULL, gwork);
    float *dw2h = test_dget(G, dw2, nw * sizeof(float));
    snprintf(what, sizeof what, "%s: dw with dx = NULL", base);
    expect_close(dw2h, dw.h, nw, tol, tol, what);
    free(dw2h);
    G->free(G->ctx, dw2);
    snprintf(what, sizeof what, "%s", base);
    test_expect_ok(G, what);

    free(cwork);
    G->free(G->ctx, gwork);
    pair_free(G, &x), pair_free(G, &w), pair_free(G, &b), pair_free(G, &y);
    pair_free(G, &dy), pair_free(G, &dx), pair_free(G, &dw), pair_free(G, &db);
}

static void test_conv2d(void **state) {
    (void)state;
    REQUIRE_GPU();
    for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++)
        run_conv(gpu, &conv_cases[i], TOL_FP32, "fp32");
}

/* A batch too large for one chunk of the CUDA workspace: the chunk loop,
 * its offsets and the partial last chunk. */
static void test_conv2d_chunked(void **state) {
    (void)state;
    REQUIRE_GPU();
    const conv_case c = {27, 64, 64, 64, 64, 3, 3, 1, 1, 1};
    dv_conv2d_geom g = {.B = c.B,
                        .C = c.C,
                        .H = c.H,
                        .W = c.W,
                        .F = c.F,
                        .KH = c.KH,
                        .KW = c.KW,
                        .stride = c.stride,
                        .pad = c.pad};
    assert_int_equal(dv_conv2d_geom_init(&g), 0);
    /* cols and the (F, OH*OW) temporary for the whole batch would take
     * this much; a smaller workspace means the batch goes in chunks (if
     * the backend's budget grows past it, enlarge this case) */
    size_t whole = (size_t)g.B * ((size_t)g.C * g.KH * g.KW + g.F) * g.OH * g.OW;
    size_t ws = gpu->conv2d_workspace(gpu->ctx, &g);
    if (ws >= whole)
        fail_msg("the chunked case fits one chunk (workspace %zu >= %zu floats)", ws, whole);
    run_conv(gpu, &c, TOL_FP32, "fp32 chunked");
}

/* ---- pooling ---------------------------------------------------------- */

typedef struct pool_case {
    int H, W, K, stride, pad;
} pool_case;

static void run_pool(dv_pool mode, const pool_case *pc, int data) {
    dv_backend *G = gpu;
    dv_conv2d_geom g = {.B = 2,
                        .C = 3,
                        .H = pc->H,
                        .W = pc->W,
                        .KH = pc->K,
                        .KW = pc->K,
                        .stride = pc->stride,
                        .pad = pc->pad};
    assert_int_equal(dv_conv2d_geom_init(&g), 0);
    const size_t nx = (size_t)g.B * g.C * g.H * g.W, ny = (size_t)g.B * g.C * g.OH * g.OW;
    char what[128];
    snprintf(what, sizeof what, "pool mode %d %dx%d k%d s%d p%d data %d", (int)mode, g.H, g.W, g.KH,
             g.stride, g.pad, data);
    /* data 0: random (all negative for max, all positive for min, so
     * padding would win if it could); 1: a few small integers (many ties);
     * 2: all equal */
    pair x = pair_fill(G, nx, 0.0f);
    for (size_t i = 0; i < nx; i++) {
        float v = data == 0   ? test_rand_uniform(1, 2)
                  : data == 1 ? (float)(test_rand_next() % 3)
                              : 1.0f;
        x.h[i] = mode == DV_POOL_MAX && data == 0 ? -v : v;
    }
    G->to_device(G->ctx, x.d, x.h, nx * sizeof(float));
    pair y = pair_fill(G, ny, 1e30f);
    int32_t *arg_h = calloc(ny, sizeof *arg_h), *arg_d = NULL;
    assert_non_null(arg_h);
    if (mode != DV_POOL_AVG) arg_d = test_dalloc(G, ny * sizeof *arg_d);
    cpu->pool2d_forward(cpu->ctx, mode, &g, x.h, y.h, arg_h);
    G->pool2d_forward(G->ctx, mode, &g, x.d, y.d, arg_d); /* avg: arg may be NULL */
    if (mode == DV_POOL_AVG) {
        pair_expect(G, &y, TOL_EW, TOL_EW, what);
    } else {
        pair_expect_bits(G, &y, what); /* the winner itself: exact */
        int32_t *got = test_dget(G, arg_d, ny * sizeof *got);
        for (size_t i = 0; i < ny; i++)
            if (got[i] != arg_h[i])
                fail_msg("%s: arg[%zu] cuda %d, cpu %d", what, i, (int)got[i], (int)arg_h[i]);
        free(got);
    }
    /* backward from the CPU's arg on both (they are equal by now) */
    pair dy = pair_rand(G, ny, -1, 1), dx = pair_fill(G, nx, 1e30f); /* overwritten */
    cpu->pool2d_backward(cpu->ctx, mode, &g, dy.h, dx.h, arg_h);
    G->pool2d_backward(G->ctx, mode, &g, dy.d, dx.d, arg_d);
    strcat(what, " dx");
    pair_expect(G, &dx, TOL_EW, TOL_EW, what);
    test_expect_ok(G, what);
    pair_free(G, &x), pair_free(G, &y), pair_free(G, &dy), pair_free(G, &dx);
    free(arg_h);
    G->free(G->ctx, arg_d);
}

/* Upsampling on the GPU against the CPU, bit for bit (the backward adds in
 * the CPU's order), including planes of one row and one column. */
static void test_upsample(void **state) {
    (void)state;
    REQUIRE_GPU();
    dv_backend *G = gpu;
    const int cases[][4] = {{3, 4, 5, 2}, {2, 1, 7, 3}, {5, 6, 1, 2}, {64, 8, 8, 4}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int n = cases[c][0], H = cases[c][1], W = cases[c][2], s = cases[c][3];
        const size_t nx = (size_t)n * H * W, ny = nx * s * s;
        pair x = pair_rand(G, nx, -1, 1), y = pair_fill(G, ny, 1e30f);
        pair dy = pair_rand(G, ny, -1, 1), dx = pair_fill(G, nx, 1e30f);
        cpu->upsample_forward(cpu->ctx, n, H, W, s, x.h, y.h);
        G->upsample_forward(G->ctx, n, H, W, s, x.d, y.d);
        pair_expect_bits(G, &y, "upsample_forward");
        cpu->upsample_backward(cpu->ctx, n, H, W, s, dy.h, dx.h);
        G->upsample_backward(G->ctx, n, H, W, s, dy.d, dx.d);
        pair_expect_bits(G, &dx, "upsample_backward");
        test_expect_ok(G, "upsample");
        pair_free(G, &x), pair_free(G, &y), pair_free(G, &dy), pair_free(G, &dx);
    }
}

static void test_pool2d(void **state) {
    (void)state;
    REQUIRE_GPU();
    const pool_case cases[] = {
        {8, 6, 2, 2, 0}, /* the CPU's 2x2/2 path */
        {7, 7, 2, 2, 0}, /* odd size: last row dropped */
        {7, 6, 3, 2, 1}, /* padded, overlapping */
        {5, 5, 3, 1, 1}, /* stride 1, heavy overlap */
        {6, 6, 2, 2, 1}, /* padded corners hold 1 element */
        {3, 3, 2, 3, 2}, /* windows of padding only: y 0, arg -1 */
        {9, 8, 4, 3, 3}, /* pad 3 with a 4-wide window */
        {5, 4, 5, 1, 2}, /* window as large as the image */
    };
    const dv_pool modes[] = {DV_POOL_MAX, DV_POOL_MIN, DV_POOL_AVG};
    for (int m = 0; m < 3; m++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            for (int data = 0; data < 3; data++)
                run_pool(modes[m], &cases[c], data);
}

/* ---- dropout ---------------------------------------------------------- */

static void test_dropout(void **state) {
    (void)state;
    REQUIRE_GPU();
    dv_backend *G = gpu;
    const int rows = 37, cols = 101;
    const size_t n = (size_t)rows * cols;
    const uint64_t seed = 0x0123456789abcdefULL;
    int64_t ids[37];
    for (int i = 0; i < rows; i++) /* ids past 2^32: the counter is 64-bit */
        ids[i] = i % 2 ? 1000 + 7 * i : ((int64_t)1 << 40) + i;
    int64_t *ids_d = test_dput(G, ids, sizeof ids);
    const float rates[] = {0.3f, 0.0f, 1.0f, 0.9f};
    for (int r = 0; r < 4; r++)
        for (int with_ids = 0; with_ids < 2; with_ids++) {
            char what[80];
            snprintf(what, sizeof what, "dropout rate %g row_id %s", rates[r],
                     with_ids ? "given" : "NULL");
            pair x = pair_rand(G, n, -1, 1), y = pair_fill(G, n, 1e30f);
            pair mask = pair_fill(G, n, 1e30f);
            cpu->dropout_forward(cpu->ctx, rates[r], seed, with_ids ? ids : NULL, rows, cols, x.h,
                                 y.h, mask.h);
            G->dropout_forward(G->ctx, rates[r], seed, with_ids ? ids_d : NULL, rows, cols, x.d,
                               y.d, mask.d);
            pair_expect_bits(G, &mask, what); /* the same RNG: the same mask */
            pair_expect(G, &y, 1e-6, 1e-6, what);
            pair dy = pair_rand(G, n, -1, 1), dx = pair_fill(G, n, 1e30f);
            cpu->dropout_backward(cpu->ctx, mask.h, dy.h, dx.h, n);
            G->dropout_backward(G->ctx, mask.d, dy.d, dx.d, n);
            strcat(what, " backward");
            pair_expect(G, &dx, 1e-6, 1e-6, what);
            pair_free(G, &x), pair_free(G, &y), pair_free(G, &mask), pair_free(G, &dy);
            pair_free(G, &dx);
        }
    G->free(G->ctx, ids_d);
    test_expect_ok(G, "dropout");
}

/* ---- batch norm ------------------------------------------------------- */

static void test_batchnorm(void **state) {
    (void)state;
    REQUIRE_GPU();
    dv_backend *G = gpu;
    const int shapes[][3] = {{4, 5, 1}, {3, 4, 49}, {16, 3, 1000}, {1, 2, 7}};
    for (int t = 0; t < 4; t++) {
        const int B = shapes[t][0], C = shapes[t][1], S = shapes[t][2];
        const size_t n = (size_t)B * C * S;
        const float eps = 1e-5f, mom = 0.1f;
        char what[96];
        /* a mean well away from 0: the variance must not cancel */
        pair x = pair_rand(G, n, 2, 5), gamma = pair_rand(G, C, 0.5f, 1.5f);
        pair beta = pair_rand(G, C, -1, 1), rm = pair_fill(G, C, 0.1f), rv = pair_fill(G, C, 0.9f);
        pair sm = pair_fill(G, C, 1e30f), si = pair_fill(G, C, 1e30f), y = pair_fill(G, n, 1e30f);
        for (int step = 0; step < 2; step++) { /* running stats over two steps */
            cpu->batchnorm_forward(cpu->ctx, 1, B, C, S, eps, mom, x.h, gamma.h, beta.h, rm.h, rv.h,
                                   sm.h, si.h, y.h);
            G->batchnorm_forward(G->ctx, 1, B, C, S, eps, mom, x.d, gamma.d, beta.d, rm.d, rv.d,
                                 sm.d, si.d, y.d);
        }
        snprintf(what, sizeof what, "batchnorm (%d, %d, %d) training", B, C, S);
        pair_expect(G, &y, TOL_RED, TOL_RED, what);
        pair_expect(G, &sm, TOL_RED, TOL_RED, "batchnorm save_mean");
        pair_expect(G, &si, TOL_RED, TOL_RED, "batchnorm save_invstd");
        pair_expect(G, &rm, TOL_RED, TOL_RED, "batchnorm running_mean");
        pair_expect(G, &rv, TOL_RED, TOL_RED, "batchnorm running_var");

        pair ye = pair_fill(G, n, 1e30f);
        cpu->batchnorm_forward(cpu->ctx, 0, B, C, S, eps, mom, x.h, gamma.h, beta.h, rm.h, rv.h,
                               NULL, NULL, ye.h);
        G->batchnorm_forward(G->ctx, 0, B, C, S, eps, mom, x.d, gamma.d, beta.d, rm.d, rv.d, NULL,
                             NULL, ye.d);
        snprintf(what, sizeof what, "batchnorm (%d, %d, %d) eval", B, C, S);
        pair_expect(G, &ye, TOL_RED, TOL_RED, what);

        /* backward from the CPU's saved stats on both */
        pair smc = pair_from(G, sm.h, C), sic = pair_from(G, si.h, C);
        pair dy = pair_rand(G, n, -1, 1), dx = pair_fill(G, n, 1e30f);
        pair dg = pair_fill(G, C, 0.5f), dbt = pair_fill(G, C, 0.5f); /* accumulated */
        cpu->batchnorm_backward(cpu->ctx, B, C, S, x.h, gamma.h, smc.h, sic.h, dy.h, dx.h, dg.h,
                                dbt.h);
        G->batchnorm_backward(G->ctx, B, C, S, x.d, gamma.d, smc.d, sic.d, dy.d, dx.d, dg.d, dbt.d);
        snprintf(what, sizeof what, "batchnorm (%d, %d, %d) dx", B, C, S);
        pair_expect(G, &dx, TOL_RED, TOL_RED, what);
        pair_expect(G, &dg, TOL_RED, TOL_RED, "batchnorm dgamma");
        pair_expect(G, &dbt, TOL_RED, TOL_RED, "batchnorm dbeta");
        test_expect_ok(G, what);
        pair *all[] = {&x,  &gamma, &beta, &rm, &rv, &sm, &si, &y,
                       &ye, &smc,   &sic,  &dy, &dx, &dg, &dbt};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            pair_free(G, all[i]);
    }
}

/* ---- losses ----------------------------------------------------------- */

enum { L_XENT, L_BCE, L_MSE, L_PERCEPTRON };
static const char *loss_names[] = {"xent", "bce", "mse", "perceptron"};

/* One loss on both backends: random inputs of (B, K), grad_scale 1/B,
 * stats that already hold something (they accumulate). Compares the
 * gradient and stats[0] within tol, stats[1] (a count) exactly. */
static void run_loss(dv_backend *G, int kind, int B, int K, float range, double tol) {
    char what[96];
    snprintf(what, sizeof what, "%s B%d K%d", loss_names[kind], B, K);
    const size_t n = (size_t)B * K;
    pair z = pair_rand(G, n, -range, range), t = pair_rand(G, n, 0, 1);
    pair d = pair_fill(G, n, 1e30f), st = pair_fill(G, 2, 0.0f);
    st.h[0] = 1.5f, st.h[1] = 2.0f;
    G->to_device(G->ctx, st.d, st.h, 2 * sizeof(float));
    int32_t *lab = calloc(B ? B : 1, sizeof *lab);
    assert_non_null(lab);
    for (int i = 0; i < B; i++)
        lab[i] = (int32_t)(test_rand_next() % (uint64_t)(K > 1 ? K : 2));
    if (kind == L_XENT && B >= 4) { /* ignored rows: outside [0, K) */
        lab[1] = -1;
        lab[3] = K;
    }
    if (kind == L_XENT && B >= 6) { /* an exact tie: argmax takes the first */
        for (int k = 0; k < K; k++)
            z.h[4 * (size_t)K + k] = z.h[5 * (size_t)K + k] = 0.25f;
        lab[4] = 0;
        lab[5] = K - 1;
    }
    if (kind == L_MSE && K > 1) /* one-hot targets, so argmax means something */
        for (int i = 0; i < B; i++)
            for (int k = 0; k < K; k++)
                t.h[(size_t)i * K + k] = k == lab[i] ? 1.0f : 0.0f;
    if (kind == L_BCE)
        for (size_t i = 0; i < n; i += 3) /* hard targets too */
            t.h[i] = (float)(test_rand_next() % 2);
    G->to_device(G->ctx, z.d, z.h, n * sizeof(float));
    G->to_device(G->ctx, t.d, t.h, n * sizeof(float));
    int32_t *lab_d = test_dput(G, lab, (B ? B : 1) * sizeof *lab);
    const float gs = 1.0f / (float)(B > 0 ? B : 1);
    switch (kind) {
    case L_XENT:
        cpu->xent_loss(cpu->ctx, z.h, lab, B, K, gs, d.h, st.h);
        G->xent_loss(G->ctx, z.d, lab_d, B, K, gs, d.d, st.d);
        break;
    case L_BCE:
        cpu->bce_loss(cpu->ctx, z.h, t.h, B, K, gs, d.h, st.h);
        G->bce_loss(G->ctx, z.d, t.d, B, K, gs, d.d, st.d);
        break;
    case L_MSE:
        cpu->mse_loss(cpu->ctx, z.h, t.h, B, K, gs, d.h, st.h);
        G->mse_loss(G->ctx, z.d, t.d, B, K, gs, d.d, st.d);
        break;
    case L_PERCEPTRON:
        cpu->perceptron_loss(cpu->ctx, z.h, lab, B, K, gs, d.h, st.h);
        G->perceptron_loss(G->ctx, z.d, lab_d, B, K, gs, d.d, st.d);
        break;
    }
    pair_expect(G, &d, tol, tol, what);
    float *s = test_dget(G, st.d, 2 * sizeof(float));
    if (!(fabs((double)s[0] - st.h[0]) <= tol * (1.0 + fabs((double)st.h[0]))))
        fail_msg("%s: stats[0] cuda %.9g, cpu %.9g", what, s[0], st.h[0]);
    if (s[1] != st.h[1]) fail_msg("%s: stats[1] cuda %.9g, cpu %.9g", what, s[1], st.h[1]);
    free(s);
    test_expect_ok(G, what);
    pair_free(G, &z), pair_free(G, &t), pair_free(G, &d), pair_free(G, &st);
    free(lab);
    G->free(G->ctx, lab_d);
}

static void run_losses(dv_backend *G) {
    const int shapes[][2] = {{33, 10}, {6, 1}, {7, 1000}, {4096, 3}, {1, 2}};
    for (int kind = 0; kind < 4; kind++)
        for (int s = 0; s < 5; s++) {
            const int K = shapes[s][1];
            if (kind == L_XENT && K < 2) continue; /* softmax over one class: trivial */
            run_loss(G, kind, shapes[s][0], K, 3.0f, TOL_EW);
        }
    run_loss(G, L_XENT, 9, 20, 300.0f, TOL_EW); /* logits that overflow a naive exp */
    run_loss(G, L_BCE, 9, 4, 300.0f, TOL_EW);
}

static void test_losses(void **state) {
    (void)state;
    REQUIRE_GPU();
    run_losses(gpu);
}

/* ---- optimizers ------------------------------------------------------- */

static void run_opt(dv_backend *G, size_t n, float wd, double tol) {
    const dv_opt kinds[] = {DV_OPT_SGD, DV_OPT_MOMENTUM, DV_OPT_NESTEROV, DV_OPT_ADAM,
                            DV_OPT_ADAMW};
    const char *names[] = {"sgd", "momentum", "nesterov", "adam", "adamw"};
    for (int k = 0; k < 5; k++) {
        dv_opt_params o = {.kind = kinds[k],
                           .lr = 0.05f,
                           .momentum = 0.9f,
                           .beta1 = 0.9f,
                           .beta2 = 0.999f,
                           .eps = 1e-8f,
                           .weight_decay = wd};
        const int s1 = kinds[k] != DV_OPT_SGD, s2 = kinds[k] >= DV_OPT_ADAM;
        /* one element more on each side: the views start at +1 */
        pair p = pair_rand(G, n + 2, -1, 1), m = pair_fill(G, n + 2, 0.0f);
        pair v = pair_fill(G, n + 2, 0.0f), g = pair_fill(G, n + 2, 0.0f);
        for (long step = 1; step <= 3; step++) {
            test_rand_fill(g.h, n + 2, -1, 1);
            G->to_device(G->ctx, g.d, g.h, (n + 2) * sizeof(float));
            o.step = step;
            cpu->opt_step(cpu->ctx, &o, p.h + 1, g.h + 1, s1 ? m.h + 1 : NULL, s2 ? v.h + 1 : NULL,
                          n);
            G->opt_step(G->ctx, &o, p.d + 1, g.d + 1, s1 ? m.d + 1 : NULL, s2 ? v.d + 1 : NULL, n);
        }
        char what[96];
        snprintf(what, sizeof what, "%s n=%zu wd=%g params", names[k], n, wd);
        pair_expect(G, &p, tol, tol, what);
        snprintf(what, sizeof what, "%s n=%zu wd=%g state1", names[k], n, wd);
        pair_expect(G, &m, tol, tol, what);
        snprintf(what, sizeof what, "%s n=%zu wd=%g state2", names[k], n, wd);
        pair_expect(G, &v, tol, tol, what);
        test_expect_ok(G, what);
        pair_free(G, &p), pair_free(G, &m), pair_free(G, &v), pair_free(G, &g);
    }
}

static void test_opt(void **state) {
    (void)state;
    REQUIRE_GPU();
    const size_t sizes[] = {1, 37, 1001, 100003};
    for (int s = 0; s < 4; s++) {
        run_opt(gpu, sizes[s], 0.0f, TOL_EW);
        run_opt(gpu, sizes[s], 0.01f, TOL_EW);
    }
}

/* ---- other GEMM precisions ------------------------------------------- */

/* TF32 and BF16 round the GEMM inputs, so gemm and conv get loose
 * tolerances; the ops without GEMMs must not change at all. */
static void run_precision(dv_backend *G, const char *reason, const char *tag, double tol) {
    if (!G) {
        printf("test_kernels_cuda: no %s backend (%s); skipped\n", tag, reason);
        fflush(stdout);
        skip();
        return;
    }
    run_gemm(G, 64, 33, 129, tol, tag);
    run_gemm(G, 300, 200, 150, tol, tag);
    const int pick[] = {1, 2, 5, 6, 11};
    for (int i = 0; i < 5; i++)
        run_conv(G, &conv_cases[pick[i]], tol, tag);
    run_loss(G, L_XENT, 33, 10, 3.0f, TOL_EW);
    run_loss(G, L_MSE, 33, 4, 3.0f, TOL_EW);
    run_opt(G, 1001, 0.01f, TOL_EW);
}

static void test_tf32(void **state) {
    (void)state;
    REQUIRE_GPU();
    run_precision(gpu_tf32, why_tf32, "tf32", TOL_TF32);
}

static void test_bf16(void **state) {
    (void)state;
    REQUIRE_GPU();
    run_precision(gpu_bf16, why_bf16, "bf16", TOL_BF16);
}

/* ---- determinism ------------------------------------------------------ */

/* Sums on the GPU go in a fixed order (no float atomics), so the same
 * inputs give the same bits every run. */
static void test_determinism(void **state) {
    (void)state;
    REQUIRE_GPU();
    dv_backend *G = gpu;
    const conv_case cases[] = {{8, 16, 16, 16, 32, 3, 3, 1, 1, 1},
                               {5, 8, 14, 14, 16, 5, 5, 2, 2, 1}};
    for (int c = 0; c < 2; c++) {
        dv_conv2d_geom g = {.B = cases[c].B,
                            .C = cases[c].C,
                            .H = cases[c].H,
                            .W = cases[c].W,
                            .F = cases[c].F,
                            .KH = cases[c].KH,
                            .KW = cases[c].KW,
                            .stride = cases[c].stride,
                            .pad = cases[c].pad};
        assert_int_equal(dv_conv2d_geom_init(&g), 0);
        const size_t nx = (size_t)g.B * g.C * g.H * g.W, nw = (size_t)g.F * g.C * g.KH * g.KW;
        const size_t ny = (size_t)g.B * g.F * g.OH * g.OW;
        pair x = pair_rand(G, nx, -1, 1), w = pair_rand(G, nw, -1, 1), dy = pair_rand(G, ny, -1, 1);
        float *work = test_dalloc(G, G->conv2d_workspace(G->ctx, &g) * sizeof(float));
        float *dx = test_dalloc(G, nx * sizeof(float)), *dw = test_dalloc(G, nw * sizeof(float));
        float *db = test_dalloc(G, g.F * sizeof(float));
        float *first[3] = {NULL, NULL, NULL};
        const size_t sz[3] = {nx * sizeof(float), nw * sizeof(float), g.F * sizeof(float)};
        for (int run = 0; run < 2; run++) {
            G->fill(G->ctx, dw, 0.0f, nw);
            G->fill(G->ctx, db, 0.0f, g.F);
            G->conv2d_backward(G->ctx, &g, x.d, w.d, dy.d, dx, dw, db, work);
            float *out[3] = {test_dget(G, dx, sz[0]), test_dget(G, dw, sz[1]),
                             test_dget(G, db, sz[2])};
            for (int i = 0; i < 3; i++) {
                if (run == 0) {
                    first[i] = out[i];
                } else {
                    test_expect_bits(out[i], first[i], sz[i],
                                     i == 0   ? "conv dx"
                                     : i == 1 ? "conv dw"
                                              : "conv db");
                    free(out[i]);
                    free(first[i]);
                }
            }
        }
        G->free(G->ctx, work), G->free(G->ctx, dx), G->free(G->ctx, dw), G->free(G->ctx, db);
        pair_free(G, &x), pair_free(G, &w), pair_free(G, &dy);
    }

    /* losses over many rows (multi-block reductions of stats) */
    const int B = 4096, K = 10;
    const size_t n = (size_t)B * K;
    pair z = pair_rand(G, n, -3, 3), t = pair_rand(G, n, 0, 1);
    int32_t *lab = calloc(B, sizeof *lab);
    assert_non_null(lab);
    for (int i = 0; i < B; i++)
        lab[i] = (int32_t)(test_rand_next() % K);
    int32_t *lab_d = test_dput(G, lab, B * sizeof *lab);
    float *d = test_dalloc(G, n * sizeof(float)), *st = test_dalloc(G, 2 * sizeof(float));
    for (int kind = 0; kind < 4; kind++) {
        float *first_d = NULL, first_st[2] = {0, 0};
        for (int run = 0; run < 2; run++) {
            G->fill(G->ctx, st, 0.0f, 2);
            if (kind == L_XENT) G->xent_loss(G->ctx, z.d, lab_d, B, K, 0.5f, d, st);
            if (kind == L_BCE) G->bce_loss(G->ctx, z.d, t.d, B, K, 0.5f, d, st);
            if (kind == L_MSE) G->mse_loss(G->ctx, z.d, t.d, B, K, 0.5f, d, st);
            if (kind == L_PERCEPTRON) G->perceptron_loss(G->ctx, z.d, lab_d, B, K, 0.5f, d, st);
            float *dh = test_dget(G, d, n * sizeof(float)), sh[2];
            G->to_host(G->ctx, sh, st, sizeof sh);
            if (run == 0) {
                first_d = dh;
                memcpy(first_st, sh, sizeof sh);
            } else {
                test_expect_bits(dh, first_d, n * sizeof(float), loss_names[kind]);
                test_expect_bits(sh, first_st, sizeof sh, loss_names[kind]);
                free(dh);
                free(first_d);
            }
        }
    }
    /* and the other reductions: sumsq, bias and batch-norm sums */
    double s0 = G->sumsq(G->ctx, z.d, n), s1 = G->sumsq(G->ctx, z.d, n);
    test_expect_bits(&s1, &s0, sizeof s0, "sumsq");
    float *db = test_dalloc(G, K * sizeof(float));
    float *dbh[2];
    for (int run = 0; run < 2; run++) {
        G->fill(G->ctx, db, 0.0f, K);
        G->bias_backward(G->ctx, z.d, db, 16, K, B / 16);
        dbh[run] = test_dget(G, db, K * sizeof(float));
    }
    test_expect_bits(dbh[1], dbh[0], K * sizeof(float), "bias_backward");
    free(dbh[0]), free(dbh[1]);
    G->free(G->ctx, db);
    float *bn[2];
    float *ones = test_dalloc(G, K * sizeof(float)), *zeros = test_dalloc(G, K * sizeof(float));
    float *sm = test_dalloc(G, K * sizeof(float)), *si = test_dalloc(G, K * sizeof(float));
    float *y = test_dalloc(G, n * sizeof(float)), *dxb = test_dalloc(G, n * sizeof(float));
    float *dg = test_dalloc(G, K * sizeof(float)), *dbt = test_dalloc(G, K * sizeof(float));
    float *rm = test_dalloc(G, K * sizeof(float)), *rv = test_dalloc(G, K * sizeof(float));
    G->fill(G->ctx, ones, 1.0f, K);
    for (int run = 0; run < 2; run++) {
        G->batchnorm_forward(G->ctx, 1, 16, K, B / 16, 1e-5f, 0.1f, z.d, ones, zeros, rm, rv, sm,
                             si, y);
        G->fill(G->ctx, dg, 0.0f, K);
        G->fill(G->ctx, dbt, 0.0f, K);
        G->batchnorm_backward(G->ctx, 16, K, B / 16, z.d, ones, sm, si, t.d, dxb, dg, dbt);
        float *h = malloc((n + 4 * (size_t)K) * sizeof(float));
        assert_non_null(h);
        G->to_host(G->ctx, h, dxb, n * sizeof(float));
        G->to_host(G->ctx, h + n, sm, K * sizeof(float));
        G->to_host(G->ctx, h + n + K, si, K * sizeof(float));
        G->to_host(G->ctx, h + n + 2 * K, dg, K * sizeof(float));
        G->to_host(G->ctx, h + n + 3 * K, dbt, K * sizeof(float));
        bn[run] = h;
    }
    test_expect_bits(bn[1], bn[0], (n + 4 * (size_t)K) * sizeof(float), "batchnorm");
    free(bn[0]), free(bn[1]);
    float *bufs[] = {ones, zeros, sm, si, y, dxb, dg, dbt, rm, rv, d, st};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        G->free(G->ctx, bufs[i]);
    pair_free(G, &z), pair_free(G, &t);
    free(lab);
    G->free(G->ctx, lab_d);
    test_expect_ok(G, "determinism");
}

/* An activation, pooling mode or optimizer kind outside its enum launches
 * nothing, and check names the op and the value (test_rand.c); a precision
 * outside dv_precision gives no backend, and the reason names it. */
static dv_backend *make_gpu(void) {
    char reason[DV_ERR_LEN];
    dv_backend *b = create_cuda(DV_PRECISION_FP32, reason, sizeof reason);
    if (!b) fail_msg("a second CUDA backend: %s", reason);
    return b;
}

static void test_unknown_enums_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    test_unknown_enums(make_gpu);
    const int bad[] = {DV_PRECISION_COUNT, -1, 7777};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        char err[DV_ERR_LEN] = "", want[32];
        dv_backend *b = dv_backend_cuda_create(0, (dv_precision)bad[k], err);
        snprintf(want, sizeof want, "value %d", bad[k]);
        if (b || !strstr(err, "dv_precision") || !strstr(err, want))
            fail_msg("precision %d: backend %p, reason: %s", bad[k], (void *)b, err);
    }
}

/* After everything above, no error is pending. */
static void test_check(void **state) {
    (void)state;
    REQUIRE_GPU();
    char err[DV_ERR_LEN] = "";
    assert_int_equal(gpu->check(gpu->ctx, err), 0);
    if (gpu_tf32) assert_int_equal(gpu_tf32->check(gpu_tf32->ctx, err), 0);
    if (gpu_bf16) assert_int_equal(gpu_bf16->check(gpu_bf16->ctx, err), 0);
    assert_int_equal(cpu->check(cpu->ctx, err), 0);
}

int main(void) {
    test_rand_seed(12345); /* the inputs' generator (test_rand.h), independent of dv_rand */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_blas1),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_bias),
        cmocka_unit_test(test_act),
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_conv2d_chunked),
        cmocka_unit_test(test_pool2d),
        cmocka_unit_test(test_upsample),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_batchnorm),
        cmocka_unit_test(test_losses),
        cmocka_unit_test(test_opt),
        cmocka_unit_test(test_tf32),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_unknown_enums_cuda),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
