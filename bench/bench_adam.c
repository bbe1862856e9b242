/* bench_adam.c — the fused optimizer step against memory bandwidth.
 *
 *   build/bin/bench_adam [MFLOATS] [cpu|cuda]     (default 64 M floats, cuda)
 *
 * One Adam step over a flat buffer of n parameters reads p, g, m, v and
 * writes p, m, v: 28 bytes per parameter, nothing else, so its speed is the
 * memory system's. Prints the achieved GB/s next to a device-to-device copy
 * of the same buffers (what the memory sustains in practice) and, on a GPU,
 * the theoretical peak from the memory clock and bus width. Figures only:
 * never passes or fails on time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#ifdef DIVE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Theoretical peak in GB/s of device 0, or 0 when unknown. */
static double peak_gbs(void) {
#ifdef DIVE_HAVE_CUDA
    int khz = 0, bits = 0;
    if (cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, 0) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return 2.0 * khz * 1e3 * (bits / 8.0) / 1e9; /* double data rate */
#else
    return 0;
#endif
}

int main(int argc, char **argv) {
    double mfloats = argc > 1 ? atof(argv[1]) : 64;
    const char *which = argc > 2 ? argv[2] : "cuda";
    if (mfloats <= 0) {
        fprintf(stderr, "usage: %s [MFLOATS > 0] [cpu|cuda]\n", argv[0]);
        return 2;
    }
    size_t n = (size_t)(mfloats * 1048576.0);
    char err[DV_ERR_LEN] = "";
    dv_backend *be = strcmp(which, "cpu") ? dv_backend_cuda_create(0, DV_PRECISION_FP32, err)
                                          : dv_backend_cpu_create(0);
    if (!be) {
        fprintf(stderr, "bench_adam: no %s backend: %s\n", which, err);
        return 1;
    }
    float *buf[4];
    for (int i = 0; i < 4; i++)
        if (!(buf[i] = be->alloc(be->ctx, n * sizeof(float)))) {
            fprintf(stderr, "bench_adam: cannot allocate 4 x %zu floats\n", n);
            return 1;
        }
    be->fill(be->ctx, buf[0], 0.5f, n);
    be->fill(be->ctx, buf[1], 1e-3f, n);
    dv_opt_params op = {.kind = DV_OPT_ADAM,
                        .lr = 1e-3f,
                        .beta1 = 0.9f,
                        .beta2 = 0.999f,
                        .eps = 1e-8f,
                        .weight_decay = 0.0f,
                        .step = 1};
    int reps = 20;
    for (int i = 0; i < 3; i++, op.step++) /* warm-up */
        be->opt_step(be->ctx, &op, buf[0], buf[1], buf[2], buf[3], n);
    be->sync(be->ctx);
    double t0 = now();
    for (int i = 0; i < reps; i++, op.step++)
        be->opt_step(be->ctx, &op, buf[0], buf[1], buf[2], buf[3], n);
    be->sync(be->ctx);
    double t_adam = (now() - t0) / reps;

    be->copy(be->ctx, buf[2], buf[3], n * sizeof(float));
    be->sync(be->ctx);
    t0 = now();
    for (int i = 0; i < reps; i++)
        be->copy(be->ctx, buf[(i & 1) ? 2 : 3], buf[(i & 1) ? 3 : 2], n * sizeof(float));
    be->sync(be->ctx);
    double t_copy = (now() - t0) / reps;
    if (be->check(be->ctx, err)) {
        fprintf(stderr, "bench_adam: %s\n", err);
        return 1;
    }

    double gb_adam = 28.0 * (double)n / t_adam / 1e9;
    double gb_copy = 8.0 * (double)n / t_copy / 1e9;
    double peak = strcmp(be->name, "cuda") ? 0 : peak_gbs();
    printf("bench_adam: %s, %zu parameters (%.0f MiB per buffer)\n", be->name, n,
           (double)n * 4 / 1048576.0);
    printf("fused adam: %.3f ms/step, %.0f GB/s (28 B/param)\n", t_adam * 1e3, gb_adam);
    printf("copy:       %.3f ms, %.0f GB/s (read + write)\n", t_copy * 1e3, gb_copy);
    printf("adam / copy: %.0f%%\n", 100.0 * gb_adam / gb_copy);
    if (peak > 0)
        printf("adam / theoretical peak %.0f GB/s: %.0f%%\n", peak, 100.0 * gb_adam / peak);
    for (int i = 0; i < 4; i++)
        be->free(be->ctx, buf[i]);
    dv_backend_free(be);
    return 0;
}
