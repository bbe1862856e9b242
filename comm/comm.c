/* comm.c — the MPI path of comm: start-up, who this rank is, the collectives
 * data parallelism needs on host buffers, error agreement and abort.
 *
 * Assumes every rank calls the collectives in the same order with the same
 * counts (as MPI requires); asynchronous all-reduces too must be started in
 * the same order on every rank. MPI is called from the thread that called
 * dv_comm_init only (MPI_THREAD_FUNNELED).
 *
 * MPI counts are int, so buffers longer than c->max_count (INT_MAX) elements
 * go out in several calls. Averages divide the sum by the world size after
 * the reduction.
 *
 * Errors inside the functions that return dv_status come back with a
 * message; the ones that cannot (first_failed, all_equal, barrier) are the
 * job's error-agreement points, so when MPI itself fails there they abort.
 */
#include "comm-impl.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The one piece of process-wide state in comm: the "[rank r/n host]" prefix
 * that every error message starts with. It is written by dv_comm_init (on the
 * thread that owns MPI, before other threads exist) and only read after, so
 * messages formatted deep inside any module name the rank without having to
 * pass the comm handle down. */
static char g_prefix[320] = "[rank ?]";

const char *dv_comm_prefix(void) {
    return g_prefix;
}

void dv_comm_format_error(char *err, const char *file, int line, const char *call, const char *fmt,
                          ...) {
    if (!err) return;
    const char *base = file ? strrchr(file, '/') : NULL;
    base = base ? base + 1 : (file ? file : "?");
    if (!call) call = "?";
    int call_len = (int)strcspn(call, "(");

    /* Format into a local buffer first so err may also be an argument
     * (wrapping an inner message: DV_FAIL(err, "load", "%s", err)). */
    char tmp[DV_ERR_LEN];
    int k = snprintf(tmp, sizeof tmp, "%s %s:%d: %.*s: ", g_prefix, base, line, call_len, call);
    if (k < 0) k = 0, tmp[0] = '\0';
    if (k < (int)sizeof tmp && fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tmp + k, sizeof tmp - (size_t)k, fmt, ap);
        va_end(ap);
    }
    memcpy(err, tmp, strlen(tmp) + 1);
}

/* For an MPI error code already in hand (DV_MPI_CHECK wants the call). */
static dv_status mpi_error(char *err, int line, const char *call, int rc) {
    char msg[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    dv_comm_format_error(err, __FILE__, line, call, "%s (MPI error %d)", msg, rc);
    return DV_ERR;
}

/* ---- start-up ----------------------------------------------------------- */

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
    snprintf(g_prefix, sizeof g_prefix, "[rank %d/%d %s]", c->rank, c->size, c->host);

    DV_MPI_CHECK(
        err, MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &c->node));
    DV_MPI_CHECK(err, MPI_Comm_set_errhandler(c->node, MPI_ERRORS_RETURN));
    DV_MPI_CHECK(err, MPI_Comm_rank(c->node, &c->local_rank));
    DV_MPI_CHECK(err, MPI_Comm_size(c->node, &c->local_size));
    return DV_OK;
}

dv_status dv_comm_init(dv_comm **out, int *argc, char ***argv, char *err) {
    DV_CHECK(out, err, "dv_comm_init", "NULL output pointer");
    *out = NULL;
    dv_comm *c = calloc(1, sizeof *c);
    DV_CHECK(c, err, "calloc", "out of memory");
    c->world = MPI_COMM_NULL;
    c->node = MPI_COMM_NULL;
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
    /* Requests never waited for are a caller bug; MPI forbids freeing or
     * cancelling a nonblocking collective and waiting could hang a failing
     * job, so only their memory is released. */
    while (c->pending) {
        dv_comm_request *r = c->pending;
        c->pending = r->next;
        free(r->reqs);
        free(r);
    }
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

static size_t min_size(size_t a, size_t b) {
    return a < b ? a : b;
}

/* Sum -> average. Dividing gives the correctly rounded sum / size; with a
 * reciprocal that is not exact (1/3) x * (1/size) is one ulp off for about
 * two thirds of values. A power of two has an exact reciprocal, so the
 * faster multiply is used there. The loop is memory-bound either way. */
static void scale_avg(float *x, size_t n, int size) {
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

dv_status dv_comm_allreduce_avg(dv_comm *c, float *x, size_t n, char *err) {
    DV_CHECK(c && (x || n == 0), err, "dv_comm_allreduce_avg", "NULL comm or buffer");
    if (c->size == 1 || n == 0) return DV_OK;
    for (size_t off = 0; off < n; off += c->max_count) {
        int count = (int)min_size(n - off, c->max_count);
        DV_MPI_CHECK(err,
                     MPI_Allreduce(MPI_IN_PLACE, x + off, count, MPI_FLOAT, MPI_SUM, c->world));
    }
    scale_avg(x, n, c->size);
    return DV_OK;
}

static void pending_unlink(dv_comm *c, dv_comm_request *r) {
    if (r->prev)
        r->prev->next = r->next;
    else
        c->pending = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

dv_status dv_comm_allreduce_start(dv_comm *c, float *x, size_t n, void *stream,
                                  dv_comm_request **req, char *err) {
    DV_CHECK(req, err, "dv_comm_allreduce_start", "NULL request pointer");
    *req = NULL;
    DV_CHECK(c && (x || n == 0), err, "dv_comm_allreduce_start", "NULL comm or buffer");
    DV_CHECK(!stream, err, "dv_comm_allreduce_start",
             "a stream was given but this is the MPI path (host buffers, stream must be NULL)");

    dv_comm_request *r = calloc(1, sizeof *r);
    DV_CHECK(r, err, "calloc", "out of memory");
    r->owner = c;
    r->x = x;
    r->n = n;
    /* One rank alone has nothing to exchange; the request still exists so
     * start/wait read the same at every world size. */
    size_t nreq = c->size > 1 && n > 0 ? (n + c->max_count - 1) / c->max_count : 0;
    if (nreq > 0) {
        r->reqs = malloc(nreq * sizeof *r->reqs);
        if (!r->reqs) {
            free(r);
            DV_FAIL(err, "malloc", "out of memory for %zu MPI requests", nreq);
        }
    }
    for (size_t k = 0; k < nreq; k++) {
        size_t off = k * c->max_count;
        int count = (int)min_size(n - off, c->max_count);
        int rc =
            MPI_Iallreduce(MPI_IN_PLACE, x + off, count, MPI_FLOAT, MPI_SUM, c->world, &r->reqs[k]);
        if (rc != MPI_SUCCESS) {
            /* Chunks already started cannot be cancelled (MPI forbids it for
             * collectives); the job is broken, so the caller aborts. */
            free(r->reqs);
            free(r);
            return mpi_error(err, __LINE__, "MPI_Iallreduce", rc);
        }
        r->nreq = (int)(k + 1);
    }
    r->done = r->nreq == 0;
    r->next = c->pending;
    if (c->pending) c->pending->prev = r;
    c->pending = r;
    *req = r;
    return DV_OK;
}

void dv_comm_progress(dv_comm *c) {
    if (!c) return;
    for (dv_comm_request *r = c->pending; r; r = r->next) {
        if (r->done || r->mpi_rc != MPI_SUCCESS) continue;
        int flag = 0;
        int rc = MPI_Testall(r->nreq, r->reqs, &flag, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS)
            r->mpi_rc = rc; /* reported by dv_comm_wait */
        else if (flag)
            r->done = 1;
    }
}

dv_status dv_comm_wait(dv_comm *c, dv_comm_request *req, char *err) {
    DV_CHECK(c && req, err, "dv_comm_wait", "NULL comm or request");
    DV_CHECK(req->owner == c, err, "dv_comm_wait", "request belongs to another comm");
    pending_unlink(c, req);
    int rc = req->mpi_rc;
    const char *call = rc != MPI_SUCCESS ? "MPI_Testall" : "MPI_Waitall";
    if (rc == MPI_SUCCESS && !req->done)
        rc = MPI_Waitall(req->nreq, req->reqs, MPI_STATUSES_IGNORE);
    float *x = req->x;
    size_t n = req->n;
    free(req->reqs);
    free(req);
    if (rc != MPI_SUCCESS) return mpi_error(err, __LINE__, call, rc);
    scale_avg(x, n, c->size);
    return DV_OK;
}

/* ---- other collectives -------------------------------------------------- */

dv_status dv_comm_bcast(dv_comm *c, void *buf, size_t bytes, int root, char *err) {
    DV_CHECK(c && (buf || bytes == 0), err, "dv_comm_bcast", "NULL comm or buffer");
    DV_CHECK(root >= 0 && root < c->size, err, "dv_comm_bcast", "root %d is not a rank of %d", root,
             c->size);
    if (c->size == 1) return DV_OK;
    for (size_t off = 0; off < bytes; off += c->max_count) {
        int count = (int)min_size(bytes - off, c->max_count);
        DV_MPI_CHECK(err, MPI_Bcast((char *)buf + off, count, MPI_BYTE, root, c->world));
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
    if (n == 0) return DV_OK;
    DV_MPI_CHECK(err, MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, mop, c->world));
    return DV_OK;
}

/* The agreement points have no status to return: if MPI fails there the
 * ranks can no longer agree on anything, so the job ends. */
static void abort_on_mpi_error(dv_comm *c, int rc, const char *call) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    char line[DV_ERR_LEN + 64];
    snprintf(line, sizeof line, "%s: %s (MPI error %d)", call, msg, rc);
    dv_comm_abort(c, 1, line);
}

int dv_comm_first_failed(dv_comm *c, int ok) {
    int mine = ok ? INT_MAX : c->rank, lowest = INT_MAX;
    abort_on_mpi_error(c, MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, c->world),
                       "dv_comm_first_failed: MPI_Allreduce");
    return lowest == INT_MAX ? -1 : lowest;
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
    uint64_t h = buf ? hash_bytes(buf, bytes) : hash_bytes("", 0);
    /* max(h) and max(~h) = ~min(h) in one reduction: equal iff min == max. */
    uint64_t mine[2] = {h, ~h}, top[2] = {0, 0};
    abort_on_mpi_error(c, MPI_Allreduce(mine, top, 2, MPI_UINT64_T, MPI_MAX, c->world),
                       "dv_comm_all_equal: MPI_Allreduce");
    return top[0] == ~top[1];
}

void dv_comm_barrier(dv_comm *c) {
    abort_on_mpi_error(c, MPI_Barrier(c->world), "dv_comm_barrier: MPI_Barrier");
}

void dv_comm_abort(dv_comm *c, int code, const char *msg) {
    fprintf(stderr, "%s %s\n", g_prefix, msg ? msg : "aborting");
    fflush(stderr);
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized)
        MPI_Abort(c && c->world != MPI_COMM_NULL ? c->world : MPI_COMM_WORLD, code);
    exit(code); /* MPI_Abort should not return; without MPI, end this process */
}
