/* comm_shm.c — the shm algorithm of comm's float averages, the default
 * where every node holds the same number L > 1 of ranks.
 *
 * Open MPI's all-reduce over its shared-memory transport cost as much as
 * the half-batch forward pass it was meant to hide (0.25-0.3 ms for 0.94 MB
 * on 2 ranks), so 2 ranks trained no faster than 1. Here each local rank
 * owns a segment of an MPI-3 shared window: it copies its buffer in; node
 * barrier; local rank r sums slice r of all L segments in the fixed order
 * 0..L-1 (every replica gets the same bits) and writes the average over its
 * own segment; barrier; every rank copies all slices out. With several
 * nodes, rank r all-reduces its summed slice with local rank r of the other
 * nodes (MPI, `cross` communicator) before dividing. The barrier is a
 * split-phase spin barrier on two counters in the window (~0.35 us here
 * against ~0.7 us for MPI_Barrier on the node), so start copies in without
 * waiting, progress moves requests on without ever blocking, and wait
 * finishes them in start order. There is no progress thread: the ranks
 * already use every core.
 *
 * Segments grow collectively (every rank sees the same sizes) when a larger
 * buffer than ever before arrives, so the first step reallocates and later
 * ones do not. DIVE_COMM_FAKE_NODE_SIZE=K (testing only, read by comm.c)
 * makes each K consecutive ranks a "node", to run the multi-node path on one
 * machine. Averages divide the sum by the world size as dv_comm_scale_avg
 * does, so both algorithms round alike.
 *
 * On one node the same segments serve the sharded update (ZeRO stage 1):
 * the shards are the slices, the reduce-scatter is the first half of the
 * all-reduce and the all-gather the second.
 *
 * Assumes every rank starts the same all-reduces in the same order with the
 * same n, and that MPI is called from one thread. Requests advance only
 * when their owner calls into comm, so every blocking collective drains
 * them first (comm.c calls drain, after the device side's flush).
 */
#include "comm-impl.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Slices and segment sizes are multiples of 16 floats (64 bytes), so two
 * ranks never write the same cache line and the sum loops stay aligned. */
#define DV_SHM_ALIGN 16
/* Floats per round (1 MiB). A buffer far larger than the caches would go
 * through DRAM three times (copy in, sum, copy out); in rounds of this size
 * the segments and the slice of x stay in cache between the phases, for two
 * barriers (~1 us) a round. An MLP's gradient (0.94 MB) is one round. */
#define DV_SHM_CHUNK ((size_t)1 << 18)

enum { SHM_QUEUED = 0, SHM_SUMMING, SHM_CROSS, SHM_COPYING };

static size_t round_up(size_t n, size_t k) {
    return (n + k - 1) / k * k;
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

/* The watchdog's wait (watch-impl.h): it spins DV_WATCH_SPIN polls (some
 * tens of microseconds, so ranks on idle cores meet without a system call),
 * then yields the core to a rank an oversubscribed node keeps off it, then
 * sleeps, and fires when the barrier does not pass for the timeout. */
static void bar_wait(dv_comm *c, unsigned g) {
    dv_watch w;
    dv_watch_begin(&w);
    while (!bar_passed(c, g))
        dv_watch_poll(c, &w, NULL);
}

/* Blocking: waits for generation g to pass; else only looks. */
static int bar_ready(dv_comm *c, unsigned g, int blocking) {
    if (!blocking) return bar_passed(c, g);
    bar_wait(c, g);
    return 1;
}

void dv_comm_shm_clear(dv_comm *c) {
    memset(&c->shm, 0, sizeof c->shm);
    c->shm.ctl_win = MPI_WIN_NULL;
    c->shm.win = MPI_WIN_NULL;
    c->shm.gwin = MPI_WIN_NULL;
    c->shm.cross = MPI_COMM_NULL;
}

/* Shared memory only pays where a node holds several ranks; the
 * hierarchical scheme needs the same number of ranks on every node (each
 * local rank owns slice r of every node's buffer), else the MPI path
 * serves. */
dv_status dv_comm_shm_setup(dv_comm *c, char *err) {
    int ls[2] = {c->local_size, -c->local_size};
    MPI_Request req = MPI_REQUEST_NULL;
    DV_MPI_CHECK(err, MPI_Iallreduce(MPI_IN_PLACE, ls, 2, MPI_INT, MPI_MAX, c->world, &req));
    DV_MPI_CHECK(err, dv_comm_mpi_wait(c, 1, &req));
    if (c->size == 1 || ls[0] == 1 || ls[0] != -ls[1]) return DV_OK;

    /* Set-up collectives without a nonblocking form, right after the
     * watched all-reduce that found every rank here. */
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
    req = MPI_REQUEST_NULL; /* the block is initialized */
    DV_MPI_CHECK(err, MPI_Ibarrier(c->node, &req));
    DV_MPI_CHECK(err, dv_comm_mpi_wait(c, 1, &req));
    c->shm.chunk = DV_SHM_CHUNK;
    c->algo = &dv_comm_algo_shm;
    return DV_OK;
}

/* The sum of slice [lo, hi) over the node's segments of one parity, in local
 * rank order 0..L-1 (so every rank of every node gets the same bits), written
 * over this rank's own segment (only this rank reads that slice until the
 * next barrier). `div` > 1 turns the sum into the average as dv_comm_scale_avg
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
    *lo = dv_comm_min((size_t)q * chunk, n);
    *hi = dv_comm_min(*lo + chunk, n);
}

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
        int count = (int)dv_comm_min(hi - off, c->max_count);
        int rc = MPI_Iallreduce(MPI_IN_PLACE, mine + off, count, MPI_FLOAT, MPI_SUM, c->shm.cross,
                                &r->reqs[k]);
        if (rc != MPI_SUCCESS) {
            if (r->mpi_rc == MPI_SUCCESS) r->mpi_rc = rc;
            break;
        }
        r->nreq = (int)(k + 1);
    }
}

/* Moves request r (the head of the queue) on as far as it goes; with
 * `blocking` 0 it never waits on another rank. Returns 1 once the result is
 * in r->x. Per round of at most shm.chunk floats, phases: QUEUED -> copy x
 * into the own segment, barrier A -> SUMMING: sum the own slice (-> CROSS:
 * all-reduce it across nodes) -> barrier B -> COPYING: gather every slice
 * into x. Segments alternate by parity: call k+2 may overwrite call k's
 * segment because every rank passed barrier A of call k+1, which it reaches
 * only after copying call k out. */
static int shm_step(dv_comm *c, dv_comm_request *r, int blocking) {
    const int L = c->local_size, me = c->local_rank;
    int multi = c->shm.cross != MPI_COMM_NULL;
    for (;;) {
        size_t n = dv_comm_min(r->n - r->off, c->shm.chunk), lo, hi;
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
                    rc = dv_comm_mpi_wait(c, r->nreq, r->reqs);
                else
                    rc = MPI_Testall(r->nreq, r->reqs, &flag, MPI_STATUSES_IGNORE);
                if (rc != MPI_SUCCESS && r->mpi_rc == MPI_SUCCESS) r->mpi_rc = rc;
                if (rc == MPI_SUCCESS && !flag) return 0;
                r->nreq = 0;
            }
            dv_comm_scale_avg(seg[me] + lo, hi - lo, c->size);
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

/* Unlike MPI's own requests, ours advance only when their owner calls into
 * comm, and the other ranks may be waiting for them inside the collective
 * this rank is about to enter. */
static void shm_drain(dv_comm *c) {
    if (c->shm.head) shm_advance(c, 1, NULL);
}

/* Grows the segments to hold n floats. Collective over the node, and every
 * rank asks at the same call since buckets are the same on every rank. The
 * barrier keeps the old window alive until every rank has copied its last
 * result out. */
static dv_status shm_reserve(dv_comm *c, size_t n, char *err) {
    if (n <= c->shm.cap) return DV_OK;
    shm_drain(c);
    /* the watched barrier finds every local rank here, so the collective
     * window calls after it (which have no nonblocking form) cannot wait on
     * a missing one */
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
        return DV_MPI_ERROR(err, "MPI_Win_allocate_shared", rc);
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

/* ---- the table's operations ---------------------------------------------- */

static dv_status shm_start(dv_comm *c, float *x, size_t n, dv_comm_request **req, char *err) {
    *req = NULL;
    if (n > 0) DV_TRY(shm_reserve(c, dv_comm_min(n, c->shm.chunk), err));
    dv_comm_request *r = NULL;
    DV_TRY(dv_comm_request_new(c, &dv_comm_algo_shm, x, n, &r, err));
    *req = r;
    if (n == 0) {
        r->done = 1; /* nothing to exchange, and no barrier to pass for it */
        return DV_OK;
    }
    if (c->shm.tail)
        c->shm.tail->qnext = r;
    else
        c->shm.head = r;
    c->shm.tail = r;
    /* Copy in now, while the other ranks may still be computing: the copy
     * then costs nothing at the wait. */
    shm_advance(c, 0, NULL);
    return DV_OK;
}

static void shm_progress(dv_comm *c) {
    shm_advance(c, 0, NULL);
}

/* Each slice was scaled as it was summed: nothing is left to divide. */
static dv_status shm_wait(dv_comm *c, dv_comm_request *r, char *err) {
    if (!r->done) shm_advance(c, 1, r);
    int rc = r->mpi_rc;
    dv_comm_request_release(c, r);
    if (rc != MPI_SUCCESS) return DV_MPI_ERROR(err, "MPI_Iallreduce (across nodes)", rc);
    return DV_OK;
}

static dv_status shm_avg(dv_comm *c, float *x, size_t n, char *err) {
    dv_comm_request *r = NULL;
    DV_TRY(shm_start(c, x, n, &r, err));
    return shm_wait(c, r, err);
}

/* ---- sharded reduce-scatter / all-gather ---------------------------------
 * Shards are the shm slices of the whole vector (no rounds), so a segment
 * holds all n floats. Each call copies in, passes one barrier, and reads the
 * peers' segments; the parity scheme of the all-reduce keeps it safe: the
 * segment of call k is rewritten at call k+2, after every rank has passed
 * the barrier of call k+1, which it reaches only once it is done reading
 * call k. Across nodes the slices would need the cross all-reduce too, so
 * there every shard is the whole vector. */
static int shm_shard(const dv_comm *c, size_t n, size_t *lo, size_t *hi) {
    if (n == 0 || c->shm.cross != MPI_COMM_NULL) {
        *lo = 0;
        *hi = n;
        return 0;
    }
    shm_slice(c, n, c->local_rank, lo, hi);
    return 1;
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

static float *shm_shared_buffer(dv_comm *c, size_t n, char *err) {
    if (c->shm.gwin != MPI_WIN_NULL) return NULL;
    bar_wait(c, bar_arrive(c)); /* every local rank is here: see shm_reserve */
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
        DV_MPI_ERROR(err, "MPI_Win_allocate_shared", rc);
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

static dv_status shm_reduce_scatter(dv_comm *c, float *x, size_t n, char *err) {
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

static dv_status shm_allgather(dv_comm *c, float *x, size_t n, char *err) {
    DV_TRY(shm_reserve(c, n, err));
    float *const *seg = shard_exchange(c, x, n, 1);
    for (int q = 0; q < c->local_size; q++) {
        size_t qlo, qhi;
        shm_slice(c, n, q, &qlo, &qhi);
        if (q != c->local_rank) memcpy(x + qlo, seg[q] + qlo, (qhi - qlo) * sizeof(float));
    }
    return DV_OK;
}

static void shm_release(dv_comm *c) {
    int finalized = 1;
    MPI_Finalized(&finalized);
    if (!finalized) {
        if (c->shm.win != MPI_WIN_NULL) MPI_Win_free(&c->shm.win);
        if (c->shm.gwin != MPI_WIN_NULL) MPI_Win_free(&c->shm.gwin);
        if (c->shm.ctl_win != MPI_WIN_NULL) MPI_Win_free(&c->shm.ctl_win);
        if (c->shm.cross != MPI_COMM_NULL) MPI_Comm_free(&c->shm.cross);
    }
    free(c->shm.seg);
    free(c->shm.gbuf);
    c->shm.seg = NULL;
    c->shm.gbuf = NULL;
}

const dv_comm_algo dv_comm_algo_shm = {
    .name = "shm",
    .avg = shm_avg,
    .start = shm_start,
    .progress = shm_progress,
    .wait = shm_wait,
    .drain = shm_drain,
    .shard = shm_shard,
    .reduce_scatter = shm_reduce_scatter,
    .allgather = shm_allgather,
    .shared_buffer = shm_shared_buffer,
    .release = shm_release,
};
