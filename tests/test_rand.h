/* test_rand.h — what the kernel tests (test_kernels*.c) share: their own
 * random numbers, independent of dv_rand, which is under test (a
 * splitmix64 generator that each test seeds once), zeroed float buffers,
 * the finite-difference gradient check, device buffers of a backend, and
 * the check of how a backend refuses enum values outside their enums.
 */
#ifndef DV_TEST_RAND_H
#define DV_TEST_RAND_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

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

/* sum a[i] * b[i] in double; max |x[i]| (0 for n == 0). */
double test_dot(const float *a, const float *b, size_t n);
float test_max_abs(const float *x, size_t n);

/* A scalar function of the current inputs, evaluated by re-running the
 * forward op: test_fd_check perturbs one element of `param` at a time (a
 * fixed sample of them past 400) by +-h and fails the test unless
 * |fd - grad| <= rtol*|fd| + atol_rel*max|grad|, or when grad is all zero. */
typedef double (*test_loss_fn)(void *st);
void test_fd_check(test_loss_fn f, void *st, float *param, const float *grad, size_t n, float h,
                   double rtol, double atol_rel, const char *what);

/* Device memory of backend G (host memory for the CPU backend); each fails
 * the test when it cannot be had. test_dput: a device copy of host data;
 * test_dget: a malloc'd host copy of device data. */
/* The CPU backend (1 thread) into *cpu and, where a device can be used, the
 * CUDA one (FP32 GEMMs) into *gpu, else NULL with the reason in why (len
 * bytes). Returns 0, or -1 when the CPU backend cannot be made. */
int test_backends_open(dv_backend **cpu, dv_backend **gpu, char *why, size_t len);
void test_backends_close(dv_backend **cpu, dv_backend **gpu);
void *test_dalloc(dv_backend *G, size_t bytes);
void *test_dput(dv_backend *G, const void *h, size_t bytes);
void *test_dget(dv_backend *G, const void *d, size_t bytes);
/* Fails the test when G has recorded an error. */
void test_expect_ok(dv_backend *G, const char *where);
/* Fails the test, naming the first differing byte, unless got == want. */
void test_expect_bits(const void *got, const void *want, size_t bytes, const char *what);

/* Every op that takes an enum (act_forward, act_backward, pool2d_forward,
 * pool2d_backward, opt_step), called with values outside its enum (its
 * DV_<ENUM>_COUNT, -1, 7777), each on a fresh backend from make(): the op
 * must leave every buffer it was given as it was, and check must then fail
 * with a message that names the op and "value <v>". A second bad call must
 * not replace the first message. make returns NULL to fail the test. */
void test_unknown_enums(dv_backend *(*make)(void));

#endif
