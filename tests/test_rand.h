/* test_rand.h — the kernel tests' own random numbers (test_kernels.c and
 * test_kernels_cuda.c), independent of dv_rand, which is under test: a
 * splitmix64 generator that each test seeds once, plus zeroed float buffers.
 */
#ifndef DV_TEST_RAND_H
#define DV_TEST_RAND_H

#include <stddef.h>
#include <stdint.h>

/* Restarts the sequence: the next draw is the first one after `seed`. */
void test_rand_seed(uint64_t seed);
/* The next 64 random bits. */
uint64_t test_rand_next(void);
/* One float in [lo, hi) from the top 24 bits of a draw. */
float test_rand_uniform(float lo, float hi);
/* x[0..n) = test_rand_uniform(lo, hi), in order. */
void test_rand_fill(float *x, size_t n, float lo, float hi);

/* n zeroed floats (at least one), calloc'd; fails the test when out of
 * memory. */
float *test_fbuf(size_t n);

#endif
