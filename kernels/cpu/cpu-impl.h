/* cpu-impl.h — private to kernels/cpu/: the CPU backend's context, the
 * dv_cpu_<op> functions of every op of ops.def (which backend_cpu.c puts in
 * its table), the GEMM helpers the op files share, and the vectorizable
 * math the loops use.
 *
 * Where the ops live: core_cpu.c has memory, copies, fill, scale, sync and
 * check (it calls no other file, so every file may call it);
 * gemm_packed_cpu.c has gemm and the packed GEMMs (it calls core_cpu.c
 * only); ops_cpu.c, seq_cpu.c, attn_cpu.c and rnn_cpu.c have the rest and
 * may call only those two; backend_cpu.c only builds the table. So no file calls one
 * that calls it back (tests/lint_layers.sh checks).
 *
 * Hot loops carry DV_HOT: with GCC on x86-64 each is compiled three times
 * (baseline, AVX2+FMA, AVX-512) and picked at load time, so one binary runs
 * anywhere and still uses the wide vectors where they exist. Loops that call
 * sqrtf are not vectorized by GCC while -fmath-errno is on (the default), so
 * the Adam update also has explicit AVX2/AVX-512 bodies (DV_HAVE_X86_SIMD).
 */
#ifndef DV_CPU_IMPL_H
#define DV_CPU_IMPL_H

#include <stdint.h>

#include "kernels-impl.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define DV_HOT __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#endif
#endif
#ifndef DV_HOT
#define DV_HOT
#endif
/* DV_IVDEP before a loop: its iterations are independent, for GCC's
 * vectorizer (clang, which builds the sanitizer and fuzzing CI, gets
 * nothing: its hint warns where instrumentation stops vectorizing). */
#if defined(__GNUC__) && !defined(__clang__)
#define DV_IVDEP _Pragma("GCC ivdep")
#else
#define DV_IVDEP
#endif
/* exp, tanh and the logistic function without a libm call, so the loops
 * of the recurrent cells, GELU and the like vectorize (libm's expf/tanhf
 * are scalar calls: a third of an LSTM step's time). exp: x = n ln2 + r,
 * |r| <= ln2/2, exp(r) by Cephes' degree-6 polynomial, 2^n from the
 * exponent bits; within 2 ulp of expf over [-87, 88], clamped outside
 * (exp(-87.3) ~ 1e-38, exp(88.3) ~ 2e38). tanh: Cephes' odd polynomial
 * below |x| = 0.625, where 1 - 2/(e^2x + 1) would cancel; within 3 ulp. */
static inline float dv_fast_expf(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    /* round to nearest by adding and removing 1.5 * 2^23 (|x log2 e| is far
     * below 2^22): unlike floorf, GCC vectorizes this without -ffast-math */
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f; /* ln2, split so n * hi is exact */
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

static inline float dv_fast_tanhf(float x) {
    const float ax = x < 0 ? -x : x;
    const float s = x * x;
    const float small =
        ((((-5.70498872745e-3f * s + 2.06390887954e-2f) * s - 5.37397155531e-2f) * s +
          1.33314422036e-1f) *
             s -
         3.33332819422e-1f) *
            s * x +
        x;
    const float big = 1.0f - 2.0f / (dv_fast_expf(2.0f * ax) + 1.0f);
    return ax < 0.625f ? small : (x < 0 ? -big : big);
}

static inline float dv_fast_sigmoidf(float x) {
    return 1.0f / (1.0f + dv_fast_expf(-x));
}

/* GCC and clang both take target("avx2") on one function and
 * __builtin_cpu_supports to choose it at run time. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define DV_HAVE_X86_SIMD 1
#endif

typedef struct dv_cpu_ctx {
    int threads;          /* OpenBLAS threads asked for (0: its default) */
    int pack_own;         /* gemm_packed: own AVX-512 kernel (else OpenBLAS) */
    float *pack_buf;      /* dv_cpu_gemm's packed B (dv_cpu_gemm_own) */
    size_t pack_cap;      /* floats in pack_buf */
    float *pack_a;        /* dv_cpu_gemm's packed blocks of op(A) */
    size_t pack_a_cap;    /* floats in pack_a */
    char err[DV_ERR_LEN]; /* first error an op met (DV_BAD_ENUM); "" while none */
    size_t cur_bytes;     /* allocated now (alloc / free; atomic) */
    size_t peak_bytes;    /* the most cur_bytes has been */
} dv_cpu_ctx;

/* Every op of ops.def: ret dv_cpu_<name>(params). */
#define DV_OP(ret, name, params) ret dv_cpu_##name params;
#include "ops.def"

/* gemm_packed_cpu.c: whether a backend with `threads` OpenBLAS threads
 * uses the own AVX-512 GEMM kernels (dv_cpu_ctx.pack_own), and the way
 * into them for a product with leading dimensions: nonzero when it was
 * done there, 0 to leave it to OpenBLAS (gemm_batched_ld's and attention's
 * A B^T). */
int dv_cpu_pack_own(int threads);
int dv_cpu_gemm_own_ld(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C,
                       int ldc);

#endif
