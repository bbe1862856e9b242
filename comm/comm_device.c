/* comm_device.c — the GPU side of comm, the dv_comm_device_ops table that
 * comm.c reaches it through: in-place gradient averages of device buffers
 * over NCCL, or, where NCCL cannot serve (two ranks on one GPU, or the MPI
 * path asked for), over the host algorithm (c->algo) through pinned staging
 * memory; and host flow control on a device stream that notices a dead or
 * hung rank instead of hanging.
 *
 * Assumes the CUDA backend has bound this rank's device (cudaSetDevice) on
 * the thread that calls comm, which is the thread that owns MPI, and that
 * every rank starts the same device all-reduces in the same order. Calls
 * nothing in comm.c (so it could be a module of its own): the host
 * all-reduces go through the algorithm's table (c->algo), the error
 * agreement and the watched waits come from comm_watch.c.
 *
 * Streams. comm owns one non-blocking stream. A start records an event
 * (`edge`) on the caller's stream and makes comm's stream wait on it, so the
 * all-reduce follows the work queued before it (the backward of the bucket's
 * layers) without the host waiting; the wait makes the caller's stream wait
 * on the request's `done` event.
 *  - NCCL: ncclAllReduce(avg) in place on comm's stream, then `done`.
 *  - MPI: device -> staging copy on comm's stream, then `copied`. Once the
 *    copy has finished (polled by dv_comm_progress, waited for by the wait
 *    and by every blocking collective through the table's flush) the host
 *    algorithm's all-reduce runs on the staging range; the wait finishes it and
 *    queues staging -> device on comm's stream, then `done`. The host
 *    all-reduces start in device-request start order on every rank (the
 *    poll stops at the first unfinished copy), as MPI and the shm barriers
 *    need, even when a copy failed (the wait reports that).
 *
 * Staging is a bump allocator: a request takes the next n floats, and the
 * offset returns to 0 only when no device request is pending, so ranges
 * never overlap while requests are in flight. After its wait a request's
 * range is still read by the copy back to the device; a later request that
 * reuses the range writes it only by its own copy, queued behind that one on
 * comm's stream, and its host all-reduce starts only after that copy.
 *
 * Failures. dv_comm_device_init agrees across ranks after each step (every
 * rank returns the same status); its MPI_Bcast and MPI_Allgather, which
 * are not watched, each come right after a watched agreement that found
 * every rank there. Past init, a failed CUDA or NCCL call or an
 * asynchronous NCCL error marks the device side broken and aborts the NCCL
 * communicator (its kernels stop waiting for peers, so later CUDA calls and
 * dv_comm_free cannot hang on them); every later device call fails at once
 * and the caller ends the job. The host's waits on the GPU (the stream
 * wait, a copy to staging) are the watchdog's (comm_watch.c), like every
 * other wait of comm: one that makes no progress for the comm's timeout
 * (dv_comm_timeout) runs the post-mortem that names the ranks that did not
 * arrive, prints it and ends the job.
 * The NCCL communicator is blocking: ncclCommInitRank and the first
 * ncclAllReduce's connection set-up can still wait on a rank that died just
 * then (mpirun ends the job when a rank exits that way).
 */
#include "comm-impl.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RING 8 /* events dv_comm_stream_wait keeps */

#define BROKEN_MSG                                                                                 \
    "the device all-reduce failed earlier on this rank (see the first error); end the job "        \
    "(dv_comm_abort)"

enum { PATH_NCCL = 1, PATH_MPI = 2 };

typedef struct dv_comm_device_req dev_req;

struct dv_comm_device_req {
    dv_comm_request base;   /* the caller's handle; base.dev points here */
    cudaStream_t stream;    /* the caller's: waits for `done` at dv_comm_wait */
    cudaEvent_t copied;     /* MPI path: x copied into staging */
    cudaEvent_t done;       /* x holds the average (on comm's stream) */
    size_t off;             /* MPI path: its staging range [off, off + n) */
    dv_comm_request *inner; /* MPI path: the host algorithm's all-reduce of that range */
    int started;            /* inner started (or tried: see failed) */
    int failed;             /* msg holds the first error; the wait reports it */
    char msg[DV_ERR_LEN];
    dev_req *prev, *next; /* pending device requests, in start order */
};

typedef struct dv_comm_device {
    int path;               /* PATH_NCCL or PATH_MPI */
    cudaStream_t stream;    /* comm's own, non-blocking */
    cudaEvent_t edge;       /* re-recorded on the caller's stream by each start */
    cudaEvent_t ring[RING]; /* dv_comm_stream_wait's, oldest at ring_head */
    int ring_head, ring_count;
    cudaEvent_t *pool; /* free events for requests (npool of cap_pool) */
    int npool, cap_pool;
    ncclComm_t nccl; /* NCCL path; NULL once aborted */
    int broken;      /* failed past init: every later call fails */
    float *staging;  /* MPI path: pinned, staging_cap floats */
    size_t staging_cap, staging_used;
    dev_req *head, *tail; /* pending device requests */
} dv_comm_device;

/* ---- errors --------------------------------------------------------------- */

static const char *nccl_name(ncclResult_t rc) {
    switch (rc) {
    case ncclSuccess:
        return "ncclSuccess";
    case ncclUnhandledCudaError:
        return "ncclUnhandledCudaError";
    case ncclSystemError:
        return "ncclSystemError";
    case ncclInternalError:
        return "ncclInternalError";
    case ncclInvalidArgument:
        return "ncclInvalidArgument";
    case ncclInvalidUsage:
        return "ncclInvalidUsage";
    case ncclRemoteError:
        return "ncclRemoteError";
    case ncclInProgress:
        return "ncclInProgress";
    default:
        return "unknown ncclResult_t";
    }
}

static int cuda_ok_(char *err, cudaError_t rc, const char *file, int line, const char *call) {
    if (rc == cudaSuccess) return 1;
    /* A non-sticky error must not surface at the backend's next launch
     * check as if a kernel had failed. */
    (void)cudaGetLastError();
    dv_error_at(err, file, line, call, "%s (%s)", cudaGetErrorString(rc), cudaGetErrorName(rc));
    return 0;
}

static int nccl_ok_(char *err, ncclResult_t rc, const char *file, int line, const char *call) {
    if (rc == ncclSuccess) return 1;
    const char *last = ncclGetLastError(NULL);
    int detail = last && *last;
    dv_error_at(err, file, line, call, "%s (%s)%s%s", ncclGetErrorString(rc), nccl_name(rc),
                detail ? ": " : "", detail ? last : "");
    return 0;
}

/* CUDA_OK / NCCL_OK: 1, or 0 with the call's error in err. The _CHECK forms
 * return DV_ERR from the function. `expr` is stringified as written (no
 * parentheses around it: the message names the call up to its first '('). */
#define CUDA_OK(err, expr) cuda_ok_((err), (expr), __FILE__, __LINE__, #expr)
#define NCCL_OK(err, expr) nccl_ok_((err), (expr), __FILE__, __LINE__, #expr)
#define CUDA_CHECK(err, expr)                                                                      \
    do {                                                                                           \
        if (!CUDA_OK((err), expr)) return DV_ERR;                                                  \
    } while (0)
#define NCCL_CHECK(err, expr)                                                                      \
    do {                                                                                           \
        if (!NCCL_OK((err), expr)) return DV_ERR;                                                  \
    } while (0)

/* A failure past init: abort NCCL so its kernels stop waiting for peers,
 * and refuse every later call. */
static void device_break(dv_comm_device *d) {
    d->broken = 1;
    if (d->nccl) {
        (void)ncclCommAbort(d->nccl);
        d->nccl = NULL;
    }
}

/* An asynchronous NCCL error (a peer died, a network failure, ...). */
static dv_status nccl_async_fail(dv_comm_device *d, ncclResult_t ar, char *err) {
    char detail[512] = "";
    const char *last = ncclGetLastError(NULL);
    if (last && *last) snprintf(detail, sizeof detail, ": %s", last); /* before the abort */
    device_break(d);
    DV_FAIL(err, "ncclCommGetAsyncError", "NCCL: %s (%s)%s; the NCCL communicator was aborted",
            ncclGetErrorString(ar), nccl_name(ar), detail);
}

static void req_fail(dev_req *r, const char *msg) {
    if (r->failed) return;
    r->failed = 1;
    snprintf(r->msg, sizeof r->msg, "%s", msg);
}

/* ---- small helpers -------------------------------------------------------- */

/* Waits for `ev` by polling, watched (a copy that never finishes, on a
 * hung GPU, fires the watchdog instead of hanging the host in
 * cudaEventSynchronize). Returns what cudaEventQuery last said:
 * cudaErrorNotReady, with the watchdog's line in msg, only where the
 * watchdog fired and handed its line back (a test's comm). */
static cudaError_t event_wait(dv_comm *c, cudaEvent_t ev, char *msg) {
    dv_watch w;
    dv_watch_begin(&w);
    w.yield_s = DV_WATCH_YIELD_DEVICE_S;
    const dv_coll what = c->watch.what;
    c->watch.what = DV_COLL_STREAM_WAIT;
    cudaError_t rc;
    while ((rc = cudaEventQuery(ev)) == cudaErrorNotReady)
        if (dv_watch_poll(c, &w, msg) != DV_OK) break;
    c->watch.what = what;
    return rc;
}

/* Events for requests come from a pool, so steps after the first create
 * none. An event goes back once nothing will query it again; recording it
 * anew later leaves the waits already queued on it unchanged. */
static dv_status event_get(dv_comm_device *d, cudaEvent_t *ev, char *err) {
    if (d->npool > 0) {
        *ev = d->pool[--d->npool];
        return DV_OK;
    }
    CUDA_CHECK(err, cudaEventCreateWithFlags(ev, cudaEventDisableTiming));
    return DV_OK;
}

static void event_put(dv_comm_device *d, cudaEvent_t *ev) {
    if (!*ev) return;
    if (d->npool == d->cap_pool) {
        int cap = d->cap_pool ? 2 * d->cap_pool : 8;
        cudaEvent_t *p = realloc(d->pool, (size_t)cap * sizeof *p);
        if (!p) {
            (void)cudaEventDestroy(*ev);
            *ev = NULL;
            return;
        }
        d->pool = p;
        d->cap_pool = cap;
    }
    d->pool[d->npool++] = *ev;
    *ev = NULL;
}

static void req_unlink(dv_comm_device *d, dev_req *r) {
    if (r->prev)
        r->prev->next = r->next;
    else
        d->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        d->tail = r->prev;
    r->prev = r->next = NULL;
}

/* Everything of d, also after a failed init. Broken (or half-made) NCCL
 * communicators are aborted: destroying one waits for its peers. Requests
 * never waited for are a caller bug; only their memory goes (their host
 * all-reduces are on c->pending, which dv_comm_free releases). Return codes
 * are ignored: the job is ending and there is no one left to tell. */
static void device_release(dv_comm_device *d) {
    if (!d) return;
    if (d->nccl) {
        if (d->broken)
            (void)ncclCommAbort(d->nccl);
        else
            (void)ncclCommDestroy(d->nccl);
        d->nccl = NULL;
    }
    while (d->head) {
        dev_req *r = d->head;
        d->head = r->next;
        if (r->copied) (void)cudaEventDestroy(r->copied);
        if (r->done) (void)cudaEventDestroy(r->done);
        free(r);
    }
    for (int i = 0; i < d->npool; i++)
        (void)cudaEventDestroy(d->pool[i]);
    free(d->pool);
    for (int i = 0; i < RING; i++)
        if (d->ring[i]) (void)cudaEventDestroy(d->ring[i]);
    if (d->edge) (void)cudaEventDestroy(d->edge);
    /* The last copies back read staging; after a failure the stream may
     * never finish, and the job is ending anyway. */
    if (d->stream && !d->broken) (void)cudaStreamSynchronize(d->stream);
    if (d->stream) (void)cudaStreamDestroy(d->stream);
    if (d->staging) (void)cudaFreeHost(d->staging);
    free(d);
}

static void device_free(dv_comm *c) {
    if (!c || !c->dev) return;
    device_release(c->dev);
    c->dev = NULL;
}

static const char *device_path(const dv_comm *c) {
    if (!c->dev) return NULL;
    return c->dev->path == PATH_NCCL ? "nccl" : "mpi";
}

/* ---- init ----------------------------------------------------------------- */

/* Which GPU a rank drives, as NCCL tells GPUs apart: host and PCI bus id. */
typedef struct gpu_id {
    uint64_t host; /* hash of the host name and boot id (see host_hash) */
    char bus[32];  /* "0000:3b:00.0", zero-padded so the ids compare with memcmp */
} gpu_id;

typedef struct rank_gpu {
    gpu_id id;
    int rank;
    int mode; /* the dv_comm_device_mode this rank asked for */
} rank_gpu;

static uint64_t hash_str(uint64_t h, const char *s) {
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL; /* FNV-1a */
    return h;
}

/* The host name plus the kernel's boot id, as NCCL identifies a host:
 * containers on different machines often share a host name. */
static uint64_t host_hash(const char *host) {
    uint64_t h = hash_str(0xcbf29ce484222325ULL, host);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        char id[64] = "";
        if (fgets(id, sizeof id, f)) h = hash_str(h, id);
        fclose(f);
    }
    return h;
}

static int rank_gpu_cmp(const void *a, const void *b) {
    const rank_gpu *x = a, *y = b;
    int k = memcmp(&x->id, &y->id, sizeof x->id);
    return k ? k : (x->rank > y->rank) - (x->rank < y->rank);
}

static const char *mode_name(int mode) {
    switch (mode) {
    case DV_COMM_DEVICE_AUTO:
        return "auto";
    case DV_COMM_DEVICE_NCCL:
        return "nccl";
    case DV_COMM_DEVICE_MPI:
        return "mpi";
    default:
        return "?";
    }
}

static void advance(dv_comm *c, int blocking, const dev_req *until);

/* One step of init agreed by all ranks: each passes whether its part went
 * well; all get DV_OK, or all DV_ERR with err holding this rank's own
 * message where it failed, else the first failing rank's. */
static dv_status agree(dv_comm *c, int ok, char *err) {
    char msg[DV_ERR_LEN] = "";
    if (!ok && err) snprintf(msg, sizeof msg, "%s", err);
    /* what dv_comm_first_failed drains first (device requests exist only when
     * init was called twice) */
    advance(c, 1, NULL);
    c->algo->drain(c);
    int first = dv_comm_agree(c, ok);
    if (first < 0) return DV_OK;
    DV_MPI_CHECK(err, MPI_Bcast(msg, DV_ERR_LEN, MPI_CHAR, first, c->world));
    if (!ok) return DV_ERR; /* err still holds this rank's message */
    msg[DV_ERR_LEN - 1] = '\0';
    DV_FAIL(err, "dv_comm_device_init", "rank %d failed: %s", first, msg);
}

/* Checks that need no other rank; fills this rank's GPU id. */
static dv_status check_local(dv_comm *c, int device, int ndevices, dv_comm_device_mode mode,
                             rank_gpu *me, char *err) {
    DV_CHECK(!c->dev, err, "dv_comm_device_init",
             "called twice on one comm (the %s path is set up)", device_path(c));
    DV_CHECK((int)mode >= DV_COMM_DEVICE_AUTO && (int)mode <= DV_COMM_DEVICE_MPI, err,
             "dv_comm_device_init", "unknown device mode %d", (int)mode);
    DV_CHECK(ndevices >= 1 && device >= 0 && device < ndevices, err, "dv_comm_device_init",
             "device %d is not one of the node's %d GPUs", device, ndevices);
    int cur = -1;
    CUDA_CHECK(err, cudaGetDevice(&cur));
    DV_CHECK(cur == device, err, "dv_comm_device_init",
             "the current CUDA device is %d, not %d: the backend's cudaSetDevice(%d) comes first",
             cur, device, device);
    CUDA_CHECK(err, cudaDeviceGetPCIBusId(me->id.bus, (int)sizeof me->id.bus - 1, device));
    me->id.host = host_hash(c->host);
    return DV_OK;
}

/* Gathers every rank's GPU and mode and picks the path; every rank sees the
 * same table, so every rank decides the same (only an MPI failure differs). */
static dv_status choose_path(dv_comm *c, const rank_gpu *me, rank_gpu *all, int *path, char *err) {
    DV_MPI_CHECK(err, MPI_Allgather(me, (int)sizeof *me, MPI_BYTE, all, (int)sizeof *me, MPI_BYTE,
                                    c->world));
    for (int q = 1; q < c->size; q++)
        DV_CHECK(all[q].mode == all[0].mode, err, "dv_comm_device_init",
                 "the ranks ask for different device paths (rank 0: %s, rank %d: %s)",
                 mode_name(all[0].mode), q, mode_name(all[q].mode));
    qsort(all, (size_t)c->size, sizeof *all, rank_gpu_cmp);
    const rank_gpu *a = NULL, *b = NULL; /* the first two ranks on one GPU */
    for (int q = 1; q < c->size && !a; q++)
        if (!memcmp(&all[q - 1].id, &all[q].id, sizeof all[q].id)) a = &all[q - 1], b = &all[q];
    if (me->mode == DV_COMM_DEVICE_MPI || (me->mode == DV_COMM_DEVICE_AUTO && a)) {
        *path = PATH_MPI;
        return DV_OK;
    }
    DV_CHECK(!a, err, "dv_comm_device_init",
             "NCCL was asked for, but ranks %d and %d share one GPU (PCI %s), which NCCL cannot "
             "serve: use the MPI path (or auto), or start at most one rank per GPU",
             a ? a->rank : -1, b ? b->rank : -1, a ? a->id.bus : "?");
    *path = PATH_NCCL;
    return DV_OK;
}

/* This rank's stream, events and staging; rank 0's NCCL id. */
static dv_status setup_local(dv_comm *c, dv_comm_device *d, size_t max_floats, ncclUniqueId *id,
                             char *err) {
    CUDA_CHECK(err, cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking));
    CUDA_CHECK(err, cudaEventCreateWithFlags(&d->edge, cudaEventDisableTiming));
    for (int i = 0; i < RING; i++)
        CUDA_CHECK(err, cudaEventCreateWithFlags(&d->ring[i], cudaEventDisableTiming));
    if (d->path == PATH_MPI) {
        DV_CHECK(max_floats > 0, err, "dv_comm_device_init",
                 "max_floats is 0, but the MPI path stages the buckets in flight in host memory "
                 "and needs room for them (the gradient's length)");
        DV_CHECK(max_floats <= SIZE_MAX / sizeof(float), err, "dv_comm_device_init",
                 "max_floats %zu is too large", max_floats);
        void *p = NULL;
        CUDA_CHECK(err, cudaHostAlloc(&p, max_floats * sizeof(float), cudaHostAllocDefault));
        d->staging = p;
        d->staging_cap = max_floats;
    }
    if (d->path == PATH_NCCL && c->rank == 0) NCCL_CHECK(err, ncclGetUniqueId(id));
    return DV_OK;
}

static dv_status setup_nccl(dv_comm *c, dv_comm_device *d, ncclUniqueId *id, char *err) {
    DV_MPI_CHECK(err, MPI_Bcast(id, (int)sizeof *id, MPI_BYTE, 0, c->world));
    ncclComm_t nc = NULL;
    ncclResult_t rc = ncclCommInitRank(&nc, c->size, *id, c->rank);
    if (rc != ncclSuccess) {
        nccl_ok_(err, rc, __FILE__, __LINE__, "ncclCommInitRank");
        if (nc) (void)ncclCommAbort(nc); /* a failed init may hand back its comm */
        return DV_ERR;
    }
    d->nccl = nc;
    return DV_OK;
}

static dv_status device_init(dv_comm *c, int device, int ndevices, dv_comm_device_mode mode,
                             size_t max_floats, char *err) {
    rank_gpu me;
    memset(&me, 0, sizeof me);
    me.rank = c->rank;
    me.mode = (int)mode;
    rank_gpu *all = NULL;
    int ok = check_local(c, device, ndevices, mode, &me, err) == DV_OK;
    if (ok && !(all = calloc((size_t)c->size, sizeof *all))) {
        dv_error_at(err, __FILE__, __LINE__, "calloc", "out of memory");
        ok = 0;
    }
    if (agree(c, ok, err) != DV_OK) {
        free(all);
        return DV_ERR;
    }
    int path = 0;
    dv_status st = choose_path(c, &me, all, &path, err);
    free(all);
    if (st != DV_OK) return DV_ERR; /* on every rank: they decided alike */

    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    dv_comm_device *d = calloc(1, sizeof *d);
    if (!d) {
        dv_error_at(err, __FILE__, __LINE__, "calloc", "out of memory");
        ok = 0;
    } else {
        d->path = path;
        ok = setup_local(c, d, max_floats, &id, err) == DV_OK;
    }
    if (agree(c, ok, err) != DV_OK) {
        device_release(d);
        return DV_ERR;
    }
    if (path == PATH_NCCL && agree(c, setup_nccl(c, d, &id, err) == DV_OK, err) != DV_OK) {
        d->broken = 1; /* other ranks' communicators are half made: abort ours */
        device_release(d);
        return DV_ERR;
    }
    c->dev = d;
    return DV_OK;
}

/* ---- requests ------------------------------------------------------------- */

/* comm's stream waits for the work queued on the caller's so far. */
static dv_status order_after(dv_comm_device *d, cudaStream_t s, char *err) {
    CUDA_CHECK(err, cudaEventRecord(d->edge, s));
    CUDA_CHECK(err, cudaStreamWaitEvent(d->stream, d->edge, 0));
    return DV_OK;
}

static dv_status start_nccl(dv_comm_device *d, dev_req *r, char *err) {
    DV_TRY(event_get(d, &r->done, err));
    DV_TRY(order_after(d, r->stream, err));
    NCCL_CHECK(err, ncclAllReduce(r->base.x, r->base.x, r->base.n, ncclFloat, ncclAvg, d->nccl,
                                  d->stream));
    CUDA_CHECK(err, cudaEventRecord(r->done, d->stream));
    return DV_OK;
}

/* The range is taken before the copy is queued: a failure after that
 * breaks the device side, so the range is never handed out again while the
 * copy may still write it. */
static dv_status start_mpi(dv_comm_device *d, dev_req *r, char *err) {
    DV_TRY(event_get(d, &r->copied, err));
    DV_TRY(order_after(d, r->stream, err));
    if (!d->head) d->staging_used = 0;
    r->off = d->staging_used;
    d->staging_used += r->base.n;
    CUDA_CHECK(err, cudaMemcpyAsync(d->staging + r->off, r->base.x, r->base.n * sizeof(float),
                                    cudaMemcpyDeviceToHost, d->stream));
    CUDA_CHECK(err, cudaEventRecord(r->copied, d->stream));
    return DV_OK;
}

static dv_status device_start(dv_comm *c, float *x, size_t n, void *stream, dv_comm_request **req,
                              char *err) {
    dv_comm_device *d = c->dev;
    DV_CHECK(d, err, "dv_comm_allreduce_start",
             "a stream was given (x on the device), but dv_comm_device_init has not been called "
             "on this comm");
    DV_CHECK(!d->broken, err, "dv_comm_allreduce_start", BROKEN_MSG);
    size_t used = d->head ? d->staging_used : 0;
    DV_CHECK(d->path != PATH_MPI || n <= d->staging_cap - used, err, "dv_comm_allreduce_start",
             "a bucket of %zu floats does not fit in the host staging buffer: %zu of its %zu "
             "floats are held by the requests in flight (max_floats of dv_comm_device_init)",
             n, used, d->staging_cap);
    dev_req *r = calloc(1, sizeof *r);
    DV_CHECK(r, err, "calloc", "out of memory");
    r->base.owner = c;
    r->base.x = x;
    r->base.n = n;
    r->base.dev = r;
    r->stream = (cudaStream_t)stream;
    r->started = n == 0; /* nothing to exchange, on either path */
    if (n > 0) {
        dv_status st = d->path == PATH_NCCL ? start_nccl(d, r, err) : start_mpi(d, r, err);
        if (st != DV_OK) {
            device_break(d);
            event_put(d, &r->copied);
            event_put(d, &r->done);
            free(r);
            return DV_ERR;
        }
    }
    r->prev = d->tail;
    if (d->tail)
        d->tail->next = r;
    else
        d->head = r;
    d->tail = r;
    *req = &r->base;
    return DV_OK;
}

/* MPI path: starts the host all-reduces of the pending requests in start
 * order, each once its copy into staging has finished; not blocking, it
 * stops at the first copy still running, blocking it waits for the copies
 * up to `until` (all when NULL). */
static void advance(dv_comm *c, int blocking, const dev_req *until) {
    dv_comm_device *d = c->dev;
    if (!d || d->path != PATH_MPI) return;
    for (dev_req *r = d->head; r; r = r->next) {
        if (!r->started) {
            char msg[DV_ERR_LEN] = "";
            cudaError_t rc = blocking ? event_wait(c, r->copied, msg) : cudaEventQuery(r->copied);
            if (rc == cudaErrorNotReady && !blocking) break;
            if (rc == cudaErrorNotReady) { /* the watchdog fired (a test's comm) */
                req_fail(r, msg);
                device_break(d);
            } else if (rc != cudaSuccess) {
                cuda_ok_(msg, rc, __FILE__, __LINE__, "cudaEventQuery");
                req_fail(r, msg);
                device_break(d);
            }
            /* Started even when the copy failed, on whatever staging holds:
             * the other ranks start theirs, and every rank must run the
             * same host all-reduces in the same order. */
            char why[DV_ERR_LEN];
            if (c->algo->start(c, d->staging + r->off, r->base.n, &r->inner, why) != DV_OK)
                req_fail(r, why);
            r->started = 1;
        }
        if (r == until) break;
    }
}

static void device_progress(dv_comm *c) {
    advance(c, 0, NULL);
}

static void device_flush(dv_comm *c) {
    advance(c, 1, NULL);
}

/* The wait never blocks the host: the caller's stream waits on `done`. */
static dv_status finish_nccl(dv_comm_device *d, dev_req *r, char *err) {
    DV_CHECK(!d->broken, err, "dv_comm_wait", BROKEN_MSG);
    ncclResult_t ar = ncclSuccess;
    if (!NCCL_OK(err, ncclCommGetAsyncError(d->nccl, &ar))) {
        device_break(d);
        return DV_ERR;
    }
    if (ar != ncclSuccess && ar != ncclInProgress) return nccl_async_fail(d, ar, err);
    if (!CUDA_OK(err, cudaStreamWaitEvent(r->stream, r->done, 0))) {
        device_break(d);
        return DV_ERR;
    }
    return DV_OK;
}

/* Finishes the host all-reduce (always, so MPI stays in step with the other
 * ranks), then queues the copy back. */
static dv_status finish_mpi(dv_comm *c, dv_comm_device *d, dev_req *r, char *err) {
    advance(c, 1, r);
    if (!r->started) req_fail(r, "internal error: the host all-reduce was never started");
    if (r->inner) {
        char msg[DV_ERR_LEN];
        dv_comm_request *inner = r->inner;
        r->inner = NULL;
        if (inner->algo->wait(c, inner, msg) != DV_OK) req_fail(r, msg);
    }
    if (r->failed) {
        if (err) snprintf(err, DV_ERR_LEN, "%s", r->msg);
        return DV_ERR;
    }
    DV_CHECK(!d->broken, err, "dv_comm_wait", BROKEN_MSG);
    int ok = event_get(d, &r->done, err) == DV_OK &&
             CUDA_OK(err, cudaMemcpyAsync(r->base.x, d->staging + r->off, r->base.n * sizeof(float),
                                          cudaMemcpyHostToDevice, d->stream)) &&
             CUDA_OK(err, cudaEventRecord(r->done, d->stream)) &&
             CUDA_OK(err, cudaStreamWaitEvent(r->stream, r->done, 0));
    if (!ok) {
        device_break(d);
        return DV_ERR;
    }
    return DV_OK;
}

static dv_status device_wait(dv_comm *c, dv_comm_request *req, char *err) {
    dv_comm_device *d = c->dev;
    DV_CHECK(d, err, "dv_comm_wait", "a device request, but the device side is gone");
    dev_req *r = req->dev;
    dv_status st = DV_OK;
    if (req->n > 0) st = d->path == PATH_NCCL ? finish_nccl(d, r, err) : finish_mpi(c, d, r, err);
    req_unlink(d, r);
    event_put(d, &r->copied);
    event_put(d, &r->done);
    free(r);
    return st;
}

/* ---- host flow control ---------------------------------------------------- */

/* Waits until at most `keep` events of the ring are outstanding: a watched
 * wait, whose clock starts over whenever an event completes. When the
 * watchdog hands its line back (a test's comm) the device side breaks. */
static dv_status poll_ring(dv_comm *c, dv_comm_device *d, int keep, char *err) {
    dv_watch w;
    dv_watch_begin(&w);
    w.yield_s = DV_WATCH_YIELD_DEVICE_S;
    for (;;) {
        int before = d->ring_count;
        while (d->ring_count > keep) {
            cudaError_t rc = cudaEventQuery(d->ring[d->ring_head]);
            if (rc == cudaErrorNotReady) break;
            if (rc != cudaSuccess) {
                (void)cudaGetLastError();
                device_break(d);
                DV_FAIL(err, "cudaEventQuery", "work queued on the stream failed: %s (%s)",
                        cudaGetErrorString(rc), cudaGetErrorName(rc));
            }
            d->ring_head = (d->ring_head + 1) % RING;
            d->ring_count--;
        }
        if (d->ring_count <= keep) return DV_OK;
        if (d->ring_count < before) dv_watch_progress(&w);
        if (d->nccl) {
            ncclResult_t ar = ncclSuccess;
            if (!NCCL_OK(err, ncclCommGetAsyncError(d->nccl, &ar))) {
                device_break(d);
                return DV_ERR;
            }
            if (ar != ncclSuccess && ar != ncclInProgress) return nccl_async_fail(d, ar, err);
        }
        if (d->path == PATH_MPI) { /* peers may wait on our host part */
            advance(c, 0, NULL);
            c->algo->progress(c);
        }
        if (dv_watch_poll(c, &w, err) != DV_OK) {
            device_break(d);
            return DV_ERR;
        }
    }
}

static dv_status device_stream_wait(dv_comm *c, void *stream, int keep, char *err) {
    DV_CHECK(c->dev, err, "dv_comm_stream_wait",
             "a stream was given, but dv_comm_device_init has not been called on this comm");
    DV_CHECK(keep >= 0, err, "dv_comm_stream_wait", "keep = %d: expected >= 0", keep);
    dv_comm_device *d = c->dev;
    DV_CHECK(!d->broken, err, "dv_comm_stream_wait", BROKEN_MSG);
    if (d->ring_count == RING) DV_TRY(poll_ring(c, d, RING - 1, err));
    int slot = (d->ring_head + d->ring_count) % RING;
    if (!CUDA_OK(err, cudaEventRecord(d->ring[slot], (cudaStream_t)stream))) {
        device_break(d);
        return DV_ERR;
    }
    d->ring_count++;
    return poll_ring(c, d, keep, err);
}

static const dv_comm_device_ops cuda_ops = {
    .name = "cuda",
    .init = device_init,
    .path = device_path,
    .start = device_start,
    .wait = device_wait,
    .progress = device_progress,
    .flush = device_flush,
    .stream_wait = device_stream_wait,
    .release = device_free,
};

const dv_comm_cuda_api *dv_comm_cuda_module(void) {
    static const dv_comm_cuda_api api = {DV_COMM_CUDA_ABI, sizeof(struct dv_comm), &cuda_ops};
    return &api;
}
