/* rundir.c — a training run's directory (docs/checkpoints.md): making and
 * cleaning it, where a resumed run starts, writing and publishing its
 * checkpoints (ckpt-<step>.h5, with last.h5 and best.h5 as hard links, and
 * only the newest `keep` kept), metrics.csv, and the closing line.
 *
 * Only rank 0 writes; every rank learns the outcome through dv_agree.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "run-impl.h"

/* Creates run_dir (and its parents); fails unless it is a writable
 * directory. */
static dv_status run_dir_make(const char *path, char *err) {
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
    return DV_OK;
}

/* Removes what a killed writer may have left in run_dir: temporary
 * checkpoints and pictures (*.h5.tmp.<pid>, *.png.tmp) and the links used
 * to update last.h5 and best.h5 — never a complete file: those only ever
 * appear by rename. */
static void run_dir_clean(const char *dir) {
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

dv_status dv_run_begin(dv_comm *c, const dv_settings *st, const char *resume, char *ckpt,
                       size_t len, char *err) {
    ckpt[0] = 0;
    DV_TRY(run_dir_make(st->run_dir, err));
    if (dv_comm_rank(c) == 0) run_dir_clean(st->run_dir);
    if (!resume) return DV_OK;
    if (strcmp(resume, "auto")) {
        snprintf(ckpt, len, "%s", resume);
        return DV_OK;
    }
    snprintf(ckpt, len, "%s/last.h5", st->run_dir);
    if (access(ckpt, F_OK)) {
        ckpt[0] = 0;
        if (dv_comm_rank(c) == 0)
            printf("no checkpoint in %s yet: starting a new run\n", st->run_dir);
    }
    return DV_OK;
}

dv_status dv_resume_state(dv_comm *c, const char *ckpt, const dv_settings *st, dv_train_state *ts,
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
    return DV_OK;
}

void dv_run_done(dv_comm *c, const dv_settings *st, int64_t step, const char *also) {
    if (dv_comm_rank(c)) return;
    char best[1200];
    snprintf(best, sizeof(best), "%s/best.h5", st->run_dir);
    printf("done: %lld steps; checkpoints in %s (last.h5%s)%s\n", (long long)step, st->run_dir,
           access(best, F_OK) ? "" : ", best.h5", also);
}

FILE *dv_run_metrics_open(dv_comm *c, const dv_settings *st, int resumed, const char *header) {
    if (dv_comm_rank(c)) return NULL;
    char path[1200];
    snprintf(path, sizeof(path), "%s/metrics.csv", st->run_dir);
    int fresh = access(path, F_OK) != 0 || !resumed;
    FILE *f = fopen(path, fresh ? "w" : "a");
    if (f && fresh) {
        fprintf(f, "%s\n", header);
        fflush(f);
    }
    return f;
}

/* ---- checkpoint files -------------------------------------------------------- */

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
static dv_status link_into(const char *src, const char *dir, const char *name, char *err) {
    char tmp[1200], dst[1200];
    snprintf(tmp, sizeof(tmp), "%s/.%s.link", dir, name);
    snprintf(dst, sizeof(dst), "%s/%s", dir, name);
    unlink(tmp);
    if (link(src, tmp) || rename(tmp, dst))
        return DV_ERROR(err, "%s: cannot update %s: %s", dir, name, strerror(errno));
    return DV_OK;
}

/* Writes the checkpoint as ckpt-<step>.h5 (last.h5 when keep = 0) and
 * links last.h5 and best.h5 to it. */
static dv_status save_rank0(const dv_settings *st, int n, dv_model *const *models,
                            const char *const *roots, const dv_train_state *ts,
                            const char *config_text, int best, char *err) {
    const char *dir = st->run_dir;
    char path[1200];
    if (st->keep == 0)
        snprintf(path, sizeof(path), "%s/last.h5", dir);
    else
        snprintf(path, sizeof(path), "%s/ckpt-%lld.h5", dir, (long long)ts->step);
    DV_TRY(dv_checkpoint_save_models(path, n, models, roots, ts, config_text, err));
    if (st->keep) DV_TRY(link_into(path, dir, "last.h5", err));
    if (best) DV_TRY(link_into(path, dir, "best.h5", err));
    if (st->keep) prune_checkpoints(dir, st->keep);
    return DV_OK;
}

dv_status dv_run_save(dv_comm *c, const dv_settings *st, int n, dv_model *const *models,
                      const char *const *roots, const dv_train_state *ts, const char *config_text,
                      int best, char *err) {
    dv_status rc = DV_OK;
    if (dv_comm_rank(c) == 0) rc = save_rank0(st, n, models, roots, ts, config_text, best, err);
    return dv_agree(c, rc, err);
}
