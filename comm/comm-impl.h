/* comm-impl.h — private to comm/ (and tests/test_comm.c, which reaches in to
 * shrink max_count so the chunking paths run on small buffers): the layout of
 * the world handle and of an asynchronous all-reduce request.
 *
 * Assumes MPI (mpi.h); nothing outside comm/ may depend on these fields.
 */
#ifndef DV_COMM_IMPL_H
#define DV_COMM_IMPL_H

#include <mpi.h>

#include "comm.h"

struct dv_comm {
    MPI_Comm world; /* dup of MPI_COMM_WORLD, MPI_ERRORS_RETURN */
    MPI_Comm node;  /* ranks sharing this node's memory (split_type SHARED) */
    int rank, size;
    int local_rank, local_size;
    int owns_mpi; /* 1 when this handle called MPI_Init_thread: free finalizes */
    /* Largest element (or byte) count handed to one MPI call; MPI counts are
     * int, so longer buffers go out in several calls. INT_MAX except in tests. */
    size_t max_count;
    dv_comm_request *pending; /* started, not yet waited (doubly linked) */
    char host[256];
};

/* One dv_comm_allreduce_start: a buffer of n floats reduced in `nreq`
 * chunks of at most max_count elements, one MPI_Iallreduce each. */
struct dv_comm_request {
    dv_comm *owner;
    float *x;
    size_t n;
    int nreq;
    int done;          /* MPI_Testall in progress() saw every chunk complete */
    int mpi_rc;        /* first MPI error seen by progress(), reported by wait */
    MPI_Request *reqs; /* (nreq) */
    dv_comm_request *prev, *next;
};

#endif
