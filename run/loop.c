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

/* ---- divergence ------------------------------------------------------------------ */

/* What a replica is at this step: the fingerprint of every model's
 * parameters, and comm's hash of the collectives called so far. */
typedef struct replica_id {
    uint64_t params, calls;
} replica_id;

static replica_id replica_now(const dv_loop *l) {
    replica_id id = {0, dv_comm_sequence_hash(l->comm)};
    for (int i = 0; i < l->nmodels; i++) {
        const dv_model *m = l->models[i];
        if (!m) continue;
        id.params =
            id.params * 0x100000001b3ULL + m->be->fingerprint(m->be->ctx, m->params, m->nparams);
    }
    return id;
}

/* Rank 0's account of which ranks differ from the majority of `all`
 * (world ids; field 0: parameters, 1: collectives), appended to msg. A tie
 * goes to rank 0's value. Returns how many differ. */
static int name_outliers(const replica_id *all, int world, int field, char *msg, size_t len) {
    uint64_t best = field ? all[0].calls : all[0].params;
    int best_n = 0;
    for (int r = 0; r < world; r++) {
        uint64_t v = field ? all[r].calls : all[r].params;
        int n = 0;
        for (int q = 0; q < world; q++)
            n += (field ? all[q].calls : all[q].params) == v;
        if (n > best_n) best = v, best_n = n;
    }
    int out = 0;
    size_t at = strlen(msg);
    for (int r = 0; r < world && at < len; r++) {
        if ((field ? all[r].calls : all[r].params) == best) continue;
        if (out++ < 8) at += (size_t)snprintf(msg + at, len - at, "%s%d", out > 1 ? "," : "", r);
    }
    if (out > 8 && at < len) snprintf(msg + at, len - at, " and %d more", out - 8);
    return out;
}

/* DV_OK when every rank holds the same parameters and called the same
 * collectives; else rank 0 names the ranks that differ (agreed DV_ERR).
 * last_saved: the step of the newest checkpoint this run wrote or resumed
 * from (-1: none); *agreed: the step last found agreed (checked once).
 * Collective. */
static dv_status replicas_agree(const dv_loop *l, int64_t step, int64_t last_saved, int64_t *agreed,
                                char *err) {
    dv_comm *c = l->comm;
    const int world = dv_comm_size(c), rank = dv_comm_rank(c);
    if (world == 1 || !l->nmodels || *agreed == step) return DV_OK;
    replica_id mine = replica_now(l);
    if (dv_comm_all_equal(c, &mine, sizeof mine)) {
        *agreed = step;
        return DV_OK;
    }
    replica_id *all = rank == 0 ? malloc(sizeof(*all) * (size_t)world) : NULL;
    if (rank == 0 && !all) dv_comm_abort(c, 1, "out of memory naming the diverged replicas");
    for (int r = 0; r < world; r++) {
        replica_id id = mine;
        if (dv_comm_bcast(c, &id, sizeof id, r, err)) dv_comm_abort(c, 1, err);
        if (rank == 0) all[r] = id;
    }
    if (rank == 0) {
        char msg[DV_ERR_LEN - 128] = "", who[256] = "";
        int n = name_outliers(all, world, 0, who, sizeof who);
        if (n)
            snprintf(msg, sizeof msg, "the parameters of rank%s %s differ from the other ranks'",
                     n > 1 ? "s" : "", who);
        who[0] = 0;
        n = name_outliers(all, world, 1, who, sizeof who);
        if (n)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg),
                     "%srank%s %s called other collectives than the other ranks",
                     msg[0] ? "; " : "", n > 1 ? "s" : "", who);
        if (!msg[0]) snprintf(msg, sizeof msg, "no majority among the ranks' parameters");
        char saved[1200];
        if (last_saved >= 0)
            snprintf(saved, sizeof saved, "%s/last.h5 holds step %lld, the last agreed checkpoint",
                     l->st->run_dir, (long long)last_saved);
        else
            snprintf(saved, sizeof saved, "no checkpoint was written");
        DV_ERROR(err,
                 "the replicas diverged by step %lld: %s (a faulty rank or GPU, or a "
                 "non-deterministic kernel); nothing of this step was saved: %s",
                 (long long)step, msg, saved);
        dv_error_print("dive: error", err);
    } else {
        DV_ERROR(err, "the replicas diverged (rank 0 says how)");
    }
    free(all);
    return DV_ERR;
}

/* DIVE_TEST_PERTURB=RANK:STEP: this rank's step from which the hook
 * perturbs, or -1. */
static int64_t perturb_from(dv_comm *c) {
    const char *s = getenv("DIVE_TEST_PERTURB");
    long long r, step;
    if (!s || sscanf(s, "%lld:%lld", &r, &step) != 2 || r != dv_comm_rank(c)) return -1;
    return step;
}

/* Adds 1e-3 to the middle parameter of the first model. */
static void perturb(const dv_loop *l) {
    const dv_model *m = l->models[0];
    float v;
    float *p = m->params + m->nparams / 2;
    m->be->to_host(m->be->ctx, &v, p, sizeof v);
    v += 1e-3f;
    m->be->to_device(m->be->ctx, p, &v, sizeof v);
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
    const int64_t perturb_step = l->nmodels ? perturb_from(c) : -1;
    int64_t last_saved = ts->step > 0 ? ts->step : -1, agreed = -1;
    stop_signals_catch();
    for (int64_t epoch = ts->epoch; epoch < st->epochs && !stop; epoch++) {
        double t0 = dv_now(), t_train = 0, last_print = 0;
        int64_t first = epoch == ts->epoch ? ts->step_in_epoch : 0, done = 0;
        if (dv_loader_start(l->loader, epoch, first, err)) dv_comm_abort(c, 1, err);
        for (int64_t s = first; s < steps; s++) {
            double ts0 = dv_now();
            dv_batch b;
            if (dv_loader_next(l->loader, &b, err)) dv_comm_abort(c, 1, err);
            dv_comm_set_step(c, (long)ts->step + 1);
            l->step(l->ctx, &b, ts, s, first);
            ts->step++;
            if (perturb_step >= 0 && ts->step >= perturb_step) perturb(l);
            if (st->check_every && ts->step % st->check_every == 0 &&
                replicas_agree(l, ts->step, last_saved, &agreed, err))
                return DV_ERR;
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
                if (replicas_agree(l, ts->step, last_saved, &agreed, err) || l->save(l->ctx, &g, 0))
                    return DV_ERR;
                last_saved = ts->step;
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
            if (replicas_agree(l, ts->step, last_saved, &agreed, err) || l->save(l->ctx, &g, 0))
                return DV_ERR;
            break;
        }
        if (replicas_agree(l, ts->step, last_saved, &agreed, err)) return DV_ERR;
        int end = l->epoch_end(l->ctx, ts, &g, epoch, rate, t0);
        if (end < 0 || l->save(l->ctx, ts, end & DV_LOOP_BEST)) return DV_ERR;
        last_saved = ts->step;
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
