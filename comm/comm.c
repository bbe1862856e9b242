/* comm.c — the world of a Dive job as comm.h promises it: start-up (MPI,
 * ranks, the node, which algorithm averages floats), who this rank is, the
 * public all-reduce API, the other collectives and error agreement.
 *
 * Assumes every rank calls the collectives in the same order with the same
 * counts (as MPI requires); asynchronous all-reduces too must be started in
 * the same order on every rank, with the same sizes. MPI is called from the
 * thread that called dv_comm_init only (MPI_THREAD_FUNNELED).
 *
 * The float averages are the algorithm's (c->algo: comm_mpi.c, or
 * comm_shm.c where every node holds the same number > 1 of ranks and
 * DIVE_COMM_ALGO is not mpi); device buffers are the device side's
 * (c->devops: comm_device_none.c until a GPU run loads the CUDA module
 * with comm_device.c). This file
 * only checks arguments, dispatches, and keeps the ordering rule that ties
 * them together: every blocking collective and every host start first lets
 * the device side start the host all-reduces of the device requests started
 * before it (flush), and every blocking collective then drains the
 * algorithm's own requests, so all ranks run their host all-reduces and
 * collectives in one order.
 *
 * MPI counts are int, so buffers longer than c->max_count (INT_MAX) elements
 * go out in several calls.
 *
 * Every public collective enters through dv_comm_enter: the watchdog's
 * message names it and the sequence hash folds it (watch-impl.h). Every
 * wait polls through the watchdog (comm_watch.c): the MPI collectives here
 * are the nonblocking ones, completed by dv_comm_mpi_wait.
 *
 * Errors inside the functions that return dv_status come back with a
 * message; the ones that cannot (first_failed, all_equal, barrier) are the
 * job's error-agreement points, so when MPI itself fails there they abort
 * (comm_common.c).
 */
#include "comm-impl.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every algorithm whose state a comm may hold: not only c->algo's, since a
 * test may have switched to mpi and a failed start-up leaves part of shm's. */
static const dv_comm_algo *const algos[] = {&dv_comm_algo_mpi, &dv_comm_algo_shm};

/* Before a blocking collective: the device side's host all-reduces started,
 * then the algorithm's requests completed (see the top of this file). */
static void drain(dv_comm *c) {
    c->devops->flush(c);
    c->algo->drain(c);
}

/* ---- start-up ----------------------------------------------------------- */

/* This rank's environment. The ranks agree on it with the host names
 * (dv_comm_watch_setup), so a value that is bad on one rank fails every
 * rank instead of leaving the others in the next collective. The timeout
 * comes first: it has its default even when a later value is bad. */
static dv_status read_env(dv_comm *c, int *fake_k, int *want_shm, char *err) {
    DV_TRY(dv_comm_parse_timeout(getenv("DIVE_COMM_TIMEOUT"), &c->watch.timeout, err));
    /* Testing only: DIVE_COMM_FAKE_NODE_SIZE=K makes ranks K*i..K*i+K-1 one
     * "node", so the multi-node path runs on one machine. */
    const char *fake = getenv("DIVE_COMM_FAKE_NODE_SIZE");
    *fake_k = fake && *fake ? atoi(fake) : 0;
    DV_CHECK(!fake || !*fake || *fake_k >= 1, err, "dv_comm_init",
             "DIVE_COMM_FAKE_NODE_SIZE=%s is not a positive integer", fake);
    const char *algo = getenv("DIVE_COMM_ALGO");
    *want_shm = 1;
    if (algo && !strcmp(algo, "mpi"))
        *want_shm = 0;
    else
        DV_CHECK(!algo || !*algo || !strcmp(algo, "shm"), err, "dv_comm_init",
                 "DIVE_COMM_ALGO=%s: expected shm or mpi", algo);
    return DV_OK;
}

static dv_status comm_setup(dv_comm *c, int *argc, char ***argv, char *err) {
    int finalized = 0, initialized = 0;
    DV_MPI_CHECK(err, MPI_Finalized(&finalized));
    DV_CHECK(!finalized, err, "dv_comm_init", "MPI was already finalized in this process");
    DV_MPI_CHECK(err, MPI_Initialized(&initialized));
    if (!initialized) {
        int provided = 0;
        DV_MPI_CHECK(err, MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
        c->owns_mpi = 1;
    }
    DV_MPI_CHECK(err, MPI_Comm_dup(MPI_COMM_WORLD, &c->world));
    DV_MPI_CHECK(err, MPI_Comm_set_errhandler(c->world, MPI_ERRORS_RETURN));
    DV_MPI_CHECK(err, MPI_Comm_rank(c->world, &c->rank));
    DV_MPI_CHECK(err, MPI_Comm_size(c->world, &c->size));

    if (gethostname(c->host, sizeof c->host - 1) != 0) snprintf(c->host, sizeof c->host, "?");
    c->host[sizeof c->host - 1] = '\0';
    dv_error_set_origin(c->rank, c->size, c->host);

    int fake_k = 0, want_shm = 1;
    int ok = read_env(c, &fake_k, &want_shm, err) == DV_OK;
    /* Past here every wait is watched. MPI_Init and the dups above are not:
     * a rank that stops while the job starts still hangs it. */
    DV_TRY(dv_comm_watch_setup(c, ok, err));
    /* Set-up collectives without a nonblocking form: the all-gather just
     * passed found every rank here. */
    if (fake_k >= 1)
        DV_MPI_CHECK(err, MPI_Comm_split(c->world, c->rank / fake_k, c->rank, &c->node));
    else
        DV_MPI_CHECK(err, MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank,
                                              MPI_INFO_NULL, &c->node));
    DV_MPI_CHECK(err, MPI_Comm_set_errhandler(c->node, MPI_ERRORS_RETURN));
    DV_MPI_CHECK(err, MPI_Comm_rank(c->node, &c->local_rank));
    DV_MPI_CHECK(err, MPI_Comm_size(c->node, &c->local_size));
    return want_shm ? dv_comm_shm_setup(c, err) : DV_OK;
}

dv_status dv_comm_init(dv_comm **out, int *argc, char ***argv, char *err) {
    DV_CHECK(out, err, "dv_comm_init", "NULL output pointer");
    *out = NULL;
    dv_comm *c = calloc(1, sizeof *c);
    DV_CHECK(c, err, "calloc", "out of memory");
    c->world = MPI_COMM_NULL;
    c->node = MPI_COMM_NULL;
    c->watch.comm = MPI_COMM_NULL;
    c->algo = &dv_comm_algo_mpi;
    dv_comm_shm_clear(c);
    c->devops = &dv_comm_device_none;
    c->max_count = INT_MAX;
    if (comm_setup(c, argc, argv, err) != DV_OK) {
        dv_comm_free(c);
        return DV_ERR;
    }
    *out = c;
    return DV_OK;
}

void dv_comm_free(dv_comm *c) {
    if (!c) return;
    c->devops->release(c); /* NCCL and CUDA state, before MPI goes */
    /* Requests never waited for are a caller bug; MPI forbids freeing or
     * cancelling a nonblocking collective and waiting could hang a failing
     * job, so only their memory is released. */
    while (c->pending)
        dv_comm_request_release(c, c->pending);
    for (size_t i = 0; i < sizeof algos / sizeof *algos; i++)
        algos[i]->release(c);
    dv_comm_watch_release(c);
    int finalized = 1;
    MPI_Finalized(&finalized);
    if (!finalized) {
        if (c->node != MPI_COMM_NULL) MPI_Comm_free(&c->node);
        if (c->world != MPI_COMM_NULL) MPI_Comm_free(&c->world);
        if (c->owns_mpi) MPI_Finalize();
    }
    free(c);
}

int dv_comm_rank(const dv_comm *c) {
    return c->rank;
}

int dv_comm_size(const dv_comm *c) {
    return c->size;
}

int dv_comm_local_rank(const dv_comm *c) {
    return c->local_rank;
}

int dv_comm_local_size(const dv_comm *c) {
    return c->local_size;
}

const char *dv_comm_host(const dv_comm *c) {
    return c->host;
}

int dv_comm_select_device(const dv_comm *c, int ndevices) {
    if (ndevices <= 0) return -1;
    return c->local_rank % ndevices;
}

/* ---- all-reduce --------------------------------------------------------- */

dv_status dv_comm_allreduce_avg(dv_comm *c, float *x, size_t n, char *err) {
    DV_CHECK(c && (x || n == 0), err, "dv_comm_allreduce_avg", "NULL comm or buffer");
    dv_comm_enter(c, DV_COLL_ALLREDUCE, n);
    if (c->size == 1 || n == 0) return DV_OK;
    c->devops->flush(c);
    return c->algo->avg(c, x, n, err);
}

dv_status dv_comm_allreduce_start(dv_comm *c, float *x, size_t n, void *stream,
                                  dv_comm_request **req, char *err) {
    DV_CHECK(req, err, "dv_comm_allreduce_start", "NULL request pointer");
    *req = NULL;
    DV_CHECK(c && (x || n == 0), err, "dv_comm_allreduce_start", "NULL comm or buffer");
    dv_comm_enter(c, DV_COLL_ALLREDUCE_START, n);
    if (stream) return c->devops->start(c, x, n, stream, req, err);
    c->devops->flush(c); /* device requests started before this one go first */
    return c->algo->start(c, x, n, req, err);
}

void dv_comm_progress(dv_comm *c) {
    if (!c) return;
    c->devops->progress(c); /* may start host requests: before the algorithm's */
    c->algo->progress(c);
}

dv_status dv_comm_wait(dv_comm *c, dv_comm_request *req, char *err) {
    DV_CHECK(c && req, err, "dv_comm_wait", "NULL comm or request");
    DV_CHECK(req->owner == c, err, "dv_comm_wait", "request belongs to another comm");
    c->watch.what = DV_COLL_ALLREDUCE_START;
    if (req->dev) return c->devops->wait(c, req, err);
    return req->algo->wait(c, req, err);
}

/* ---- sharded reduce-scatter / all-gather ---------------------------------
 * Where the algorithm does not split n, comm.h's promise holds without it:
 * the reduce-scatter is an all-reduce and the all-gather does nothing. */

void dv_comm_shard(const dv_comm *c, size_t n, size_t *lo, size_t *hi) {
    c->algo->shard(c, n, lo, hi);
}

float *dv_comm_shared_buffer(dv_comm *c, size_t n, char *err) {
    dv_comm_enter(c, DV_COLL_SHARED_BUFFER, n);
    size_t lo, hi;
    if (!c->algo->shard(c, n, &lo, &hi)) return NULL;
    drain(c);
    return c->algo->shared_buffer(c, n, err);
}

dv_status dv_comm_reduce_scatter_avg(dv_comm *c, float *x, size_t n, char *err) {
    DV_CHECK(c && (x || n == 0), err, "dv_comm_reduce_scatter_avg", "NULL comm or buffer");
    dv_comm_enter(c, DV_COLL_REDUCE_SCATTER, n);
    size_t lo, hi;
    if (!c->algo->shard(c, n, &lo, &hi)) {
        if (c->size == 1 || n == 0) return DV_OK;
        c->devops->flush(c);
        return c->algo->avg(c, x, n, err);
    }
    drain(c);
    return c->algo->reduce_scatter(c, x, n, err);
}

dv_status dv_comm_allgather(dv_comm *c, float *x, size_t n, char *err) {
    DV_CHECK(c && (x || n == 0), err, "dv_comm_allgather", "NULL comm or buffer");
    dv_comm_enter(c, DV_COLL_ALLGATHER, n);
    size_t lo, hi;
    if (!c->algo->shard(c, n, &lo, &hi)) return DV_OK;
    drain(c);
    return c->algo->allgather(c, x, n, err);
}

/* ---- device buffers ------------------------------------------------------- */

dv_status dv_comm_device_init(dv_comm *c, int device, int ndevices, dv_comm_device_mode mode,
                              size_t max_floats, char *err) {
    DV_CHECK(c, err, "dv_comm_device_init", "NULL comm");
    dv_comm_enter(c, DV_COLL_DEVICE_INIT, 0);
    return c->devops->init(c, device, ndevices, mode, max_floats, err);
}

const char *dv_comm_device_path(const dv_comm *c) {
    return c ? c->devops->path(c) : NULL;
}

dv_status dv_comm_stream_wait(dv_comm *c, void *stream, int keep, char *err) {
    if (!stream) return DV_OK;
    DV_CHECK(c, err, "dv_comm_stream_wait", "NULL comm");
    c->watch.what = DV_COLL_STREAM_WAIT;
    return c->devops->stream_wait(c, stream, keep, err);
}

/* ---- other collectives -------------------------------------------------- */

dv_status dv_comm_bcast(dv_comm *c, void *buf, size_t bytes, int root, char *err) {
    DV_CHECK(c && (buf || bytes == 0), err, "dv_comm_bcast", "NULL comm or buffer");
    DV_CHECK(root >= 0 && root < c->size, err, "dv_comm_bcast", "root %d is not a rank of %d", root,
             c->size);
    dv_comm_enter(c, DV_COLL_BCAST, bytes);
    if (c->size == 1) return DV_OK;
    drain(c);
    for (size_t off = 0; off < bytes; off += c->max_count) {
        int count = (int)dv_comm_min(bytes - off, c->max_count);
        MPI_Request req = MPI_REQUEST_NULL;
        DV_MPI_CHECK(err, MPI_Ibcast((char *)buf + off, count, MPI_BYTE, root, c->world, &req));
        DV_MPI_CHECK(err, dv_comm_mpi_wait(c, 1, &req));
    }
    return DV_OK;
}

dv_status dv_comm_allreduce_double(dv_comm *c, double *x, int n, dv_reduce op, char *err) {
    DV_CHECK(c && n >= 0 && (x || n == 0), err, "dv_comm_allreduce_double",
             "NULL comm or buffer, or negative count %d", n);
    MPI_Op mop;
    switch (op) {
    case DV_REDUCE_SUM:
        mop = MPI_SUM;
        break;
    case DV_REDUCE_MIN:
        mop = MPI_MIN;
        break;
    case DV_REDUCE_MAX:
        mop = MPI_MAX;
        break;
    default:
        DV_FAIL(err, "dv_comm_allreduce_double", "unknown reduction %d", (int)op);
    }
    dv_comm_enter(c, DV_COLL_ALLREDUCE_DOUBLE, (uint64_t)n);
    if (n == 0) return DV_OK;
    drain(c);
    MPI_Request req = MPI_REQUEST_NULL;
    DV_MPI_CHECK(err, MPI_Iallreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, mop, c->world, &req));
    DV_MPI_CHECK(err, dv_comm_mpi_wait(c, 1, &req));
    return DV_OK;
}

int dv_comm_first_failed(dv_comm *c, int ok) {
    dv_comm_enter(c, DV_COLL_FIRST_FAILED, 1);
    drain(c);
    return dv_comm_agree(c, ok);
}

/* FNV-1a over 64-bit words (then the tail bytes), seeded with the length so
 * buffers of different sizes differ. XOR and multiplying by an odd prime
 * are both bijections, so any single differing word always changes the
 * hash; word steps make it ~8x faster than byte FNV on parameter buffers. */
static uint64_t hash_bytes(const void *buf, size_t bytes) {
    const uint64_t prime = 0x100000001b3ULL;
    uint64_t h = 0xcbf29ce484222325ULL;
    h = (h ^ (uint64_t)bytes) * prime;
    const unsigned char *p = buf;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * prime;
    }
    for (; i < bytes; i++)
        h = (h ^ p[i]) * prime;
    return h;
}

int dv_comm_all_equal(dv_comm *c, const void *buf, size_t bytes) {
    dv_comm_enter(c, DV_COLL_ALL_EQUAL, bytes);
    drain(c);
    uint64_t h = buf ? hash_bytes(buf, bytes) : hash_bytes("", 0);
    /* max(h) and max(~h) = ~min(h) in one reduction: equal iff min == max. */
    uint64_t mine[2] = {h, ~h}, top[2] = {0, 0};
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Iallreduce(mine, top, 2, MPI_UINT64_T, MPI_MAX, c->world, &req);
    if (rc == MPI_SUCCESS) rc = dv_comm_mpi_wait(c, 1, &req);
    dv_comm_abort_on_mpi_error(c, rc, "dv_comm_all_equal: MPI_Iallreduce");
    return top[0] == ~top[1];
}

void dv_comm_barrier(dv_comm *c) {
    dv_comm_enter(c, DV_COLL_BARRIER, 0);
    drain(c);
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Ibarrier(c->world, &req);
    if (rc == MPI_SUCCESS) rc = dv_comm_mpi_wait(c, 1, &req);
    dv_comm_abort_on_mpi_error(c, rc, "dv_comm_barrier: MPI_Ibarrier");
}
