/* test_rand.c — the kernel tests' own generator and buffers; see
 * test_rand.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

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
