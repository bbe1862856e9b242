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
