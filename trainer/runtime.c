/* runtime.c — what every training loop (train.c, gan.c) shares: the rank
 * agreement on errors, the backend choice, the run directory and its
 * checkpoint files, stop signals, and device work across ranks.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "trainer-impl.h"

double dv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int dv_agree(dv_comm *c, int rc, const char *err) {
    int first = dv_comm_first_failed(c, rc == 0);
    if (first < 0) return 0;
    if (first == dv_comm_rank(c)) {
        dv_error_print("dive: error", err);
    }
    return 1;
}

int dv_backend_open(dv_comm *c, const dv_settings *st, dv_backend **out, char *err) {
    const char *want = st->backend;
    *out = NULL;
    int ndev = dv_backend_cuda_device_count();
    if (!strcmp(want, "cuda") || (!strcmp(want, "auto") && ndev > 0)) {
        /* one GPU per rank by local rank; ranks beyond the GPUs share them */
        int dev = dv_comm_select_device(c, ndev);
        /* with no device, creating one says why (no GPU, or no CUDA build) */
        *out = dv_backend_cuda_create(dev >= 0 ? dev : 0, (dv_precision)st->precision, err);
        if (*out) return 0;
        if (!strcmp(want, "cuda")) return dv_error_context(err, "backend = cuda");
    }
    int threads = (int)st->threads;
    if (!threads) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int local = dv_comm_local_size(c);
        threads = (int)(cores / (local > 0 ? local : 1));
        if (threads < 1) threads = 1;
    }
    *out = dv_backend_cpu_create(threads);
    return *out ? 0 : DV_ERROR(err, "cannot create the CPU backend");
}

int dv_make_loader(dv_split *s, const dv_settings *st, dv_comm *c, int batch, int eval, int streams,
                   const dv_backend *be, dv_loader **out, char *err) {
    dv_loader_config lc = {0};
    lc.sampler.n = dv_split_info_get(s)->n;
    lc.sampler.global_batch = (int)st->batch;
    lc.sampler.world = dv_comm_size(c);
    lc.sampler.rank = dv_comm_rank(c);
    lc.sampler.seed = (uint64_t)st->seed;
    lc.sampler.shuffle = streams ? DV_ORDER_STREAMS : DV_ORDER_SHUFFLE;
    lc.eval = eval;
    lc.batch = batch;
    lc.x_scale = (float)st->x_scale;
    lc.x_shift = (float)st->x_shift;
    lc.memory_budget = (size_t)st->memory_mb << 20;
    lc.prefetch = (int)st->prefetch;
    lc.host_alloc = be->host_alloc;
    lc.host_free = be->host_free;
    lc.host_ctx = be->ctx;
    return dv_loader_create(out, s, &lc, err);
}

int dv_backend_agree(dv_comm *c, const dv_settings *st, const dv_backend *be, char *err) {
    double cuda = be->stream ? 1.0 : 0.0;
    const int world = dv_comm_size(c);
    if (dv_comm_allreduce_double(c, &cuda, 1, DV_REDUCE_SUM, err)) dv_comm_abort(c, 1, err);
    int rc = 0;
    if (cuda > 0 && cuda < world)
        rc = DV_ERROR(err,
                      "backend = %s: %.0f of %d ranks found a GPU and the others did not; set "
                      "backend = cpu, or run where every rank has a GPU",
                      st->backend, cuda, world);
    if (!rc && dv_comm_rank(c) == 0 && st->precision != DV_PRECISION_FP32 && !be->stream)
        printf("note: precision = %s applies to the CUDA backend; the CPU computes in fp32\n",
               st->precision == DV_PRECISION_BF16 ? "bf16" : "tf32");
    return dv_agree(c, rc, err);
}

/* ---- resuming ------------------------------------------------------------- */

void dv_resume_path(const char *resume, const char *run_dir, char *ckpt, size_t len) {
    if (strcmp(resume, "auto")) {
        snprintf(ckpt, len, "%s", resume);
        return;
    }
    snprintf(ckpt, len, "%s/last.h5", run_dir);
    if (access(ckpt, F_OK)) ckpt[0] = 0;
}

int dv_resume_state(dv_comm *c, const char *ckpt, const dv_settings *st, dv_train_state *ts,
                    char *err) {
    const int world = dv_comm_size(c), rank = dv_comm_rank(c);
    if (ts->global_batch != st->batch)
        return DV_ERROR(err,
                        "%s: trained with a global batch of %lld but the config says batch = "
                        "%ld; a resumed run must keep the global batch (it may change the "
                        "number of ranks)",
                        ckpt, (long long)ts->global_batch, st->batch);
    if (ts->seed != st->seed)
        return DV_ERROR(err, "%s: written with seed %lld but the config says seed = %ld", ckpt,
                        (long long)ts->seed, st->seed);
    if (rank == 0) {
        printf("resuming from %s: epoch %lld, step %lld", ckpt, (long long)ts->epoch + 1,
               (long long)ts->step);
        if (ts->world_size != world)
            printf(" (written on %lld ranks, now %d; same global batch %ld)",
                   (long long)ts->world_size, world, st->batch);
        printf("\n");
    }
    ts->world_size = world;
    if (rank) { /* rank 0 carries the epoch's running sums on */
        ts->loss_sum = ts->correct_sum = ts->seen = 0;
        for (int i = 0; i < ts->nsums; i++)
            ts->sums[i] = 0;
    }
    return 0;
}

int dv_run_begin(dv_comm *c, const dv_settings *st, const char *resume, char *ckpt, size_t len,
                 char *err) {
    ckpt[0] = 0;
    int rc = dv_run_dir_make(st->run_dir, err);
    if (!rc && dv_comm_rank(c) == 0) dv_run_dir_clean(st->run_dir);
    if (!rc && resume) {
        dv_resume_path(resume, st->run_dir, ckpt, len);
        if (!ckpt[0] && dv_comm_rank(c) == 0)
            printf("no checkpoint in %s yet: starting a new run\n", st->run_dir);
    }
    return rc;
}

void dv_replicas_check(dv_comm *c, const dv_model *m) {
    const dv_backend *be = m->be;
    float *host = malloc(m->nparams * sizeof(float) + 1);
    if (!host) dv_comm_abort(c, 1, "out of memory");
    be->to_host(be->ctx, host, m->params, m->nparams * sizeof(float));
    int same = dv_comm_all_equal(c, host, m->nparams * sizeof(float));
    free(host);
    if (!same) dv_comm_abort(c, 1, "the model replicas differ across ranks at start-up");
}

void dv_run_done(dv_comm *c, const dv_settings *st, int64_t step, const char *also) {
    if (dv_comm_rank(c)) return;
    char best[1200];
    snprintf(best, sizeof(best), "%s/best.h5", st->run_dir);
    printf("done: %lld steps; checkpoints in %s (last.h5%s)%s\n", (long long)step, st->run_dir,
           access(best, F_OK) ? "" : ", best.h5", also);
}

/* ---- stop signals ---------------------------------------------------------- */

/* SIGTERM / SIGINT (a scheduler's time limit, Ctrl-C): the loop notices at
 * a step boundary, agrees with the other ranks, writes a checkpoint and
 * stops. A signal handler can only set a flag: this is the one global. */
static volatile sig_atomic_t g_stop_signal;

static void on_stop_signal(int sig) {
    g_stop_signal = sig;
}

void dv_stop_signals_catch(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART; /* HDF5 and MPI reads must not see EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

int dv_stop_signal_agreed(dv_comm *c, int64_t step, int every) {
    if (dv_comm_size(c) == 1) return g_stop_signal;
    if (step % every) return 0;
    double sig = g_stop_signal;
    char err[DV_ERR_LEN];
    if (dv_comm_allreduce_double(c, &sig, 1, DV_REDUCE_MAX, err)) dv_comm_abort(c, 1, err);
    return (int)sig;
}

/* ---- the run directory ------------------------------------------------------ */

int dv_run_dir_make(const char *path, char *err) {
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || !*p) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) && errno != EEXIST)
                return DV_ERROR(err, "run_dir %s: cannot create %s: %s", path, buf,
                                strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    struct stat sb;
    if (stat(path, &sb) || !S_ISDIR(sb.st_mode))
        return DV_ERROR(err, "run_dir %s: not a directory", path);
    if (access(path, W_OK)) return DV_ERROR(err, "run_dir %s: not writable", path);
    return 0;
}

void dv_run_dir_clean(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strstr(e->d_name, ".h5.tmp.") && !strstr(e->d_name, ".h5.link") &&
            !strstr(e->d_name, ".png.tmp"))
            continue;
        char p[1200];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
}

static int ckpt_step(const char *name) {
    long s;
    char tail[8];
    return sscanf(name, "ckpt-%ld.h%1[5]", &s, tail) == 2 ? (int)(s >= 0) : 0;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* Keeps the newest `keep` ckpt-<step>.h5 files of run_dir. */
static void prune_checkpoints(const char *dir, long keep) {
    DIR *d = opendir(dir);
    if (!d) return;
    long steps[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096)
        if (ckpt_step(e->d_name)) steps[n++] = strtol(e->d_name + 5, NULL, 10);
    closedir(d);
    qsort(steps, (size_t)n, sizeof(long), cmp_long);
    for (int i = 0; i + keep < n; i++) {
        char p[1200];
        snprintf(p, sizeof(p), "%s/ckpt-%ld.h5", dir, steps[i]);
        unlink(p);
    }
}

/* Makes <dir>/<name> a hard link to `src`, replacing it atomically. */
static int link_into(const char *src, const char *dir, const char *name, char *err) {
    char tmp[1200], dst[1200];
    snprintf(tmp, sizeof(tmp), "%s/.%s.link", dir, name);
    snprintf(dst, sizeof(dst), "%s/%s", dir, name);
    unlink(tmp);
    if (link(src, tmp) || rename(tmp, dst))
        return DV_ERROR(err, "%s: cannot update %s: %s", dir, name, strerror(errno));
    return 0;
}

void dv_checkpoint_path(const char *dir, long keep, int64_t step, char *path, size_t len) {
    if (keep == 0)
        snprintf(path, len, "%s/last.h5", dir);
    else
        snprintf(path, len, "%s/ckpt-%lld.h5", dir, (long long)step);
}

int dv_checkpoint_publish(const char *dir, const char *path, long keep, int best, char *err) {
    int rc = 0;
    if (keep) rc = link_into(path, dir, "last.h5", err);
    if (!rc && best) rc = link_into(path, dir, "best.h5", err);
    if (!rc && keep) prune_checkpoints(dir, keep);
    return rc;
}

/* ---- the epochs --------------------------------------------------------------- */

int dv_loop_run(const dv_loop *l, dv_train_state *ts) {
    const dv_settings *st = l->st;
    dv_comm *c = l->comm;
    const int rank0 = dv_comm_rank(c) == 0;
    char err[DV_ERR_LEN];
    const int64_t steps = dv_loader_steps(l->loader);
    const int64_t log_every = st->log_every ? st->log_every : (steps >= 10 ? steps / 10 : 1);
    int stop = 0, stop_signal = 0;
    dv_stop_signals_catch();
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
            if ((stop_signal = dv_stop_signal_agreed(c, ts->step, 8))) {
                stop = 1;
                break;
            }
            if (st->checkpoint_every && ts->step % st->checkpoint_every == 0 && s + 1 < steps) {
                dv_train_state g;
                l->flush(l->ctx, ts);
                l->global(l->ctx, ts, &g, 0);
                if (l->save(l->ctx, &g, 0)) return 1;
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
            if (l->save(l->ctx, &g, 0)) return 1;
            break;
        }
        int end = l->epoch_end(l->ctx, ts, &g, epoch, rate, t0);
        if (end < 0 || l->save(l->ctx, ts, end & DV_LOOP_BEST)) return 1;
        if (end & DV_LOOP_STOP) break;
    }
    if (stop_signal && rank0)
        printf("interrupted by %s: the checkpoint of step %lld is in %s/last.h5; continue "
               "with --resume auto\n",
               strsignal(stop_signal), (long long)ts->step, st->run_dir);
    return stop_signal ? 128 + stop_signal : 0;
}

int dv_progress_live(const dv_settings *st, dv_comm *c) {
    /* A live line needs a terminal. Under mpirun, rank 0's stdout is a
     * pseudo-terminal even when mpirun's own output goes to a file, so
     * `auto` prints plain lines whenever an MPI launcher started us. */
    int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
    return dv_comm_rank(c) == 0 &&
           (st->progress == 1 || (st->progress == 0 && isatty(STDOUT_FILENO) && !launched));
}

/* ---- per-step metrics ---------------------------------------------------------- */

int dv_ring_init(dv_ring *g, const dv_backend *be, const float *src, int width) {
    memset(g, 0, sizeof(*g));
    g->be = be;
    g->src = src;
    g->width = width;
    g->cap = be->stream ? DV_RING_STEPS : 1;
    if (g->cap > 1 && !(g->dev = be->alloc(be->ctx, (size_t)width * DV_RING_STEPS * sizeof(float))))
        return -1;
    return 0;
}

void dv_ring_free(dv_ring *g) {
    if (g->be) g->be->free(g->be->ctx, g->dev);
    g->dev = NULL;
}

int dv_ring_push(dv_ring *g, int64_t step) {
    if (!g->used) g->step0 = step;
    if (g->cap > 1)
        g->be->copy(g->be->ctx, g->dev + (size_t)g->width * (size_t)g->used, g->src,
                    (size_t)g->width * sizeof(float));
    return ++g->used == g->cap;
}

int dv_ring_read(dv_ring *g, float *host, int64_t *step0) {
    const int n = g->used;
    if (n)
        g->be->to_host(g->be->ctx, host, g->cap > 1 ? g->dev : g->src,
                       (size_t)g->width * (size_t)n * sizeof(float));
    *step0 = g->step0;
    g->used = 0;
    return n;
}

/* ---- device work across ranks ----------------------------------------------- */

void dv_device_sync(dv_comm *c, const dv_backend *be, int device_comm, int keep) {
    if (!be->stream) return;
    char err[DV_ERR_LEN];
    if (device_comm && dv_comm_stream_wait(c, be->stream, keep, err)) dv_comm_abort(c, 1, err);
    if (be->check(be->ctx, err)) dv_comm_abort(c, 1, err);
}

void dv_average_on_device(dv_comm *c, const dv_backend *be, int device_comm, float *x, size_t n) {
    if (!n || dv_comm_size(c) == 1) return;
    char err[DV_ERR_LEN];
    if (!be->stream) {
        if (dv_comm_allreduce_avg(c, x, n, err)) dv_comm_abort(c, 1, err);
        return;
    }
    dv_comm_request *q;
    if (dv_comm_allreduce_start(c, x, n, be->stream, &q, err) || dv_comm_wait(c, q, err))
        dv_comm_abort(c, 1, err);
    dv_device_sync(c, be, device_comm, 0);
}
