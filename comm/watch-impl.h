/* watch-impl.h — private to comm/ (and its tests, which shorten the grace
 * period and keep a firing watchdog from ending the test): the watchdog of
 * comm_watch.c. comm-impl.h includes it; its state lives in struct dv_comm.
 *
 * Every blocking wait of comm (the shm barrier, MPI's nonblocking
 * collectives, the device side's host waits) is a loop around one poll:
 *
 *     dv_watch w;
 *     dv_watch_begin(&w);
 *     while (!done())
 *         dv_watch_poll(c, &w, NULL);
 *
 * The first DV_WATCH_SPIN polls only pause the CPU (the hot path: a peer a
 * few microseconds late costs no system call); later ones go to
 * dv_comm_watch_idle, which yields the core for `yield_s` seconds (50 ms:
 * long enough that a collective moving data, which MPI advances only when
 * polled, is not slowed; the device side's waits on the GPU take 2 ms),
 * then sleeps in steps growing to 1 ms (1/32 of the time waited so far),
 * answers a peer's post-mortem, and fires the watchdog once the wait has
 * made no progress for the comm's timeout. dv_watch_progress restarts the
 * count when part of a wait completes.
 *
 * The collective kinds name the collective in the watchdog's message and
 * are what the sequence hash folds (dv_comm_sequence_hash).
 */
#ifndef DV_WATCH_IMPL_H
#define DV_WATCH_IMPL_H

#include <mpi.h>
#include <stdint.h>

#include "comm.h"

/* The collectives a rank can be waiting in. Each public collective of
 * comm.h folds its kind (and its count) into the sequence hash when it is
 * entered; the device stream wait and start-up are not folded (local, or
 * before the hash exists). The values are part of the hash: append only. */
typedef enum dv_coll {
    DV_COLL_STARTUP = 0,     /* dv_comm_init */
    DV_COLL_ALLREDUCE,       /* dv_comm_allreduce_avg */
    DV_COLL_ALLREDUCE_START, /* dv_comm_allreduce_start, host or device, and its wait */
    DV_COLL_REDUCE_SCATTER,  /* dv_comm_reduce_scatter_avg */
    DV_COLL_ALLGATHER,       /* dv_comm_allgather */
    DV_COLL_SHARED_BUFFER,   /* dv_comm_shared_buffer */
    DV_COLL_BCAST,           /* dv_comm_bcast */
    DV_COLL_ALLREDUCE_DOUBLE,
    DV_COLL_FIRST_FAILED, /* dv_comm_first_failed */
    DV_COLL_ALL_EQUAL,
    DV_COLL_BARRIER,
    DV_COLL_DEVICE_INIT, /* dv_comm_device_init */
    DV_COLL_STREAM_WAIT, /* dv_comm_stream_wait: not folded */
    DV_COLL_COUNT
} dv_coll;

/* The tag of the post-mortem's messages (on the watchdog's communicator). */
#define DV_WATCH_TAG 4242
/* Bytes of a host name kept for every rank (longer names are cut). */
#define DV_WATCH_HOST 64
/* Polls that only pause before a wait yields, sleeps and looks at the clock:
 * some tens of microseconds, so ranks on idle cores meet without a system
 * call. */
#define DV_WATCH_SPIN 1000
/* Seconds a wait yields before it sleeps: collectives, and the device
 * side's host waits on the GPU. */
#define DV_WATCH_YIELD_S        0.05
#define DV_WATCH_YIELD_DEVICE_S 0.002

/* The watchdog's part of struct dv_comm. */
typedef struct dv_watchdog {
    double timeout; /* seconds a wait may make no progress; 0 waits forever */
    double grace;   /* seconds the post-mortem listens for the other ranks */
    long step;      /* dv_comm_set_step; -1 until the first call ("start-up") */
    dv_coll what;   /* the collective this rank is in, for the message */
    /* 1: a firing watchdog prints its line and ends the job. 0 (tests only):
     * a wait that can fail (one given an err buffer: the device side's)
     * returns the line as its error instead; the others still end the job. */
    int fatal;
    MPI_Comm comm;                /* the post-mortem's: a dup of world; MPI_COMM_NULL */
    char (*hosts)[DV_WATCH_HOST]; /* (size): every rank's host name */
    uint64_t hash;                /* the running hash of the collective sequence */
    unsigned long calls;          /* collectives folded into it */
} dv_watchdog;

/* One wait in progress (the times are valid past DV_WATCH_SPIN polls). */
typedef struct dv_watch {
    unsigned polls;    /* polls since the wait began or last progressed */
    double t0;         /* when it left the spin phase, moved on by `lost` */
    double last;       /* the previous poll */
    double last_probe; /* when it last looked for a peer's post-mortem */
    double lost;       /* seconds this rank did not run between two polls */
    double yield_s;    /* how long it yields before it sleeps */
} dv_watch;

static inline void dv_watch_begin(dv_watch *w) {
    w->polls = 0;
    w->yield_s = DV_WATCH_YIELD_S;
}

/* Part of the wait completed: the clock starts over, and so does the spin. */
static inline void dv_watch_progress(dv_watch *w) {
    w->polls = 0;
}

static inline void dv_watch_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* ---- comm_watch.c ------------------------------------------------------------ */

/* A wait that is not done yet takes one poll; see the top of this file.
 * Returns DV_OK to poll again. When the watchdog fires it ends the job
 * (dv_comm_abort); only where err is not NULL and the watchdog is not fatal
 * (tests) it returns DV_ERR with its line in err, and the wait gives up. */
dv_status dv_comm_watch_idle(dv_comm *c, dv_watch *w, char *err);

static inline dv_status dv_watch_poll(dv_comm *c, dv_watch *w, char *err) {
    if (w->polls < DV_WATCH_SPIN) {
        w->polls++;
        dv_watch_relax();
        return DV_OK;
    }
    return dv_comm_watch_idle(c, w, err);
}

/* MPI_Waitall of n requests, watched: polls MPI_Testsome. Returns MPI's
 * code (requests that completed are MPI_REQUEST_NULL after it). */
int dv_comm_mpi_wait(dv_comm *c, int n, MPI_Request *reqs);

/* DIVE_COMM_TIMEOUT's value s (NULL or empty: the default, 600) as seconds
 * >= 0 in *out; a bad value fails with a message naming the variable. */
dv_status dv_comm_parse_timeout(const char *s, double *out, char *err);

/* Start-up, called by dv_comm_init once world, rank, size and host are set:
 * the post-mortem communicator, and every rank's host name (one watched
 * all-gather) together with `ok`, whether this rank's own start-up checks
 * passed: when any rank's did not, every rank fails (err keeps this rank's
 * message where it failed). */
dv_status dv_comm_watch_setup(dv_comm *c, int ok, char *err);
/* Frees the watchdog's state (MPI handles only while MPI is up). */
void dv_comm_watch_release(dv_comm *c);

/* The post-mortem (exposed for the tests): sends this rank's word to every
 * other rank on the watchdog's communicator and listens for theirs for the
 * grace period, polling; nothing blocks. answered[q] (size bytes) is set to
 * 1 for every rank heard from (and this one); *fired is the lowest rank
 * heard from that timed out itself (-1 if none) and *fired_timeout its
 * timeout. Returns how many ranks did not answer, or -1 where it could not
 * ask (out of memory). own: 1 when this rank timed out, 0 when it answers
 * a peer's post-mortem. */
int dv_comm_postmortem(dv_comm *c, int own, char *answered, int *fired, double *fired_timeout);

/* The watchdog's line (without the "[rank r/n host]" origin) into out:
 * the collective, the step, the seconds, and the ranks that did not answer
 * (answered as dv_comm_postmortem left it; missing < 0: unknown). lost:
 * seconds this rank itself did not run during the wait (said when > 1). */
void dv_comm_watch_report(const dv_comm *c, int own, const char *answered, int missing, int fired,
                          double fired_timeout, double lost, char *out, size_t len);

/* The name of a collective kind in messages ("all-reduce", "barrier"). */
const char *dv_coll_name(dv_coll kind);

/* One step of the sequence hash: (kind, count) folded into h. Each step is
 * a bijection of h, so two sequences that differ in one call always hash
 * differently. */
static inline uint64_t dv_comm_hash_fold(uint64_t h, dv_coll kind, uint64_t count) {
    const uint64_t k = 0x9e3779b97f4a7c15ULL;
    h = (h ^ (uint64_t)kind) * k;
    h ^= h >> 32;
    h = (h ^ count) * k;
    h ^= h >> 32;
    return h;
}

/* The sequence hash of a comm that has entered no collective yet. */
#define DV_COMM_HASH_SEED 0xcbf29ce484222325ULL

#endif
