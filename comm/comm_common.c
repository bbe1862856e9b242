/* comm_common.c — what the other files of comm share, below all of them:
 * request bookkeeping, the division that turns a sum into an average, the
 * message of an MPI error code, and ending the job.
 *
 * Calls no other file of comm, so the algorithms (comm_mpi.c, comm_shm.c),
 * the watchdog (comm_watch.c) and the device side (comm_device.c) can use it
 * without a call loop through comm.c. Assumes MPI has started (dv_comm_init) except in
 * dv_comm_abort, which also works before and after.
 */
#include "comm-impl.h"

#include <stdio.h>
#include <stdlib.h>

dv_status dv_comm_request_new(dv_comm *c, const dv_comm_algo *algo, float *x, size_t n,
                              dv_comm_request **out, char *err) {
    *out = NULL;
    dv_comm_request *r = calloc(1, sizeof *r);
    DV_CHECK(r, err, "calloc", "out of memory");
    r->owner = c;
    r->algo = algo;
    r->x = x;
    r->n = n;
    r->next = c->pending;
    if (c->pending) c->pending->prev = r;
    c->pending = r;
    *out = r;
    return DV_OK;
}

void dv_comm_request_release(dv_comm *c, dv_comm_request *r) {
    if (r->prev)
        r->prev->next = r->next;
    else
        c->pending = r->next;
    if (r->next) r->next->prev = r->prev;
    free(r->reqs);
    free(r);
}

/* Dividing gives the correctly rounded sum / size; with a reciprocal that
 * is not exact (1/3) x * (1/size) is one ulp off for about two thirds of
 * values. A power of two has an exact reciprocal, so the faster multiply is
 * used there. The loop is memory-bound either way. */
void dv_comm_scale_avg(float *x, size_t n, int size) {
    if (size <= 1) return;
    if ((size & (size - 1)) == 0) {
        const float s = 1.0f / (float)size;
        for (size_t i = 0; i < n; i++)
            x[i] *= s;
    } else {
        const float s = (float)size;
        for (size_t i = 0; i < n; i++)
            x[i] /= s;
    }
}

dv_status dv_comm_mpi_error(char *err, const char *file, int line, const char *call, int rc) {
    char msg[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return dv_error_at(err, file, line, call, "%s (MPI error %d)", msg, rc);
}

/* If MPI fails at an agreement point the ranks can no longer agree on
 * anything, so the job ends. */
void dv_comm_abort_on_mpi_error(dv_comm *c, int rc, const char *call) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    char line[DV_ERR_LEN + 64];
    snprintf(line, sizeof line, "%s: %s (MPI error %d)", call, msg, rc);
    dv_comm_abort(c, 1, line);
}

void dv_comm_abort(dv_comm *c, int code, const char *msg) {
    /* a message made by dv_error_at already starts with the origin */
    if (!msg) msg = "aborting";
    if (dv_error_text(msg) != msg)
        fprintf(stderr, "%s\n", msg);
    else
        fprintf(stderr, "%s %s\n", dv_error_origin(), msg);
    fflush(stderr);
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized)
        MPI_Abort(c && c->world != MPI_COMM_NULL ? c->world : MPI_COMM_WORLD, code);
    exit(code); /* MPI_Abort should not return; without MPI, end this process */
}
