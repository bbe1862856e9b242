/* comm-impl.h — private to comm/ (and tests/test_comm.c, which reaches in to
 * shrink max_count and the shm round size so the chunking paths run on small
 * buffers, and to switch the all-reduce algorithm so both are checked in one
 * run; test_comm_cuda.c switches it too): the layout of the world handle, of
 * the node's shared-memory staging area and of an asynchronous all-reduce
 * request, and the two tables comm.c reaches its parts through.
 *
 * The files of comm/ and who calls whom (no file calls one above it, so
 * there is no call loop):
 *
 *   comm.c            start-up, ranks, the public API: dispatch through
 *                     c->algo and c->devops, and the other collectives
 *   comm_device_none.c  the device side until dv_comm_device_init loads the
 *                     CUDA module, whose comm_device.c takes over (NCCL, or
 *                     MPI through pinned memory); both are reached only
 *                     through their dv_comm_device_ops table, and the module
 *                     runs its host all-reduces through c->algo
 *   comm_mpi.c        the algorithm tables: how floats are averaged
 *   comm_shm.c
 *   comm_watch.c      the watchdog (watch-impl.h): the watched wait every
 *                     blocking collective polls through, the post-mortem
 *                     that names the ranks that did not arrive; error
 *                     agreement
 *   comm_common.c     what all of them share: requests, the average's
 *                     division, MPI error messages, abort
 *
 * Assumes MPI (mpi.h); nothing outside comm/ may depend on these fields.
 * The device side keeps its CUDA and NCCL state behind the opaque pointers
 * below, so this header and every file but comm_device.c compile without
 * CUDA; comm_device.c is built into the CUDA module (libdive-cuda.so),
 * never into libdive.so.
 */
#ifndef DV_COMM_IMPL_H
#define DV_COMM_IMPL_H

#include <mpi.h>
#include <stdatomic.h>

#include "comm.h"
#include "watch-impl.h"

typedef struct dv_comm_algo dv_comm_algo;
typedef struct dv_comm_device_ops dv_comm_device_ops;

/* The node's spin barrier, in local rank 0's part of a shared window. The
 * two words sit on separate cache lines: arrivals hammer `count` while the
 * waiters poll `gen`. */
typedef struct dv_shm_ctl {
    _Alignas(64) atomic_uint count; /* ranks arrived at the current barrier */
    _Alignas(64) atomic_uint gen;   /* barriers completed so far */
} dv_shm_ctl;

/* Staging for the shm algorithm (comm_shm.c). Each local rank owns two
 * segments of `cap` floats (one per parity of the call counter, so call k+1
 * can fill its segment while slower ranks still copy call k's result out). */
typedef struct dv_shm {
    MPI_Win ctl_win; /* holds *ctl; MPI_WIN_NULL when shm is off */
    dv_shm_ctl *ctl;
    MPI_Win win;                  /* the segments; MPI_WIN_NULL until the first reduce */
    size_t chunk;                 /* floats reduced per round; longer buffers take several */
    size_t cap;                   /* floats per segment (multiple of DV_SHM_ALIGN) */
    float **seg;                  /* (2, local_size): seg[p * local_size + q] */
    MPI_Comm cross;               /* same local rank on every node; MPI_COMM_NULL on one node */
    unsigned long calls;          /* reduces begun: parity of the segments to use */
    dv_comm_request *head, *tail; /* started, not yet reduced, in start order */
    MPI_Win gwin;                 /* dv_comm_shared_buffer's window; MPI_WIN_NULL if none */
    size_t gcap;                  /* floats in each rank's shared buffer */
    float **gbuf;                 /* (local_size): every local rank's shared buffer */
} dv_shm;

struct dv_comm {
    MPI_Comm world; /* dup of MPI_COMM_WORLD, MPI_ERRORS_RETURN */
    MPI_Comm node;  /* ranks sharing this node's memory (split_type SHARED) */
    int rank, size;
    int local_rank, local_size;
    int owns_mpi; /* 1 when this handle called MPI_Init_thread: free finalizes */
    /* Largest element (or byte) count handed to one MPI call; MPI counts are
     * int, so longer buffers go out in several calls. INT_MAX except in tests. */
    size_t max_count;
    const dv_comm_algo *algo; /* how floats are averaged: shm only where its setup served */
    dv_shm shm;
    dv_comm_request *pending;         /* started, not yet waited (doubly linked) */
    const dv_comm_device_ops *devops; /* the device side's table */
    struct dv_comm_device *dev;       /* its state; NULL until dv_comm_device_init */
    dv_watchdog watch;                /* comm_watch.c: timeout, step, sequence hash */
    char host[256];
};

/* Entering a public collective: the watchdog's message names it, and it is
 * folded into the sequence hash. */
static inline void dv_comm_enter(dv_comm *c, dv_coll kind, uint64_t count) {
    c->watch.what = kind;
    c->watch.hash = dv_comm_hash_fold(c->watch.hash, kind, count);
    c->watch.calls++;
}

/* One dv_comm_allreduce_start: a buffer of n floats. On the MPI path it is
 * reduced in `nreq` chunks of at most max_count elements, one MPI_Iallreduce
 * each. On the shm path it moves through the phases in comm_shm.c; `reqs`
 * then holds the cross-node MPI_Iallreduces of this rank's slice. */
struct dv_comm_request {
    dv_comm *owner;
    const dv_comm_algo
        *algo; /* the algorithm that started it finishes it; NULL on a device request */
    float *x;
    size_t n;
    int nreq;
    int done;          /* every chunk complete (MPI) / result copied out (shm) */
    int mpi_rc;        /* first MPI error seen by progress(), reported by wait */
    MPI_Request *reqs; /* (nreq) */
    int phase;         /* shm: where it stands (enum in comm_shm.c) */
    size_t off;        /* shm: start of the chunk being reduced */
    int parity;        /* shm: which segment set it uses */
    unsigned bar;      /* shm: barrier generation it waits to see pass */
    dv_comm_request *prev, *next;
    dv_comm_request *qnext; /* shm: next in c->shm's start-order queue */
    /* Non-NULL for a device request (x is a device pointer): its state in
     * comm_device.c. Device requests are not on `pending`; on the MPI path
     * each one owns a host request (on `pending`) over its staging range. */
    struct dv_comm_device_req *dev;
};

/* ---- the float-averaging algorithms ----------------------------------------
 * comm.c's public functions dispatch through c->algo; the device side runs
 * its host all-reduces through it too. Every rank uses the same algorithm.
 * Host buffers only. The ops never start a device side's host all-reduces:
 * the caller has done that first (c->devops->flush) wherever the public API
 * promises it. */
struct dv_comm_algo {
    const char *name; /* DIVE_COMM_ALGO's value: "mpi" or "shm" */
    /* dv_comm_allreduce_avg, for size > 1 and n > 0. */
    dv_status (*avg)(dv_comm *c, float *x, size_t n, char *err);
    /* The host dv_comm_allreduce_start (req, c and x checked): a request
     * with algo set to this table, on c->pending. */
    dv_status (*start)(dv_comm *c, float *x, size_t n, dv_comm_request **req, char *err);
    /* Moves this algorithm's requests on without blocking. */
    void (*progress)(dv_comm *c);
    /* Completes req (req->algo is this table) and releases it, also when it
     * fails. */
    dv_status (*wait)(dv_comm *c, dv_comm_request *req, char *err);
    /* Completes the requests started so far that advance only when their
     * owner calls into comm: the peers may be inside a blocking collective
     * this rank is about to enter. */
    void (*drain)(dv_comm *c);
    /* dv_comm_shard; returns 1 where the ranks' shards split [0, n) between
     * them, 0 where each is all of it. */
    int (*shard)(const dv_comm *c, size_t n, size_t *lo, size_t *hi);
    /* dv_comm_reduce_scatter_avg, dv_comm_allgather and dv_comm_shared_buffer,
     * called only for an n that shard splits, after the caller drained
     * (NULL in an algorithm whose shard never splits). shared_buffer returns
     * NULL once one exists. */
    dv_status (*reduce_scatter)(dv_comm *c, float *x, size_t n, char *err);
    dv_status (*allgather)(dv_comm *c, float *x, size_t n, char *err);
    float *(*shared_buffer)(dv_comm *c, size_t n, char *err);
    /* Frees the algorithm's state in c, whether or not it is c->algo, also a
     * part left by a failed setup; MPI handles only while MPI is up. */
    void (*release)(dv_comm *c);
};

extern const dv_comm_algo dv_comm_algo_mpi; /* MPI_Allreduce / MPI_Iallreduce on world */
extern const dv_comm_algo dv_comm_algo_shm; /* node shared memory (+ MPI across nodes) */

/* Puts c->shm in its empty state (null handles), which release accepts. */
void dv_comm_shm_clear(dv_comm *c);
/* Collective over world: where every node holds the same number (> 1) of
 * ranks, sets up the node's shared memory and makes shm c's algorithm;
 * elsewhere leaves c as it is. */
dv_status dv_comm_shm_setup(dv_comm *c, char *err);

/* Makes `algo` c's algorithm: mpi, or the one dv_comm_init chose (tests run
 * both on one comm). Collective, like the drain it starts with: progress and
 * drain reach only c->algo's requests. */
static inline void dv_comm_set_algo(dv_comm *c, const dv_comm_algo *algo) {
    c->algo->drain(c);
    c->algo = algo;
}

/* ---- the device side ---------------------------------------------------------
 * comm_device.c's table (comm_device_none.c's without CUDA), the interface
 * of a module that could be loaded at run time: comm.c reaches the device
 * side only through it, and the device side calls nothing in comm.c (its
 * host all-reduces go through c->algo, its agreement through
 * comm_common.c). Every op but init accepts c->dev NULL. */
struct dv_comm_device_ops {
    const char *name; /* "cuda" or "none" */
    /* dv_comm_device_init (c checked). */
    dv_status (*init)(dv_comm *c, int device, int ndevices, dv_comm_device_mode mode,
                      size_t max_floats, char *err);
    /* dv_comm_device_path (c not NULL). */
    const char *(*path)(const dv_comm *c);
    /* dv_comm_allreduce_start with a stream (req, c and x checked). */
    dv_status (*start)(dv_comm *c, float *x, size_t n, void *stream, dv_comm_request **req,
                       char *err);
    /* dv_comm_wait of a request with req->dev set; releases it. */
    dv_status (*wait)(dv_comm *c, dv_comm_request *req, char *err);
    /* Starts the host all-reduce of every MPI-path device request whose copy
     * to the staging buffer has finished, in start order; never blocks on
     * the GPU. */
    void (*progress)(dv_comm *c);
    /* The same, waiting for the copies: after it, every device request
     * started so far has its host all-reduce started. Every blocking
     * collective and every host start calls it first, so all ranks start
     * their host all-reduces and collectives in one order. */
    void (*flush)(dv_comm *c);
    /* dv_comm_stream_wait (c checked, stream not NULL). */
    dv_status (*stream_wait)(dv_comm *c, void *stream, int keep, char *err);
    /* Releases the device side (before MPI is finalized). */
    void (*release)(dv_comm *c);
};

/* The device side until dv_comm_device_init loads the CUDA module
 * (comm_device_none.c): device buffers are an error that says why, and
 * init loads the module and hands over to its table. */
extern const dv_comm_device_ops dv_comm_device_none;

/* What the CUDA module (libdive-cuda.so; comm_device.c is in it) exports
 * as dv_comm_cuda_module(): its table, with what refuses a module of
 * another build (it reads struct dv_comm, so the layouts must agree). */
#define DV_COMM_CUDA_ABI 2
typedef struct dv_comm_cuda_api {
    int abi;          /* DV_COMM_CUDA_ABI */
    size_t comm_size; /* sizeof(struct dv_comm) */
    const dv_comm_device_ops *ops;
} dv_comm_cuda_api;

/* ---- comm_common.c: below every other file of comm ----------------------- */

static inline size_t dv_comm_min(size_t a, size_t b) {
    return a < b ? a : b;
}

/* A request of `algo` over x (n floats), zeroed but for those, on
 * c->pending. */
dv_status dv_comm_request_new(dv_comm *c, const dv_comm_algo *algo, float *x, size_t n,
                              dv_comm_request **out, char *err);
/* Takes r off c->pending and frees it (its MPI requests must be complete or
 * given up). */
void dv_comm_request_release(dv_comm *c, dv_comm_request *r);

/* Sum -> average over `size` ranks, correctly rounded (see comm_common.c). */
void dv_comm_scale_avg(float *x, size_t n, int size);

/* DV_MPI_ERROR(err, call, rc): DV_ERR with the message of an MPI error code
 * already in hand (DV_MPI_CHECK wants the call itself). */
dv_status dv_comm_mpi_error(char *err, const char *file, int line, const char *call, int rc);
#define DV_MPI_ERROR(err, call, rc) dv_comm_mpi_error((err), __FILE__, __LINE__, (call), (rc))

/* The agreement of dv_comm_first_failed without its drain (comm_watch.c:
 * a watched all-reduce): the lowest rank that passed ok == 0, or -1. Ends
 * the job when MPI fails. */
int dv_comm_agree(dv_comm *c, int ok);
/* Ends the job (dv_comm_abort) when rc is an MPI error: the error-agreement
 * points have no status to return. `call` names the place. */
void dv_comm_abort_on_mpi_error(dv_comm *c, int rc, const char *call);

#endif
