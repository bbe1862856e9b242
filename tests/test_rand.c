/* test_rand.c — the kernel tests' shared generator, buffers and checks;
 * see test_rand.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_rand.h"

static uint64_t rng_state;

void test_rand_seed(uint64_t seed) {
    rng_state = seed;
}

uint64_t test_rand_next(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

float test_rand_uniform(float lo, float hi) {
    return lo + (hi - lo) * (float)((test_rand_next() >> 40) * (1.0 / 16777216.0));
}

void test_rand_fill(float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++)
        x[i] = test_rand_uniform(lo, hi);
}

float *test_fbuf(size_t n) {
    float *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

double test_dot(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return s;
}

float test_max_abs(const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++)
        m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    return m;
}

void test_fd_check(test_loss_fn f, void *st, float *param, const float *grad, size_t n, float h,
                   double rtol, double atol_rel, const char *what) {
    float gmax = test_max_abs(grad, n);
    assert_true(gmax > 0.0f); /* a vacuous all-zero gradient never passes */
    /* Large tensors: a fixed sample of elements keeps the test quick. */
    size_t stride = n > 400 ? n / 397 : 1;
    for (size_t i = 0; i < n; i += stride) {
        float old = param[i];
        param[i] = old + h;
        double lp = f(st);
        param[i] = old - h;
        double lm = f(st);
        param[i] = old;
        double num = (lp - lm) / (2.0 * (double)h);
        double err = fabs(num - (double)grad[i]);
        if (!(err <= rtol * fabs(num) + atol_rel * gmax)) {
            fail_msg("%s[%zu]: analytic %.7g, finite-difference %.7g", what, i, grad[i], num);
        }
    }
}

void *test_dalloc(dv_backend *G, size_t bytes) {
    void *p = G->alloc(G->ctx, bytes);
    assert_non_null(p);
    return p;
}

void *test_dput(dv_backend *G, const void *h, size_t bytes) {
    void *d = test_dalloc(G, bytes);
    G->to_device(G->ctx, d, h, bytes);
    return d;
}

void *test_dget(dv_backend *G, const void *d, size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    assert_non_null(h);
    G->to_host(G->ctx, h, d, bytes);
    return h;
}

void test_expect_ok(dv_backend *G, const char *where) {
    char err[DV_ERR_LEN] = "";
    if (G->check(G->ctx, err) != 0) fail_msg("%s: backend error: %s", where, err);
}

void test_expect_bits(const void *got, const void *want, size_t bytes, const char *what) {
    if (memcmp(got, want, bytes) == 0) return;
    const unsigned char *a = got, *b = want;
    size_t i = 0;
    while (a[i] == b[i])
        i++;
    fail_msg("%s: differs from byte %zu of %zu (word %zu)", what, i, bytes, i / 4);
}

int test_backends_open(dv_backend **cpu, dv_backend **gpu, char *why, size_t len) {
    *cpu = dv_backend_cpu_create(1);
    if (!*cpu) return -1;
    char err[DV_ERR_LEN] = "";
    *gpu = dv_backend_cuda_create(0, DV_PRECISION_FP32, err);
    if (!*gpu) snprintf(why, len, "%s", err[0] ? err : "dv_backend_cuda_create gave no reason");
    return 0;
}

void test_backends_close(dv_backend **cpu, dv_backend **gpu) {
    dv_backend_free(*gpu);
    dv_backend_free(*cpu);
    *cpu = *gpu = NULL;
}

/* ---- enum values outside their enums ---------------------------------- */

enum { BAD_ACT_FWD, BAD_ACT_BWD, BAD_POOL_FWD, BAD_POOL_BWD, BAD_OPT, BAD_OPS };
static const char *const bad_op_name[BAD_OPS] = {"act_forward", "act_backward", "pool2d_forward",
                                                 "pool2d_backward", "opt_step"};
static const int bad_op_count[BAD_OPS] = {DV_ACT_COUNT, DV_ACT_COUNT, DV_POOL_COUNT, DV_POOL_COUNT,
                                          DV_OPT_COUNT};

/* 16 floats each of x and y, 32 of state, 16 ints of arg: (4, 4) planes
 * pooled 2x2 to (2, 2), or 16 elements of an activation or a step. */
typedef struct bad_bufs {
    float *x, *y, *state;
    int32_t *arg;
} bad_bufs;

static void bad_call(dv_backend *G, int op, int v, const bad_bufs *b) {
    dv_conv2d_geom g = {.B = 1, .C = 1, .H = 4, .W = 4, .KH = 2, .KW = 2, .stride = 2};
    assert_int_equal(dv_conv2d_geom_init(&g), 0);
    dv_opt_params o = {.kind = (dv_opt)v, .lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .step = 1};
    switch (op) {
    case BAD_ACT_FWD:
        G->act_forward(G->ctx, (dv_act)v, 0.1f, b->x, b->y, 16, 4);
        break;
    case BAD_ACT_BWD:
        G->act_backward(G->ctx, (dv_act)v, 0.1f, b->x, b->x, b->y, 16, 4);
        break;
    case BAD_POOL_FWD:
        G->pool2d_forward(G->ctx, (dv_pool)v, &g, b->x, b->y, b->arg);
        break;
    case BAD_POOL_BWD:
        G->pool2d_backward(G->ctx, (dv_pool)v, &g, b->x, b->y, b->arg);
        break;
    case BAD_OPT:
        G->opt_step(G->ctx, &o, b->y, b->x, b->state, b->state + 16, 16);
        break;
    }
}

/* The device buffers of b against their host copies taken before. */
static void bad_expect_untouched(dv_backend *G, const bad_bufs *b, const float *x, const float *y,
                                 const float *state, const int32_t *arg, const char *what) {
    void *got[4] = {test_dget(G, b->x, 16 * sizeof *x), test_dget(G, b->y, 16 * sizeof *y),
                    test_dget(G, b->state, 32 * sizeof *state),
                    test_dget(G, b->arg, 16 * sizeof *arg)};
    test_expect_bits(got[0], x, 16 * sizeof *x, what);
    test_expect_bits(got[1], y, 16 * sizeof *y, what);
    test_expect_bits(got[2], state, 32 * sizeof *state, what);
    test_expect_bits(got[3], arg, 16 * sizeof *arg, what);
    for (int i = 0; i < 4; i++)
        free(got[i]);
}

void test_unknown_enums(dv_backend *(*make)(void)) {
    float x[16], y[16], state[32];
    int32_t arg[16];
    test_rand_fill(x, 16, -1, 1);
    for (int i = 0; i < 16; i++) {
        y[i] = 7.0f; /* what no op of these would write */
        arg[i] = i % 4;
    }
    for (int i = 0; i < 32; i++)
        state[i] = 0.5f;
    for (int op = 0; op < BAD_OPS; op++) {
        const int values[] = {bad_op_count[op], -1, 7777};
        for (size_t k = 0; k < sizeof values / sizeof values[0]; k++) {
            dv_backend *G = make();
            assert_non_null(G);
            test_expect_ok(G, "a fresh backend");
            bad_bufs b = {test_dput(G, x, sizeof x), test_dput(G, y, sizeof y),
                          test_dput(G, state, sizeof state), test_dput(G, arg, sizeof arg)};
            char what[96], want[32], err[DV_ERR_LEN] = "";
            snprintf(what, sizeof what, "%s with %d", bad_op_name[op], values[k]);
            bad_call(G, op, values[k], &b);
            G->sync(G->ctx);
            bad_expect_untouched(G, &b, x, y, state, arg, what);
            if (G->check(G->ctx, err) == DV_OK) fail_msg("%s: check says OK", what);
            snprintf(want, sizeof want, "value %d", values[k]);
            if (!strstr(err, bad_op_name[op]) || !strstr(err, want))
                fail_msg("%s: check's message does not name the op and the value: %s", what, err);
            /* the first error stays the one reported */
            bad_call(G, (op + 1) % BAD_OPS, 7778, &b);
            err[0] = '\0';
            assert_int_equal(G->check(G->ctx, err), DV_ERR);
            if (!strstr(err, bad_op_name[op]) || !strstr(err, want) || strstr(err, "7778"))
                fail_msg("%s: a later error replaced the first: %s", what, err);
            G->free(G->ctx, b.x);
            G->free(G->ctx, b.y);
            G->free(G->ctx, b.state);
            G->free(G->ctx, b.arg);
            dv_backend_free(G);
        }
    }
}
