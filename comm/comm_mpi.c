/* comm_mpi.c — the mpi algorithm of comm's float averages: one
 * MPI_Iallreduce per chunk, waited for at once for the blocking average and
 * at dv_comm_wait for the asynchronous one, both on world, then the division by the world size
 * (dv_comm_scale_avg). Forced by DIVE_COMM_ALGO=mpi; serves wherever shm
 * does not apply. It never shards: every rank's shard is the whole vector.
 *
 * Assumes every rank starts the same all-reduces in the same order with the
 * same n (MPI's rule for collectives). MPI counts are int, so buffers longer
 * than c->max_count (INT_MAX) elements go out in several calls. MPI moves
 * its own requests on, so progress only notices completions and there is
 * nothing to drain. Every wait is the watchdog's (dv_comm_mpi_wait): the
 * blocking average too is an MPI_Iallreduce waited for that way.
 */
#include "comm-impl.h"

#include <stdlib.h>

static dv_status mpi_avg(dv_comm *c, float *x, size_t n, char *err) {
    for (size_t off = 0; off < n; off += c->max_count) {
        int count = (int)dv_comm_min(n - off, c->max_count);
        MPI_Request req = MPI_REQUEST_NULL;
        DV_MPI_CHECK(
            err, MPI_Iallreduce(MPI_IN_PLACE, x + off, count, MPI_FLOAT, MPI_SUM, c->world, &req));
        DV_MPI_CHECK(err, dv_comm_mpi_wait(c, 1, &req));
    }
    dv_comm_scale_avg(x, n, c->size);
    return DV_OK;
}

/* One MPI_Iallreduce per max_count chunk of r. */
static dv_status start_chunks(dv_comm *c, dv_comm_request *r, char *err) {
    size_t n = r->n;
    size_t nreq = c->size > 1 && n > 0 ? (n + c->max_count - 1) / c->max_count : 0;
    if (nreq > 0) {
        r->reqs = malloc(nreq * sizeof *r->reqs);
        DV_CHECK(r->reqs, err, "malloc", "out of memory for %zu MPI requests", nreq);
    }
    for (size_t k = 0; k < nreq; k++) {
        size_t off = k * c->max_count;
        int count = (int)dv_comm_min(n - off, c->max_count);
        int rc = MPI_Iallreduce(MPI_IN_PLACE, r->x + off, count, MPI_FLOAT, MPI_SUM, c->world,
                                &r->reqs[k]);
        /* Chunks already started cannot be cancelled (MPI forbids it for
         * collectives); the job is broken, so the caller aborts. */
        if (rc != MPI_SUCCESS) return DV_MPI_ERROR(err, "MPI_Iallreduce", rc);
        r->nreq = (int)(k + 1);
    }
    /* One rank alone has nothing to exchange; the request still exists so
     * start/wait read the same at every world size. */
    r->done = r->nreq == 0;
    return DV_OK;
}

static dv_status mpi_start(dv_comm *c, float *x, size_t n, dv_comm_request **req, char *err) {
    *req = NULL;
    dv_comm_request *r = NULL;
    DV_TRY(dv_comm_request_new(c, &dv_comm_algo_mpi, x, n, &r, err));
    if (start_chunks(c, r, err) != DV_OK) {
        dv_comm_request_release(c, r);
        return DV_ERR;
    }
    *req = r;
    return DV_OK;
}

static void mpi_progress(dv_comm *c) {
    for (dv_comm_request *r = c->pending; r; r = r->next) {
        if (r->algo != &dv_comm_algo_mpi || r->done || r->mpi_rc != MPI_SUCCESS) continue;
        int flag = 0;
        int rc = MPI_Testall(r->nreq, r->reqs, &flag, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS)
            r->mpi_rc = rc; /* reported by the wait */
        else if (flag)
            r->done = 1;
    }
}

static dv_status mpi_wait(dv_comm *c, dv_comm_request *r, char *err) {
    int rc = r->mpi_rc;
    const char *call = rc != MPI_SUCCESS ? "MPI_Testall" : "MPI_Testsome";
    if (rc == MPI_SUCCESS && !r->done) rc = dv_comm_mpi_wait(c, r->nreq, r->reqs);
    float *x = r->x;
    size_t n = r->n;
    dv_comm_request_release(c, r);
    if (rc != MPI_SUCCESS) return DV_MPI_ERROR(err, call, rc);
    dv_comm_scale_avg(x, n, c->size);
    return DV_OK;
}

static void mpi_drain(dv_comm *c) {
    (void)c;
}

static int mpi_shard(const dv_comm *c, size_t n, size_t *lo, size_t *hi) {
    (void)c;
    *lo = 0;
    *hi = n;
    return 0;
}

static void mpi_release(dv_comm *c) {
    (void)c;
}

const dv_comm_algo dv_comm_algo_mpi = {
    .name = "mpi",
    .avg = mpi_avg,
    .start = mpi_start,
    .progress = mpi_progress,
    .wait = mpi_wait,
    .drain = mpi_drain,
    .shard = mpi_shard,
    .release = mpi_release,
};
