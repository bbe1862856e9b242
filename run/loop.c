/* loop.c — the epochs of every training loop (run-impl.h, dv_loop): the
 * loader, step timing, progress lines, max_steps, checkpoint_every, stop
 * signals, and the checkpoint where a run stops inside an epoch, around the
 * callbacks each kind of model gives.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run-impl.h"

/* ---- stop signals ---------------------------------------------------------- */

/* SIGTERM / SIGINT (a scheduler's time limit, Ctrl-C): the loop notices at
 * a step boundary, agrees with the other ranks, writes a checkpoint and
 * stops. A signal handler can only set a flag: this is the one global. */
static volatile sig_atomic_t g_stop_signal;

static void on_stop_signal(int sig) {
    g_stop_signal = sig;
}

static void stop_signals_catch(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART; /* HDF5 and MPI reads must not see EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

/* The signal any rank received, agreed on by all (0: none). Collective
 * every `every` steps (on one rank: every step), so every rank stops at the
 * same step. */
static int stop_signal_agreed(dv_comm *c, int64_t step, int every) {
    if (dv_comm_size(c) == 1) return g_stop_signal;
    if (step % every) return 0;
    double sig = g_stop_signal;
    char err[DV_ERR_LEN];
    if (dv_comm_allreduce_double(c, &sig, 1, DV_REDUCE_MAX, err)) dv_comm_abort(c, 1, err);
    return (int)sig;
}

/* ---- the epochs --------------------------------------------------------------- */

dv_status dv_loop_run(const dv_loop *l, dv_train_state *ts, int *stop_signal_out) {
    const dv_settings *st = l->st;
    dv_comm *c = l->comm;
    const int rank0 = dv_comm_rank(c) == 0;
    char err[DV_ERR_LEN];
    const int64_t steps = dv_loader_steps(l->loader);
    const int64_t log_every = st->log_every ? st->log_every : (steps >= 10 ? steps / 10 : 1);
    int stop = 0, stop_signal = 0;
    stop_signals_catch();
    for (int64_t epoch = ts->epoch; epoch < st->epochs && !stop; epoch++) {
        double t0 = dv_now(), t_train = 0, last_print = 0;
        int64_t first = epoch == ts->epoch ? ts->step_in_epoch : 0, done = 0;
        if (dv_loader_start(l->loader, epoch, first, err)) dv_comm_abort(c, 1, err);
        for (int64_t s = first; s < steps; s++) {
            double ts0 = dv_now();
            dv_batch b;
            if (dv_loader_next(l->loader, &b, err)) dv_comm_abort(c, 1, err);
            l->step(l->ctx, &b, ts, s, first);
            ts->step++;
            ts->step_in_epoch = s + 1;
            done++;
            double t1 = dv_now();
            t_train += t1 - ts0;
            if (rank0 && ((l->live && t1 - last_print > 0.25) ||
                          (!l->live && (s + 1) % log_every == 0 && s + 1 < steps))) {
                l->flush(l->ctx, ts);
                double rate = (double)done * (double)st->batch / t_train;
                double eta = (double)(steps - s - 1) * (t_train / (double)done);
                l->progress(l->ctx, ts, epoch, s + 1, steps, rate, eta);
                last_print = t1;
            }
            if (st->max_steps && ts->step >= st->max_steps) {
                stop = 1;
                break;
            }
            if ((stop_signal = stop_signal_agreed(c, ts->step, 8))) {
                stop = 1;
                break;
            }
            if (st->checkpoint_every && ts->step % st->checkpoint_every == 0 && s + 1 < steps) {
                dv_train_state g;
                l->flush(l->ctx, ts);
                l->global(l->ctx, ts, &g, 0);
                if (l->save(l->ctx, &g, 0)) return DV_ERR;
            }
        }
        if (l->live) printf("\r%100s\r", "");
        /* the end of the epoch, or of the run inside it */
        dv_train_state g;
        l->flush(l->ctx, ts);
        l->global(l->ctx, ts, &g, 1);
        double rate = done ? (double)done * (double)st->batch / t_train : 0;
        if (ts->step_in_epoch < steps) {
            /* stopped inside the epoch: save where we are; the epoch's
             * metrics and early stopping wait for its end */
            if (rank0)
                printf("stopped at step %lld (%s), epoch %lld at %lld/%lld | ", (long long)ts->step,
                       stop_signal ? strsignal(stop_signal) : "max_steps", (long long)epoch + 1,
                       (long long)ts->step_in_epoch, (long long)steps);
            l->stopped(l->ctx, &g, rate);
            if (l->save(l->ctx, &g, 0)) return DV_ERR;
            break;
        }
        int end = l->epoch_end(l->ctx, ts, &g, epoch, rate, t0);
        if (end < 0 || l->save(l->ctx, ts, end & DV_LOOP_BEST)) return DV_ERR;
        if (end & DV_LOOP_STOP) break;
    }
    if (stop_signal && rank0)
        printf("interrupted by %s: the checkpoint of step %lld is in %s/last.h5; continue "
               "with --resume auto\n",
               strsignal(stop_signal), (long long)ts->step, st->run_dir);
    *stop_signal_out = stop_signal;
    return DV_OK;
}

int dv_progress_live(const dv_settings *st, dv_comm *c) {
    /* A live line needs a terminal. Under mpirun, rank 0's stdout is a
     * pseudo-terminal even when mpirun's own output goes to a file, so
     * `auto` prints plain lines whenever an MPI launcher started us. */
    int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
    return dv_comm_rank(c) == 0 &&
           (st->progress == DV_PROGRESS_LIVE ||
            (st->progress == DV_PROGRESS_AUTO && isatty(STDOUT_FILENO) && !launched));
}
