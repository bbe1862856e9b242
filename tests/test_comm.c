/* test_comm.c — cmocka tests of comm (MPI and shared-memory all-reduce), run
 * by CTest under mpiexec with 1, 2, 3 and 4 ranks (test_comm_np<n>).
 *
 * Data is chosen so the reduced result is known exactly: rank r fills
 * x[i] = r + i, so the average is (size-1)/2 + i, representable in float for
 * the sizes used here, and compared with ==.
 *
 * Every rank runs every test's collectives in the same order. Checks are
 * recorded with EXPECT (no longjmp) and the ranks agree on the outcome at the
 * end of each test (tcheck_finish; both from test_mpi_check.h), so a check
 * failing on one rank fails the test on all of them together instead of
 * leaving the others blocked in a collective. main combines the failure
 * counts so every rank exits alike.
 *
 * Reaches into comm-impl.h to shrink max_count and the shm round size, so
 * the code that splits long buffers runs on small ones, and to switch the
 * all-reduce algorithm, so shm and MPI are both checked in one run. Comms
 * made under DIVE_COMM_FAKE_NODE_SIZE=2 run the multi-node (hierarchical)
 * path with 4 ranks on one machine.
 *
 * The watchdog (comm_watch.c) is tested in its parts, on comms of their own
 * whose watchdog does not end the job (watch.fatal = 0): the settings and
 * DIVE_COMM_TIMEOUT, the sequence hash, the post-mortem with every rank
 * answering, with the others absent, and with the others joining from a
 * watched wait, and the line it prints. tests/e2e_stall.sh stops a rank of
 * a real training.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm-impl.h"
#include "test_mpi_check.h"

static dv_comm *g_comm;

/* ---- identity ----------------------------------------------------------- */

static void test_identity(void **state) {
    (void)state;
    tcheck t = {0};
    dv_comm *c = g_comm;
    int rank = dv_comm_rank(c), size = dv_comm_size(c);
    int wrank = -1, wsize = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
    MPI_Comm_size(MPI_COMM_WORLD, &wsize);
    EXPECT(&t, rank == wrank);
    EXPECT(&t, size == wsize);
    EXPECT(&t, size >= 1 && rank >= 0 && rank < size);

    int lrank = dv_comm_local_rank(c), lsize = dv_comm_local_size(c);
    EXPECT(&t, lsize >= 1 && lsize <= size);
    EXPECT(&t, lrank >= 0 && lrank < lsize);
    /* Local ranks 0..lsize-1 each appear once per node: the number of local
     * rank 0s is the number of nodes, and local sizes add up to the world. */
    int firsts = lrank == 0, nodes = 0;
    MPI_Allreduce(&firsts, &nodes, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    EXPECT(&t, nodes >= 1 && nodes <= size);
    int one_per_node = lrank == 0 ? lsize : 0, total = 0;
    MPI_Allreduce(&one_per_node, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    EXPECT(&t, total == size);

    const char *host = dv_comm_host(c);
    EXPECT(&t, host && host[0] != '\0');
    char prefix[512];
    snprintf(prefix, sizeof prefix, "[rank %d/%d %s]", rank, size, host);
    EXPECT(&t, strcmp(dv_error_origin(), prefix) == 0);

    EXPECT(&t, dv_comm_select_device(c, 0) == -1);
    EXPECT(&t, dv_comm_select_device(c, -3) == -1);
    EXPECT(&t, dv_comm_select_device(c, 1) == 0);
    EXPECT(&t, dv_comm_select_device(c, 2) == lrank % 2);
    EXPECT(&t, dv_comm_select_device(c, 1000) == lrank);

    MPI_Errhandler eh = MPI_ERRHANDLER_NULL;
    MPI_Comm_get_errhandler(c->world, &eh);
    EXPECT(&t, eh == MPI_ERRORS_RETURN);
    if (eh != MPI_ERRHANDLER_NULL) MPI_Errhandler_free(&eh);
    tcheck_finish(&t);
}

/* A second init while MPI is up reuses it and must not finalize it. */
static void test_init_again(void **state) {
    (void)state;
    tcheck t = {0};
    char err[DV_ERR_LEN] = "";
    dv_comm *c2 = NULL;
    EXPECT_OK(&t, dv_comm_init(&c2, NULL, NULL, err), err);
    if (c2) {
        EXPECT(&t, c2->owns_mpi == 0);
        EXPECT(&t, dv_comm_rank(c2) == dv_comm_rank(g_comm));
        EXPECT(&t, dv_comm_size(c2) == dv_comm_size(g_comm));
        float v = 1.0f;
        EXPECT_OK(&t, dv_comm_allreduce_avg(c2, &v, 1, err), err);
        EXPECT(&t, v == 1.0f);
    }
    dv_comm_free(c2);
    int finalized = 1;
    MPI_Finalized(&finalized);
    EXPECT(&t, finalized == 0);
    dv_comm_barrier(g_comm);
    dv_comm_free(NULL);
    tcheck_finish(&t);
}

/* ---- all-reduce --------------------------------------------------------- */

static const char *algo_name(const dv_comm *c) {
    return c->algo->name;
}

/* Runs fn on c with every algorithm c can use: MPI always, shm where
 * dv_comm_init set it up (more than one rank per node, the same number on
 * every node, DIVE_COMM_ALGO not mpi). */
static void for_each_algo(tcheck *t, dv_comm *c, void (*fn)(tcheck *, dv_comm *)) {
    const dv_comm_algo *native = c->algo;
    dv_comm_set_algo(c, &dv_comm_algo_mpi);
    fn(t, c);
    dv_comm_set_algo(c, native);
    if (native == &dv_comm_algo_shm) fn(t, c);
}

/* x[i] = rank + first + i, plus `extra` on rank 0 only. All values are
 * integers below 2^24, so the float sum is exact in any order. */
static void fill_ramp(float *x, size_t n, size_t first, int rank, int extra) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)rank + (float)(first + i) + (rank ? 0 : extra);
}

/* Counts elements that differ from the correctly rounded average of
 * fill_ramp: with extra == 0 it is (size-1)/2 + i exactly; with extra == 1
 * and size 3 it is not representable, and only sum / size (not
 * sum * (1/size)) rounds to it every time. Rounding the double quotient to
 * float gives the correctly rounded float quotient. */
static size_t ramp_mismatches(const float *x, size_t n, size_t first, int size, int extra) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double sum = (double)size * (double)(first + i) + size * (size - 1) / 2.0 + extra;
        if (x[i] != (float)(sum / size)) bad++;
    }
    return bad;
}

static void check_allreduce_avg(tcheck *t, dv_comm *c, size_t n, size_t max_count, int extra) {
    char err[DV_ERR_LEN] = "";
    float *x = malloc((n ? n : 1) * sizeof *x);
    fill_ramp(x, n, 0, dv_comm_rank(c), extra);
    c->max_count = max_count;
    EXPECT_OK(t, dv_comm_allreduce_avg(c, x, n, err), err);
    c->max_count = INT_MAX;
    size_t bad = ramp_mismatches(x, n, 0, dv_comm_size(c), extra);
    if (bad)
        fprintf(stderr, "%s n=%zu max_count=%zu: %zu wrong\n", algo_name(c), n, max_count, bad);
    EXPECT(t, bad == 0);
    free(x);
}

static void check_avg_all(tcheck *t, dv_comm *c) {
    check_allreduce_avg(t, c, 0, INT_MAX, 0);
    check_allreduce_avg(t, c, 1, INT_MAX, 0);
    check_allreduce_avg(t, c, 2, INT_MAX, 0); /* n < local size for 3 and 4 ranks */
    check_allreduce_avg(t, c, 3, INT_MAX, 1);
    check_allreduce_avg(t, c, 1000, INT_MAX, 0);
    check_allreduce_avg(t, c, 1001, INT_MAX, 1); /* not a multiple of any slice */
    check_allreduce_avg(t, c, 234000, INT_MAX, 0);
    check_allreduce_avg(t, c, 1000, 7, 0); /* 143 chunks, the last one short */
    check_allreduce_avg(t, c, 64, 64, 0);
    check_allreduce_avg(t, c, 1000, INT_MAX, 1);
    check_allreduce_avg(t, c, 12345, 5, 1); /* cross-node chunks on the shm path */
}

static void test_allreduce_avg(void **state) {
    (void)state;
    tcheck t = {0};
    for_each_algo(&t, g_comm, check_avg_all);

    char err[DV_ERR_LEN] = "";
    EXPECT(&t, dv_comm_allreduce_avg(g_comm, NULL, 5, err) == DV_ERR);
    EXPECT(&t, strstr(err, "dv_comm_allreduce_avg") != NULL);
    tcheck_finish(&t);
}

/* Buckets of one flat gradient buffer, started last-first as backward
 * produces them, waited in another order. */
static void check_async(tcheck *t, dv_comm *c, size_t max_count, int extra) {
    char err[DV_ERR_LEN] = "";
    enum { N = 6000, NB = 5 };
    const size_t lo[NB] = {0, 100, 1100, 1101, 1101};
    const size_t hi[NB] = {100, 1100, 1101, 1101, N}; /* bucket 3 is empty */
    float *x = malloc(N * sizeof *x);
    fill_ramp(x, N, 0, dv_comm_rank(c), extra);
    dv_comm_request *req[NB] = {0};
    c->max_count = max_count;
    for (int b = NB - 1; b >= 0; b--) {
        EXPECT_OK(t, dv_comm_allreduce_start(c, x + lo[b], hi[b] - lo[b], NULL, &req[b], err), err);
        EXPECT(t, req[b] != NULL);
        dv_comm_progress(c);
    }
    dv_comm_progress(c);
    const int order[NB] = {2, 0, 4, 3, 1};
    for (int k = 0; k < NB; k++)
        if (req[order[k]]) EXPECT_OK(t, dv_comm_wait(c, req[order[k]], err), err);
    c->max_count = INT_MAX;
    EXPECT(t, c->pending == NULL);
    size_t bad = ramp_mismatches(x, N, 0, dv_comm_size(c), extra);
    if (bad) fprintf(stderr, "%s async max_count=%zu: %zu wrong\n", algo_name(c), max_count, bad);
    EXPECT(t, bad == 0);
    free(x);
}

static void check_async_all(tcheck *t, dv_comm *c) {
    check_async(t, c, INT_MAX, 0);
    check_async(t, c, 64, 0);
    check_async(t, c, INT_MAX, 1);
}

/* The sharded update: reduce-scatter leaves the average in this rank's
 * shard, an update of the shard alone, all-gather completes the vector
 * everywhere; shards of all ranks tile [0, n) with no overlap. Run on a
 * private buffer and on the zero-copy shared buffer. */
static void check_sharded(tcheck *t, dv_comm *c, float *x, size_t n, int extra, int shared) {
    char err[DV_ERR_LEN] = "";
    size_t lo, hi;
    dv_comm_shard(c, n, &lo, &hi);
    EXPECT(t, lo <= hi && hi <= n);
    double all = (double)(hi - lo), part = hi - lo < n;
    EXPECT_OK(t, dv_comm_allreduce_double(c, &all, 1, DV_REDUCE_SUM, err), err);
    EXPECT_OK(t, dv_comm_allreduce_double(c, &part, 1, DV_REDUCE_MAX, err), err);
    /* disjoint and complete, or (no sharding) the whole vector everywhere */
    EXPECT(t, all == (part ? (double)n : (double)n * dv_comm_size(c)));
    if (c->algo == &dv_comm_algo_mpi) EXPECT(t, lo == 0 && hi == n);
    fill_ramp(x, n, 0, dv_comm_rank(c), extra);
    EXPECT_OK(t, dv_comm_reduce_scatter_avg(c, x, n, err), err);
    EXPECT(t, ramp_mismatches(x + lo, hi - lo, lo, dv_comm_size(c), extra) == 0);
    /* the "update": +1 on the own shard only, then gather */
    for (size_t i = lo; i < hi; i++)
        x[i] += 1.0f;
    /* garbage the gather must replace; not in the shared buffer, whose other
     * parts the peers may still be reading until the gather */
    for (size_t i = 0; !shared && i < n; i++)
        if (i < lo || i >= hi) x[i] = -7.0f;
    EXPECT_OK(t, dv_comm_allgather(c, x, n, err), err);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double avg = ((double)dv_comm_size(c) * (double)i +
                      dv_comm_size(c) * (dv_comm_size(c) - 1) / 2.0 + extra) /
                     dv_comm_size(c);
        if (x[i] != (float)avg + 1.0f) bad++;
    }
    if (bad) fprintf(stderr, "%s sharded n=%zu: %zu wrong\n", algo_name(c), n, bad);
    EXPECT(t, bad == 0);
    EXPECT(t, dv_comm_all_equal(c, x, n * sizeof *x));
}

static void check_sharded_all(tcheck *t, dv_comm *c) {
    const size_t sizes[] = {1, 3, 1001, 70000};
    for (int k = 0; k < 4; k++) {
        float *x = malloc(sizes[k] * sizeof *x);
        check_sharded(t, c, x, sizes[k], 0, 0);
        check_sharded(t, c, x, sizes[k], 1, 0);
        free(x);
    }
}

static void test_sharded(void **state) {
    (void)state;
    tcheck t = {0};
    for_each_algo(&t, g_comm, check_sharded_all);
    /* zero copy: gradients kept in the node-shared buffer */
    enum { N = 5003 };
    char err[DV_ERR_LEN] = "";
    float *g = dv_comm_shared_buffer(g_comm, N, err);
    if (g_comm->algo == &dv_comm_algo_shm && dv_comm_size(g_comm) == dv_comm_local_size(g_comm)) {
        EXPECT(&t, g != NULL);
        EXPECT(&t, dv_comm_shared_buffer(g_comm, N, err) == NULL); /* one only */
    } else {
        EXPECT(&t, g == NULL);
    }
    for (int round = 0; g && round < 3; round++)
        check_sharded(&t, g_comm, g, N, round & 1, 1);
    tcheck_finish(&t);
}

static void test_allreduce_async(void **state) {
    (void)state;
    tcheck t = {0};
    dv_comm *c = g_comm;
    char err[DV_ERR_LEN] = "";
    for_each_algo(&t, c, check_async_all);

    /* progress alone completes a request when every rank keeps calling it */
    enum { N = 50000 };
    float *x = malloc(N * sizeof *x);
    fill_ramp(x, N, 0, dv_comm_rank(c), 0);
    dv_comm_request *r = NULL;
    EXPECT_OK(&t, dv_comm_allreduce_start(c, x, N, NULL, &r, err), err);
    time_t t0 = time(NULL);
    while (r && !r->done && time(NULL) - t0 < 60)
        dv_comm_progress(c);
    EXPECT(&t, r && r->done);
    if (r) EXPECT_OK(&t, dv_comm_wait(c, r, err), err);
    EXPECT(&t, ramp_mismatches(x, N, 0, dv_comm_size(c), 0) == 0);
    free(x);

    float y = 0;
    dv_comm_request *bad = (dv_comm_request *)&y;
    int stream = 0;
    EXPECT(&t, dv_comm_allreduce_start(c, &y, 1, &stream, &bad, err) == DV_ERR);
    EXPECT(&t, bad == NULL);
    EXPECT(&t, strstr(err, "stream") != NULL);
    EXPECT(&t, dv_comm_wait(c, NULL, err) == DV_ERR);
    EXPECT(&t, c->pending == NULL);
    tcheck_finish(&t);
}

/* ---- the shm algorithm ---------------------------------------------------- */

/* Non-integer data whose sums round: a value per (rank, i) any rank can
 * recompute. */
static float noise(int rank, size_t i) {
    uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(rank * 40503 + 17);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return (float)(h & 0xFFFFFF) / 16777216.0f * 2.0f - 1.0f + (float)rank * 1e-3f;
}

/* On one node the shm result is the float sum in local-rank order, divided
 * by the world size: replicas stay identical and the result is known. */
static size_t noise_mismatches(const dv_comm *c, const float *x, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float sum = noise(0, i);
        for (int q = 1; q < c->size; q++)
            sum += noise(q, i);
        if (x[i] != sum / (float)c->size) bad++;
    }
    return bad;
}

/* Bit-for-bit the same on every rank (and, on one node, the exact order of
 * the sum), at sizes around the slice boundaries. */
static void check_identical(tcheck *t, dv_comm *c) {
    char err[DV_ERR_LEN] = "";
    const size_t sizes[] = {1, 2, 3, 5, 15, 16, 17, 47, 48, 49, 1000, 1001, 65537, 235146};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        float *x = malloc(n * sizeof *x);
        for (size_t i = 0; i < n; i++)
            x[i] = noise(dv_comm_rank(c), i);
        EXPECT_OK(t, dv_comm_allreduce_avg(c, x, n, err), err);
        EXPECT(t, dv_comm_all_equal(c, x, n * sizeof *x) == 1);
        if (c->algo == &dv_comm_algo_shm && c->local_size == c->size) {
            size_t bad = noise_mismatches(c, x, n);
            if (bad) fprintf(stderr, "shm noise n=%zu: %zu wrong\n", n, bad);
            EXPECT(t, bad == 0);
        }
        free(x);
    }
}

/* Segments grow (collectively) when a larger buffer arrives, also in the
 * middle of outstanding buckets, and are kept for smaller ones. */
static void check_growth(tcheck *t, dv_comm *c) {
    char err[DV_ERR_LEN] = "";
    const size_t sizes[] = {10, 100, 99, 5000, 5001, 70001, 64, 70001};
    enum { NS = sizeof sizes / sizeof *sizes };
    size_t total = 0, off[NS];
    for (int k = 0; k < NS; k++)
        off[k] = total, total += sizes[k];
    float *x = malloc(total * sizeof *x);
    /* one by one */
    size_t cap = 0;
    for (int k = 0; k < NS; k++) {
        fill_ramp(x + off[k], sizes[k], off[k], dv_comm_rank(c), 1);
        EXPECT_OK(t, dv_comm_allreduce_avg(c, x + off[k], sizes[k], err), err);
        EXPECT(t, ramp_mismatches(x + off[k], sizes[k], off[k], dv_comm_size(c), 1) == 0);
        if (c->algo == &dv_comm_algo_shm) {
            EXPECT(t, c->shm.cap >= sizes[k] && c->shm.cap >= cap);
            cap = c->shm.cap;
        }
    }
    /* all outstanding at once, a fresh comm's segments growing between them */
    dv_comm *c2 = NULL;
    EXPECT_OK(t, dv_comm_init(&c2, NULL, NULL, err), err);
    if (c2) {
        dv_comm_set_algo(c2, c->algo == &dv_comm_algo_mpi ? &dv_comm_algo_mpi : c2->algo);
        fill_ramp(x, total, 0, dv_comm_rank(c), 0);
        dv_comm_request *req[NS] = {0};
        for (int k = 0; k < NS; k++) {
            EXPECT_OK(t, dv_comm_allreduce_start(c2, x + off[k], sizes[k], NULL, &req[k], err),
                      err);
            dv_comm_progress(c2);
        }
        for (int k = 0; k < NS; k++)
            if (req[k]) EXPECT_OK(t, dv_comm_wait(c2, req[k], err), err);
        EXPECT(t, ramp_mismatches(x, total, 0, dv_comm_size(c), 0) == 0);
        EXPECT(t, c2->pending == NULL && c2->shm.head == NULL);
        /* grown to the largest bucket, 16-float aligned, not to their sum */
        if (c2->algo == &dv_comm_algo_shm) EXPECT(t, c2->shm.cap == 70016);
    }
    dv_comm_free(c2);
    free(x);
}

/* Requests waited in an order of their own, with a blocking collective of
 * another kind in between: comm finishes the earlier ones first. */
static void check_interleaved(tcheck *t, dv_comm *c) {
    char err[DV_ERR_LEN] = "";
    enum { N = 3001 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    fill_ramp(x, N, 0, dv_comm_rank(c), 0);
    fill_ramp(y, N, 0, dv_comm_rank(c), 1);
    dv_comm_request *rx = NULL, *ry = NULL;
    EXPECT_OK(t, dv_comm_allreduce_start(c, x, N, NULL, &rx, err), err);
    double d = 1.0;
    EXPECT_OK(t, dv_comm_allreduce_double(c, &d, 1, DV_REDUCE_SUM, err), err);
    EXPECT(t, d == dv_comm_size(c));
    EXPECT_OK(t, dv_comm_allreduce_start(c, y, N, NULL, &ry, err), err);
    EXPECT_OK(t, dv_comm_allreduce_avg(c, y, 0, err), err);
    if (ry) EXPECT_OK(t, dv_comm_wait(c, ry, err), err);
    if (rx) EXPECT_OK(t, dv_comm_wait(c, rx, err), err);
    EXPECT(t, ramp_mismatches(x, N, 0, dv_comm_size(c), 0) == 0);
    EXPECT(t, ramp_mismatches(y, N, 0, dv_comm_size(c), 1) == 0);
    free(x);
    free(y);
}

static void check_shm_all(tcheck *t, dv_comm *c) {
    check_identical(t, c);
    check_growth(t, c);
    check_interleaved(t, c);
    if (c->algo != &dv_comm_algo_shm) return;
    /* buffers longer than a round go in several (the last one short) */
    size_t chunk = c->shm.chunk;
    c->shm.chunk = 48;
    check_allreduce_avg(t, c, 1001, INT_MAX, 1);
    check_allreduce_avg(t, c, 47, INT_MAX, 0);
    check_allreduce_avg(t, c, 12345, 5, 1);
    check_async(t, c, INT_MAX, 1);
    check_identical(t, c);
    c->shm.chunk = 1000;
    check_async(t, c, 64, 0);
    c->shm.chunk = chunk;
}

static void test_shm(void **state) {
    (void)state;
    tcheck t = {0};
    dv_comm *c = g_comm;
    /* shm is the default wherever a node holds several ranks (CTest runs all
     * of them on one machine) */
    EXPECT(&t, c->algo == (dv_comm_size(c) > 1 ? &dv_comm_algo_shm : &dv_comm_algo_mpi));
    for_each_algo(&t, c, check_shm_all);
    tcheck_finish(&t);
}

/* A comm made under environment settings (every rank sets the same). */
static dv_comm *init_with(tcheck *t, const char *algo, const char *fake) {
    char err[DV_ERR_LEN] = "";
    if (algo) setenv("DIVE_COMM_ALGO", algo, 1);
    if (fake) setenv("DIVE_COMM_FAKE_NODE_SIZE", fake, 1);
    dv_comm *c2 = NULL;
    EXPECT_OK(t, dv_comm_init(&c2, NULL, NULL, err), err);
    unsetenv("DIVE_COMM_ALGO");
    unsetenv("DIVE_COMM_FAKE_NODE_SIZE");
    return c2;
}

static void test_shm_env(void **state) {
    (void)state;
    tcheck t = {0};
    int size = dv_comm_size(g_comm), rank = dv_comm_rank(g_comm);
    char err[DV_ERR_LEN] = "";

    dv_comm *c2 = init_with(&t, "mpi", NULL);
    if (c2) {
        EXPECT(&t, c2->algo == &dv_comm_algo_mpi && c2->shm.ctl_win == MPI_WIN_NULL);
        check_avg_all(&t, c2);
    }
    dv_comm_free(c2);

    /* a bad value fails on every rank alike */
    setenv("DIVE_COMM_ALGO", "nccl", 1);
    c2 = NULL;
    EXPECT(&t, dv_comm_init(&c2, NULL, NULL, err) == DV_ERR);
    EXPECT(&t, c2 == NULL && strstr(err, "DIVE_COMM_ALGO") != NULL);
    unsetenv("DIVE_COMM_ALGO");

    /* one rank per "node": nothing to share, MPI serves */
    c2 = init_with(&t, NULL, "1");
    if (c2) {
        EXPECT(&t, c2->local_size == 1 && c2->local_rank == 0);
        EXPECT(&t, c2->algo == &dv_comm_algo_mpi);
        check_allreduce_avg(&t, c2, 1001, INT_MAX, 1);
    }
    dv_comm_free(c2);

    /* nodes of 2: with 4 ranks, two nodes and the hierarchical path; with 3,
     * nodes of 2 and 1, which shm cannot serve */
    c2 = init_with(&t, NULL, "2");
    if (c2) {
        int lsize = size - rank / 2 * 2 < 2 ? size - rank / 2 * 2 : 2;
        EXPECT(&t, c2->local_size == lsize && c2->local_rank == rank % 2);
        int uniform = size % 2 == 0;
        EXPECT(&t, c2->algo == (size > 1 && uniform ? &dv_comm_algo_shm : &dv_comm_algo_mpi));
        EXPECT(&t, (c2->shm.cross != MPI_COMM_NULL) == (size > 2 && uniform));
        for_each_algo(&t, c2, check_avg_all);
        for_each_algo(&t, c2, check_async_all);
        for_each_algo(&t, c2, check_shm_all);
    }
    dv_comm_free(c2);
    tcheck_finish(&t);
}

/* ---- bcast -------------------------------------------------------------- */

static unsigned char pattern(size_t i, int root) {
    return (unsigned char)(i * 131u + (i >> 13) + (size_t)root * 7u);
}

static void check_bcast(tcheck *t, size_t bytes, int root, size_t max_count) {
    dv_comm *c = g_comm;
    char err[DV_ERR_LEN] = "";
    unsigned char *buf = malloc(bytes);
    for (size_t i = 0; i < bytes; i++)
        buf[i] = dv_comm_rank(c) == root ? pattern(i, root) : 0xEE;
    c->max_count = max_count;
    EXPECT_OK(t, dv_comm_bcast(c, buf, bytes, root, err), err);
    c->max_count = INT_MAX;
    size_t bad = 0;
    for (size_t i = 0; i < bytes; i++)
        bad += buf[i] != pattern(i, root);
    if (bad) fprintf(stderr, "bcast %zu bytes from %d: %zu wrong\n", bytes, root, bad);
    EXPECT(t, bad == 0);
    free(buf);
}

static void test_bcast(void **state) {
    (void)state;
    tcheck t = {0};
    dv_comm *c = g_comm;
    int last = dv_comm_size(c) - 1;
    const size_t big = ((size_t)24 << 20) + 13;
    check_bcast(&t, big, 0, INT_MAX);
    check_bcast(&t, big, last, INT_MAX);
    check_bcast(&t, 100003, last, 4099); /* 25 chunks, the last one short */
    check_bcast(&t, 1, 0, INT_MAX);

    char err[DV_ERR_LEN] = "";
    char b = 0;
    EXPECT(&t, dv_comm_bcast(c, &b, 1, last + 1, err) == DV_ERR);
    EXPECT(&t, strstr(err, "root") != NULL);
    EXPECT(&t, dv_comm_bcast(c, &b, 1, -1, err) == DV_ERR);
    EXPECT_OK(&t, dv_comm_bcast(c, NULL, 0, 0, err), err);
    tcheck_finish(&t);
}

/* ---- doubles, agreement ------------------------------------------------- */

static void test_allreduce_double(void **state) {
    (void)state;
    tcheck t = {0};
    dv_comm *c = g_comm;
    char err[DV_ERR_LEN] = "";
    double r = dv_comm_rank(c), n = dv_comm_size(c), sum = n * (n - 1) / 2;

    double x[3] = {r, r + 0.25, -r};
    EXPECT_OK(&t, dv_comm_allreduce_double(c, x, 3, DV_REDUCE_SUM, err), err);
    EXPECT(&t, x[0] == sum && x[1] == sum + 0.25 * n && x[2] == -sum);

    double y[3] = {r, r + 0.25, -r};
    EXPECT_OK(&t, dv_comm_allreduce_double(c, y, 3, DV_REDUCE_MIN, err), err);
    EXPECT(&t, y[0] == 0 && y[1] == 0.25 && y[2] == -(n - 1));

    double z[3] = {r, r + 0.25, -r};
    EXPECT_OK(&t, dv_comm_allreduce_double(c, z, 3, DV_REDUCE_MAX, err), err);
    EXPECT(&t, z[0] == n - 1 && z[1] == n - 1 + 0.25 && z[2] == 0);

    EXPECT_OK(&t, dv_comm_allreduce_double(c, NULL, 0, DV_REDUCE_SUM, err), err);
    EXPECT(&t, dv_comm_allreduce_double(c, x, 1, (dv_reduce)99, err) == DV_ERR);
    EXPECT(&t, dv_comm_allreduce_double(c, x, -1, DV_REDUCE_SUM, err) == DV_ERR);
    tcheck_finish(&t);
}

static void test_first_failed(void **state) {
    (void)state;
    tcheck t = {0};
    dv_comm *c = g_comm;
    int rank = dv_comm_rank(c), size = dv_comm_size(c);
    EXPECT(&t, dv_comm_first_failed(c, 1) == -1);
    EXPECT(&t, dv_comm_first_failed(c, 0) == 0);
    EXPECT(&t, dv_comm_first_failed(c, rank != size - 1) == size - 1);
    EXPECT(&t, dv_comm_first_failed(c, rank == 0) == (size > 1 ? 1 : -1));
    EXPECT(&t, dv_comm_first_failed(c, 7) == -1); /* any non-zero is ok */
    tcheck_finish(&t);
}

static void test_all_equal(void **state) {
    (void)state;
    tcheck t = {0};
    dv_comm *c = g_comm;
    int rank = dv_comm_rank(c), size = dv_comm_size(c);
    enum { N = 1003 };
    unsigned char buf[N];
    for (size_t i = 0; i < N; i++)
        buf[i] = pattern(i, 0);

    EXPECT(&t, dv_comm_all_equal(c, buf, N) == 1);
    EXPECT(&t, dv_comm_all_equal(c, buf, 0) == 1);
    EXPECT(&t, dv_comm_all_equal(c, NULL, 0) == 1);
    if (size > 1) {
        int last = rank == size - 1;
        if (last) buf[517] ^= 0x01;
        EXPECT(&t, dv_comm_all_equal(c, buf, N) == 0);
        if (last) buf[517] ^= 0x01;
        if (last) buf[N - 1] ^= 0x80; /* in the byte tail after the words */
        EXPECT(&t, dv_comm_all_equal(c, buf, N) == 0);
        if (last) buf[N - 1] ^= 0x80;
        EXPECT(&t, dv_comm_all_equal(c, buf, rank == 0 ? N - 8 : N) == 0);
        EXPECT(&t, dv_comm_all_equal(c, buf, N) == 1);
    }
    tcheck_finish(&t);
}

/* ---- the watchdog ---------------------------------------------------------- */

/* 1 when every rank holds the same v (direct MPI: comm is under test). */
static int same_everywhere(uint64_t v) {
    uint64_t mine[2] = {v, ~v}, top[2] = {0, 0};
    MPI_Allreduce(mine, top, 2, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    return top[0] == ~top[1];
}

static void test_watch_settings(void **state) {
    (void)state;
    tcheck t = {0};
    char err[DV_ERR_LEN] = "";
    double v = -1;
    EXPECT(&t, dv_comm_parse_timeout(NULL, &v, err) == DV_OK && v == 600);
    EXPECT(&t, dv_comm_parse_timeout("", &v, err) == DV_OK && v == 600);
    EXPECT(&t, dv_comm_parse_timeout("0", &v, err) == DV_OK && v == 0);
    EXPECT(&t, dv_comm_parse_timeout("2.5", &v, err) == DV_OK && v == 2.5);
    EXPECT(&t, dv_comm_parse_timeout("1e3", &v, err) == DV_OK && v == 1000);
    const char *bad[] = {"soon", "-1", "3s", "nan", "inf", "1e999", " "};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        char want[64];
        snprintf(want, sizeof want, "DIVE_COMM_TIMEOUT=%s: expected", bad[k]);
        err[0] = '\0';
        EXPECT(&t, dv_comm_parse_timeout(bad[k], &v, err) == DV_ERR && strstr(err, want));
    }

    /* the default, unless the environment of this run sets one */
    dv_comm *c = g_comm;
    const char *env = getenv("DIVE_COMM_TIMEOUT");
    if (!env || !*env) EXPECT(&t, dv_comm_timeout(c) == 600);
    double was = dv_comm_timeout(c);
    dv_comm_set_timeout(c, 2.5);
    EXPECT(&t, dv_comm_timeout(c) == 2.5);
    dv_comm_set_timeout(c, -1); /* ignored */
    dv_comm_set_timeout(c, NAN);
    EXPECT(&t, dv_comm_timeout(c) == 2.5);
    dv_comm_set_timeout(c, INFINITY);
    EXPECT(&t, dv_comm_timeout(c) == 0);
    dv_comm_set_timeout(c, 0);
    EXPECT(&t, dv_comm_timeout(c) == 0);
    dv_comm_set_timeout(c, was);
    dv_comm_set_timeout(NULL, 3);
    EXPECT(&t, dv_comm_timeout(NULL) == 0);
    EXPECT(&t, c->watch.step == -1);
    dv_comm_set_step(c, 1234);
    EXPECT(&t, c->watch.step == 1234);
    dv_comm_set_step(c, -1);

    /* dv_comm_init reads it once */
    setenv("DIVE_COMM_TIMEOUT", "7", 1);
    dv_comm *c2 = NULL;
    EXPECT_OK(&t, dv_comm_init(&c2, NULL, NULL, err), err);
    unsetenv("DIVE_COMM_TIMEOUT");
    if (c2) EXPECT(&t, dv_comm_timeout(c2) == 7);
    dv_comm_free(c2);

    /* a bad value fails every rank, with a message naming the variable */
    setenv("DIVE_COMM_TIMEOUT", "soon", 1);
    c2 = NULL;
    EXPECT(&t, dv_comm_init(&c2, NULL, NULL, err) == DV_ERR && c2 == NULL);
    EXPECT(&t, strstr(err, "DIVE_COMM_TIMEOUT=soon") != NULL);
    unsetenv("DIVE_COMM_TIMEOUT");

    /* bad on one rank only: the others fail too, naming it */
    int rank = dv_comm_rank(c), size = dv_comm_size(c);
    if (rank == size - 1) setenv("DIVE_COMM_TIMEOUT", "-3", 1);
    c2 = NULL;
    EXPECT(&t, dv_comm_init(&c2, NULL, NULL, err) == DV_ERR && c2 == NULL);
    unsetenv("DIVE_COMM_TIMEOUT");
    if (rank == size - 1) {
        EXPECT(&t, strstr(err, "DIVE_COMM_TIMEOUT=-3") != NULL);
    } else {
        char want[64];
        snprintf(want, sizeof want, "rank %d (", size - 1);
        EXPECT(&t, strstr(err, want) && strstr(err, "could not start"));
    }
    /* the host names were gathered */
    for (int q = 0; q < size; q++)
        EXPECT(&t, c->watch.hosts && c->watch.hosts[q][0] != '\0');
    if (c->watch.hosts) EXPECT(&t, strncmp(c->watch.hosts[rank], c->host, DV_WATCH_HOST - 1) == 0);
    tcheck_finish(&t);
}

/* The same collectives in the same order give the same hash on every rank;
 * a call of another size makes it differ. */
static void test_sequence_hash(void **state) {
    (void)state;
    tcheck t = {0};
    char err[DV_ERR_LEN] = "";
    int rank = dv_comm_rank(g_comm), size = dv_comm_size(g_comm);

    /* the fold: order and sizes count */
    uint64_t s0 = DV_COMM_HASH_SEED;
    uint64_t ab = dv_comm_hash_fold(dv_comm_hash_fold(s0, DV_COLL_ALLREDUCE, 10), DV_COLL_BCAST, 4);
    uint64_t ba = dv_comm_hash_fold(dv_comm_hash_fold(s0, DV_COLL_BCAST, 4), DV_COLL_ALLREDUCE, 10);
    uint64_t ab2 =
        dv_comm_hash_fold(dv_comm_hash_fold(s0, DV_COLL_ALLREDUCE, 11), DV_COLL_BCAST, 4);
    EXPECT(&t, ab != ba && ab != ab2 && ba != ab2);
    EXPECT(&t, dv_comm_hash_fold(s0, DV_COLL_BARRIER, 0) != s0);

    dv_comm *c = NULL;
    EXPECT_OK(&t, dv_comm_init(&c, NULL, NULL, err), err);
    if (c) {
        EXPECT(&t, dv_comm_sequence_hash(c) == DV_COMM_HASH_SEED && c->watch.calls == 0);
        float x[10];
        fill_ramp(x, 10, 0, rank, 0);
        EXPECT_OK(&t, dv_comm_allreduce_avg(c, x, 10, err), err);
        EXPECT(&t, dv_comm_sequence_hash(c) == dv_comm_hash_fold(s0, DV_COLL_ALLREDUCE, 10));
        char b[5] = "abcd";
        EXPECT_OK(&t, dv_comm_bcast(c, b, 5, 0, err), err);
        dv_comm_barrier(c);
        EXPECT(&t, dv_comm_first_failed(c, 1) == -1);
        double d[3] = {1, 2, 3};
        EXPECT_OK(&t, dv_comm_allreduce_double(c, d, 3, DV_REDUCE_SUM, err), err);
        dv_comm_request *r = NULL;
        EXPECT_OK(&t, dv_comm_allreduce_start(c, x, 7, NULL, &r, err), err);
        if (r) EXPECT_OK(&t, dv_comm_wait(c, r, err), err);
        EXPECT_OK(&t, dv_comm_reduce_scatter_avg(c, x, 10, err), err);
        EXPECT_OK(&t, dv_comm_allgather(c, x, 10, err), err);
        EXPECT(&t, dv_comm_all_equal(c, b, 5) == 1);
        EXPECT(&t, c->watch.calls == 9);
        uint64_t h = dv_comm_sequence_hash(c);
        EXPECT(&t, h != DV_COMM_HASH_SEED);
        EXPECT(&t, same_everywhere(h));

        /* all_equal of another length on rank 0: a valid collective (its MPI
         * count is fixed), but another size in the hash */
        EXPECT(&t, dv_comm_all_equal(c, b, rank == 0 ? 4 : 5) == (size == 1));
        EXPECT(&t, same_everywhere(dv_comm_sequence_hash(c)) == (size == 1));
    }
    dv_comm_free(c);
    tcheck_finish(&t);
}

/* The line, on a copy of the comm posing as a job of 12 ranks. */
static void test_watch_report(void **state) {
    (void)state;
    tcheck t = {0};
    enum { N = 12 };
    char hosts[N][DV_WATCH_HOST], answered[N], out[DV_ERR_LEN];
    dv_comm fake = *g_comm;
    fake.size = N;
    fake.watch.hosts = hosts;
    fake.watch.what = DV_COLL_ALLREDUCE_START;
    fake.watch.step = 120;
    fake.watch.timeout = 20;
    for (int q = 0; q < N; q++) {
        snprintf(hosts[q], sizeof hosts[q], "node%d", q / 4);
        answered[q] = 1;
    }
    const char *tail = "; set DIVE_COMM_TIMEOUT or [train] comm_timeout to wait longer";
    char want[DV_ERR_LEN];

    answered[2] = 0;
    dv_comm_watch_report(&fake, 1, answered, 1, 1, 20, 0, out, sizeof out);
    snprintf(want, sizeof want,
             "watchdog: all-reduce at step 120 made no progress for 20 s; rank 2 (node0) did not "
             "arrive%s",
             tail);
    EXPECT(&t, strcmp(out, want) == 0);
    if (strcmp(out, want)) fprintf(stderr, "got  %s\nwant %s\n", out, want);

    answered[5] = 0;
    fake.watch.what = DV_COLL_BARRIER;
    fake.watch.step = -1;
    fake.watch.timeout = 2.5;
    dv_comm_watch_report(&fake, 1, answered, 2, -1, 0, 0, out, sizeof out);
    snprintf(want, sizeof want,
             "watchdog: barrier at start-up made no progress for 2.5 s; ranks 2 (node0), 5 (node1) "
             "did not arrive%s",
             tail);
    EXPECT(&t, strcmp(out, want) == 0);
    if (strcmp(out, want)) fprintf(stderr, "got  %s\nwant %s\n", out, want);

    /* a rank that joined: who fired, and its view */
    fake.watch.what = DV_COLL_FIRST_FAILED;
    dv_comm_watch_report(&fake, 0, answered, 2, 0, 20, 0, out, sizeof out);
    EXPECT(&t, strstr(out, "watchdog: error agreement at start-up: rank 0 (node0) found no "
                           "progress for 20 s; ranks 2 (node0), 5 (node1) did not arrive;") == out);

    /* many missing: the first 8 named, the rest counted */
    for (int q = 1; q < N; q++)
        answered[q] = 0;
    dv_comm_watch_report(&fake, 1, answered, N - 1, -1, 0, 0, out, sizeof out);
    EXPECT(&t, strstr(out, "ranks 1 (node0), 2 (node0), 3 (node0), 4 (node1), 5 (node1), 6 "
                           "(node1), 7 (node1), 8 (node2) and 3 more did not arrive;") != NULL);

    for (int q = 0; q < N; q++)
        answered[q] = 1;
    dv_comm_watch_report(&fake, 1, answered, 0, -1, 0, 0, out, sizeof out);
    EXPECT(&t, strstr(out, "; no rank is missing") != NULL);
    dv_comm_watch_report(&fake, 0, answered, 0, 3, 2.5, 0, out, sizeof out);
    EXPECT(&t, strstr(out, ": rank 3 (node0) found no progress for 2.5 s; every rank answered;") !=
                   NULL);
    dv_comm_watch_report(&fake, 1, answered, -1, -1, 0, 0, out, sizeof out);
    EXPECT(&t, strstr(out, "could not be asked") != NULL);
    dv_comm_watch_report(&fake, 0, answered, 0, -1, 0, 3.25, out, sizeof out);
    EXPECT(&t, strstr(out, "(this rank did not run for 3.2 s: stopped?)") != NULL);
    EXPECT(&t, strcmp(dv_coll_name(DV_COLL_BCAST), "broadcast") == 0);
    EXPECT(&t, strcmp(dv_coll_name(DV_COLL_COUNT), "collective") == 0);
    tcheck_finish(&t);
}

/* The post-mortem: every rank in it hears every other; a rank alone in it
 * hears nobody, within the grace period; ranks in a watched wait join it. */
static void test_postmortem(void **state) {
    (void)state;
    tcheck t = {0};
    char err[DV_ERR_LEN] = "";
    dv_comm *c = NULL;
    EXPECT_OK(&t, dv_comm_init(&c, NULL, NULL, err), err);
    if (!c) {
        tcheck_finish(&t);
        return;
    }
    c->watch.fatal = 0;
    dv_comm_set_timeout(c, 20);
    int rank = dv_comm_rank(c), size = dv_comm_size(c), fired = -2;
    double fired_timeout = -1;
    char *answered = calloc((size_t)size, 1);

    /* everyone */
    EXPECT(&t, dv_comm_postmortem(c, 1, answered, &fired, &fired_timeout) == 0);
    for (int q = 0; q < size; q++)
        EXPECT(&t, answered[q] == 1);
    EXPECT(&t, fired == (size == 1 ? -1 : rank == 0 ? 1 : 0));
    if (size > 1) EXPECT(&t, fired_timeout == 20);

    /* rank 0 alone: nobody answers, and it gives up after the grace period */
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        c->watch.grace = 0.3;
        double t0 = dv_now();
        EXPECT(&t, dv_comm_postmortem(c, 1, answered, &fired, &fired_timeout) == size - 1);
        double took = dv_now() - t0;
        EXPECT(&t, size == 1 || (took >= 0.29 && took < 2));
        EXPECT(&t, answered[0] == 1 && fired == -1);
        for (int q = 1; q < size; q++)
            EXPECT(&t, answered[q] == 0);
        c->watch.grace = 2;
    } else { /* the message nobody took: out of the way */
        int64_t junk[8];
        MPI_Recv(junk, 8, MPI_INT64_T, 0, DV_WATCH_TAG, c->watch.comm, MPI_STATUS_IGNORE);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    /* rank 0 fires; the others, in a watched wait that would never end (no
     * timeout), notice and join: each hears everyone, and says who fired */
    if (rank == 0) {
        EXPECT(&t, dv_comm_postmortem(c, 1, answered, &fired, &fired_timeout) == 0);
    } else {
        dv_comm_set_timeout(c, 0);
        c->watch.what = DV_COLL_BARRIER;
        dv_watch w;
        dv_watch_begin(&w);
        double t0 = dv_now();
        dv_status st = DV_OK;
        while (st == DV_OK && dv_now() - t0 < 30)
            st = dv_watch_poll(c, &w, err);
        EXPECT(&t, st == DV_ERR);
        char want[128];
        snprintf(want, sizeof want,
                 "watchdog: barrier at start-up: rank 0 (%s) found no progress "
                 "for 20 s; every rank answered",
                 c->watch.hosts[0]);
        EXPECT(&t, strstr(err, want) != NULL);
        if (!strstr(err, want)) fprintf(stderr, "got  %s\nwant %s\n", err, want);
    }
    free(answered);
    dv_comm_free(c);
    tcheck_finish(&t);
}

/* ---- messages and check macros ------------------------------------------ */

static int fake_mpi_call(int rc) {
    return rc;
}

static int mpi_check_line;

static dv_status via_mpi_check(int rc, char *err) {
    mpi_check_line = __LINE__ + 1;
    DV_MPI_CHECK(err, fake_mpi_call(rc));
    return DV_OK;
}

/* A real MPI call failing on comm's communicator must come back as a
 * status: with the default handler it would end the job here. */
static dv_status bad_send(dv_comm *c, char *err) {
    int v = 0;
    DV_MPI_CHECK(err, MPI_Send(&v, -1, MPI_INT, 0, 0, c->world));
    return DV_OK;
}

static dv_status positive(int v, char *err) {
    DV_CHECK(v > 0, err, "positive", "v = %d", v);
    return DV_OK;
}

static dv_status tried(int v, char *err) {
    DV_TRY(positive(v, err));
    return DV_OK;
}

static void test_format_error(void **state) {
    (void)state;
    tcheck t = {0};
    char err[DV_ERR_LEN] = "", want[2 * DV_ERR_LEN];
    const char *p = dv_error_origin();

    dv_error_at(err, "/some/dir/foo.c", 42, "MPI_Foo", "bad %d", 7);
    snprintf(want, sizeof want, "%s foo.c:42: MPI_Foo: bad 7", p);
    EXPECT(&t, strcmp(err, want) == 0);
    snprintf(want, sizeof want, "[rank %d/%d %s] foo.c:42: MPI_Foo: bad 7", dv_comm_rank(g_comm),
             dv_comm_size(g_comm), dv_comm_host(g_comm));
    EXPECT(&t, strcmp(err, want) == 0);

    dv_error_at(err, "bar.c", 1, "cudaMalloc(&p, n)", "out of memory");
    snprintf(want, sizeof want, "%s bar.c:1: cudaMalloc: out of memory", p);
    EXPECT(&t, strcmp(err, want) == 0);

    /* wrapping the message already in err */
    dv_error_at(err, "baz.c", 9, "outer", "%s", err);
    snprintf(want, sizeof want, "%s baz.c:9: outer: %s bar.c:1: cudaMalloc: out of memory", p, p);
    EXPECT(&t, strcmp(err, want) == 0);

    char longmsg[3 * DV_ERR_LEN];
    memset(longmsg, 'x', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = '\0';
    dv_error_at(err, "a.c", 1, "long", "%s", longmsg);
    EXPECT(&t, strlen(err) == DV_ERR_LEN - 1);
    dv_error_at(NULL, "a.c", 1, "null", "no crash");

    /* DV_MPI_CHECK */
    EXPECT(&t, via_mpi_check(MPI_SUCCESS, err) == DV_OK);
    EXPECT(&t, via_mpi_check(MPI_ERR_COUNT, err) == DV_ERR);
    char mpimsg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(MPI_ERR_COUNT, mpimsg, &len);
    snprintf(want, sizeof want, "%s test_comm.c:%d: fake_mpi_call: %s (MPI error %d)", p,
             mpi_check_line, mpimsg, MPI_ERR_COUNT);
    EXPECT(&t, strcmp(err, want) == 0);
    if (strcmp(err, want) != 0) fprintf(stderr, "got  %s\nwant %s\n", err, want);

    EXPECT(&t, bad_send(g_comm, err) == DV_ERR);
    snprintf(want, sizeof want, "%s test_comm.c:", p);
    EXPECT(&t, strncmp(err, want, strlen(want)) == 0 && strstr(err, ": MPI_Send: ") != NULL);

    /* DV_CHECK and DV_TRY */
    EXPECT(&t, positive(1, err) == DV_OK);
    EXPECT(&t, tried(-1, err) == DV_ERR);
    EXPECT(&t, strstr(err, ": positive: v = -1") != NULL);
    tcheck_finish(&t);
}

int main(int argc, char **argv) {
    char err[DV_ERR_LEN] = "";
    if (dv_comm_init(&g_comm, &argc, &argv, err) != DV_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity),       cmocka_unit_test(test_init_again),
        cmocka_unit_test(test_allreduce_avg),  cmocka_unit_test(test_allreduce_async),
        cmocka_unit_test(test_bcast),          cmocka_unit_test(test_allreduce_double),
        cmocka_unit_test(test_first_failed),   cmocka_unit_test(test_all_equal),
        cmocka_unit_test(test_format_error),   cmocka_unit_test(test_shm),
        cmocka_unit_test(test_shm_env),        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_watch_settings), cmocka_unit_test(test_sequence_hash),
        cmocka_unit_test(test_watch_report),   cmocka_unit_test(test_postmortem),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL), worst = 0;
    MPI_Allreduce(&failed, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    dv_comm_free(g_comm);
    return worst == 0 ? 0 : 1;
}
