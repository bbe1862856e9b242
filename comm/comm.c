/* comm.c — the host path of comm: start-up, who this rank is, the
 * collectives data parallelism needs on host buffers, error agreement and
 * abort.
 *
 * Assumes every rank calls the collectives in the same order with the same
 * counts (as MPI requires); asynchronous all-reduces too must be started in
 * the same order on every rank, with the same sizes. MPI is called from the
 * thread that called dv_comm_init only (MPI_THREAD_FUNNELED).
 *
 * The float average has two algorithms (c->algo):
 *  - mpi: MPI_Allreduce / MPI_Iallreduce on world. Forced by
 *    DIVE_COMM_ALGO=mpi; used wherever shm does not apply.
 *  - shm (default when every node holds the same number L > 1 of ranks):
 *    Open MPI's all-reduce over its shared-memory transport cost as much as
 *    the half-batch forward pass it was meant to hide (0.25-0.3 ms for 0.94
 *    MB on 2 ranks), so 2 ranks trained no faster than 1. Here each local
 *    rank owns a segment of an MPI-3 shared window: it copies its buffer in;
 *    node barrier; local rank r sums slice r of all L segments in the fixed
 *    order 0..L-1 (every replica gets the same bits) and writes the average
 *    over its own segment; barrier; every rank copies all slices out. With
 *    several nodes, rank r all-reduces its summed slice with local rank r of
 *    the other nodes (MPI, `cross` communicator) before dividing. The
 *    barrier is a split-phase spin barrier on two counters in the window
 *    (~0.35 us here against ~0.7 us for MPI_Barrier on the node), so start
 *    copies in without waiting, progress moves requests on without ever
 *    blocking, and wait finishes them in start order. There is no progress
 *    thread: the ranks already use every core.
 *    Segments grow collectively (every rank sees the same sizes) when a
 *    larger buffer than ever before arrives, so the first step reallocates
 *    and later ones do not. DIVE_COMM_FAKE_NODE_SIZE=K (testing only) makes
 *    each K consecutive ranks a "node", to run the multi-node path on one
 *    machine.
 * Averages divide the sum by the world size (see scale_avg), on both paths.
 *
 * MPI counts are int, so buffers longer than c->max_count (INT_MAX) elements
 * go out in several calls.
 *
 * Errors inside the functions that return dv_status come back with a
 * message; the ones that cannot (first_failed, all_equal, barrier) are the
 * job's error-agreement points, so when MPI itself fails there they abort.
 *
 * Device buffers (a stream given) are comm_device.c's; on its MPI path it
 * runs this file's host all-reduce on a staging buffer through
 * dv_comm_host_start, and dv_comm_dev_flush (called by every blocking
 * collective and host start) keeps those host all-reduces in one order on
 * every rank.
 */
#include "comm-impl.h"

#include <limits.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* For an MPI error code already in hand (DV_MPI_CHECK wants the call). */
static dv_status mpi_error(char *err, int line, const char *call, int rc) {
    char msg[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    dv_error_at(err, __FILE__, line, call, "%s (MPI error %d)", msg, rc);
    return DV_ERR;
}

/* ---- helpers ------------------------------------------------------------ */

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

/* ---- shared-memory all-reduce -------------------------------------------- */

/* Slices and segment sizes are multiples of 16 floats (64 bytes), so two
 * ranks never write the same cache line and the sum loops stay aligned. */
#define DV_SHM_ALIGN 16
/* Polls of the barrier word before yielding: long enough (some tens of
 * microseconds) that ranks on idle cores meet without a system call, short
 * enough that an oversubscribed or busy node hands the core to the rank
 * being waited for. */
#define DV_SHM_SPIN 1000
/* Floats per round (1 MiB). A buffer far larger than the caches would go
 * through DRAM three times (copy in, sum, copy out); in rounds of this size
 * the segments and the slice of x stay in cache between the phases, for two
 * barriers (~1 us) a round. An MLP's gradient (0.94 MB) is one round. */
#define DV_SHM_CHUNK ((size_t)1 << 18)

enum { SHM_QUEUED = 0, SHM_SUMMING, SHM_CROSS, SHM_COPYING };

static size_t round_up(size_t n, size_t k) {
    return (n + k - 1) / k * k;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Split-phase barrier over the node: arrive returns the generation to wait
 * past. The generation is read before arriving, and it cannot move until
 * this rank has arrived, so it is the current one. The last rank to arrive
 * resets the count before publishing the next generation (release), and
 * everyone reads the generation with acquire, so each rank's segment writes
 * before arriving are visible to every rank after the barrier. */
static unsigned bar_arrive(dv_comm *c) {
    dv_shm_ctl *k = c->shm.ctl;
    unsigned g = atomic_load_explicit(&k->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&k->count, 1, memory_order_acq_rel) + 1 ==
        (unsigned)c->local_size) {
        atomic_store_explicit(&k->count, 0, memory_order_relaxed);
        atomic_store_explicit(&k->gen, g + 1, memory_order_release);
    }
    return g;
}

static int bar_passed(dv_comm *c, unsigned g) {
    return atomic_load_explicit(&c->shm.ctl->gen, memory_order_acquire) != g;
}

static void bar_wait(dv_comm *c, unsigned g) {
    for (unsigned i = 0; !bar_passed(c, g);) {
        if (i < DV_SHM_SPIN) {
            cpu_relax();
            i++;
        } else {
            sched_yield(); /* from now on every poll: a peer is off its core */
        }
    }
}

/* Blocking: waits for generation g to pass; else only looks. */
static int bar_ready(dv_comm *c, unsigned g, int blocking) {
    if (!blocking) return bar_passed(c, g);
    bar_wait(c, g);
    return 1;
}

/* Called from comm_setup on every rank (collective over world). Shared memory
 * only pays where a node holds several ranks; the hierarchical scheme needs
 * the same number of ranks on every node (each local rank owns slice r of
 * every node's buffer), else the MPI path serves. */
static dv_status shm_setup(dv_comm *c, char *err) {
    int ls[2] = {c->local_size, -c->local_size};
    DV_MPI_CHECK(err, MPI_Allreduce(MPI_IN_PLACE, ls, 2, MPI_INT, MPI_MAX, c->world));
    if (c->size == 1 || ls[0] == 1 || ls[0] != -ls[1]) return DV_OK;

    if (c->size > c->local_size) {
        DV_MPI_CHECK(err, MPI_Comm_split(c->world, c->local_rank, c->rank, &c->shm.cross));
        DV_MPI_CHECK(err, MPI_Comm_set_errhandler(c->shm.cross, MPI_ERRORS_RETURN));
    }
    /* MPI aligns a shared window only to 8 or 16 bytes: ask for one line
     * more and place the block on a 64-byte boundary inside it */
    MPI_Aint bytes = c->local_rank == 0 ? (MPI_Aint)(sizeof(dv_shm_ctl) + 64) : 0;
    void *base = NULL;
    DV_MPI_CHECK(err,
                 MPI_Win_allocate_shared(bytes, 1, MPI_INFO_NULL, c->node, &base, &c->shm.ctl_win));
    DV_MPI_CHECK(err, MPI_Win_set_errhandler(c->shm.ctl_win, MPI_ERRORS_RETURN));
    MPI_Aint size = 0;
    int disp = 0;
    DV_MPI_CHECK(err, MPI_Win_shared_query(c->shm.ctl_win, 0, &size, &disp, &base));
    DV_CHECK(base && (size_t)size >= sizeof(dv_shm_ctl) + 64, err, "MPI_Win_shared_query",
             "local rank 0's barrier block is missing (%ld bytes)", (long)size);
    /* the same offset on every rank: the shared memory is one page-aligned
     * mapping, mapped at page-aligned addresses in each process */
    uintptr_t at = ((uintptr_t)base + 63) & ~(uintptr_t)63;
    c->shm.ctl = (dv_shm_ctl *)at;
    if (c->local_rank == 0) {
        atomic_init(&c->shm.ctl->count, 0);
        atomic_init(&c->shm.ctl->gen, 0);
    }
    c->shm.seg = calloc(2 * (size_t)c->local_size, sizeof *c->shm.seg);
    DV_CHECK(c->shm.seg, err, "calloc", "out of memory");
    DV_MPI_CHECK(err, MPI_Barrier(c->node)); /* the block is initialized */
    c->shm.chunk = DV_SHM_CHUNK;
    c->algo = DV_COMM_ALGO_SHM;
    return DV_OK;
}

/* The sum of slice [lo, hi) over the node's segments of one parity, in local
 * rank order 0..L-1 (so every rank of every node gets the same bits), written
 * over this rank's own segment (only this rank reads that slice until the
 * next barrier). `div` > 1 turns the sum into the average as scale_avg
 * does: divide, or multiply by an exact power-of-two reciprocal. */
static void shm_sum(float *const *seg, int nseg, float *out, size_t lo, size_t hi, int div) {
    enum { B = 512 }; /* a block stays in L1 while the segments are added */
    float t[B];
    const int pow2 = (div & (div - 1)) == 0;
    const float inv = 1.0f / (float)div, d = (float)div;
    for (size_t i = lo; i < hi; i += B) {
        size_t m = hi - i < B ? hi - i : B;
        const float *s0 = seg[0] + i;
        for (size_t j = 0; j < m; j++)
            t[j] = s0[j];
        for (int q = 1; q < nseg; q++) {
            const float *sq = seg[q] + i;
            for (size_t j = 0; j < m; j++)
                t[j] += sq[j];
        }
        float *o = out + i;
        if (div <= 1)
            memcpy(o, t, m * sizeof *t);
        else if (pow2)
            for (size_t j = 0; j < m; j++)
                o[j] = t[j] * inv;
        else
            for (size_t j = 0; j < m; j++)
                o[j] = t[j] / d;
    }
}

/* Local rank q's slice of n floats. */
static void shm_slice(const dv_comm *c, size_t n, int q, size_t *lo, size_t *hi) {
    size_t chunk = round_up((n + (size_t)c->local_size - 1) / (size_t)c->local_size, DV_SHM_ALIGN);
    *lo = min_size((size_t)q * chunk, n);
    *hi = min_size(*lo + chunk, n);
}

/* Moves request r (the head of the queue) on as far as it goes; with
 * `blocking` 0 it never waits on another rank. Returns 1 once the result is
 * in r->x. Per round of at most shm.chunk floats, phases: QUEUED -> copy x
 * into the own segment, barrier A -> SUMMING: sum the own slice (-> CROSS:
 * all-reduce it across nodes) -> barrier B -> COPYING: gather every slice
 * into x. Segments alternate by
 * parity: call k+2 may overwrite call k's segment because every rank passed
 * barrier A of call k+1, which it reaches only after copying call k out. */
/* Starts the cross-node all-reduce of this rank's summed slice [lo, hi) of
 * `mine`, in max_count chunks; a failure is kept for the wait to report. */
static void shm_cross_start(dv_comm *c, dv_comm_request *r, float *mine, size_t lo, size_t hi) {
    size_t nreq = hi > lo ? (hi - lo + c->max_count - 1) / c->max_count : 0;
    free(r->reqs);
    r->reqs = nreq ? malloc(nreq * sizeof *r->reqs) : NULL;
    r->nreq = 0;
    if (nreq && !r->reqs && r->mpi_rc == MPI_SUCCESS) r->mpi_rc = MPI_ERR_NO_MEM;
    for (size_t k = 0; r->reqs && k < nreq; k++) {
        size_t off = lo + k * c->max_count;
        int count = (int)min_size(hi - off, c->max_count);
        int rc = MPI_Iallreduce(MPI_IN_PLACE, mine + off, count, MPI_FLOAT, MPI_SUM, c->shm.cross,
                                &r->reqs[k]);
        if (rc != MPI_SUCCESS) {
            if (r->mpi_rc == MPI_SUCCESS) r->mpi_rc = rc;
            break;
        }
        r->nreq = (int)(k + 1);
    }
}

static int shm_step(dv_comm *c, dv_comm_request *r, int blocking) {
    const int L = c->local_size, me = c->local_rank;
    int multi = c->shm.cross != MPI_COMM_NULL;
    for (;;) {
        size_t n = min_size(r->n - r->off, c->shm.chunk), lo, hi;
        float *x = r->x + r->off;
        float *const *seg = c->shm.seg + r->parity * L;
        shm_slice(c, n, me, &lo, &hi);
        switch (r->phase) {
        case SHM_QUEUED:
            r->parity = (int)(c->shm.calls++ & 1);
            seg = c->shm.seg + r->parity * L;
            memcpy(seg[me], x, n * sizeof(float));
            r->bar = bar_arrive(c);
            r->phase = SHM_SUMMING;
            /* fall through */
        case SHM_SUMMING:
            if (!bar_ready(c, r->bar, blocking)) return 0;
            shm_sum(seg, L, seg[me], lo, hi, multi ? 1 : c->size);
            if (!multi) {
                r->bar = bar_arrive(c);
                r->phase = SHM_COPYING;
                continue;
            }
            shm_cross_start(c, r, seg[me], lo, hi);
            r->phase = SHM_CROSS;
            /* fall through */
        case SHM_CROSS:
            /* On an MPI error the job is broken, but the barrier must still
             * be passed so the other local ranks reach their own report. */
            if (r->nreq > 0) {
                int flag = 1, rc;
                if (blocking)
                    rc = MPI_Waitall(r->nreq, r->reqs, MPI_STATUSES_IGNORE);
                else
                    rc = MPI_Testall(r->nreq, r->reqs, &flag, MPI_STATUSES_IGNORE);
                if (rc != MPI_SUCCESS && r->mpi_rc == MPI_SUCCESS) r->mpi_rc = rc;
                if (rc == MPI_SUCCESS && !flag) return 0;
                r->nreq = 0;
            }
            scale_avg(seg[me] + lo, hi - lo, c->size);
            r->bar = bar_arrive(c);
            r->phase = SHM_COPYING;
            /* fall through */
        case SHM_COPYING:
            if (!bar_ready(c, r->bar, blocking)) return 0;
            for (int q = 0; q < L; q++) {
                size_t qlo, qhi;
                shm_slice(c, n, q, &qlo, &qhi);
                memcpy(x + qlo, seg[q] + qlo, (qhi - qlo) * sizeof(float));
            }
            r->off += n;
            if (r->off >= r->n) {
                r->done = 1;
                return 1;
            }
            r->phase = SHM_QUEUED;
        }
    }
}

/* Runs queued shm requests in start order — the order every rank shares —
 * up to and including `until` (all of them when NULL), or, not blocking,
 * as far as they go without waiting. */
static void shm_advance(dv_comm *c, int blocking, const dv_comm_request *until) {
    while (c->shm.head) {
        dv_comm_request *r = c->shm.head;
        if (!shm_step(c, r, blocking)) return;
        c->shm.head = r->qnext;
        if (!c->shm.head) c->shm.tail = NULL;
        r->qnext = NULL;
        if (r == until) return;
    }
}

/* Every blocking collective first completes the shm requests started before
 * it: the other ranks may be inside that collective and, unlike MPI's own
 * requests, ours advance only when their owner calls into comm. Before that
 * it starts the host all-reduces of device requests (MPI path) started
 * before it, which begin only once their copy to host memory is done: every
 * rank must start them before this collective, as the others do. */
static void shm_drain(dv_comm *c) {
    dv_comm_dev_flush(c);
    if (c->shm.head) shm_advance(c, 1, NULL);
}

/* Grows the segments to hold n floats. Collective over the node, and every
 * rank asks at the same call since buckets are the same on every rank. The
 * barrier keeps the old window alive until every rank has copied its last
 * result out. */
static dv_status shm_reserve(dv_comm *c, size_t n, char *err) {
    if (n <= c->shm.cap) return DV_OK;
    shm_drain(c);
    bar_wait(c, bar_arrive(c));
    if (c->shm.win != MPI_WIN_NULL) DV_MPI_CHECK(err, MPI_Win_free(&c->shm.win));
    c->shm.cap = 0;
    size_t cap = round_up(n, DV_SHM_ALIGN);
    DV_CHECK(cap <= (size_t)(PTRDIFF_MAX / 2 / sizeof(float)), err, "dv_comm_allreduce",
             "%zu floats is too large for the shared segment", n);
    MPI_Info info;
    DV_MPI_CHECK(err, MPI_Info_create(&info));
    /* each rank's segment on its own pages: first touched, so placed, by it */
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    void *base = NULL;
    int rc = MPI_Win_allocate_shared((MPI_Aint)(2 * cap * sizeof(float)), sizeof(float), info,
                                     c->node, &base, &c->shm.win);
    MPI_Info_free(&info);
    if (rc != MPI_SUCCESS) {
        c->shm.win = MPI_WIN_NULL;
        return mpi_error(err, __LINE__, "MPI_Win_allocate_shared", rc);
    }
    DV_MPI_CHECK(err, MPI_Win_set_errhandler(c->shm.win, MPI_ERRORS_RETURN));
    for (int q = 0; q < c->local_size; q++) {
        MPI_Aint size = 0;
        int disp = 0;
        float *p = NULL;
        DV_MPI_CHECK(err, MPI_Win_shared_query(c->shm.win, q, &size, &disp, &p));
        c->shm.seg[q] = p;
        c->shm.seg[c->local_size + q] = p + cap;
    }
    c->shm.cap = cap;
    return DV_OK;
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
    dv_error_set_origin(c->rank, c->size, c->host);

    /* Testing only: DIVE_COMM_FAKE_NODE_SIZE=K makes ranks K*i..K*i+K-1 one
     * "node", so the multi-node path runs on one machine. */
    const char *fake = getenv("DIVE_COMM_FAKE_NODE_SIZE");
    int fake_k = fake && *fake ? atoi(fake) : 0;
    DV_CHECK(!fake || !*fake || fake_k >= 1, err, "dv_comm_init",
             "DIVE_COMM_FAKE_NODE_SIZE=%s is not a positive integer", fake);
    if (fake_k >= 1)
        DV_MPI_CHECK(err, MPI_Comm_split(c->world, c->rank / fake_k, c->rank, &c->node));
    else
        DV_MPI_CHECK(err, MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank,
                                              MPI_INFO_NULL, &c->node));
    DV_MPI_CHECK(err, MPI_Comm_set_errhandler(c->node, MPI_ERRORS_RETURN));
    DV_MPI_CHECK(err, MPI_Comm_rank(c->node, &c->local_rank));
    DV_MPI_CHECK(err, MPI_Comm_size(c->node, &c->local_size));

    const char *algo = getenv("DIVE_COMM_ALGO");
    int want_shm = 1;
    if (algo && !strcmp(algo, "mpi"))
        want_shm = 0;
    else
        DV_CHECK(!algo || !*algo || !strcmp(algo, "shm"), err, "dv_comm_init",
                 "DIVE_COMM_ALGO=%s: expected shm or mpi", algo);
    return want_shm ? shm_setup(c, err) : DV_OK;
}

dv_status dv_comm_init(dv_comm **out, int *argc, char ***argv, char *err) {
    DV_CHECK(out, err, "dv_comm_init", "NULL output pointer");
    *out = NULL;
    dv_comm *c = calloc(1, sizeof *c);
    DV_CHECK(c, err, "calloc", "out of memory");
    c->world = MPI_COMM_NULL;
    c->node = MPI_COMM_NULL;
    c->algo = DV_COMM_ALGO_MPI;
    c->shm.ctl_win = MPI_WIN_NULL;
    c->shm.win = MPI_WIN_NULL;
    c->shm.gwin = MPI_WIN_NULL;
    c->shm.cross = MPI_COMM_NULL;
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
    dv_comm_dev_free(c); /* NCCL and CUDA state, before MPI goes */
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
        if (c->shm.win != MPI_WIN_NULL) MPI_Win_free(&c->shm.win);
        if (c->shm.gwin != MPI_WIN_NULL) MPI_Win_free(&c->shm.gwin);
        if (c->shm.ctl_win != MPI_WIN_NULL) MPI_Win_free(&c->shm.ctl_win);
        if (c->shm.cross != MPI_COMM_NULL) MPI_Comm_free(&c->shm.cross);
        if (c->node != MPI_COMM_NULL) MPI_Comm_free(&c->node);
        if (c->world != MPI_COMM_NULL) MPI_Comm_free(&c->world);
        if (c->owns_mpi) MPI_Finalize();
    }
    free(c->shm.seg);
    free(c->shm.gbuf);
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

static int use_shm(const dv_comm *c, size_t n) {
    return c->algo == DV_COMM_ALGO_SHM && c->size > 1 && n > 0;
}

dv_status dv_comm_allreduce_avg(dv_comm *c, float *x, size_t n, char *err) {
    DV_CHECK(c && (x || n == 0), err, "dv_comm_allreduce_avg", "NULL comm or buffer");
    if (c->size == 1 || n == 0) return DV_OK;
    if (use_shm(c, n)) {
        dv_comm_request *r = NULL;
        DV_TRY(dv_comm_allreduce_start(c, x, n, NULL, &r, err));
        return dv_comm_wait(c, r, err);
    }
    shm_drain(c);
    for (size_t off = 0; off < n; off += c->max_count) {
        int count = (int)min_size(n - off, c->max_count);
        DV_MPI_CHECK(err,
                     MPI_Allreduce(MPI_IN_PLACE, x + off, count, MPI_FLOAT, MPI_SUM, c->world));
    }
    scale_avg(x, n, c->size);
    return DV_OK;
}

/* ---- sharded reduce-scatter / all-gather ---------------------------------
 * Shards are the shm slices of the whole vector (no rounds), so a segment
 * holds all n floats. Each call copies in, passes one barrier, and reads the
 * peers' segments; the parity scheme of the all-reduce keeps it safe: the
 * segment of call k is rewritten at call k+2, after every rank has passed
 * the barrier of call k+1, which it reaches only once it is done reading
 * call k. */
static int shardable(const dv_comm *c, size_t n) {
    return use_shm(c, n) && c->shm.cross == MPI_COMM_NULL;
}

void dv_comm_shard(const dv_comm *c, size_t n, size_t *lo, size_t *hi) {
    if (!shardable(c, n)) {
        *lo = 0;
        *hi = n;
        return;
    }
    shm_slice(c, n, c->local_rank, lo, hi);
}

/* Copies x (all of it, or only this rank's shard) into this call's segment
 * and passes the node barrier; returns the segments. */
static float *const *shard_exchange(dv_comm *c, const float *x, size_t n, int own_only) {
    float *const *seg = c->shm.seg + (int)(c->shm.calls++ & 1) * c->local_size;
    size_t lo = 0, hi = n;
    if (own_only) shm_slice(c, n, c->local_rank, &lo, &hi);
    memcpy(seg[c->local_rank] + lo, x + lo, (hi - lo) * sizeof(float));
    bar_wait(c, bar_arrive(c));
    return seg;
}

float *dv_comm_shared_buffer(dv_comm *c, size_t n, char *err) {
    if (!shardable(c, n) || c->shm.gwin != MPI_WIN_NULL) return NULL;
    shm_drain(c);
    MPI_Info info;
    if (MPI_Info_create(&info) != MPI_SUCCESS) return NULL;
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    void *base = NULL;
    size_t cap = round_up(n, DV_SHM_ALIGN);
    int rc = MPI_Win_allocate_shared((MPI_Aint)(cap * sizeof(float)), sizeof(float), info, c->node,
                                     &base, &c->shm.gwin);
    MPI_Info_free(&info);
    if (rc != MPI_SUCCESS) {
        c->shm.gwin = MPI_WIN_NULL;
        mpi_error(err, __LINE__, "MPI_Win_allocate_shared", rc);
        return NULL;
    }
    c->shm.gbuf = calloc((size_t)c->local_size, sizeof *c->shm.gbuf);
    for (int q = 0; c->shm.gbuf && q < c->local_size; q++) {
        MPI_Aint size = 0;
        int disp = 0;
        MPI_Win_shared_query(c->shm.gwin, q, &size, &disp, &c->shm.gbuf[q]);
    }
    if (!c->shm.gbuf) {
        dv_error_at(err, __FILE__, __LINE__, "calloc", "out of memory");
        return NULL;
    }
    c->shm.gcap = cap;
    memset(c->shm.gbuf[c->local_rank], 0, cap * sizeof(float));
    return c->shm.gbuf[c->local_rank];
}

dv_status dv_comm_reduce_scatter_avg(dv_comm *c, float *x, size_t n, char *err) {
    DV_CHECK(c && (x || n == 0), err, "dv_comm_reduce_scatter_avg", "NULL comm or buffer");
    if (!shardable(c, n)) return dv_comm_allreduce_avg(c, x, n, err);
    shm_drain(c);
    size_t lo, hi;
    shm_slice(c, n, c->local_rank, &lo, &hi);
    if (c->shm.gwin != MPI_WIN_NULL && x == c->shm.gbuf[c->local_rank] && n <= c->shm.gcap) {
        /* zero copy: the peers read their slices of x where it lies, and
         * this rank writes only its own slice; the next write to the rest
         * of x comes after the all-gather's barrier, which every peer
         * reaches only once done reading */
        bar_wait(c, bar_arrive(c));
        shm_sum(c->shm.gbuf, c->local_size, x, lo, hi, c->size);
        return DV_OK;
    }
    DV_TRY(shm_reserve(c, n, err));
    float *const *seg = shard_exchange(c, x, n, 0);
    shm_sum(seg, c->local_size, x, lo, hi, c->size);
    return DV_OK;
}

dv_status dv_comm_allgather(dv_comm *c, float *x, size_t n, char *err) {
    DV_CHECK(c && (x || n == 0), err, "dv_comm_allgather", "NULL comm or buffer");
    if (!shardable(c, n)) return DV_OK;
    shm_drain(c);
    DV_TRY(shm_reserve(c, n, err));
    float *const *seg = shard_exchange(c, x, n, 1);
    for (int q = 0; q < c->local_size; q++) {
        size_t qlo, qhi;
        shm_slice(c, n, q, &qlo, &qhi);
        if (q != c->local_rank) memcpy(x + qlo, seg[q] + qlo, (qhi - qlo) * sizeof(float));
    }
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

/* The MPI path: one MPI_Iallreduce per max_count chunk. */
static dv_status mpi_start(dv_comm *c, dv_comm_request *r, char *err) {
    size_t n = r->n;
    size_t nreq = c->size > 1 && n > 0 ? (n + c->max_count - 1) / c->max_count : 0;
    if (nreq > 0) {
        r->reqs = malloc(nreq * sizeof *r->reqs);
        DV_CHECK(r->reqs, err, "malloc", "out of memory for %zu MPI requests", nreq);
    }
    for (size_t k = 0; k < nreq; k++) {
        size_t off = k * c->max_count;
        int count = (int)min_size(n - off, c->max_count);
        int rc = MPI_Iallreduce(MPI_IN_PLACE, r->x + off, count, MPI_FLOAT, MPI_SUM, c->world,
                                &r->reqs[k]);
        /* Chunks already started cannot be cancelled (MPI forbids it for
         * collectives); the job is broken, so the caller aborts. */
        if (rc != MPI_SUCCESS) return mpi_error(err, __LINE__, "MPI_Iallreduce", rc);
        r->nreq = (int)(k + 1);
    }
    r->done = r->nreq == 0;
    return DV_OK;
}

dv_status dv_comm_allreduce_start(dv_comm *c, float *x, size_t n, void *stream,
                                  dv_comm_request **req, char *err) {
    DV_CHECK(req, err, "dv_comm_allreduce_start", "NULL request pointer");
    *req = NULL;
    DV_CHECK(c && (x || n == 0), err, "dv_comm_allreduce_start", "NULL comm or buffer");
    if (stream) return dv_comm_dev_start(c, x, n, stream, req, err);
    dv_comm_dev_flush(c); /* device requests started before this one go first */
    return dv_comm_host_start(c, x, n, req, err);
}

dv_status dv_comm_host_start(dv_comm *c, float *x, size_t n, dv_comm_request **req, char *err) {
    *req = NULL;
    if (use_shm(c, n)) DV_TRY(shm_reserve(c, min_size(n, c->shm.chunk), err));

    dv_comm_request *r = calloc(1, sizeof *r);
    DV_CHECK(r, err, "calloc", "out of memory");
    r->owner = c;
    r->x = x;
    r->n = n;
    if (use_shm(c, n)) {
        r->shm = 1;
        if (c->shm.tail)
            c->shm.tail->qnext = r;
        else
            c->shm.head = r;
        c->shm.tail = r;
    } else if (mpi_start(c, r, err) != DV_OK) {
        free(r->reqs);
        free(r);
        return DV_ERR;
    }
    /* One rank alone has nothing to exchange; the request still exists so
     * start/wait read the same at every world size. */
    r->next = c->pending;
    if (c->pending) c->pending->prev = r;
    c->pending = r;
    *req = r;
    /* Copy in now, while the other ranks may still be computing: the copy
     * then costs nothing at the wait. */
    if (r->shm) shm_advance(c, 0, NULL);
    return DV_OK;
}

void dv_comm_progress(dv_comm *c) {
    if (!c) return;
    dv_comm_dev_progress(c); /* may start host requests: before the loop */
    for (dv_comm_request *r = c->pending; r; r = r->next) {
        if (r->shm || r->done || r->mpi_rc != MPI_SUCCESS) continue;
        int flag = 0;
        int rc = MPI_Testall(r->nreq, r->reqs, &flag, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS)
            r->mpi_rc = rc; /* reported by dv_comm_wait */
        else if (flag)
            r->done = 1;
    }
    shm_advance(c, 0, NULL);
}

dv_status dv_comm_wait(dv_comm *c, dv_comm_request *req, char *err) {
    DV_CHECK(c && req, err, "dv_comm_wait", "NULL comm or request");
    DV_CHECK(req->owner == c, err, "dv_comm_wait", "request belongs to another comm");
    if (req->dev) return dv_comm_dev_wait(c, req, err);
    if (req->shm && !req->done) shm_advance(c, 1, req);
    pending_unlink(c, req);
    int rc = req->mpi_rc;
    const char *call = req->shm            ? "MPI_Iallreduce (across nodes)"
                       : rc != MPI_SUCCESS ? "MPI_Testall"
                                           : "MPI_Waitall";
    if (!req->shm && rc == MPI_SUCCESS && !req->done)
        rc = MPI_Waitall(req->nreq, req->reqs, MPI_STATUSES_IGNORE);
    float *x = req->x;
    size_t n = req->n;
    int shm = req->shm;
    free(req->reqs);
    free(req);
    if (rc != MPI_SUCCESS) return mpi_error(err, __LINE__, call, rc);
    if (!shm) scale_avg(x, n, c->size); /* shm scaled each slice as it summed */
    return DV_OK;
}

/* ---- other collectives -------------------------------------------------- */

dv_status dv_comm_bcast(dv_comm *c, void *buf, size_t bytes, int root, char *err) {
    DV_CHECK(c && (buf || bytes == 0), err, "dv_comm_bcast", "NULL comm or buffer");
    DV_CHECK(root >= 0 && root < c->size, err, "dv_comm_bcast", "root %d is not a rank of %d", root,
             c->size);
    if (c->size == 1) return DV_OK;
    shm_drain(c);
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
    shm_drain(c);
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
    shm_drain(c);
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
    shm_drain(c);
    uint64_t h = buf ? hash_bytes(buf, bytes) : hash_bytes("", 0);
    /* max(h) and max(~h) = ~min(h) in one reduction: equal iff min == max. */
    uint64_t mine[2] = {h, ~h}, top[2] = {0, 0};
    abort_on_mpi_error(c, MPI_Allreduce(mine, top, 2, MPI_UINT64_T, MPI_MAX, c->world),
                       "dv_comm_all_equal: MPI_Allreduce");
    return top[0] == ~top[1];
}

void dv_comm_barrier(dv_comm *c) {
    shm_drain(c);
    abort_on_mpi_error(c, MPI_Barrier(c->world), "dv_comm_barrier: MPI_Barrier");
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
