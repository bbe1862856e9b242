/* comm-impl.h — private to comm/ (and tests/test_comm.c, which reaches in to
 * shrink max_count so the chunking paths run on small buffers, and to switch
 * the all-reduce algorithm so both are checked in one run; test_comm_cuda.c
 * switches it too): the layout of the world handle, of the node's
 * shared-memory staging area and of an asynchronous all-reduce request, and
 * the calls between comm.c and the device side.
 *
 * Assumes MPI (mpi.h); nothing outside comm/ may depend on these fields.
 * The device side (comm_device.c, or comm_device_none.c without CUDA) keeps
 * its CUDA and NCCL state behind the opaque pointers below, so this header
 * and comm.c compile without CUDA.
 */
#ifndef DV_COMM_IMPL_H
#define DV_COMM_IMPL_H

#include <mpi.h>
#include <stdatomic.h>

#include "comm.h"

/* How dv_comm_allreduce_avg/start reduce floats. */
typedef enum dv_comm_algo {
    DV_COMM_ALGO_MPI = 0, /* MPI_Allreduce / MPI_Iallreduce on world */
    DV_COMM_ALGO_SHM,     /* node shared memory (+ MPI across nodes), see comm.c */
} dv_comm_algo;

/* The node's spin barrier, in local rank 0's part of a shared window. The
 * two words sit on separate cache lines: arrivals hammer `count` while the
 * waiters poll `gen`. */
typedef struct dv_shm_ctl {
    _Alignas(64) atomic_uint count; /* ranks arrived at the current barrier */
    _Alignas(64) atomic_uint gen;   /* barriers completed so far */
} dv_shm_ctl;

/* Staging for the shm algorithm. Each local rank owns two segments of `cap`
 * floats (one per parity of the call counter, so call k+1 can fill its
 * segment while slower ranks still copy call k's result out). */
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
    dv_comm_algo algo; /* SHM only where comm_shm_setup succeeded */
    dv_shm shm;
    dv_comm_request *pending;   /* started, not yet waited (doubly linked) */
    struct dv_comm_device *dev; /* comm_device.c; NULL until dv_comm_device_init */
    char host[256];
};

/* One dv_comm_allreduce_start: a buffer of n floats. On the MPI path it is
 * reduced in `nreq` chunks of at most max_count elements, one MPI_Iallreduce
 * each. On the shm path it moves through the phases in comm.c; `reqs` then
 * holds the cross-node MPI_Iallreduces of this rank's slice. */
struct dv_comm_request {
    dv_comm *owner;
    float *x;
    size_t n;
    int nreq;
    int done;          /* every chunk complete (MPI) / result copied out (shm) */
    int mpi_rc;        /* first MPI error seen by progress(), reported by wait */
    MPI_Request *reqs; /* (nreq) */
    int shm;           /* reduced by the shm algorithm */
    int phase;         /* shm: where it stands (enum in comm.c) */
    size_t off;        /* shm: start of the chunk being reduced */
    int parity;        /* shm: which segment set it uses */
    unsigned bar;      /* shm: barrier generation it waits to see pass */
    dv_comm_request *prev, *next;
    dv_comm_request *qnext; /* shm: next in c->shm's start-order queue */
    /* Non-NULL for a device request (x is a device pointer): its state in
     * comm_device.c. Device requests are not on `pending`; on the MPI path
     * each one owns a host request (on `pending`) over its staging range. */
    struct dv_comm_dev_req *dev;
};

/* ---- between comm.c and the device side ----------------------------------
 * comm.c calls these; comm_device.c implements them (comm_device_none.c
 * without CUDA, where no device request can exist). */

/* dv_comm_allreduce_start with a stream; req, c and x are checked. */
dv_status dv_comm_dev_start(dv_comm *c, float *x, size_t n, void *stream, dv_comm_request **req,
                            char *err);
/* dv_comm_wait of a request with req->dev set; releases it. */
dv_status dv_comm_dev_wait(dv_comm *c, dv_comm_request *req, char *err);
/* Starts the host all-reduce of every MPI-path device request whose copy to
 * the staging buffer has finished, in start order; never blocks on the GPU. */
void dv_comm_dev_progress(dv_comm *c);
/* The same, waiting for the copies: after it, every device request started
 * so far has its host all-reduce started. Every blocking collective and every
 * host start calls it first, so all ranks start their host all-reduces and
 * collectives in one order. */
void dv_comm_dev_flush(dv_comm *c);
/* Releases the device side (before MPI is finalized); accepts c->dev NULL. */
void dv_comm_dev_free(dv_comm *c);

/* The host part of dv_comm_allreduce_start (x is host memory; req, c and x
 * checked), without dv_comm_dev_flush: the device side starts its host
 * all-reduces through it. */
dv_status dv_comm_host_start(dv_comm *c, float *x, size_t n, dv_comm_request **req, char *err);

#endif
