/* test_comm_cuda.c — cmocka tests of comm's device side: NCCL all-reduces,
 * the MPI path through pinned host memory, dv_comm_stream_wait, and how
 * they fail. Run by CTest under mpiexec with 1 and 2 ranks
 * (test_comm_cuda_np<n>).
 *
 * Where there is no CUDA device, or Dive was built without CUDA, the GPU
 * cases skip and rank 0 prints one line saying so; the ranks decide that
 * together. The cases that need no GPU still run: a device all-reduce
 * before dv_comm_device_init fails with a message, and so does init, alike
 * on every rank.
 *
 * Data: rank r fills x[i] = r + i + base (integers below 2^22), so the
 * average is (size-1)/2 + i + base, exact in float at 1 and 2 ranks, and is
 * compared with ==. With 2 ranks on one GPU the ranks share it: AUTO must
 * pick "mpi" and NCCL must fail; with a GPU per rank (or one rank) NCCL
 * serves. Each step first queues a host function that sleeps on the
 * caller's stream, so an all-reduce that did not wait for the work queued
 * before it would read stale data, and one whose result the stream did not
 * wait for would be read stale.
 *
 * Checks are recorded without jumping and the ranks agree on each test's
 * outcome at its end (tcheck_finish), as in test_comm.c (both use
 * test_mpi_check.h), so no rank is left in a collective. Reaches into
 * comm-impl.h to switch the host all-reduce algorithm under the MPI path and
 * to see that no request is left pending.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef DIVE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "comm-impl.h"
#include "test_mpi_check.h"

static dv_comm *g_comm;
static int g_ndev;   /* CUDA devices on this rank's node; 0 on every rank if any has none */
static int g_shared; /* some node runs more ranks than it has GPUs */

/* A failure's message: names this rank and holds `what`. */
static int says(const char *err, const char *what) {
    return strncmp(err, dv_error_origin(), strlen(dv_error_origin())) == 0 &&
           strstr(err, what) != NULL;
}

/* ---- without a GPU ------------------------------------------------------- */

/* A device all-reduce (stream given) before dv_comm_device_init fails with
 * a message and leaves nothing behind; the host path still works. The
 * stream is a dummy pointer, never used: the check comes first. */
static void test_before_init(void **state) {
    (void)state;
    tcheck t = {0};
    char err[DV_ERR_LEN] = "";
    dv_comm *c = g_comm;
    int dummy = 0;
    void *stream = &dummy;
    float y = 1.0f;
    dv_comm_request *r = (dv_comm_request *)&y;

    EXPECT(&t, dv_comm_device_path(c) == NULL);
    EXPECT(&t, dv_comm_allreduce_start(c, &y, 1, stream, &r, err) == DV_ERR);
    EXPECT(&t, r == NULL);
#ifdef DIVE_HAVE_CUDA
    EXPECT(&t, says(err, "dv_comm_device_init has not been called"));
#else
    EXPECT(&t, says(err, "Dive was built without CUDA"));
#endif
    EXPECT(&t, c->pending == NULL && c->dev == NULL);

    EXPECT(&t, dv_comm_stream_wait(c, NULL, 0, err) == DV_OK);
    EXPECT(&t, dv_comm_stream_wait(c, stream, 0, err) == DV_ERR);
    EXPECT(&t, says(err, "dv_comm_stream_wait"));

    EXPECT_OK(&t, dv_comm_allreduce_avg(c, &y, 1, err), err);
    EXPECT(&t, y == 1.0f);
    tcheck_finish(&t);
}

/* Init fails on every rank alike, with this rank's reason. Bad arguments
 * fail before any CUDA call; with no GPU, or without CUDA, init fails
 * anyway. (A bad DIVE_COMM_TIMEOUT fails dv_comm_init: test_comm.c.) */
static void test_init_errors(void **state) {
    (void)state;
    tcheck t = {0};
    char err[DV_ERR_LEN] = "";
    dv_comm *c = g_comm;
#ifdef DIVE_HAVE_CUDA
    EXPECT(&t, dv_comm_device_init(c, 1, 1, DV_COMM_DEVICE_AUTO, 16, err) == DV_ERR);
    EXPECT(&t, says(err, "device 1 is not one of the node's 1 GPUs"));
    EXPECT(&t, dv_comm_device_init(c, 0, 1, (dv_comm_device_mode)7, 16, err) == DV_ERR);
    EXPECT(&t, says(err, "unknown device mode 7"));
    /* only rank 0 asks for a device that is not there: every rank fails,
     * the others (where their own checks pass) with rank 0's reason */
    int rank = dv_comm_rank(c), ndev = g_ndev > 0 ? g_ndev : 1;
    int dev = rank == 0 ? ndev : dv_comm_select_device(c, ndev);
    EXPECT(&t, dv_comm_device_init(c, dev, ndev, DV_COMM_DEVICE_AUTO, 16, err) == DV_ERR);
    if (rank == 0 || g_ndev > 0) EXPECT(&t, says(err, "is not one of the node's"));
    if (rank != 0 && g_ndev > 0) EXPECT(&t, strstr(err, "rank 0 failed: [rank 0/") != NULL);
    if (g_ndev == 0) {
        /* no device: the first CUDA call fails */
        EXPECT(&t, dv_comm_device_init(c, 0, 1, DV_COMM_DEVICE_AUTO, 16, err) == DV_ERR);
        EXPECT(&t, says(err, ": cudaGetDevice: "));
    }
#else
    EXPECT(&t, dv_comm_device_init(c, 0, 1, DV_COMM_DEVICE_AUTO, 16, err) == DV_ERR);
    EXPECT(&t, says(err, "Dive was built without CUDA"));
#endif
    EXPECT(&t, dv_comm_device_path(c) == NULL && c->dev == NULL);
    /* the comm is as before: host all-reduces still agree */
    float y = (float)dv_comm_rank(c);
    EXPECT_OK(&t, dv_comm_allreduce_avg(c, &y, 1, err), err);
    EXPECT(&t, y == (float)(dv_comm_size(c) - 1) / 2.0f);
    tcheck_finish(&t);
}

/* ---- with a GPU ------------------------------------------------------------ */

#ifdef DIVE_HAVE_CUDA

/* A comm of its own per test: dv_comm_device_init goes once per comm. */
static dv_comm *new_comm(tcheck *t) {
    char err[DV_ERR_LEN] = "";
    dv_comm *c = NULL;
    EXPECT_OK(t, dv_comm_init(&c, NULL, NULL, err), err);
    return c;
}

#define CU(t, expr) expect_cuda_((t), (expr), #expr, __FILE__, __LINE__)

static int expect_cuda_(tcheck *t, cudaError_t rc, const char *what, const char *file, int line) {
    if (rc == cudaSuccess) return 1;
    t->bad++;
    fprintf(stderr, "%s %s:%d: %s: %s\n", dv_error_origin(), file, line, what,
            cudaGetErrorString(rc));
    return 0;
}

static void CUDART_CB sleep_fn(void *ms) {
    usleep((useconds_t)(1000 * (intptr_t)ms));
}

/* Queues a host sleep of `ms` milliseconds on s: the work queued after it
 * waits, the host does not. */
static void stall(tcheck *t, cudaStream_t s, int ms) {
    CU(t, cudaLaunchHostFunc(s, sleep_fn, (void *)(intptr_t)ms));
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Elements of x (n) that differ from the average of rank + i + base. */
static size_t mismatches(const float *x, size_t n, size_t base, int size) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (x[i] != (float)(size - 1) / 2.0f + (float)(i + base)) bad++;
    return bad;
}

/* Buckets of one gradient buffer on the device (lengths below, one empty),
 * all in flight at once, started while the stream is still stalled, with
 * progress, a blocking collective and a host all-reduce among them, waited
 * in an order of their own; the result is read back on the stream and read
 * once dv_comm_stream_wait(keep 0) returns. */
enum { NB = 6 };
static const size_t bucket_len[NB] = {4097, 1, 0, 65536, 3, 30000};

static size_t buckets_total(void) {
    size_t n = 0;
    for (int k = 0; k < NB; k++)
        n += bucket_len[k];
    return n;
}

static void run_buckets(tcheck *t, dv_comm *c, cudaStream_t s, size_t base, float *d_x, float *in,
                        float *out) {
    char err[DV_ERR_LEN] = "";
    const size_t n = buckets_total();
    const int rank = dv_comm_rank(c), size = dv_comm_size(c);
    for (size_t i = 0; i < n; i++) {
        in[i] = (float)rank + (float)(i + base);
        out[i] = -1.0f;
    }
    stall(t, s, 30);
    CU(t, cudaMemcpyAsync(d_x, in, n * sizeof *in, cudaMemcpyHostToDevice, s));
    dv_comm_request *req[NB] = {0};
    size_t off = n;
    float y[3] = {(float)rank, 1.0f, 2.0f};
    dv_comm_request *host = NULL;
    for (int k = 0; k < NB; k++) { /* last bucket first, as backward makes them */
        off -= bucket_len[k];
        EXPECT_OK(t, dv_comm_allreduce_start(c, d_x + off, bucket_len[k], s, &req[k], err), err);
        dv_comm_progress(c);
        if (k == 1) {
            double v = 1.0;
            EXPECT_OK(t, dv_comm_allreduce_double(c, &v, 1, DV_REDUCE_SUM, err), err);
            EXPECT(t, v == (double)size);
        }
        if (k == 3) EXPECT_OK(t, dv_comm_allreduce_start(c, y, 3, NULL, &host, err), err);
    }
    const int order[NB] = {2, 0, 5, 1, 4, 3};
    for (int k = 0; k < NB; k++)
        if (req[order[k]]) EXPECT_OK(t, dv_comm_wait(c, req[order[k]], err), err);
    if (host) EXPECT_OK(t, dv_comm_wait(c, host, err), err);
    EXPECT(t, y[0] == (float)(size - 1) / 2.0f && y[1] == 1.0f && y[2] == 2.0f);
    CU(t, cudaMemcpyAsync(out, d_x, n * sizeof *out, cudaMemcpyDeviceToHost, s));
    EXPECT_OK(t, dv_comm_stream_wait(c, s, 0, err), err);
    size_t bad = mismatches(out, n, base, size);
    if (bad)
        fprintf(stderr, "%s %zu of %zu wrong, out[0] = %g\n", dv_error_origin(), bad, n, out[0]);
    EXPECT(t, bad == 0);
    EXPECT(t, c->pending == NULL);
}

static void check_buckets(tcheck *t, dv_comm *c, cudaStream_t s, size_t base) {
    const size_t n = buckets_total();
    float *d_x = NULL, *in = NULL, *out = NULL;
    if (CU(t, cudaMalloc((void **)&d_x, n * sizeof *d_x)) &&
        CU(t, cudaMallocHost((void **)&in, n * sizeof *in)) &&
        CU(t, cudaMallocHost((void **)&out, n * sizeof *out)))
        run_buckets(t, c, s, base, d_x, in, out);
    cudaFree(d_x);
    cudaFreeHost(in);
    cudaFreeHost(out);
}

/* Host flow control over steps: each step stalls, uploads, all-reduces the
 * whole buffer, reads it back and ends with dv_comm_stream_wait(keep 1);
 * after it the previous step's result must be complete. Inputs and outputs
 * alternate between two pinned buffers, as the host may run one step ahead. */
static void check_steps(tcheck *t, dv_comm *c, cudaStream_t s) {
    char err[DV_ERR_LEN] = "";
    enum { N = 10000, STEPS = 12 };
    const int rank = dv_comm_rank(c), size = dv_comm_size(c);
    float *d_x = NULL, *in[2] = {0}, *out[2] = {0};
    int ok = CU(t, cudaMalloc((void **)&d_x, N * sizeof(float)));
    for (int p = 0; p < 2; p++)
        ok = ok && CU(t, cudaMallocHost((void **)&in[p], N * sizeof(float))) &&
             CU(t, cudaMallocHost((void **)&out[p], N * sizeof(float)));
    for (int step = 0; ok && step < STEPS; step++) {
        float *h = in[step % 2];
        for (size_t i = 0; i < N; i++)
            h[i] = (float)rank + (float)(i + 1000 * (size_t)step);
        stall(t, s, 5);
        CU(t, cudaMemcpyAsync(d_x, h, N * sizeof(float), cudaMemcpyHostToDevice, s));
        dv_comm_request *r = NULL;
        EXPECT_OK(t, dv_comm_allreduce_start(c, d_x, N, s, &r, err), err);
        if (r) EXPECT_OK(t, dv_comm_wait(c, r, err), err);
        CU(t, cudaMemcpyAsync(out[step % 2], d_x, N * sizeof(float), cudaMemcpyDeviceToHost, s));
        EXPECT_OK(t, dv_comm_stream_wait(c, s, 1, err), err);
        if (step > 0)
            EXPECT(t, mismatches(out[(step - 1) % 2], N, 1000 * (size_t)(step - 1), size) == 0);
    }
    EXPECT_OK(t, dv_comm_stream_wait(c, s, 0, err), err);
    if (ok) EXPECT(t, mismatches(out[(STEPS - 1) % 2], N, 1000 * (STEPS - 1), size) == 0);

    /* keep 1 leaves the newest step running; keep 0 waits for it */
    stall(t, s, 400);
    double t0 = now_s();
    EXPECT_OK(t, dv_comm_stream_wait(c, s, 1, err), err);
    double t1 = now_s();
    EXPECT_OK(t, dv_comm_stream_wait(c, s, 0, err), err);
    double t2 = now_s();
    EXPECT(t, t1 - t0 < 0.2 && t2 - t0 > 0.3);
    /* more marks than the ring holds: the oldest are waited for first */
    for (int i = 0; i < 20; i++) {
        stall(t, s, 1);
        EXPECT_OK(t, dv_comm_stream_wait(c, s, 1000, err), err);
    }
    EXPECT_OK(t, dv_comm_stream_wait(c, s, 0, err), err);
    EXPECT(t, dv_comm_stream_wait(c, s, -1, err) == DV_ERR && says(err, "keep = -1"));
    cudaFree(d_x);
    for (int p = 0; p < 2; p++) {
        cudaFreeHost(in[p]);
        cudaFreeHost(out[p]);
    }
}

/* A comm with its device side up, and a stream for the test. */
static dv_comm *device_comm(tcheck *t, dv_comm_device_mode mode, size_t max_floats,
                            cudaStream_t *s) {
    char err[DV_ERR_LEN] = "";
    *s = NULL;
    dv_comm *c = new_comm(t);
    if (!c) return NULL;
    int dev = dv_comm_select_device(c, g_ndev);
    EXPECT_OK(t, dv_comm_device_init(c, dev, g_ndev, mode, max_floats, err), err);
    CU(t, cudaStreamCreateWithFlags(s, cudaStreamNonBlocking));
    return c;
}

static void free_comm(dv_comm *c, cudaStream_t s) {
    if (s) cudaStreamDestroy(s);
    dv_comm_free(c);
}

#endif /* DIVE_HAVE_CUDA */

#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (g_ndev <= 0) skip();                                                                   \
    } while (0)

/* AUTO: NCCL where every rank has a GPU of its own, the MPI path where two
 * share one. */
static void test_auto(void **state) {
    (void)state;
    NEED_GPU();
#ifdef DIVE_HAVE_CUDA
    tcheck t = {0};
    cudaStream_t s = NULL;
    dv_comm *c = device_comm(&t, DV_COMM_DEVICE_AUTO, buckets_total(), &s);
    const char *path = c ? dv_comm_device_path(c) : NULL;
    EXPECT(&t, path && strcmp(path, g_shared ? "mpi" : "nccl") == 0);
    if (path && s) {
        check_buckets(&t, c, s, 0);
        check_buckets(&t, c, s, 7); /* requests and events reused */
        check_steps(&t, c, s);
    }
    free_comm(c, s);
    tcheck_finish(&t);
#endif
}

/* NCCL asked for: serves with a GPU per rank, else fails on every rank. */
static void test_nccl(void **state) {
    (void)state;
    NEED_GPU();
#ifdef DIVE_HAVE_CUDA
    tcheck t = {0};
    char err[DV_ERR_LEN] = "";
    dv_comm *c = new_comm(&t);
    if (c) {
        int dev = dv_comm_select_device(c, g_ndev);
        dv_status st = dv_comm_device_init(c, dev, g_ndev, DV_COMM_DEVICE_NCCL, 0, err);
        if (g_shared) {
            EXPECT(&t, st == DV_ERR);
            EXPECT(&t, says(err, "NCCL was asked for, but ranks 0 and 1 share one GPU"));
            EXPECT(&t, dv_comm_device_path(c) == NULL);
        } else {
            EXPECT_OK(&t, st, err);
            const char *path = dv_comm_device_path(c);
            EXPECT(&t, path && strcmp(path, "nccl") == 0);
            cudaStream_t s = NULL;
            if (st == DV_OK && CU(&t, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking))) {
                check_buckets(&t, c, s, 3);
                cudaStreamDestroy(s);
            }
        }
        if (g_shared) {
            /* the failed init left nothing behind */
            EXPECT_OK(&t, dv_comm_device_init(c, dev, g_ndev, DV_COMM_DEVICE_MPI, 16, err), err);
        } else {
            /* a second init fails on every rank and keeps the first */
            EXPECT(&t, dv_comm_device_init(c, dev, g_ndev, DV_COMM_DEVICE_MPI, 16, err) == DV_ERR);
            EXPECT(&t, says(err, "called twice on one comm (the nccl path is set up)"));
        }
        const char *path = dv_comm_device_path(c);
        EXPECT(&t, path && strcmp(path, g_shared ? "mpi" : "nccl") == 0);
    }
    dv_comm_free(c);
    tcheck_finish(&t);
#endif
}

/* The MPI path, with both host algorithms, and its staging limit. */
static void test_mpi_path(void **state) {
    (void)state;
    NEED_GPU();
#ifdef DIVE_HAVE_CUDA
    tcheck t = {0};
    char err[DV_ERR_LEN] = "";
    const size_t total = buckets_total();
    cudaStream_t s = NULL;
    dv_comm *c = device_comm(&t, DV_COMM_DEVICE_MPI, total, &s);
    const char *path = c ? dv_comm_device_path(c) : NULL;
    EXPECT(&t, path && strcmp(path, "mpi") == 0);
    if (path && s) {
        const dv_comm_algo *native = c->algo;
        dv_comm_set_algo(c, &dv_comm_algo_mpi);
        check_buckets(&t, c, s, 11);
        dv_comm_set_algo(c, native);
        check_buckets(&t, c, s, 5);
        check_steps(&t, c, s);

        /* the requests in flight must fit in max_floats together */
        float *d_x = NULL;
        if (CU(&t, cudaMalloc((void **)&d_x, total * sizeof *d_x))) {
            dv_comm_request *a = NULL, *b = NULL;
            EXPECT_OK(&t, dv_comm_allreduce_start(c, d_x, total - 10, s, &a, err), err);
            EXPECT(&t, dv_comm_allreduce_start(c, d_x + total - 10, 11, s, &b, err) == DV_ERR);
            EXPECT(&t, b == NULL && says(err, "does not fit in the host staging buffer"));
            EXPECT_OK(&t, dv_comm_allreduce_start(c, d_x + total - 10, 10, s, &b, err), err);
            if (a) EXPECT_OK(&t, dv_comm_wait(c, a, err), err);
            if (b) EXPECT_OK(&t, dv_comm_wait(c, b, err), err);
            /* none pending: the whole buffer is free again */
            EXPECT_OK(&t, dv_comm_allreduce_start(c, d_x, total, s, &a, err), err);
            if (a) EXPECT_OK(&t, dv_comm_wait(c, a, err), err);
            EXPECT_OK(&t, dv_comm_stream_wait(c, s, 0, err), err);
            cudaFree(d_x);
        }
    }
    free_comm(c, s);

    /* ranks that ask for different paths all fail */
    if (dv_comm_size(g_comm) > 1) {
        c = new_comm(&t);
        if (c) {
            dv_comm_device_mode mode =
                dv_comm_rank(c) == 0 ? DV_COMM_DEVICE_AUTO : DV_COMM_DEVICE_MPI;
            EXPECT(&t, dv_comm_device_init(c, dv_comm_select_device(c, g_ndev), g_ndev, mode, 16,
                                           err) == DV_ERR);
            EXPECT(&t, says(err, "the ranks ask for different device paths (rank 0: auto, rank 1: "
                                 "mpi)"));
        }
        dv_comm_free(c);
    }
    tcheck_finish(&t);
#endif
}

/* A stream that makes no progress for the comm's timeout fires the
 * watchdog, which would end the job; this test's comm is not fatal
 * (comm-impl.h), so the wait fails with the watchdog's line instead and the
 * device side then stays failed. Every rank stalls its own stream, so each
 * answers the others' post-mortem: no rank is missing. The timeout comes
 * from DIVE_COMM_TIMEOUT at dv_comm_init (env), or from dv_comm_set_timeout
 * after dv_comm_device_init, which the device side reads too. The stall is
 * a host function, which nothing can abort: on the MPI path the wait gives
 * up after the timeout; on the NCCL path the wait gives up after it too,
 * but ncclCommAbort then frees device memory, which waits for the stalled
 * stream (seen on an H200: 4.01 s for a 4 s stall), so only the message is
 * checked there. A NCCL kernel stuck on a dead peer is what the abort
 * stops. */
#ifdef DIVE_HAVE_CUDA
static void timeout_case(dv_comm_device_mode mode, int timed, int env) {
    tcheck t = {0};
    char err[DV_ERR_LEN] = "";
    if (env) setenv("DIVE_COMM_TIMEOUT", "0.2", 1);
    cudaStream_t s = NULL;
    dv_comm *c = device_comm(&t, mode, 64, &s);
    unsetenv("DIVE_COMM_TIMEOUT");
    if (c && !env) dv_comm_set_timeout(c, 0.2);
    if (c) {
        EXPECT(&t, dv_comm_timeout(c) == 0.2);
        c->watch.fatal = 0;
    }
    if (c && c->dev && s) {
        float *d_x = NULL;
        CU(&t, cudaMalloc((void **)&d_x, 64 * sizeof *d_x));
        stall(&t, s, 1000);
        double t0 = now_s();
        EXPECT(&t, dv_comm_stream_wait(c, s, 0, err) == DV_ERR);
        double took = now_s() - t0;
        if (timed) EXPECT(&t, took < 0.9);
        EXPECT(&t, says(err, "watchdog: device stream wait at start-up"));
        EXPECT(&t, strstr(err, "no progress for 0.2 s") && strstr(err, "DIVE_COMM_TIMEOUT"));
        /* the first to time out finds no rank missing; a rank that joins
         * its post-mortem before its own clock runs out hears everyone */
        int all = strstr(err, "no rank is missing") || strstr(err, "every rank answered");
        EXPECT(&t, all);
        if (!all) fprintf(stderr, "%s\n", err);
        dv_comm_request *r = NULL;
        EXPECT(&t, dv_comm_allreduce_start(c, d_x, 64, s, &r, err) == DV_ERR && r == NULL);
        EXPECT(&t, says(err, "failed earlier"));
        EXPECT(&t, dv_comm_stream_wait(c, s, 0, err) == DV_ERR && says(err, "failed earlier"));
        CU(&t, cudaStreamSynchronize(s));
        cudaFree(d_x);
    }
    free_comm(c, s);
    tcheck_finish(&t);
}
#endif

static void test_timeout(void **state) {
    (void)state;
    NEED_GPU();
#ifdef DIVE_HAVE_CUDA
    timeout_case(DV_COMM_DEVICE_MPI, 1, 1);
    timeout_case(DV_COMM_DEVICE_AUTO, 0, 0); /* NCCL on 1 rank, MPI where ranks share a GPU */
#endif
}

int main(int argc, char **argv) {
    char err[DV_ERR_LEN] = "";
    if (dv_comm_init(&g_comm, &argc, &argv, err) != DV_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int ndev = 0;
#ifdef DIVE_HAVE_CUDA
    if (cudaGetDeviceCount(&ndev) != cudaSuccess) {
        (void)cudaGetLastError();
        ndev = 0;
    }
#endif
    int least = 0, crowded = dv_comm_local_size(g_comm) > ndev, any_crowded = 0;
    MPI_Allreduce(&ndev, &least, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&crowded, &any_crowded, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    g_ndev = least > 0 ? ndev : 0;
    g_shared = any_crowded;
#ifdef DIVE_HAVE_CUDA
    int bound = g_ndev == 0 || cudaSetDevice(dv_comm_select_device(g_comm, g_ndev)) == cudaSuccess;
    int all_bound = 0;
    MPI_Allreduce(&bound, &all_bound, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all_bound) {
        fprintf(stderr, "%s cudaSetDevice failed\n", dv_error_origin());
        dv_comm_free(g_comm);
        return 1;
    }
    const char *why = "no CUDA device";
#else
    const char *why = "no CUDA device (Dive was built without CUDA)";
#endif
    if (g_ndev == 0 && dv_comm_rank(g_comm) == 0) {
        printf("test_comm_cuda: %s; the GPU cases are skipped\n", why);
        fflush(stdout);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_before_init), cmocka_unit_test(test_init_errors),
        cmocka_unit_test(test_auto),        cmocka_unit_test(test_nccl),
        cmocka_unit_test(test_mpi_path),    cmocka_unit_test(test_timeout),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL), worst = 0;
    MPI_Allreduce(&failed, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    dv_comm_free(g_comm);
    return worst == 0 ? 0 : 1;
}
