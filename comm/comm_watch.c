/* comm_watch.c — the watchdog: no rank can stall a Dive job. Every blocking
 * wait of comm (the shm barrier, MPI's collectives, the device side's host
 * waits) polls through dv_watch_poll (watch-impl.h), which lands here once a
 * wait has spun for a while: it yields the core, then sleeps in steps that
 * grow to 1 ms, so a rank that waits long does not burn a core. When a wait
 * has made no progress for the comm's timeout (DIVE_COMM_TIMEOUT, default
 * 600 s, 0 waits forever; dv_comm_set_timeout overrides it) the watchdog
 * fires:
 *
 *  1. Post-mortem. On a communicator of its own (a dup of world, so nothing
 *     else can match its messages) this rank sends one small message to every
 *     other rank and listens for theirs for the grace period (2 s), polling
 *     with nonblocking calls only: it never blocks. A rank waiting in any
 *     watched wait notices such a message (MPI_Iprobe, at most every
 *     millisecond once its own wait has left the spin phase) and joins:
 *     it answers everyone in the same way. A rank that never answers is one
 *     that did not arrive: stopped, dead, or busy outside comm.
 *  2. Every rank that can still act prints one line, `[rank r/n host]
 *     watchdog: <collective> at step <s> made no progress for <t> s; rank q
 *     (host) did not arrive; set DIVE_COMM_TIMEOUT or [train] comm_timeout
 *     to wait longer`, and the job ends through MPI_Abort (dv_comm_abort).
 *
 * A rank that was itself stopped (SIGSTOP) and is continued while the job
 * ends finds the others' post-mortem messages waiting and joins too; a
 * SIGCONT handler (installed where SIGCONT has none) lets its line say that
 * it was the stopped one instead of blaming nobody.
 *
 * Also here, because they are watched collectives below the algorithms:
 * the start-up exchange of host names (with the agreement on each rank's own
 * start-up checks) and the error agreement (dv_comm_agree).
 *
 * Assumes MPI is called from one thread (the one that called dv_comm_init).
 * Calls only comm_common.c, so every other file of comm can call it.
 */
#include "comm-impl.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TIMEOUT_S 600.0 /* DIVE_COMM_TIMEOUT's default */
#define GRACE_S   2.0   /* how long the post-mortem listens */
/* After the spin phase a wait yields the core for w->yield_s, then sleeps
 * idle / IDLE_SLEEP_DIV, at least IDLE_SLEEP_MIN and at most IDLE_SLEEP_MAX
 * seconds, so a short wait reacts fast, and a long one costs little CPU and
 * adds a bounded fraction of its length. */
#define IDLE_SLEEP_DIV 32.0
#define IDLE_SLEEP_MIN 50e-6
#define IDLE_SLEEP_MAX 1e-3
#define PROBE_EVERY_S  1e-3 /* a waiting rank looks for a peer's post-mortem */
/* A gap this long between two polls means this rank did not run (stopped,
 * or starved by the machine): the gap is not counted as the peers' delay,
 * so a rank resumed after SIGSTOP does not blame the others. */
#define GAP_S    0.5
#define LIST_MAX 8 /* ranks named in the message; more are counted */

/* A post-mortem message: did the sender time out itself, and its timeout. */
enum { PM_OWN = 0, PM_TIMEOUT_MS, PM_WORDS };

static const char *const coll_names[] = {
    [DV_COLL_STARTUP] = "start-up",
    [DV_COLL_ALLREDUCE] = "all-reduce",
    [DV_COLL_ALLREDUCE_START] = "all-reduce",
    [DV_COLL_REDUCE_SCATTER] = "reduce-scatter",
    [DV_COLL_ALLGATHER] = "all-gather",
    [DV_COLL_SHARED_BUFFER] = "shared-buffer set-up",
    [DV_COLL_BCAST] = "broadcast",
    [DV_COLL_ALLREDUCE_DOUBLE] = "all-reduce",
    [DV_COLL_FIRST_FAILED] = "error agreement",
    [DV_COLL_ALL_EQUAL] = "consistency check",
    [DV_COLL_BARRIER] = "barrier",
    [DV_COLL_DEVICE_INIT] = "device set-up",
    [DV_COLL_STREAM_WAIT] = "device stream wait",
    [DV_COLL_COUNT] = NULL,
};
_Static_assert(DV_ARRAY_LEN(coll_names) == DV_COLL_COUNT + 1, "a dv_coll without a name");

const char *dv_coll_name(dv_coll kind) {
    return (int)kind >= 0 && kind < DV_COLL_COUNT ? coll_names[kind] : "collective";
}

/* ---- the settings ------------------------------------------------------------ */

dv_status dv_comm_parse_timeout(const char *s, double *out, char *err) {
    *out = TIMEOUT_S;
    if (!s || !*s) return DV_OK;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    DV_CHECK(end != s && *end == '\0' && errno == 0 && isfinite(v) && v >= 0, err, "dv_comm_init",
             "DIVE_COMM_TIMEOUT=%s: expected a number of seconds >= 0 (0 waits forever)", s);
    *out = v;
    return DV_OK;
}

void dv_comm_set_timeout(dv_comm *c, double seconds) {
    if (!c || !(seconds >= 0)) return; /* NaN and negatives leave it as it is */
    c->watch.timeout = isinf(seconds) ? 0 : seconds;
}

double dv_comm_timeout(const dv_comm *c) {
    return c ? c->watch.timeout : 0;
}

void dv_comm_set_step(dv_comm *c, long step) {
    if (c) c->watch.step = step;
}

uint64_t dv_comm_sequence_hash(const dv_comm *c) {
    return c ? c->watch.hash : 0;
}

/* ---- start-up ------------------------------------------------------------------ */

/* When this process last got SIGCONT (CLOCK_MONOTONIC seconds; 0: never).
 * Written only by the handler; a torn read only garbles a message. */
static volatile double continued_at;

static void on_continue(int sig) {
    (void)sig;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe */
    continued_at = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Once per process, and only where nobody else handles SIGCONT. */
static void watch_sigcont(void) {
    static int done;
    if (done) return;
    done = 1;
    struct sigaction old;
    if (sigaction(SIGCONT, NULL, &old) != 0 || old.sa_handler != SIG_DFL) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_continue;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCONT, &sa, NULL);
}

/* What every rank contributes at start-up. */
typedef struct hello {
    char host[DV_WATCH_HOST];
    int ok;
} hello;

dv_status dv_comm_watch_setup(dv_comm *c, int ok, char *err) {
    char mine[DV_ERR_LEN] = "";
    if (!ok && err) snprintf(mine, sizeof mine, "%s", err);
    c->watch.grace = GRACE_S;
    c->watch.fatal = 1;
    c->watch.step = -1;
    c->watch.hash = DV_COMM_HASH_SEED;
    watch_sigcont();
    DV_MPI_CHECK(err, MPI_Comm_dup(c->world, &c->watch.comm));
    DV_MPI_CHECK(err, MPI_Comm_set_errhandler(c->watch.comm, MPI_ERRORS_RETURN));
    hello me, *all = calloc((size_t)c->size, sizeof *all);
    c->watch.hosts = calloc((size_t)c->size, sizeof *c->watch.hosts);
    DV_CHECK(all && c->watch.hosts, err, "calloc", "out of memory for %d host names", c->size);
    memset(&me, 0, sizeof me);
    memcpy(me.host, c->host, dv_comm_min(strlen(c->host), sizeof me.host - 1));
    me.ok = ok;
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Iallgather(&me, (int)sizeof me, MPI_BYTE, all, (int)sizeof me, MPI_BYTE, c->world,
                            &req);
    if (rc == MPI_SUCCESS) rc = dv_comm_mpi_wait(c, 1, &req);
    int first = -1;
    for (int q = 0; rc == MPI_SUCCESS && q < c->size; q++) {
        memcpy(c->watch.hosts[q], all[q].host, DV_WATCH_HOST);
        c->watch.hosts[q][DV_WATCH_HOST - 1] = '\0';
        if (!all[q].ok && first < 0) first = q;
    }
    free(all);
    if (rc != MPI_SUCCESS) return DV_MPI_ERROR(err, "MPI_Iallgather", rc);
    if (first < 0) return DV_OK;
    if (!ok) {
        if (err) snprintf(err, DV_ERR_LEN, "%s", mine);
        return DV_ERR;
    }
    DV_FAIL(err, "dv_comm_init", "rank %d (%s) could not start (see its message)", first,
            c->watch.hosts[first]);
}

void dv_comm_watch_release(dv_comm *c) {
    int finalized = 1;
    MPI_Finalized(&finalized);
    if (!finalized && c->watch.comm != MPI_COMM_NULL) MPI_Comm_free(&c->watch.comm);
    free(c->watch.hosts);
    c->watch.hosts = NULL;
}

/* ---- the post-mortem ------------------------------------------------------------ */

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

int dv_comm_postmortem(dv_comm *c, int own, char *answered, int *fired, double *fired_timeout) {
    const int n = c->size, me = c->rank;
    *fired = -1;
    *fired_timeout = 0;
    memset(answered, 0, (size_t)n);
    answered[me] = 1;
    if (n == 1) return 0;
    int64_t mine[PM_WORDS] = {own, (int64_t)(c->watch.timeout * 1000.0 + 0.5)};
    int64_t(*theirs)[PM_WORDS] = calloc((size_t)n, sizeof *theirs);
    MPI_Request *rreq = malloc((size_t)n * sizeof *rreq), *sreq = malloc((size_t)n * sizeof *sreq);
    int *idx = malloc((size_t)n * sizeof *idx);
    if (!theirs || !rreq || !sreq || !idx) {
        free(theirs), free(rreq), free(sreq), free(idx);
        return -1;
    }
    /* Receives first, so a peer's message that is already here matches. A
     * call that fails leaves its rank unheard from: not arrived. */
    for (int q = 0; q < n; q++) {
        rreq[q] = sreq[q] = MPI_REQUEST_NULL;
        if (q == me) continue;
        if (MPI_Irecv(theirs[q], PM_WORDS, MPI_INT64_T, q, DV_WATCH_TAG, c->watch.comm, &rreq[q]) !=
            MPI_SUCCESS)
            rreq[q] = MPI_REQUEST_NULL;
    }
    for (int q = 0; q < n; q++)
        if (q != me && MPI_Isend(mine, PM_WORDS, MPI_INT64_T, q, DV_WATCH_TAG, c->watch.comm,
                                 &sreq[q]) != MPI_SUCCESS)
            sreq[q] = MPI_REQUEST_NULL;
    const double end = dv_now() + c->watch.grace;
    int heard = 1;
    for (unsigned polls = 0;; polls++) {
        int k = 0;
        if (MPI_Testsome(n, rreq, &k, idx, MPI_STATUSES_IGNORE) != MPI_SUCCESS) break;
        if (k == MPI_UNDEFINED) break; /* nothing left to hear */
        for (int i = 0; i < k; i++) {
            int q = idx[i];
            answered[q] = 1;
            heard++;
            if (theirs[q][PM_OWN] && (*fired < 0 || q < *fired)) {
                *fired = q;
                *fired_timeout = (double)theirs[q][PM_TIMEOUT_MS] / 1000.0;
            }
        }
        if (heard == n || dv_now() >= end) break;
        if (polls < 100)
            sched_yield();
        else
            sleep_s(IDLE_SLEEP_MAX);
    }
    /* Nothing is waited for: a receive still open is cancelled, a send
     * nobody took is left to MPI (the job is ending, or, in a test, the
     * peer takes it later). */
    for (int q = 0; q < n; q++) {
        if (rreq[q] != MPI_REQUEST_NULL) {
            MPI_Cancel(&rreq[q]);
            MPI_Request_free(&rreq[q]);
        }
        if (sreq[q] != MPI_REQUEST_NULL) MPI_Request_free(&sreq[q]);
    }
    free(theirs), free(rreq), free(sreq), free(idx);
    return n - heard;
}

static const char *host_of(const dv_comm *c, int q) {
    return c->watch.hosts && c->watch.hosts[q][0] ? c->watch.hosts[q] : "?";
}

/* Appends to out[len] at *at, never past the end. */
static void put(char *out, size_t len, size_t *at, const char *fmt, ...) DV_PRINTF(4, 5);
static void put(char *out, size_t len, size_t *at, const char *fmt, ...) {
    if (*at >= len) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out + *at, len - *at, fmt, ap);
    va_end(ap);
    if (k > 0) *at += (size_t)k;
}

void dv_comm_watch_report(const dv_comm *c, int own, const char *answered, int missing, int fired,
                          double fired_timeout, double lost, char *out, size_t len) {
    size_t at = 0;
    char step[48] = "start-up";
    if (c->watch.step >= 0) snprintf(step, sizeof step, "step %ld", c->watch.step);
    put(out, len, &at, "watchdog: %s at %s", dv_coll_name(c->watch.what), step);
    if (own)
        put(out, len, &at, " made no progress for %g s", c->watch.timeout);
    else if (fired >= 0)
        put(out, len, &at, ": rank %d (%s) found no progress for %g s", fired, host_of(c, fired),
            fired_timeout);
    else
        put(out, len, &at, ": another rank found no progress");
    double since = continued_at > 0 ? dv_now() - continued_at : -1;
    int was_stopped = since >= 0 && since < c->watch.timeout + c->watch.grace + 10;
    if (lost > 1 && !was_stopped)
        put(out, len, &at, " (this rank did not run for %.1f s: stopped?)", lost);
    if (was_stopped) {
        put(out, len, &at,
            "; this rank was stopped and continued (SIGCONT) %.1f s ago: it is likely the rank "
            "the others found missing",
            since);
    } else if (missing < 0) {
        put(out, len, &at, "; the other ranks could not be asked (out of memory)");
    } else if (missing == 0 && own) {
        put(out, len, &at,
            "; no rank is missing (every rank answered from a wait), so the collective itself is "
            "stuck: a hung transport or GPU");
    } else if (missing == 0) {
        put(out, len, &at, "; every rank answered");
    } else {
        put(out, len, &at, "; rank%s ", missing > 1 ? "s" : "");
        int named = 0;
        for (int q = 0; q < c->size && named < LIST_MAX; q++)
            if (!answered[q])
                put(out, len, &at, "%s%d (%s)", named++ ? ", " : "", q, host_of(c, q));
        if (missing > named) put(out, len, &at, " and %d more", missing - named);
        put(out, len, &at, " did not arrive");
    }
    put(out, len, &at, "; set DIVE_COMM_TIMEOUT or [train] comm_timeout to wait longer");
}

/* The post-mortem, then the line: printed and the job ended, or (a test's
 * comm, a wait that can fail) handed back in err. */
static dv_status fire(dv_comm *c, const dv_watch *w, int own, char *err) {
    char *answered = calloc((size_t)c->size, 1);
    int fired = -1, missing = -1;
    double fired_timeout = 0;
    if (answered) missing = dv_comm_postmortem(c, own, answered, &fired, &fired_timeout);
    char msg[DV_ERR_LEN];
    dv_comm_watch_report(c, own, answered, missing, fired, fired_timeout, w->lost, msg, sizeof msg);
    free(answered);
    if (c->watch.fatal || !err) dv_comm_abort(c, 1, msg);
    return dv_error_at(err, __FILE__, __LINE__, NULL, "%s", msg);
}

/* ---- the watched wait ---------------------------------------------------------- */

/* A peer's post-mortem message is waiting for this rank. */
static int peer_fired(dv_comm *c) {
    int flag = 0;
    MPI_Status st;
    if (c->watch.comm == MPI_COMM_NULL) return 0;
    return MPI_Iprobe(MPI_ANY_SOURCE, DV_WATCH_TAG, c->watch.comm, &flag, &st) == MPI_SUCCESS &&
           flag;
}

dv_status dv_comm_watch_idle(dv_comm *c, dv_watch *w, char *err) {
    const double now = dv_now();
    if (w->polls == DV_WATCH_SPIN) { /* the spin is over: the clock starts */
        w->polls++;
        w->t0 = w->last = w->last_probe = now;
        w->lost = 0;
        sched_yield();
        return DV_OK;
    }
    if (now - w->last >= GAP_S) {
        w->t0 += now - w->last;
        w->lost += now - w->last;
    }
    w->last = now;
    const double idle = now - w->t0;
    if (c->watch.timeout > 0 && idle >= c->watch.timeout) return fire(c, w, 1, err);
    if (now - w->last_probe >= PROBE_EVERY_S) {
        w->last_probe = now;
        if (peer_fired(c)) return fire(c, w, 0, err);
    }
    if (idle < w->yield_s) {
        sched_yield();
    } else {
        double s = idle / IDLE_SLEEP_DIV;
        sleep_s(s < IDLE_SLEEP_MIN ? IDLE_SLEEP_MIN : s > IDLE_SLEEP_MAX ? IDLE_SLEEP_MAX : s);
    }
    return DV_OK;
}

int dv_comm_mpi_wait(dv_comm *c, int n, MPI_Request *reqs) {
    if (n <= 0) return MPI_SUCCESS;
    int stack[8], *idx = n <= 8 ? stack : malloc((size_t)n * sizeof *idx);
    if (!idx) return MPI_Waitall(n, reqs, MPI_STATUSES_IGNORE); /* unwatched, but correct */
    dv_watch w;
    dv_watch_begin(&w);
    int rc = MPI_SUCCESS;
    for (;;) {
        int k = 0;
        rc = MPI_Testsome(n, reqs, &k, idx, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS || k == MPI_UNDEFINED) break;
        if (k > 0)
            dv_watch_progress(&w);
        else
            dv_watch_poll(c, &w, NULL);
    }
    if (idx != stack) free(idx);
    return rc;
}

/* ---- error agreement ------------------------------------------------------------ */

int dv_comm_agree(dv_comm *c, int ok) {
    int mine = ok ? INT_MAX : c->rank, lowest = INT_MAX;
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Iallreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, c->world, &req);
    if (rc == MPI_SUCCESS) rc = dv_comm_mpi_wait(c, 1, &req);
    dv_comm_abort_on_mpi_error(c, rc, "dv_comm_first_failed: MPI_Iallreduce");
    return lowest == INT_MAX ? -1 : lowest;
}
