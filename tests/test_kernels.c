/* test_kernels.c — unit tests of kernels/ on the CPU backend: every op's
 * forward against a naive reference, every backward against central finite
 * differences of L = sum(y * r) for a random r (so dy = r), the losses'
 * gradients and statistics, the optimizers against hand-written two-step
 * references, clipping, the counter-based RNG, and the refusal of enum
 * values outside their enums.
 *
 * FD losses are accumulated in double; inputs are small random values, and a
 * gradient passes when |fd - analytic| <= rtol*|fd| + atol*max|analytic|.
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

static dv_backend *be;

/* ---- helpers ---------------------------------------------------------- */

/* Distinct values spaced by at least `gap`, shuffled: FD steps smaller than
 * gap/2 never change which element a max/min picks. */
static void fill_distinct(float *x, size_t n, float gap) {
    for (size_t i = 0; i < n; i++)
        x[i] = ((float)i - (float)n / 2) * gap;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(test_rand_next() % i);
        float t = x[i - 1];
        x[i - 1] = x[j];
        x[j] = t;
    }
}

static void assert_close_arrays(const float *got, const float *want, size_t n, double tol,
                                const char *what) {
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= tol * (1.0 + fabs((double)want[i])))) {
            fail_msg("%s[%zu]: got %.7g, want %.7g", what, i, got[i], want[i]);
        }
    }
}

static int setup(void **state) {
    (void)state;
    be = dv_backend_cpu_create(1);
    return be ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    dv_backend_free(be);
    be = NULL;
    return 0;
}

/* ---- tensors, geometry, backend basics -------------------------------- */

static void test_tensor_and_geom(void **state) {
    (void)state;
    float data[24];
    int shape[3] = {2, 3, 4};
    dv_tensor t = dv_tensor_view(data, 3, shape);
    assert_ptr_equal(t.data, data);
    assert_int_equal(t.ndim, 3);
    assert_int_equal(dv_tensor_numel(&t), 24);
    dv_tensor bad = dv_tensor_view(data, 5, shape);
    assert_int_equal(dv_tensor_numel(&bad), 0);

    dv_conv2d_geom g = {
        .B = 1, .C = 1, .H = 28, .W = 28, .F = 1, .KH = 5, .KW = 5, .stride = 1, .pad = 2};
    assert_int_equal(dv_conv2d_geom_init(&g), 0);
    assert_int_equal(g.OH, 28);
    assert_int_equal(g.OW, 28);
    g = (dv_conv2d_geom){.B = 1, .C = 1, .H = 7, .W = 6, .KH = 3, .KW = 2, .stride = 2, .pad = 0};
    assert_int_equal(dv_conv2d_geom_init(&g), 0);
    assert_int_equal(g.OH, 3);
    assert_int_equal(g.OW, 3);
    g = (dv_conv2d_geom){.B = 1, .C = 1, .H = 2, .W = 2, .KH = 5, .KW = 5, .stride = 1, .pad = 1};
    assert_int_equal(dv_conv2d_geom_init(&g), -1); /* window larger than padded input */
    g = (dv_conv2d_geom){.B = 1, .C = 1, .H = 4, .W = 4, .KH = 2, .KW = 2, .stride = 0};
    assert_int_equal(dv_conv2d_geom_init(&g), -1);
}

static void test_backend_basics(void **state) {
    (void)state;
    assert_string_equal(be->name, "cpu");
    /* Every slot of the table is filled. */
#define DV_OP(ret, name, params)                                                                   \
    if (!be->name) fail_msg("table slot %s is NULL", #name);
#include "ops.def"
    test_expect_ok(be, "a fresh backend");

    float *x = be->alloc(be->ctx, 1000 * sizeof(float));
    assert_non_null(x);
    assert_int_equal((uintptr_t)x % 64, 0);
    for (int i = 0; i < 1000; i++)
        assert_true(x[i] == 0.0f);
    be->fill(be->ctx, x, 2.0f, 1000);
    assert_true(x[999] == 2.0f);
    float *y = be->alloc(be->ctx, 1000 * sizeof(float));
    be->copy(be->ctx, y, x, 1000 * sizeof(float));
    be->axpy(be->ctx, 0.5f, x, y, 1000); /* y = 2 + 1 */
    be->scale(be->ctx, y, 2.0f, 1000);   /* y = 6 */
    assert_true(y[0] == 6.0f && y[999] == 6.0f);
    assert_true(fabs(be->sumsq(be->ctx, y, 1000) - 36000.0) < 1e-6);
    /* the fingerprint sees every bit and every position */
    uint64_t f0 = be->fingerprint(be->ctx, y, 1000);
    assert_true(f0 == be->fingerprint(be->ctx, y, 1000));
    assert_true(be->fingerprint(be->ctx, y, 0) == 0);
    uint32_t bits;
    memcpy(&bits, &y[517], sizeof bits);
    bits ^= 1u; /* the lowest mantissa bit of one element */
    memcpy(&y[517], &bits, sizeof bits);
    assert_true(be->fingerprint(be->ctx, y, 1000) != f0);
    bits ^= 1u;
    memcpy(&y[517], &bits, sizeof bits);
    assert_true(be->fingerprint(be->ctx, y, 1000) == f0);
    y[3] = 7.0f; /* the same values in swapped places */
    uint64_t f1 = be->fingerprint(be->ctx, y, 1000);
    y[3] = 6.0f;
    y[4] = 7.0f;
    assert_true(be->fingerprint(be->ctx, y, 1000) != f1);
    y[4] = 6.0f;
    float h[3] = {1, 2, 3}, back[3] = {0};
    be->to_device(be->ctx, y, h, sizeof h);
    be->to_host(be->ctx, back, y, sizeof back);
    assert_memory_equal(h, back, sizeof h);
    be->sync(be->ctx);
    be->free(be->ctx, x);
    be->free(be->ctx, y);
    be->free(be->ctx, NULL);
    dv_backend_free(NULL);
}

static void test_cuda_entry_points(void **state) {
    (void)state;
    assert_true(dv_backend_cuda_device_count() >= 0);
    char err[DV_ERR_LEN] = "";
    dv_backend *c = dv_backend_cuda_create(0, DV_PRECISION_FP32, err);
    if (!c) assert_true(strlen(err) > 0); /* always a reason when there is no backend */
    dv_backend_free(c);
}

/* ---- rng -------------------------------------------------------------- */

static void test_rand(void **state) {
    (void)state;
    assert_true(dv_rand_hash(42, 7) == dv_rand_hash(42, 7));
    assert_true(dv_rand_hash(42, 7) != dv_rand_hash(42, 8));
    assert_true(dv_rand_hash(42, 7) != dv_rand_hash(43, 7));
    assert_true(dv_rand_uniform(1, 2) == dv_rand_uniform(1, 2));
    double sum = 0.0;
    int n = 200000, low = 0;
    for (int i = 0; i < n; i++) {
        float u = dv_rand_uniform(123, (uint64_t)i);
        assert_true(u >= 0.0f && u < 1.0f);
        sum += u;
        low += u < 0.25f;
    }
    assert_true(fabs(sum / n - 0.5) < 0.005);
    assert_true(fabs((double)low / n - 0.25) < 0.005);
    /* Neighbouring seeds must not give shifted copies of one stream. */
    int same = 0;
    for (int i = 0; i < 1000; i++)
        same += (dv_rand_uniform(5, (uint64_t)i + 1) < 0.5f) == (dv_rand_uniform(6, i) < 0.5f);
    assert_true(same > 400 && same < 600);
}

/* ---- gemm ------------------------------------------------------------- */

/* On one thread with AVX-512, dv_cpu_gemm takes its own packed path for
 * A op(B) with M >= 256 and K >= 64, and the blocked one for A^T B with
 * K >= 256 and 64 <= M, N <= 512; the others go to OpenBLAS. beta = 0
 * runs over NaNs in C (overwritten, never read). */
static void run_gemm_case(int M, int N, int K) {
    float *A = test_fbuf((size_t)M * K), *B = test_fbuf((size_t)K * N),
          *C = test_fbuf((size_t)M * N), *ref = test_fbuf((size_t)M * N);
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            test_rand_fill(A, M * K, -1, 1);
            test_rand_fill(B, K * N, -1, 1);
            for (int bz = 0; bz < 2; bz++) {
                test_rand_fill(C, M * N, -1, 1);
                const float alpha = 1.5f, beta = bz ? 0.0f : -0.5f;
                for (int i = 0; i < M; i++) {
                    for (int j = 0; j < N; j++) {
                        double s = 0.0;
                        for (int k = 0; k < K; k++) {
                            float a = ta ? A[k * M + i] : A[i * K + k];
                            float b = tb ? B[j * K + k] : B[k * N + j];
                            s += (double)a * b;
                        }
                        ref[i * N + j] = (float)(alpha * s + (bz ? 0.0 : beta * C[i * N + j]));
                    }
                }
                if (bz)
                    for (int i = 0; i < M * N; i++)
                        C[i] = NAN;
                be->gemm(be->ctx, ta, tb, M, N, K, alpha, A, B, beta, C);
                char what[80];
                snprintf(what, sizeof what, "gemm(%dx%dx%d, ta=%d,tb=%d, beta=%g)", M, N, K, ta, tb,
                         beta);
                assert_close_arrays(C, ref, (size_t)M * N, 1e-5, what);
            }
        }
    }
    free(A), free(B), free(C), free(ref);
}

static void test_gemm(void **state) {
    (void)state;
    run_gemm_case(7, 5, 9);
    run_gemm_case(300, 37, 20);  /* K < 64: OpenBLAS */
    run_gemm_case(300, 37, 70);  /* the packed path */
    run_gemm_case(300, 37, 260); /* the packed path */
    run_gemm_case(77, 70, 300);  /* A^T B blocked: 2 blocks of K, a short strip and panel */
    run_gemm_case(130, 96, 256); /* A^T B blocked: 3 blocks of M, one of K */
}

/* gemm_packed against a double-precision reference, on a one-thread backend
 * (where AVX-512 exists: the own kernel, panels of 32 columns) and a
 * two-thread one (op(B) as is, OpenBLAS): M not a multiple of the kernel's
 * 8 rows, N not of its 32 columns, both trans_b, beta 0 over NaNs (C is
 * overwritten, never read) and beta != 0. */
static void test_gemm_packed(void **state) {
    (void)state;
    static const int shapes[][3] = {{1, 1, 1},   {7, 33, 5},   {8, 32, 16},
                                    {17, 70, 9}, {32, 96, 64}, {33, 256, 128}};
    for (int threads = 1; threads <= 2; threads++) {
        dv_backend *b = dv_backend_cpu_create(threads);
        assert_non_null(b);
#if defined(__GNUC__) && defined(__x86_64__)
        if (threads == 1 && __builtin_cpu_supports("avx512f"))
            assert_int_equal(b->gemm_pack_size(b->ctx, 1, 1), 32); /* the panel form */
#endif
        if (threads == 2) assert_int_equal(b->gemm_pack_size(b->ctx, 3, 5), 15); /* op(B) */
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            float *A = test_fbuf((size_t)M * K), *B = test_fbuf((size_t)K * N);
            float *C = test_fbuf((size_t)M * N), *ref = test_fbuf((size_t)M * N);
            float *P = test_fbuf(b->gemm_pack_size(b->ctx, K, N));
            for (int tb = 0; tb < 2; tb++) {
                for (int bz = 0; bz < 2; bz++) {
                    test_rand_fill(A, (size_t)M * K, -1, 1);
                    test_rand_fill(B, (size_t)K * N, -1, 1);
                    test_rand_fill(C, (size_t)M * N, -1, 1);
                    const float alpha = 1.5f, beta = bz ? 0.0f : -0.5f;
                    for (int i = 0; i < M; i++) {
                        for (int j = 0; j < N; j++) {
                            double acc = 0.0;
                            for (int k = 0; k < K; k++)
                                acc += (double)A[i * K + k] * (tb ? B[j * K + k] : B[k * N + j]);
                            ref[i * N + j] =
                                (float)(alpha * acc + (bz ? 0.0 : beta * C[i * N + j]));
                        }
                    }
                    if (bz)
                        for (int i = 0; i < M * N; i++)
                            C[i] = NAN;
                    b->gemm_pack(b->ctx, tb, K, N, B, P);
                    b->gemm_packed(b->ctx, M, N, K, alpha, A, P, beta, C);
                    char what[96];
                    snprintf(what, sizeof what, "gemm_packed(%dx%dx%d, tb=%d, beta=%g, %d threads)",
                             M, N, K, tb, beta, threads);
                    assert_close_arrays(C, ref, (size_t)M * N, 1e-5, what);
                }
            }
            free(A), free(B), free(C), free(ref), free(P);
        }
        dv_backend_free(b);
    }
}

/* ---- bias ------------------------------------------------------------- */

static void test_bias(void **state) {
    (void)state;
    const int B = 3, C = 4;
    for (int S = 1; S <= 5; S += 4) {
        size_t n = (size_t)B * C * S;
        float *y = test_fbuf(n), *y0 = test_fbuf(n), *bias = test_fbuf(C), *db = test_fbuf(C),
              *ref = test_fbuf(C);
        test_rand_fill(y, n, -1, 1);
        memcpy(y0, y, n * sizeof *y);
        test_rand_fill(bias, C, -1, 1);
        be->bias_forward(be->ctx, y, bias, B, C, S);
        for (size_t i = 0; i < n; i++)
            assert_true(fabsf(y[i] - (y0[i] + bias[(i / S) % C])) < 1e-6f);
        for (int c = 0; c < C; c++)
            db[c] = ref[c] = 0.25f; /* backward accumulates */
        for (size_t i = 0; i < n; i++)
            ref[(i / S) % C] += y0[i];
        be->bias_backward(be->ctx, y0, db, B, C, S);
        assert_close_arrays(db, ref, C, 1e-5, "dbias");
        free(y), free(y0), free(bias), free(db), free(ref);
    }
}

/* ---- activations ------------------------------------------------------ */

typedef struct act_st {
    dv_act act;
    float alpha;
    int cols;
    size_t n;
    float *x, *y, *r;
} act_st;

static double act_loss(void *p) {
    act_st *s = p;
    be->act_forward(be->ctx, s->act, s->alpha, s->x, s->y, s->n, s->cols);
    return test_dot(s->y, s->r, s->n);
}

static void test_act_forward_values(void **state) {
    (void)state;
    float x[6] = {-2.0f, -0.5f, 0.0f, 0.5f, 2.0f, 1000.0f}, y[6];
    be->act_forward(be->ctx, DV_ACT_RELU, 0, x, y, 6, 6);
    assert_true(y[0] == 0.0f && y[3] == 0.5f && y[5] == 1000.0f);
    be->act_forward(be->ctx, DV_ACT_LEAKY_RELU, 0.1f, x, y, 6, 6);
    assert_true(fabsf(y[0] + 0.2f) < 1e-7f && y[4] == 2.0f);
    be->act_forward(be->ctx, DV_ACT_SIGMOID, 0, x, y, 6, 6);
    assert_true(fabsf(y[2] - 0.5f) < 1e-7f && fabsf(y[4] - 0.880797f) < 1e-5f && y[5] == 1.0f);
    be->act_forward(be->ctx, DV_ACT_TANH, 0, x, y, 6, 6);
    assert_true(fabsf(y[3] - tanhf(0.5f)) < 1e-7f);
    be->act_forward(be->ctx, DV_ACT_LINEAR, 0, x, y, 6, 6);
    assert_memory_equal(x, y, sizeof x);
    /* softmax over rows of 3, stable with a logit of 1000 */
    be->act_forward(be->ctx, DV_ACT_SOFTMAX, 0, x, y, 6, 3);
    assert_true(fabsf(y[0] + y[1] + y[2] - 1.0f) < 1e-6f);
    assert_true(fabsf(y[3] + y[4] + y[5] - 1.0f) < 1e-6f);
    assert_true(y[5] > 0.999f && isfinite(y[3]));
    assert_true(fabsf(y[1] / y[0] - expf(1.5f)) < 1e-4f);
    /* in place */
    float z[4] = {1, 2, 3, 4};
    be->act_forward(be->ctx, DV_ACT_SOFTMAX, 0, z, z, 4, 4);
    assert_true(fabsf(z[0] + z[1] + z[2] + z[3] - 1.0f) < 1e-6f);
}

static void test_act_backward_fd(void **state) {
    (void)state;
    const dv_act acts[] = {DV_ACT_LINEAR,  DV_ACT_RELU, DV_ACT_LEAKY_RELU,
                           DV_ACT_SIGMOID, DV_ACT_TANH, DV_ACT_SOFTMAX};
    const char *names[] = {"linear", "relu", "leaky_relu", "sigmoid", "tanh", "softmax"};
    const size_t n = 60;
    for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
        for (int inplace = 0; inplace < 2; inplace++) {
            act_st s = {.act = acts[a], .alpha = 0.1f, .cols = 6, .n = n};
            s.x = test_fbuf(n), s.y = test_fbuf(n), s.r = test_fbuf(n);
            test_rand_fill(s.x, n, -2, 2);
            for (size_t i = 0; i < n; i++) /* keep clear of relu's kink */
                if (fabsf(s.x[i]) < 0.05f) s.x[i] = 0.1f;
            test_rand_fill(s.r, n, -1, 1);
            be->act_forward(be->ctx, s.act, s.alpha, s.x, s.y, n, s.cols);
            float *dx = test_fbuf(n);
            float *dy = test_fbuf(n);
            memcpy(dy, s.r, n * sizeof *dy);
            if (inplace) {
                be->act_backward(be->ctx, s.act, s.alpha, s.y, dy, dy, n, s.cols);
                memcpy(dx, dy, n * sizeof *dx);
            } else {
                for (size_t i = 0; i < n; i++)
                    dx[i] = 1e30f; /* dx is overwritten */
                be->act_backward(be->ctx, s.act, s.alpha, s.y, dy, dx, n, s.cols);
            }
            test_fd_check(act_loss, &s, s.x, dx, n, 1e-3f, 1e-2, 1e-3, names[a]);
            free(s.x), free(s.y), free(s.r), free(dx), free(dy);
        }
    }
}

/* ---- conv2d ----------------------------------------------------------- */

typedef struct conv_st {
    dv_conv2d_geom g;
    float *x, *w, *b, *y, *r, *work;
} conv_st;

static double conv_loss(void *p) {
    conv_st *s = p;
    be->conv2d_forward(be->ctx, &s->g, s->x, s->w, s->b, s->y, s->work);
    return test_dot(s->y, s->r, (size_t)s->g.B * s->g.F * s->g.OH * s->g.OW);
}

static void conv_naive(const dv_conv2d_geom *g, const float *x, const float *w, const float *b,
                       float *y) {
    for (int n = 0; n < g->B; n++)
        for (int f = 0; f < g->F; f++)
            for (int oh = 0; oh < g->OH; oh++)
                for (int ow = 0; ow < g->OW; ow++) {
                    double s = b ? b[f] : 0.0;
                    for (int c = 0; c < g->C; c++)
                        for (int kh = 0; kh < g->KH; kh++)
                            for (int kw = 0; kw < g->KW; kw++) {
                                int ih = oh * g->stride - g->pad + kh;
                                int iw = ow * g->stride - g->pad + kw;
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W) continue;
                                s += (double)x[((n * g->C + c) * g->H + ih) * g->W + iw] *
                                     w[((f * g->C + c) * g->KH + kh) * g->KW + kw];
                            }
                    y[((n * g->F + f) * g->OH + oh) * g->OW + ow] = (float)s;
                }
}

static void run_conv_case_b(int B, int C, int H, int W, int F, int KH, int KW, int stride, int pad,
                            int with_bias) {
    conv_st s = {.g = {.B = B,
                       .C = C,
                       .H = H,
                       .W = W,
                       .F = F,
                       .KH = KH,
                       .KW = KW,
                       .stride = stride,
                       .pad = pad}};
    assert_int_equal(dv_conv2d_geom_init(&s.g), 0);
    const dv_conv2d_geom *g = &s.g;
    size_t nx = (size_t)g->B * C * H * W, nw = (size_t)F * C * KH * KW;
    size_t ny = (size_t)g->B * F * g->OH * g->OW;
    s.x = test_fbuf(nx), s.w = test_fbuf(nw), s.b = with_bias ? test_fbuf(F) : NULL,
    s.y = test_fbuf(ny);
    s.r = test_fbuf(ny);
    s.work = test_fbuf(be->conv2d_workspace(be->ctx, g));
    test_rand_fill(s.x, nx, -1, 1);
    test_rand_fill(s.w, nw, -1, 1);
    if (s.b) test_rand_fill(s.b, F, -1, 1);
    test_rand_fill(s.r, ny, -1, 1);

    float *ref = test_fbuf(ny);
    conv_naive(g, s.x, s.w, s.b, ref);
    be->conv2d_forward(be->ctx, g, s.x, s.w, s.b, s.y, s.work);
    char what[96];
    snprintf(what, sizeof what, "conv y C%d %dx%d F%d k%dx%d s%d p%d", C, H, W, F, KH, KW, stride,
             pad);
    /* The Winograd path (5x5, stride 1, >= 8 channels each way) rounds
     * differently: its transforms scale terms by up to ~10 before they
     * cancel, so allow 1e-4 relative to the output's own scale there (a
     * wrong transform is off by O(1)). */
    const int wino = KH == 5 && KW == 5 && stride == 1 && C >= 8 && F >= 8;
    if (wino) {
        float ymax = test_max_abs(ref, ny);
        for (size_t i = 0; i < ny; i++)
            if (!(fabs((double)s.y[i] - ref[i]) <= 1e-4 * (1.0 + ymax)))
                fail_msg("%s[%zu]: got %.7g, want %.7g (winograd)", what, i, s.y[i], ref[i]);
    } else {
        assert_close_arrays(s.y, ref, ny, 1e-5, what);
    }

    float *dx = test_fbuf(nx), *dw = test_fbuf(nw), *db = test_fbuf(F);
    for (size_t i = 0; i < nx; i++)
        dx[i] = 1e30f; /* overwritten */
    for (size_t i = 0; i < nw; i++)
        dw[i] = 0.5f; /* accumulated */
    for (int f = 0; f < F; f++)
        db[f] = 0.5f;
    be->conv2d_backward(be->ctx, g, s.x, s.w, s.r, dx, dw, s.b ? db : NULL, s.work);
    for (size_t i = 0; i < nw; i++)
        dw[i] -= 0.5f;
    for (int f = 0; f < F; f++)
        db[f] -= 0.5f;

    /* conv is linear in each argument, so a large step is exact */
    snprintf(what + strlen(what), sizeof what - strlen(what), " dx");
    test_fd_check(conv_loss, &s, s.x, dx, nx, 0.1f, 1e-3, 5e-4, what);
    what[strlen(what) - 2] = 'w';
    test_fd_check(conv_loss, &s, s.w, dw, nw, 0.1f, 1e-3, 5e-4, what);
    if (s.b) {
        what[strlen(what) - 2] = 'b';
        test_fd_check(conv_loss, &s, s.b, db, F, 0.1f, 1e-3, 5e-4, what);
    }

    /* dx and dw against a direct sum (in double): every element, not just
     * the finite-difference sample */
    {
        double *rdx = calloc(nx, sizeof *rdx), *rdw = calloc(nw, sizeof *rdw);
        for (int n = 0; n < g->B; n++)
            for (int f = 0; f < F; f++)
                for (int oh = 0; oh < g->OH; oh++)
                    for (int ow = 0; ow < g->OW; ow++) {
                        double d = s.r[((n * F + f) * g->OH + oh) * g->OW + ow];
                        for (int c = 0; c < C; c++)
                            for (int kh = 0; kh < KH; kh++)
                                for (int kw = 0; kw < KW; kw++) {
                                    int ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
                                    if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                    size_t xi = ((size_t)(n * C + c) * H + ih) * W + iw;
                                    size_t wi = ((size_t)(f * C + c) * KH + kh) * KW + kw;
                                    rdx[xi] += d * s.w[wi];
                                    rdw[wi] += d * s.x[xi];
                                }
                    }
        double mx = 0.0, mw = 0.0;
        for (size_t i = 0; i < nx; i++)
            mx = fmax(mx, fabs(rdx[i]));
        for (size_t i = 0; i < nw; i++)
            mw = fmax(mw, fabs(rdw[i]));
        /* the column path: 1e-5 per element; Winograd: of the scale */
        for (size_t i = 0; i < nx; i++)
            if (!(fabs(dx[i] - rdx[i]) <= (wino ? 1e-4 * (1.0 + mx) : 1e-5 * (1.0 + fabs(rdx[i])))))
                fail_msg("%s: dx[%zu] got %.7g, want %.7g", what, i, dx[i], rdx[i]);
        for (size_t i = 0; i < nw; i++)
            if (!(fabs(dw[i] - rdw[i]) <= (wino ? 1e-4 * (1.0 + mw) : 1e-5 * (1.0 + fabs(rdw[i])))))
                fail_msg("%s: dw[%zu] got %.7g, want %.7g", what, i, dw[i], rdw[i]);
        free(rdx), free(rdw);
    }

    /* dx == NULL: dw still right, and nothing else touched */
    float *dw2 = test_fbuf(nw);
    be->conv2d_backward(be->ctx, g, s.x, s.w, s.r, NULL, dw2, NULL, s.work);
    assert_close_arrays(dw2, dw, nw, 1e-5, "conv dw with dx = NULL");

    free(s.x), free(s.w), free(s.b), free(s.y), free(s.r), free(s.work);
    free(ref), free(dx), free(dw), free(db), free(dw2);
}

static void run_conv_case(int C, int H, int W, int F, int KH, int KW, int stride, int pad,
                          int with_bias) {
    run_conv_case_b(2, C, H, W, F, KH, KW, stride, pad, with_bias);
}

static void test_conv2d(void **state) {
    (void)state;
    run_conv_case(3, 7, 6, 4, 3, 3, 1, 0, 1); /* stride 1, pad 0 */
    run_conv_case(2, 8, 9, 3, 3, 3, 2, 2, 1); /* stride 2, pad 2 */
    run_conv_case(1, 9, 9, 4, 5, 5, 1, 2, 1); /* the CNN's first layer, small */
    run_conv_case(3, 9, 7, 2, 5, 5, 2, 0, 0); /* stride 2, pad 0, no bias */
    run_conv_case(2, 6, 7, 3, 3, 2, 2, 1, 1); /* non-square window */
    run_conv_case(4, 5, 5, 3, 1, 1, 1, 0, 1); /* pointwise: no column buffer */
    run_conv_case(2, 6, 5, 3, 3, 3, 1, 1, 1); /* "same" 3x3: the shifted-row path */
    run_conv_case(2, 5, 6, 3, 3, 5, 1, 2, 1); /* shifted rows with OH != H */
    run_conv_case(2, 3, 4, 2, 5, 5, 1, 2, 1); /* window larger than the image */
    run_conv_case(2, 6, 5, 2, 3, 1, 1, 0, 1); /* 3x1 unpadded: shift, no columns wrap */
    run_conv_case(2, 5, 5, 3, 1, 1, 2, 1, 1); /* 1x1 with stride and pad */
    /* 5x5, stride 1, at least 8 channels each way: the Winograd path, for
     * the forward, dx (as the full convolution of dy) and dw */
    run_conv_case_b(5, 8, 14, 14, 16, 5, 5, 1, 2, 1); /* the CNN's second layer, small; */
                                                      /* 5 samples: a partial group */
    run_conv_case_b(3, 9, 7, 9, 8, 5, 5, 1, 0, 1);    /* pad 0, odd sizes, odd channels */
    run_conv_case_b(1, 8, 6, 5, 17, 5, 5, 1, 4, 0);   /* pad 4 (dx pad 0), no bias */
    run_conv_case_b(2, 20, 9, 11, 9, 5, 5, 1, 1, 1);  /* pad 1: OH != H, 2 channel vectors */
    run_conv_case_b(2, 8, 3, 4, 8, 5, 5, 1, 2, 1);    /* window larger than the image */
    run_conv_case_b(2, 8, 9, 9, 8, 5, 5, 2, 2, 1);    /* stride 2: not Winograd */
}

/* ---- pooling ---------------------------------------------------------- */

typedef struct pool_st {
    dv_pool mode;
    dv_conv2d_geom g;
    float *x, *y, *r;
    int32_t *arg;
} pool_st;

static double pool_loss(void *p) {
    pool_st *s = p;
    be->pool2d_forward(be->ctx, s->mode, &s->g, s->x, s->y, s->arg);
    return test_dot(s->y, s->r, (size_t)s->g.B * s->g.C * s->g.OH * s->g.OW);
}

static void run_pool_case(dv_pool mode, int H, int W, int K, int stride, int pad) {
    pool_st s = {
        .mode = mode,
        .g = {.B = 2, .C = 3, .H = H, .W = W, .KH = K, .KW = K, .stride = stride, .pad = pad}};
    assert_int_equal(dv_conv2d_geom_init(&s.g), 0);
    const dv_conv2d_geom *g = &s.g;
    size_t nx = (size_t)g->B * g->C * H * W, ny = (size_t)g->B * g->C * g->OH * g->OW;
    s.x = test_fbuf(nx), s.y = test_fbuf(ny), s.r = test_fbuf(ny);
    s.arg = calloc(ny, sizeof *s.arg);
    fill_distinct(s.x, nx, 0.01f);
    /* all-negative inputs: a padding zero must never win a max */
    /* and all-positive ones: padding must never win a min either */
    for (size_t i = 0; i < nx; i++)
        s.x[i] += mode == DV_POOL_MAX ? -0.01f * nx : mode == DV_POOL_MIN ? 0.01f * nx : 0.0f;
    test_rand_fill(s.r, ny, -1, 1);
    be->pool2d_forward(be->ctx, mode, g, s.x, s.y, s.arg);

    char what[80];
    snprintf(what, sizeof what, "pool%d %dx%d k%d s%d p%d", (int)mode, H, W, K, stride, pad);
    /* naive forward */
    for (int pl = 0; pl < g->B * g->C; pl++)
        for (int oh = 0; oh < g->OH; oh++)
            for (int ow = 0; ow < g->OW; ow++) {
                double acc = 0.0;
                float best = mode == DV_POOL_MAX ? -INFINITY : INFINITY;
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++) {
                        int ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        float v = s.x[(pl * H + ih) * W + iw];
                        acc += v;
                        best = mode == DV_POOL_MAX ? fmaxf(best, v) : fminf(best, v);
                    }
                size_t o = ((size_t)pl * g->OH + oh) * g->OW + ow;
                float want = mode == DV_POOL_AVG ? (float)(acc / (K * K)) : best;
                if (fabsf(s.y[o] - want) > 1e-6f)
                    fail_msg("%s y[%zu]: got %g want %g", what, o, s.y[o], want);
                if (mode != DV_POOL_AVG) { /* arg is the global flat offset in x */
                    assert_true(s.arg[o] >= 0 && (size_t)s.arg[o] < nx);
                    assert_true(s.x[s.arg[o]] == s.y[o]);
                    assert_int_equal(s.arg[o] / (H * W), pl);
                }
            }

    float *dx = test_fbuf(nx);
    for (size_t i = 0; i < nx; i++)
        dx[i] = 1e30f;
    be->pool2d_backward(be->ctx, mode, g, s.r, dx, s.arg);
    strcat(what, " dx");
    test_fd_check(pool_loss, &s, s.x, dx, nx, 4e-3f, 1e-2, 1e-3, what);
    free(s.x), free(s.y), free(s.r), free(s.arg), free(dx);
}

/* Ties go to the first element in scan order, so backends agree on arg. */
static void test_pool2d_ties(void **state) {
    (void)state;
    float x[16], y[16];
    int32_t arg[16];
    for (int i = 0; i < 16; i++)
        x[i] = 1.0f;
    dv_conv2d_geom g = {.B = 1, .C = 1, .H = 4, .W = 4, .KH = 2, .KW = 2, .stride = 2};
    assert_int_equal(dv_conv2d_geom_init(&g), 0);
    for (int mode = DV_POOL_MAX; mode <= DV_POOL_MIN; mode++) {
        be->pool2d_forward(be->ctx, (dv_pool)mode, &g, x, y, arg);
        const int32_t want[4] = {0, 2, 8, 10};
        assert_memory_equal(arg, want, sizeof want);
    }
    g = (dv_conv2d_geom){.B = 1, .C = 1, .H = 4, .W = 4, .KH = 3, .KW = 3, .stride = 1, .pad = 1};
    assert_int_equal(dv_conv2d_geom_init(&g), 0);
    for (int mode = DV_POOL_MAX; mode <= DV_POOL_MIN; mode++) {
        be->pool2d_forward(be->ctx, (dv_pool)mode, &g, x, y, arg);
        for (int oh = 0; oh < 4; oh++)
            for (int ow = 0; ow < 4; ow++) {
                int ih = oh > 0 ? oh - 1 : 0, iw = ow > 0 ? ow - 1 : 0;
                assert_int_equal(arg[oh * 4 + ow], ih * 4 + iw);
                assert_true(y[oh * 4 + ow] == 1.0f);
            }
    }
}

/* Nearest upsampling: every output is its source, and backward is the
 * adjoint of forward (<up(x), dy> = <x, up^T(dy)>) with exact sums. */
static void test_upsample(void **state) {
    (void)state;
    const int n = 3, H = 4, W = 5;
    for (int s = 2; s <= 3; s++) {
        const size_t nx = (size_t)n * H * W, ny = nx * s * s;
        float *x = test_fbuf(nx), *y = test_fbuf(ny), *dy = test_fbuf(ny), *dx = test_fbuf(nx);
        for (size_t i = 0; i < nx; i++)
            x[i] = (float)(i % 97) - 40.0f;
        for (size_t i = 0; i < ny; i++)
            dy[i] = (float)((i * 7) % 13) - 6.0f; /* small integers: sums are exact */
        be->upsample_forward(be->ctx, n, H, W, s, x, y);
        for (int p = 0; p < n; p++)
            for (int i = 0; i < H * s; i++)
                for (int j = 0; j < W * s; j++)
                    assert_true(y[((size_t)p * H * s + i) * W * s + j] ==
                                x[((size_t)p * H + i / s) * W + j / s]);
        be->upsample_backward(be->ctx, n, H, W, s, dy, dx);
        double a = 0, b = 0;
        for (size_t i = 0; i < ny; i++)
            a += (double)y[i] * dy[i];
        for (size_t i = 0; i < nx; i++)
            b += (double)x[i] * dx[i];
        assert_true(a == b);
        free(x), free(y), free(dy), free(dx);
    }
}

static void test_pool2d(void **state) {
    (void)state;
    const dv_pool modes[] = {DV_POOL_MAX, DV_POOL_MIN, DV_POOL_AVG};
    for (int m = 0; m < 3; m++) {
        run_pool_case(modes[m], 8, 6, 2, 2, 0); /* the fast 2x2/2 path */
        run_pool_case(modes[m], 7, 7, 2, 2, 0); /* odd size: last row dropped */
        run_pool_case(modes[m], 7, 6, 3, 2, 1); /* padded, overlapping */
        run_pool_case(modes[m], 5, 5, 3, 1, 1); /* stride 1, heavy overlap */
        run_pool_case(modes[m], 6, 6, 2, 2, 1); /* padded corners hold 1 element */
    }
}

/* ---- dropout ---------------------------------------------------------- */

static void test_dropout(void **state) {
    (void)state;
    const int rows = 64, cols = 1000;
    const size_t n = (size_t)rows * cols;
    const float rate = 0.3f;
    float *x = test_fbuf(n), *y = test_fbuf(n), *mask = test_fbuf(n), *y2 = test_fbuf(n),
          *mask2 = test_fbuf(n);
    int64_t *ids = calloc(rows, sizeof *ids);
    for (int i = 0; i < rows; i++)
        ids[i] = 1000 + i;
    test_rand_fill(x, n, -1, 1);
    be->dropout_forward(be->ctx, rate, 77, ids, rows, cols, x, y, mask);
    size_t dropped = 0;
    for (size_t i = 0; i < n; i++) {
        if (mask[i] == 0.0f) {
            dropped++;
            assert_true(y[i] == 0.0f);
        } else {
            assert_true(fabsf(mask[i] - 1.0f / 0.7f) < 1e-6f);
            assert_true(fabsf(y[i] - x[i] / 0.7f) < 1e-5f);
        }
    }
    assert_true(fabs((double)dropped / n - rate) < 0.01);
    /* the mask is a function of (seed, row id, column) alone */
    for (size_t i = 0; i < 50; i++) {
        size_t e = (size_t)(test_rand_next() % n);
        float u = dv_rand_uniform(77, (uint64_t)ids[e / cols] * cols + e % cols);
        assert_true((mask[e] == 0.0f) == (u < rate));
    }
    /* reproducible, and a shard of the rows (as one rank of many) draws
     * the same masks for those rows */
    be->dropout_forward(be->ctx, rate, 77, ids, rows, cols, x, y2, mask2);
    assert_memory_equal(mask, mask2, n * sizeof *mask);
    be->dropout_forward(be->ctx, rate, 77, ids + 32, 32, cols, x + 32 * cols, y2, mask2);
    assert_memory_equal(mask + 32 * cols, mask2, 32 * cols * sizeof *mask);
    /* another seed gives another mask */
    be->dropout_forward(be->ctx, rate, 78, ids, rows, cols, x, y2, mask2);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += (mask[i] == 0.0f) != (mask2[i] == 0.0f);
    assert_true(differ > n / 4);
    /* backward: dx = dy * mask, in place too */
    float *dy = test_fbuf(n);
    test_rand_fill(dy, n, -1, 1);
    be->dropout_backward(be->ctx, mask, dy, y2, n);
    for (size_t i = 0; i < n; i++)
        assert_true(y2[i] == dy[i] * mask[i]);
    /* rate 0 is the identity, rate 1 drops everything */
    be->dropout_forward(be->ctx, 0.0f, 77, ids, rows, cols, x, y2, mask2);
    assert_memory_equal(x, y2, n * sizeof *x);
    be->dropout_forward(be->ctx, 1.0f, 77, ids, rows, cols, x, y2, mask2);
    assert_true(test_max_abs(y2, n) == 0.0f && test_max_abs(mask2, n) == 0.0f);
    free(x), free(y), free(mask), free(y2), free(mask2), free(ids), free(dy);
}

/* ---- batch norm ------------------------------------------------------- */

typedef struct bn_st {
    int B, C, S;
    float *x, *gamma, *beta, *rm, *rv, *sm, *si, *y, *r;
} bn_st;

static double bn_loss(void *p) {
    bn_st *s = p;
    be->batchnorm_forward(be->ctx, 1, s->B, s->C, s->S, 1e-5f, 0.1f, s->x, s->gamma, s->beta, s->rm,
                          s->rv, s->sm, s->si, s->y);
    return test_dot(s->y, s->r, (size_t)s->B * s->C * s->S);
}

static void test_batchnorm(void **state) {
    (void)state;
    for (int S = 1; S <= 6; S += 5) {
        bn_st s = {.B = 4, .C = 3, .S = S};
        size_t n = (size_t)s.B * s.C * S;
        s.x = test_fbuf(n), s.y = test_fbuf(n), s.r = test_fbuf(n);
        s.gamma = test_fbuf(3), s.beta = test_fbuf(3), s.rm = test_fbuf(3), s.rv = test_fbuf(3);
        s.sm = test_fbuf(3), s.si = test_fbuf(3);
        test_rand_fill(s.x, n, -1, 3);
        test_rand_fill(s.r, n, -1, 1);
        test_rand_fill(s.gamma, 3, 0.5f, 1.5f);
        test_rand_fill(s.beta, 3, -1, 1);
        for (int c = 0; c < 3; c++)
            s.rm[c] = 0.0f, s.rv[c] = 1.0f;
        be->batchnorm_forward(be->ctx, 1, s.B, s.C, S, 1e-5f, 0.1f, s.x, s.gamma, s.beta, s.rm,
                              s.rv, s.sm, s.si, s.y);
        /* per channel: reference stats, normalized output, running update */
        const int N = s.B * S;
        for (int c = 0; c < 3; c++) {
            double sum = 0, ss = 0, ysum = 0, yss = 0;
            for (int b = 0; b < s.B; b++)
                for (int k = 0; k < S; k++)
                    sum += s.x[(b * 3 + c) * S + k];
            double mean = sum / N;
            for (int b = 0; b < s.B; b++)
                for (int k = 0; k < S; k++) {
                    double d = s.x[(b * 3 + c) * S + k] - mean;
                    ss += d * d;
                    double yn = (s.y[(b * 3 + c) * S + k] - s.beta[c]) / s.gamma[c];
                    ysum += yn;
                    yss += yn * yn;
                }
            assert_true(fabs(s.sm[c] - mean) < 1e-5);
            assert_true(fabs(s.si[c] - 1.0 / sqrt(ss / N + 1e-5)) < 1e-4);
            assert_true(fabs(ysum / N) < 1e-4);
            assert_true(fabs(yss / N - 1.0) < 1e-3);
            assert_true(fabs(s.rm[c] - 0.1 * mean) < 1e-5);
            assert_true(fabs(s.rv[c] - (0.9 + 0.1 * ss / (N - 1))) < 1e-5);
        }
        /* eval mode uses the running stats */
        float *ye = test_fbuf(n);
        be->batchnorm_forward(be->ctx, 0, s.B, s.C, S, 1e-5f, 0.1f, s.x, s.gamma, s.beta, s.rm,
                              s.rv, NULL, NULL, ye);
        for (size_t i = 0; i < n; i++) {
            int c = (int)((i / S) % 3);
            float want = s.gamma[c] * (s.x[i] - s.rm[c]) / sqrtf(s.rv[c] + 1e-5f) + s.beta[c];
            assert_true(fabsf(ye[i] - want) < 1e-5f);
        }
        /* training backward by finite differences */
        bn_loss(&s);
        float *dx = test_fbuf(n), *dg = test_fbuf(3), *dbt = test_fbuf(3);
        for (size_t i = 0; i < n; i++)
            dx[i] = 1e30f;
        for (int c = 0; c < 3; c++)
            dg[c] = dbt[c] = 0.5f;
        be->batchnorm_backward(be->ctx, s.B, s.C, S, s.x, s.gamma, s.sm, s.si, s.r, dx, dg, dbt);
        for (int c = 0; c < 3; c++)
            dg[c] -= 0.5f, dbt[c] -= 0.5f;
        test_fd_check(bn_loss, &s, s.x, dx, n, 1e-3f, 1e-2, 2e-3, "batchnorm dx");
        test_fd_check(bn_loss, &s, s.gamma, dg, 3, 1e-3f, 1e-2, 1e-3, "batchnorm dgamma");
        test_fd_check(bn_loss, &s, s.beta, dbt, 3, 1e-3f, 1e-2, 1e-3, "batchnorm dbeta");
        free(s.x), free(s.y), free(s.r), free(s.gamma), free(s.beta), free(s.rm), free(s.rv);
        free(s.sm), free(s.si), free(ye), free(dx), free(dg), free(dbt);
    }
}

/* ---- losses ----------------------------------------------------------- */

typedef struct loss_st {
    int kind; /* 0 xent, 1 bce, 2 mse */
    int B, K;
    float *z, *t, *d;
    int32_t *labels;
} loss_st;

static void run_loss(loss_st *s, float gs, float *stats) {
    if (s->kind == 0)
        be->xent_loss(be->ctx, s->z, s->labels, s->B, s->K, gs, s->d, stats);
    else if (s->kind == 1)
        be->bce_loss(be->ctx, s->z, s->t, s->B, s->K, gs, s->d, stats);
    else
        be->mse_loss(be->ctx, s->z, s->t, s->B, s->K, gs, s->d, stats);
}

static double loss_value(void *p) {
    loss_st *s = p;
    float stats[2] = {0, 0};
    float *keep = s->d;
    float scratch[64];
    s->d = scratch; /* the FD evaluations must not clobber the gradient */
    run_loss(s, 1.0f, stats);
    s->d = keep;
    return stats[0];
}

static void test_loss_gradients(void **state) {
    (void)state;
    const char *names[] = {"xent", "bce", "mse"};
    for (int kind = 0; kind < 3; kind++) {
        loss_st s = {.kind = kind, .B = 4, .K = 5};
        size_t n = 20;
        s.z = test_fbuf(n), s.t = test_fbuf(n), s.d = test_fbuf(n);
        s.labels = calloc(4, sizeof *s.labels);
        test_rand_fill(s.z, n, -2, 2);
        test_rand_fill(s.t, n, 0, 1);
        for (int i = 0; i < 4; i++)
            s.labels[i] = (int32_t)(test_rand_next() % 5);
        float stats[2] = {0, 0};
        run_loss(&s, 0.25f, stats);
        for (size_t i = 0; i < n; i++)
            s.d[i] *= 4.0f; /* undo grad_scale */
        test_fd_check(loss_value, &s, s.z, s.d, n, 1e-2f, 1e-2, 1e-3, names[kind]);

        /* the loss value itself, against a double reference */
        double want = 0.0;
        for (int i = 0; i < 4; i++) {
            const float *z = s.z + i * 5, *t = s.t + i * 5;
            if (kind == 0) {
                double se = 0.0;
                for (int k = 0; k < 5; k++)
                    se += exp(z[k]);
                want += log(se) - z[s.labels[i]];
            } else {
                double l = 0.0;
                for (int k = 0; k < 5; k++) {
                    double p = 1.0 / (1.0 + exp(-z[k]));
                    l += kind == 1 ? -(t[k] * log(p) + (1 - t[k]) * log(1 - p))
                                   : (z[k] - t[k]) * (z[k] - t[k]);
                }
                want += l / 5;
            }
        }
        if (fabs(stats[0] - want) > 1e-4 * (1 + fabs(want)))
            fail_msg("%s loss: got %g want %g", names[kind], stats[0], want);
        free(s.z), free(s.t), free(s.d), free(s.labels);
    }
}

static void test_xent_stats_and_stability(void **state) {
    (void)state;
    float z[3 * 3] = {1000.0f, -1000.0f, 0.0f, /* argmax 0 */
                      0.0f,    2.0f,     1.0f, /* argmax 1 */
                      5.0f,    1.0f,     7.0f};
    int32_t lab[3] = {0, 2, 2};
    float d[9], stats[2] = {1.0f, 10.0f}; /* stats accumulate */
    be->xent_loss(be->ctx, z, lab, 3, 3, 1.0f, d, stats);
    assert_true(fabsf(stats[1] - 12.0f) < 1e-6f); /* rows 0 and 2 correct */
    double l1 = log(1 + exp(2.0) + exp(1.0)) + 0.0 - 1.0;
    double l2 = log(exp(-2.0) + exp(-6.0) + 1.0);
    assert_true(fabs(stats[0] - (1.0 + 0.0 + l1 + l2)) < 1e-4);
    for (int i = 0; i < 9; i++)
        assert_true(isfinite(d[i]));
    /* each row's gradient sums to zero */
    for (int i = 0; i < 3; i++)
        assert_true(fabsf(d[3 * i] + d[3 * i + 1] + d[3 * i + 2]) < 1e-6f);
    /* a label outside [0, K) is ignored */
    int32_t ign[3] = {-1, 2, 2};
    float s2[2] = {0, 0};
    be->xent_loss(be->ctx, z, ign, 3, 3, 1.0f, d, s2);
    assert_true(d[0] == 0.0f && d[1] == 0.0f && d[2] == 0.0f);
    assert_true(fabsf(s2[1] - 1.0f) < 1e-6f);
}

static void test_bce_mse_stats(void **state) {
    (void)state;
    /* bce: row correct only when every output agrees */
    float z[2 * 2] = {100.0f, -100.0f, 3.0f, 3.0f}, t[4] = {1, 0, 1, 0}, d[4];
    float st[2] = {0, 0};
    be->bce_loss(be->ctx, z, t, 2, 2, 1.0f, d, st);
    assert_true(st[1] == 1.0f);
    /* row 0 is ~0 loss, row 1 is (log1p(e^-3) + 3 + log1p(e^-3)) / 2 */
    double want = (2 * log1p(exp(-3.0)) + 3.0) / 2;
    assert_true(fabs(st[0] - want) < 1e-4);
    float big[2] = {-200.0f, 200.0f}, tb[2] = {1, 0};
    float s2[2] = {0, 0};
    be->bce_loss(be->ctx, big, tb, 1, 2, 1.0f, d, s2);
    assert_true(isfinite(s2[0]) && fabs(s2[0] - 200.0) < 1e-3); /* stable at large |z| */
    assert_true(fabsf(d[0] + 0.5f) < 1e-6f && fabsf(d[1] - 0.5f) < 1e-6f);

    /* mse, K > 1: argmax vs argmax */
    float p[2 * 3] = {0.1f, 0.8f, 0.1f, 0.6f, 0.3f, 0.1f}, tt[6] = {0, 1, 0, 0, 0, 1};
    float s3[2] = {0, 0}, dp[6];
    be->mse_loss(be->ctx, p, tt, 2, 3, 1.0f, dp, s3);
    assert_true(s3[1] == 1.0f);
    /* mse, K == 1: |p - t| < 0.5 */
    float p1[3] = {0.2f, 0.9f, 2.0f}, t1[3] = {0.0f, 0.0f, 1.8f};
    float s4[2] = {0, 0}, d1[3];
    be->mse_loss(be->ctx, p1, t1, 3, 1, 0.5f, d1, s4);
    assert_true(s4[1] == 2.0f);
    assert_true(fabsf(d1[1] - 0.9f) < 1e-6f); /* 2 * 0.9 * 0.5 */
}

static void test_perceptron(void **state) {
    (void)state;
    float z[3 * 3] = {3, 1, 2, /* pred 0, label 0: correct */
                      0, 1, 5, /* pred 2, label 1: mistake */
                      1, 4, 0};
    int32_t lab[3] = {0, 1, 1};
    float d[9], st[2] = {0, 0};
    for (int i = 0; i < 9; i++)
        d[i] = 7.0f;
    be->perceptron_loss(be->ctx, z, lab, 3, 3, 0.5f, d, st);
    float want[9] = {0, 0, 0, 0, -0.5f, 0.5f, 0, 0, 0};
    assert_memory_equal(d, want, sizeof want);
    assert_true(st[0] == 1.0f && st[1] == 2.0f);
    /* K == 1: predicted class is score > 0 */
    float s1[4] = {0.5f, -0.5f, 0.5f, -0.5f}, d1[4], st1[2] = {0, 0};
    int32_t l1[4] = {1, 1, 0, 0};
    be->perceptron_loss(be->ctx, s1, l1, 4, 1, 1.0f, d1, st1);
    float want1[4] = {0, -1, 1, 0};
    assert_memory_equal(d1, want1, sizeof want1);
    assert_true(st1[0] == 2.0f && st1[1] == 2.0f);
}

/* ---- optimizers ------------------------------------------------------- */

static void test_optimizers(void **state) {
    (void)state;
    const dv_opt kinds[] = {DV_OPT_SGD, DV_OPT_MOMENTUM, DV_OPT_NESTEROV, DV_OPT_ADAM,
                            DV_OPT_ADAMW};
    const int n = 37; /* not a multiple of any vector width */
    for (int k = 0; k < 5; k++) {
        dv_opt_params o = {.kind = kinds[k],
                           .lr = 0.1f,
                           .momentum = 0.9f,
                           .beta1 = 0.9f,
                           .beta2 = 0.999f,
                           .eps = 1e-8f,
                           .weight_decay = 0.01f};
        float *p = test_fbuf(n), *m = test_fbuf(n), *v = test_fbuf(n), *g1 = test_fbuf(n),
              *g2 = test_fbuf(n);
        double rp[37], rm[37] = {0}, rv[37] = {0};
        test_rand_fill(p, n, -1, 1);
        test_rand_fill(g1, n, -1, 1);
        test_rand_fill(g2, n, -1, 1);
        for (int i = 0; i < n; i++)
            rp[i] = p[i];
        for (int step = 1; step <= 2; step++) {
            const float *g = step == 1 ? g1 : g2;
            o.step = step;
            be->opt_step(be->ctx, &o, p, g, m, v, n);
            for (int i = 0; i < n; i++) {
                double lr = 0.1, wd = 0.01, gi = g[i];
                switch (kinds[k]) {
                case DV_OPT_SGD:
                    rp[i] -= lr * (gi + wd * rp[i]);
                    break;
                case DV_OPT_MOMENTUM:
                    rm[i] = 0.9 * rm[i] + gi + wd * rp[i];
                    rp[i] -= lr * rm[i];
                    break;
                case DV_OPT_NESTEROV:
                    gi += wd * rp[i];
                    rm[i] = 0.9 * rm[i] + gi;
                    rp[i] -= lr * (gi + 0.9 * rm[i]);
                    break;
                case DV_OPT_ADAM:
                case DV_OPT_ADAMW:
                    if (kinds[k] == DV_OPT_ADAMW)
                        rp[i] -= lr * wd * rp[i];
                    else
                        gi += wd * rp[i];
                    rm[i] = 0.9 * rm[i] + 0.1 * gi;
                    rv[i] = 0.999 * rv[i] + 0.001 * gi * gi;
                    double mh = rm[i] / (1 - pow(0.9, step)), vh = rv[i] / (1 - pow(0.999, step));
                    rp[i] -= lr * mh / (sqrt(vh) + 1e-8);
                    break;
                case DV_OPT_COUNT:
                    fail_msg("DV_OPT_COUNT is not an optimizer");
                }
            }
        }
        for (int i = 0; i < n; i++)
            if (fabs(p[i] - rp[i]) > 1e-5)
                fail_msg("optimizer %d p[%d]: got %.7g want %.7g", k, i, p[i], rp[i]);
        free(p), free(m), free(v), free(g1), free(g2);
    }
}

/* An activation, pooling mode or optimizer kind outside its enum computes
 * nothing, and check names the op and the value (test_rand.c). */
static dv_backend *make_cpu(void) {
    return dv_backend_cpu_create(1);
}

static void test_unknown_enums_cpu(void **state) {
    (void)state;
    test_unknown_enums(make_cpu);
}

static void test_clip_grad_norm(void **state) {
    (void)state;
    float g[2] = {3.0f, 4.0f};
    assert_true(fabs(dv_clip_grad_norm(be, g, 2, 10.0) - 5.0) < 1e-9);
    assert_true(g[0] == 3.0f && g[1] == 4.0f); /* under the limit: untouched */
    assert_true(fabs(dv_clip_grad_norm(be, g, 2, 1.0) - 5.0) < 1e-9);
    assert_true(fabsf(g[0] - 0.6f) < 1e-6f && fabsf(g[1] - 0.8f) < 1e-6f);
    size_t n = 1001;
    float *h = test_fbuf(n);
    test_rand_fill(h, n, -1, 1);
    double want = sqrt(test_dot(h, h, n));
    double got = dv_clip_grad_norm(be, h, n, 0.5);
    assert_true(fabs(got - want) < 1e-9 * want);
    assert_true(fabs(sqrt(test_dot(h, h, n)) - 0.5) < 1e-5);
    free(h);
}

int main(void) {
    test_rand_seed(1); /* the inputs' generator (test_rand.h), independent of dv_rand */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor_and_geom),
        cmocka_unit_test(test_backend_basics),
        cmocka_unit_test(test_cuda_entry_points),
        cmocka_unit_test(test_rand),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_gemm_packed),
        cmocka_unit_test(test_bias),
        cmocka_unit_test(test_act_forward_values),
        cmocka_unit_test(test_act_backward_fd),
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_pool2d),
        cmocka_unit_test(test_upsample),
        cmocka_unit_test(test_pool2d_ties),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_batchnorm),
        cmocka_unit_test(test_loss_gradients),
        cmocka_unit_test(test_xent_stats_and_stability),
        cmocka_unit_test(test_bce_mse_stats),
        cmocka_unit_test(test_perceptron),
        cmocka_unit_test(test_optimizers),
        cmocka_unit_test(test_clip_grad_norm),
        cmocka_unit_test(test_unknown_enums_cpu),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
