/* bench_gemm_packed.c — the recurrent GEMM of an RNN step: the CPU
 * backend's gemm (OpenBLAS) against gemm_packed (op(B) packed once).
 *
 *   build/bin/bench_gemm_packed [B] [H]     (default 32 256: fortunes_lstm)
 *
 * On one thread, the two products of an LSTM step: forward gates (B, 4H) +=
 * h (B, H) W_hh^T, backward dh (B, H) = dgates (B, 4H) W_hh; GFLOP/s of
 * OpenBLAS (cblas_sgemm) and of gemm_packed, and the largest difference
 * between their results. With B = 4096 the same shapes are a Transformer
 * layer's forward and dx products (dv_cpu_gemm sends A B with M >= 256
 * through the packed kernel). Then the weight gradient of W_hh over a
 * window of T = 128 steps, dW (4H, H) += dgates^T (T*B, 4H) h (T*B, H),
 * through cblas_sgemm and through the backend's gemm (the blocked A^T B
 * kernel on one thread with AVX-512). Figures only: never passes or fails
 * on time.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cblas.h>

#include "kernels.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *randbuf(dv_backend *be, size_t n, unsigned *seed) {
    float *p = be->alloc(be->ctx, n * sizeof *p);
    for (size_t i = 0; p && i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        p[i] = (float)((*seed >> 8) & 0xffff) / 65536.0f - 0.5f;
    }
    return p;
}

/* Seconds per call of f over about half a second. */
#define TIME(secs, stmt)                                                                           \
    do {                                                                                           \
        stmt;                                                                                      \
        int reps_ = 0;                                                                             \
        double t0_ = now();                                                                        \
        do {                                                                                       \
            stmt;                                                                                  \
            reps_++;                                                                               \
        } while (now() - t0_ < 0.5);                                                               \
        secs = (now() - t0_) / reps_;                                                              \
    } while (0)

int main(int argc, char **argv) {
    const int B = argc > 1 ? atoi(argv[1]) : 32, H = argc > 2 ? atoi(argv[2]) : 256;
    if (B <= 0 || H <= 0) {
        fprintf(stderr, "usage: %s [B > 0] [H > 0]\n", argv[0]);
        return 2;
    }
    dv_backend *be = dv_backend_cpu_create(1);
    if (!be) return 1;
    void *cx = be->ctx;
    const int G = 4 * H;
    unsigned seed = 1;
    float *w = randbuf(be, (size_t)G * H, &seed); /* W_hh (4H, H) */
    float *h = randbuf(be, (size_t)B * H, &seed), *dg = randbuf(be, (size_t)B * G, &seed);
    float *g1 = be->alloc(cx, (size_t)B * G * sizeof(float));
    float *g2 = be->alloc(cx, (size_t)B * G * sizeof(float));
    float *d1 = be->alloc(cx, (size_t)B * H * sizeof(float));
    float *d2 = be->alloc(cx, (size_t)B * H * sizeof(float));
    float *pf = be->alloc(cx, be->gemm_pack_size(cx, H, G) * sizeof(float));
    float *pb = be->alloc(cx, be->gemm_pack_size(cx, G, H) * sizeof(float));
    if (!w || !h || !dg || !g1 || !g2 || !d1 || !d2 || !pf || !pb) return 1;
    double t_pack;
    TIME(t_pack, be->gemm_pack(cx, 1, H, G, w, pf));
    be->gemm_pack(cx, 0, G, H, w, pb);

    const double flop = 2.0 * B * G * H;
    double tf_blas, tf_pack, tb_blas, tb_pack;
    TIME(tf_blas, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, G, H, 1.0f, h, H, w, H,
                              0.0f, g1, G));
    TIME(tf_pack, be->gemm_packed(cx, B, G, H, 1.0f, h, pf, 0.0f, g2));
    TIME(tb_blas, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, H, G, 1.0f, dg, G, w, H,
                              0.0f, d1, H));
    TIME(tb_pack, be->gemm_packed(cx, B, H, G, 1.0f, dg, pb, 0.0f, d2));
    double df = 0, db = 0;
    for (size_t i = 0; i < (size_t)B * G; i++)
        df = fmax(df, fabs((double)g1[i] - g2[i]));
    for (size_t i = 0; i < (size_t)B * H; i++)
        db = fmax(db, fabs((double)d1[i] - d2[i]));

    printf("bench_gemm_packed: B %d, H %d, one thread\n", B, H);
    printf("forward  h W_hh^T (%dx%dx%d): OpenBLAS %6.1f GFLOP/s, gemm_packed %6.1f GFLOP/s "
           "(%.2fx), max |diff| %.2g\n",
           B, G, H, flop / tf_blas / 1e9, flop / tf_pack / 1e9, tf_blas / tf_pack, df);
    printf("backward dgates W_hh (%dx%dx%d): OpenBLAS %6.1f GFLOP/s, gemm_packed %6.1f GFLOP/s "
           "(%.2fx), max |diff| %.2g\n",
           B, H, G, flop / tb_blas / 1e9, flop / tb_pack / 1e9, tb_blas / tb_pack, db);
    printf("packing W_hh once: %.1f us (%.2f forward products)\n", t_pack * 1e6, t_pack / tf_pack);

    /* dW_hh over a window, best of 10 calls each, the two alternating */
    const int R = 128 * B;
    float *dgs = randbuf(be, (size_t)R * G, &seed), *hs = randbuf(be, (size_t)R * H, &seed);
    float *w1 = be->alloc(cx, (size_t)G * H * sizeof(float));
    float *w2 = be->alloc(cx, (size_t)G * H * sizeof(float));
    if (!dgs || !hs || !w1 || !w2) return 1;
    double tw_blas = 1e30, tw_own = 1e30;
    for (int rep = 0; rep < 10; rep++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, G, H, R, 1.0f, dgs, G, hs, H, 0.0f, w1,
                    H);
        double t1 = now();
        be->gemm(cx, 1, 0, G, H, R, 1.0f, dgs, hs, 0.0f, w2);
        double t2 = now();
        tw_blas = fmin(tw_blas, t1 - t0);
        tw_own = fmin(tw_own, t2 - t1);
    }
    double dw = 0;
    for (size_t i = 0; i < (size_t)G * H; i++)
        dw = fmax(dw, fabs((double)w1[i] - w2[i]));
    const double wflop = 2.0 * G * H * R;
    printf("weight grad dgates^T h (%dx%dx%d): OpenBLAS %6.1f GFLOP/s, gemm %6.1f GFLOP/s "
           "(%.2fx), max |diff| %.2g\n",
           G, H, R, wflop / tw_blas / 1e9, wflop / tw_own / 1e9, tw_blas / tw_own, dw);
    be->free(cx, dgs), be->free(cx, hs), be->free(cx, w1), be->free(cx, w2);
    be->free(cx, w), be->free(cx, h), be->free(cx, dg), be->free(cx, g1), be->free(cx, g2);
    be->free(cx, d1), be->free(cx, d2), be->free(cx, pf), be->free(cx, pb);
    dv_backend_free(be);
    return 0;
}
