/* bench_allreduce.c — the gradient all-reduce alone, as the trainer issues
 * it: a flat buffer averaged in buckets, every bucket started before the
 * first is waited for.
 *
 *   mpirun -np N build/bin/bench_allreduce [MFLOATS] [cuda|cpu] [auto|nccl|mpi] [BUCKET_MB]
 *
 * Defaults: 25 M floats (a ResNet-50-sized gradient), cuda, auto, 4 MiB.
 * Prints the time of one all-reduce of the whole buffer (the slowest rank's
 * mean over 20 repetitions after 3 warm-ups), the algorithm bandwidth
 * (bytes / time) and the bus bandwidth (x 2(N-1)/N, NCCL's convention, which
 * compares with the link speed). bench/overlap.sh sets it against a training
 * step. Figures only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "kernels.h"

#define MAX_BUCKETS 4096

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(dv_comm *c, const char *what, const char *err) {
    char msg[DV_ERR_LEN + 64];
    snprintf(msg, sizeof(msg), "bench_allreduce: %s: %s", what, err);
    dv_comm_abort(c, 1, msg);
}

/* One average of x (n floats) in buckets of `bucket` floats. */
static void allreduce(dv_comm *c, float *x, size_t n, size_t bucket, void *stream) {
    static dv_comm_request *req[MAX_BUCKETS];
    char err[DV_ERR_LEN];
    int k = 0;
    for (size_t off = 0; off < n && k < MAX_BUCKETS; off += bucket, k++) {
        size_t len = n - off < bucket ? n - off : bucket;
        if (dv_comm_allreduce_start(c, x + off, len, stream, &req[k], err)) die(c, "start", err);
    }
    for (int i = 0; i < k; i++)
        if (dv_comm_wait(c, req[i], err)) die(c, "wait", err);
    if (dv_comm_stream_wait(c, stream, 0, err)) die(c, "stream wait", err);
}

int main(int argc, char **argv) {
    char err[DV_ERR_LEN];
    dv_comm *c;
    if (dv_comm_init(&c, &argc, &argv, err)) {
        fprintf(stderr, "bench_allreduce: %s\n", err);
        return 1;
    }
    double mfloats = argc > 1 ? atof(argv[1]) : 25;
    const char *which = argc > 2 ? argv[2] : "cuda";
    const char *mode_s = argc > 3 ? argv[3] : "auto";
    double bucket_mb = argc > 4 ? atof(argv[4]) : 4;
    dv_comm_device_mode mode = !strcmp(mode_s, "nccl")  ? DV_COMM_DEVICE_NCCL
                               : !strcmp(mode_s, "mpi") ? DV_COMM_DEVICE_MPI
                                                        : DV_COMM_DEVICE_AUTO;
    if (mfloats <= 0 || bucket_mb <= 0)
        die(c, "usage", "[MFLOATS] [cuda|cpu] [auto|nccl|mpi] [MB]");
    size_t n = (size_t)(mfloats * 1048576.0);
    size_t bucket = (size_t)(bucket_mb * 1048576.0 / sizeof(float));
    if (bucket < 1) bucket = 1;
    if ((n + bucket - 1) / bucket > MAX_BUCKETS) die(c, "usage", "too many buckets");

    dv_backend *be;
    int cuda = strcmp(which, "cpu") != 0;
    if (cuda) {
        int ndev = dv_backend_cuda_device_count();
        int dev = dv_comm_select_device(c, ndev);
        char why[DV_ERR_LEN] = "no CUDA device";
        be = dev >= 0 ? dv_backend_cuda_create(dev, DV_PRECISION_FP32, why) : NULL;
        if (!be) die(c, "CUDA backend", why);
        if (dv_comm_device_init(c, dev, ndev, mode, n, err)) die(c, "device init", err);
    } else {
        be = dv_backend_cpu_create(1);
    }
    float *x = be->alloc(be->ctx, n * sizeof(float));
    if (!x) die(c, "alloc", "out of memory");
    be->fill(be->ctx, x, 1.0f, n);
    be->sync(be->ctx);
    for (int i = 0; i < 3; i++)
        allreduce(c, x, n, bucket, be->stream);
    dv_comm_barrier(c);
    int reps = 20;
    double t0 = now();
    for (int i = 0; i < reps; i++)
        allreduce(c, x, n, bucket, be->stream);
    double t = (now() - t0) / reps;
    if (dv_comm_allreduce_double(c, &t, 1, DV_REDUCE_MAX, err)) die(c, "reduce", err);
    if (be->check(be->ctx, err)) die(c, "backend", err);
    int w = dv_comm_size(c);
    double bytes = (double)n * sizeof(float);
    if (dv_comm_rank(c) == 0) {
        printf("bench_allreduce: %d rank%s, %s, %s path, %zu floats (%.1f MiB) in buckets of "
               "%.2f MiB\n",
               w, w > 1 ? "s" : "", be->name, cuda ? dv_comm_device_path(c) : "host", n,
               bytes / 1048576.0, bucket_mb);
        printf("allreduce: %.3f ms  algbw %.2f GB/s  busbw %.2f GB/s\n", t * 1e3, bytes / t / 1e9,
               bytes / t / 1e9 * 2.0 * (w - 1) / w);
    }
    be->free(be->ctx, x);
    dv_backend_free(be);
    dv_comm_free(c);
    return 0;
}
