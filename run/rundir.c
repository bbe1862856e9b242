/* rundir.c — a training run's directory (docs/checkpoints.md): making and
 * cleaning it; where a run starts (a new run, the checkpoint --resume
 * names, or for --resume auto the newest checkpoint of run_dir that
 * verifies, skipping damaged ones); writing and publishing its checkpoints
 * (ckpt-<step>.h5; last.h5 a symbolic link to the newest, best.h5 a copy of
 * the best; only the newest `keep` kept); metrics.csv; and the closing
 * line.
 *
 * Nothing that exists is lost: a new run in a directory that holds another
 * run's checkpoints stops unless --overwrite; --resume auto never starts
 * over while a checkpoint is there, readable or not; a damaged checkpoint
 * it skips is set aside as <name>.damaged, never deleted.
 *
 * Nothing is written through a link: every file is made new (O_EXCL,
 * which never follows one) under a temporary name and renamed into place,
 * and metrics.csv is appended to through O_NOFOLLOW. A link where Dive
 * writes stops the run at its start, named; the one link Dive keeps is its
 * own last.h5, which names a ckpt-<step>.h5 of the same directory.
 *
 * Only rank 0 reads the directory and writes; every rank learns the
 * outcome through a broadcast or dv_agree.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "run-impl.h"

#define MAX_CKPTS 4096 /* ckpt-<step>.h5 files of run_dir considered */

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
 * checkpoints, copies, metrics and pictures (*.h5.tmp.<pid>,
 * *.csv.tmp.<pid>, *.png.tmp) and the link used to update last.h5 — never
 * a complete file: those only ever appear by rename. */
static void run_dir_clean(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strstr(e->d_name, ".h5.tmp.") && !strstr(e->d_name, ".h5.link") &&
            !strstr(e->d_name, ".png.tmp") && !strstr(e->d_name, ".csv.tmp."))
            continue;
        char p[1200];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
}

static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* ---- what run_dir holds ------------------------------------------------------ */

/* 1 and *step when name is exactly ckpt-<step>.h5. */
static int ckpt_step(const char *name, long *step) {
    long s;
    int end = 0;
    if (sscanf(name, "ckpt-%ld.h5%n", &s, &end) != 1 || name[end] || s < 0 ||
        strspn(name + 5, "0123456789") != strlen(name + 5) - 3)
        return 0;
    *step = s;
    return 1;
}

static int cmp_long_desc(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

/* The Dive files of a run directory, newest checkpoint first. */
typedef struct dir_scan {
    int last;      /* last.h5 is there (any kind of entry) */
    int last_link; /* ... and is Dive's own link (to last_to) */
    char last_to[256];
    int best, metrics;
    long steps[MAX_CKPTS]; /* ckpt-<step>.h5, newest first */
    int nsteps;
} dir_scan;

/* 1 when a link's target is what Dive's last.h5 holds: ckpt-<step>.h5 of
 * the same directory. */
static int own_target(const char *to) {
    long s;
    return !strchr(to, '/') && ckpt_step(to, &s);
}

/* Whether `name` is a file Dive writes in run_dir (so no link may stand
 * there). */
static int dive_writes(const char *name) {
    long s;
    int n = 0;
    return !strcmp(name, "metrics.csv") || !strcmp(name, "best.h5") || !strcmp(name, "last.h5") ||
           ckpt_step(name, &s) ||
           (sscanf(name, "samples-epoch-%*d.png%n", &n) == 0 && n && !name[n]);
}

/* Lists run_dir's Dive files into sc; DV_ERR naming the first link where
 * Dive writes (other than its own last.h5). */
static dv_status scan_dir(const char *dir, dir_scan *sc, char *err) {
    memset(sc, 0, sizeof(*sc));
    DIR *d = opendir(dir);
    if (!d) return DV_ERROR(err, "run_dir %s: cannot list: %s", dir, strerror(errno));
    struct dirent *e;
    dv_status st = DV_OK;
    while (!st && (e = readdir(d))) {
        const char *name = e->d_name;
        if (!dive_writes(name)) continue;
        char p[1200], to[256] = "";
        snprintf(p, sizeof p, "%s/%s", dir, name);
        struct stat sb;
        if (lstat(p, &sb)) continue;
        if (S_ISLNK(sb.st_mode)) {
            ssize_t n = readlink(p, to, sizeof to - 1);
            to[n > 0 ? n : 0] = 0;
            if (!strcmp(name, "last.h5") && own_target(to)) {
                sc->last = sc->last_link = 1;
                snprintf(sc->last_to, sizeof sc->last_to, "%s", to);
                continue;
            }
            st = DV_ERROR(err,
                          "%s is a symbolic link (to %s)%s: Dive does not write through links in "
                          "run_dir; remove it, or use another run_dir",
                          p, to[0] ? to : "?",
                          strcmp(name, "last.h5") ? ""
                                                  : ", not Dive's own link to a ckpt-<step>.h5 of "
                                                    "the same directory");
            break;
        }
        long s;
        if (!strcmp(name, "last.h5"))
            sc->last = 1;
        else if (!strcmp(name, "best.h5"))
            sc->best = 1;
        else if (!strcmp(name, "metrics.csv"))
            sc->metrics = 1;
        else if (ckpt_step(name, &s) && sc->nsteps < MAX_CKPTS)
            sc->steps[sc->nsteps++] = s;
    }
    closedir(d);
    qsort(sc->steps, (size_t)sc->nsteps, sizeof(long), cmp_long_desc);
    return st;
}

/* "last.h5, best.h5 and 3 ckpt-<step>.h5" */
static void describe(const dir_scan *sc, char *out, size_t len) {
    char parts[3][64];
    int n = 0;
    if (sc->last) snprintf(parts[n++], 64, "last.h5");
    if (sc->best) snprintf(parts[n++], 64, "best.h5");
    if (sc->nsteps == 1) snprintf(parts[n++], 64, "ckpt-%ld.h5", sc->steps[0]);
    if (sc->nsteps > 1) snprintf(parts[n++], 64, "%d ckpt-<step>.h5", sc->nsteps);
    out[0] = 0;
    for (int i = 0; i < n; i++)
        snprintf(out + strlen(out), len - strlen(out), "%s%s",
                 i ? (i + 1 < n ? ", " : " and ") : "", parts[i]);
}

/* ---- --resume auto: the newest checkpoint that verifies --------------------- */

/* Appends "name" to the \n-separated list *list. */
static void list_add(char **list, const char *name) {
    size_t old = *list ? strlen(*list) : 0, add = strlen(name) + 2;
    char *l = realloc(*list, old + add);
    if (!l) return; /* not set aside: it stays where it is */
    snprintf(l + old, add, "%s\n", name);
    *list = l;
}

/* Walks from last.h5 back through ckpt-<step>.h5, newest first, to the
 * first checkpoint that verifies (dv_checkpoint_verify); says on stderr
 * which it skipped and why. The damaged files skipped go to d->aside. */
static dv_status walk_back(const dv_settings *st, const dir_scan *sc, dv_run_dir *d, char *err) {
    const char *dir = st->run_dir;
    char(*names)[64] = malloc((MAX_CKPTS + 1) * sizeof(*names));
    if (!names) return DV_ERROR(err, "out of memory");
    int n = 0;
    if (sc->last) snprintf(names[n++], 64, "last.h5");
    for (int i = 0; i < sc->nsteps; i++)
        snprintf(names[n++], 64, "ckpt-%ld.h5", sc->steps[i]);
    char why[DV_ERR_LEN - 320] = "";
    size_t at = 0;
    int skipped = 0;
    dev_t bad_dev[8];
    ino_t bad_ino[8];
    int nbad = 0;
    for (int i = 0; i < n; i++) {
        char p[1200], reason[DV_ERR_LEN] = "";
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        struct stat sb, lsb;
        int ok_stat = !stat(p, &sb), why_not = errno;
        int is_reg = !lstat(p, &lsb) && S_ISREG(lsb.st_mode);
        int same = 0;
        for (int k = 0; ok_stat && k < nbad; k++)
            same |= bad_dev[k] == sb.st_dev && bad_ino[k] == sb.st_ino;
        char e2[DV_ERR_LEN];
        if (same) {
            snprintf(reason, sizeof reason, "the same file as %s/last.h5", dir);
        } else if (!ok_stat && sc->last_link && i == 0) {
            snprintf(reason, sizeof reason, "it names %s, which %s", sc->last_to,
                     why_not == ENOENT ? "does not exist" : strerror(why_not));
        } else if (dv_checkpoint_verify(p, NULL, e2) != DV_OK) {
            snprintf(reason, sizeof reason, "%s", dv_error_text(e2));
            /* the text names the file first: keep what follows */
            size_t pl = strlen(p);
            if (!strncmp(reason, p, pl) && reason[pl] == ':')
                memmove(reason, reason + pl + 2, strlen(reason + pl + 2) + 1);
            if (ok_stat && nbad < 8) bad_dev[nbad] = sb.st_dev, bad_ino[nbad++] = sb.st_ino;
        } else {
            snprintf(d->ckpt, sizeof d->ckpt, "%s", p);
            free(names);
            return DV_OK;
        }
        fprintf(stderr, "warning: --resume auto: skipping %s: %s\n", p, reason);
        fflush(stderr);
        if (is_reg) list_add(&d->aside, names[i]);
        if (skipped++ < 3 && at < sizeof why)
            at += (size_t)snprintf(why + at, sizeof why - at, "%s%s: %.150s", at ? "; " : "",
                                   names[i], reason);
    }
    if (skipped > 3 && at < sizeof why)
        snprintf(why + at, sizeof why - at, "; and %d more", skipped - 3);
    free(names);
    free(d->aside);
    d->aside = NULL;
    return DV_ERROR(err,
                    "--resume auto: no checkpoint of %s verifies (%s); nothing was changed. Resume "
                    "one by path (--resume PATH), or start a new run with --overwrite",
                    dir, why);
}

/* Rank 0: where the run starts, into d. */
static dv_status decide(const dv_settings *st, const dv_train_opts *o, dv_run_dir *d, char *err) {
    const char *dir = st->run_dir;
    run_dir_clean(dir);
    dir_scan *sc = malloc(sizeof(*sc));
    if (!sc) return DV_ERROR(err, "out of memory");
    dv_status rc = scan_dir(dir, sc, err);
    char held[256];
    describe(sc, held, sizeof held);
    const int any = sc->last || sc->best || sc->nsteps;
    if (rc) {
        /* a link where Dive writes: named */
    } else if (!o->resume) {
        if (any && !o->overwrite)
            rc = DV_ERROR(err,
                          "run_dir %s holds the checkpoints of an earlier run (%s): continue it "
                          "with --resume auto, or pass --overwrite to delete them and its "
                          "metrics.csv and start a new run",
                          dir, held);
        d->overwrite = o->overwrite;
    } else if (strcmp(o->resume, "auto")) {
        snprintf(d->ckpt, sizeof d->ckpt, "%s", o->resume);
    } else if (sc->last || sc->nsteps) {
        rc = walk_back(st, sc, d, err);
    } else if (sc->best) {
        rc = DV_ERROR(err,
                      "--resume auto: run_dir %s holds best.h5 of an earlier run but no last.h5 "
                      "or ckpt-<step>.h5: resume it by path (--resume %s/best.h5), or pass "
                      "--overwrite (instead of --resume) to delete it and start a new run",
                      dir, dir);
    } else {
        printf("no checkpoint in %s yet: starting a new run\n", dir);
    }
    free(sc);
    return rc;
}

/* A rank other than 0 started with other options than rank 0 (an MPMD
 * launch): it takes its own at face value, unverified, so that the ranks'
 * resume points differ and dv_run_agree names it. */
static void decide_alone(const dv_settings *st, const dv_train_opts *o, dv_run_dir *d) {
    d->overwrite = o->overwrite;
    if (o->resume && strcmp(o->resume, "auto"))
        snprintf(d->ckpt, sizeof d->ckpt, "%s", o->resume);
    else if (o->resume)
        snprintf(d->ckpt, sizeof d->ckpt, "%s/last.h5", st->run_dir);
    struct stat sb;
    if (o->resume && !strcmp(o->resume, "auto") && lstat(d->ckpt, &sb)) d->ckpt[0] = 0;
}

dv_status dv_run_begin(dv_comm *c, const dv_settings *st, const dv_train_opts *o, dv_run_dir *d,
                       char *err) {
    memset(d, 0, sizeof(*d));
    dv_status rc = run_dir_make(st->run_dir, err);
    /* rank 0 reads the directory and decides; the others learn it */
    struct {
        int rc, overwrite;
        char resume[sizeof d->ckpt]; /* rank 0's --resume ("" for none) */
        char ckpt[sizeof d->ckpt];
    } msg = {0};
    if (dv_comm_rank(c) == 0) {
        if (!rc) rc = decide(st, o, d, err);
        msg.rc = rc;
        msg.overwrite = o->overwrite;
        snprintf(msg.resume, sizeof msg.resume, "%s", o->resume ? o->resume : "");
        memcpy(msg.ckpt, d->ckpt, sizeof msg.ckpt);
        fflush(stdout);
    }
    char e2[DV_ERR_LEN];
    if (dv_comm_bcast(c, &msg, sizeof msg, 0, e2)) dv_comm_abort(c, 1, e2);
    if (dv_comm_rank(c) != 0) {
        if (!rc && msg.rc) rc = DV_ERROR(err, "rank 0 could not start the run (it says why)");
        if (!strcmp(msg.resume, o->resume ? o->resume : "") && msg.overwrite == o->overwrite) {
            memcpy(d->ckpt, msg.ckpt, sizeof d->ckpt);
            d->overwrite = msg.overwrite;
        } else {
            decide_alone(st, o, d);
        }
    }
    return rc;
}

void dv_run_dir_free(dv_run_dir *d) {
    free(d->aside);
    d->aside = NULL;
}

dv_status dv_resume_state(dv_comm *c, const char *ckpt, const dv_settings *st,
                          const dv_run_ident *now, int64_t steps, int force, dv_train_state *ts,
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
    DV_TRY(dv_run_ident_check(c, ckpt, &ts->ident, now, force, err));
    if (ts->step_in_epoch >= steps) {
        if (!force)
            return DV_ERROR(err,
                            "%s: /train step_in_epoch = %lld, but an epoch of this run has %lld "
                            "steps: the checkpoint is damaged, or was written for other data",
                            ckpt, (long long)ts->step_in_epoch, (long long)steps);
        /* --resume-force onto other data: the epoch is over */
        if (rank == 0)
            printf("note: --resume-force: step %lld of epoch %lld is past this data's %lld "
                   "steps per epoch: continuing with epoch %lld\n",
                   (long long)ts->step_in_epoch, (long long)ts->epoch + 1, (long long)steps,
                   (long long)ts->epoch + 2);
        ts->epoch++;
        ts->step_in_epoch = 0;
        ts->loss_sum = ts->correct_sum = ts->seen = 0;
        memset(ts->sums, 0, sizeof ts->sums);
    }
    if (rank == 0) {
        printf("resuming from %s: epoch %lld, step %lld", ckpt, (long long)ts->epoch + 1,
               (long long)ts->step);
        if (ts->world_size != world)
            printf(" (written on %lld ranks, now %d; same global batch %ld)",
                   (long long)ts->world_size, world, st->batch);
        printf("\n");
    }
    ts->world_size = world;
    ts->ident = *now; /* its checkpoints record this run */
    if (rank) {       /* rank 0 carries the epoch's running sums on */
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

/* ---- the start: old files, metrics.csv ---------------------------------------- */

/* --overwrite: removes the earlier run's files (checkpoints, those set
 * aside as damaged, metrics.csv, sample grids) and says how many. */
static dv_status remove_old_run(const char *dir, char *err) {
    DIR *d = opendir(dir);
    if (!d) return DV_ERROR(err, "run_dir %s: cannot list: %s", dir, strerror(errno));
    struct dirent *e;
    int n = 0;
    dv_status st = DV_OK;
    while (!st && (e = readdir(d))) {
        const char *name = e->d_name;
        long s;
        char base[256];
        snprintf(base, sizeof base, "%s", name);
        char *dm = strstr(base, ".damaged");
        if (dm) *dm = 0; /* ckpt-40.h5.damaged, last.h5.damaged.1 */
        if (!dive_writes(name) && !(dm && (!strcmp(base, "last.h5") || ckpt_step(base, &s))))
            continue;
        char p[1200];
        snprintf(p, sizeof p, "%s/%s", dir, name);
        if (unlink(p) && errno != ENOENT)
            st = DV_ERROR(err, "--overwrite: cannot remove %s: %s", p, strerror(errno));
        else
            n++;
    }
    closedir(d);
    if (!st && n) printf("--overwrite: removed the %d files of the earlier run in %s\n", n, dir);
    return st;
}

/* Renames each damaged checkpoint of `aside` to <name>.damaged (or
 * <name>.damaged.<k> where that exists), never replacing a file. */
static dv_status set_aside(const char *dir, const char *aside, char *err) {
    for (const char *p = aside; p && *p;) {
        const char *nl = strchr(p, '\n');
        char name[256], from[1200], to[1300];
        snprintf(name, sizeof name, "%.*s", (int)(nl ? nl - p : (long)strlen(p)), p);
        p = nl ? nl + 1 : p + strlen(p);
        snprintf(from, sizeof from, "%s/%s", dir, name);
        int done = 0;
        for (int k = 0; k < 100 && !done; k++) {
            if (k)
                snprintf(to, sizeof to, "%s.damaged.%d", from, k);
            else
                snprintf(to, sizeof to, "%s.damaged", from);
            if (!link(from, to)) {
                done = 1;
            } else if (errno != EEXIST) {
                return DV_ERROR(err, "cannot set the damaged %s aside as %s: %s", from, to,
                                strerror(errno));
            }
        }
        if (!done || unlink(from))
            return DV_ERROR(err, "cannot set the damaged %s aside: %s", from, strerror(errno));
        printf("set the damaged %s aside as %s\n", from, to);
    }
    return DV_OK;
}

/* Opens a new file `path` for writing: it must not exist (a link is never
 * followed). -1 with errno on failure. */
static int create_new(const char *path) {
    return open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
}

/* metrics.csv of a resumed run: rows after the checkpoint's step (epochs
 * that will be done again, after a kill between a row and its checkpoint,
 * or a resume from an older checkpoint) are dropped: the file is rewritten
 * under a temporary name and renamed over it. *fd: the file to append to
 * (-1: there is none). */
static dv_status metrics_resume(const char *dir, const char *path, int64_t step, int *fd,
                                char *err) {
    *fd = open(path, O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
    if (*fd < 0 && errno == ENOENT) return DV_OK;
    if (*fd < 0)
        return DV_ERROR(err, "%s: cannot open%s: %s", path,
                        errno == ELOOP ? " (a symbolic link: Dive does not write through links)"
                                       : "",
                        strerror(errno));
    struct stat sb;
    char *text = NULL;
    if (fstat(*fd, &sb) || !S_ISREG(sb.st_mode) || !(text = malloc((size_t)sb.st_size + 1)) ||
        pread(*fd, text, (size_t)sb.st_size, 0) != sb.st_size) {
        free(text);
        close(*fd);
        *fd = -1;
        return DV_ERROR(err, "%s: not a readable regular file", path);
    }
    text[sb.st_size] = 0;
    /* the header, then the rows up to `step` */
    size_t keep = 0;
    int dropped = 0;
    for (char *line = text, *next; *line; line = next) {
        next = strchr(line, '\n');
        next = next ? next + 1 : line + strlen(line);
        long long s = -1;
        if (line != text && sscanf(line, "%*[^,],%lld", &s) == 1 && s > step) {
            dropped++;
            continue;
        }
        memmove(text + keep, line, (size_t)(next - line));
        keep += (size_t)(next - line);
    }
    dv_status st = DV_OK;
    if (dropped) {
        char tmp[1300];
        snprintf(tmp, sizeof tmp, "%s/metrics.csv.tmp.%ld", dir, (long)getpid());
        unlink(tmp);
        int out = create_new(tmp);
        if (out < 0 || write(out, text, keep) != (ssize_t)keep || fsync(out) || rename(tmp, path)) {
            st = DV_ERROR(err, "%s: cannot rewrite: %s", path, strerror(errno));
            if (out >= 0) close(out);
            unlink(tmp);
            close(*fd);
            *fd = -1;
        } else {
            close(*fd);
            *fd = out; /* the new file, at its end */
            printf("metrics.csv: dropped %d row%s after step %lld (epochs to be done again)\n",
                   dropped, dropped == 1 ? "" : "s", (long long)step);
        }
    }
    free(text);
    return st;
}

/* Rank 0's part of dv_run_start. */
static dv_status start_rank0(const dv_settings *st, dv_run_dir *d, const dv_train_state *ts,
                             const char *header, FILE **metrics, char *err) {
    const char *dir = st->run_dir;
    if (d->overwrite) DV_TRY(remove_old_run(dir, err));
    DV_TRY(set_aside(dir, d->aside, err));
    char path[1200], tmp[1300];
    snprintf(path, sizeof path, "%s/metrics.csv", dir);
    int fd = -1;
    if (d->ckpt[0]) DV_TRY(metrics_resume(dir, path, ts->step, &fd, err));
    if (fd < 0) { /* a new file, with its header, in place of any old one */
        snprintf(tmp, sizeof tmp, "%s/metrics.csv.tmp.%ld", dir, (long)getpid());
        unlink(tmp);
        fd = create_new(tmp);
        size_t n = strlen(header);
        if (fd < 0 || write(fd, header, n) != (ssize_t)n || write(fd, "\n", 1) != 1 ||
            rename(tmp, path)) {
            int e = errno;
            if (fd >= 0) close(fd);
            unlink(tmp);
            return DV_ERROR(err, "%s: cannot create: %s", path, strerror(e));
        }
    }
    *metrics = fdopen(fd, "a");
    if (!*metrics) {
        close(fd);
        return DV_ERROR(err, "%s: cannot open: %s", path, strerror(errno));
    }
    return DV_OK;
}

dv_status dv_run_start(dv_comm *c, const dv_settings *st, dv_run_dir *d, const dv_train_state *ts,
                       const char *header, FILE **metrics, char *err) {
    *metrics = NULL;
    dv_status rc = DV_OK;
    if (dv_comm_rank(c) == 0) rc = start_rank0(st, d, ts, header, metrics, err);
    dv_run_dir_free(d);
    return dv_agree(c, rc, err);
}

/* ---- checkpoint files -------------------------------------------------------- */

/* Keeps the newest `keep` ckpt-<step>.h5 of run_dir up to `step` (the one
 * just written). Newer ones (left by a run resumed from an older
 * checkpoint) are kept: the run writes over them as it passes their step. */
static void prune_checkpoints(const char *dir, long keep, long step) {
    DIR *d = opendir(dir);
    if (!d) return;
    long *steps = malloc(MAX_CKPTS * sizeof(long));
    int n = 0;
    struct dirent *e;
    while (steps && (e = readdir(d)) && n < MAX_CKPTS) {
        long s;
        if (ckpt_step(e->d_name, &s) && s <= step) steps[n++] = s;
    }
    closedir(d);
    if (steps) qsort(steps, (size_t)n, sizeof(long), cmp_long_desc);
    for (int i = (int)keep; i < n; i++) {
        char p[1200];
        snprintf(p, sizeof(p), "%s/ckpt-%ld.h5", dir, steps[i]);
        unlink(p);
    }
    free(steps);
}

/* Makes <dir>/last.h5 a symbolic link to `name` (a file of dir), replacing
 * it atomically. */
static dv_status link_last(const char *dir, const char *name, char *err) {
    char tmp[1200], dst[1200];
    snprintf(tmp, sizeof(tmp), "%s/.last.h5.link", dir);
    snprintf(dst, sizeof(dst), "%s/last.h5", dir);
    unlink(tmp);
    if (symlink(name, tmp) || rename(tmp, dst)) {
        int e = errno;
        unlink(tmp);
        return DV_ERROR(err, "%s: cannot update last.h5: %s", dir, strerror(e));
    }
    fsync_dir(dir);
    return DV_OK;
}

/* Copies the checkpoint `src` to <dir>/<name> (a new file, fsync'd, renamed
 * into place): best.h5 is a file of its own, so no damage to one file
 * takes both. */
static dv_status copy_into(const char *src, const char *dir, const char *name, char *err) {
    char tmp[1300], dst[1200];
    snprintf(tmp, sizeof(tmp), "%s/%s.tmp.%ld", dir, name, (long)getpid());
    snprintf(dst, sizeof(dst), "%s/%s", dir, name);
    unlink(tmp);
    int in = open(src, O_RDONLY | O_CLOEXEC), out = create_new(tmp);
    char *buf = malloc(1 << 20);
    int ok = in >= 0 && out >= 0 && buf;
    ssize_t n = 0;
    while (ok && (n = read(in, buf, 1 << 20)) > 0)
        for (ssize_t at = 0; ok && at < n;) {
            ssize_t w = write(out, buf + at, (size_t)(n - at));
            ok = w > 0;
            at += w > 0 ? w : 0;
        }
    ok = ok && n == 0 && !fsync(out);
    int e = errno;
    free(buf);
    if (in >= 0) close(in);
    if (out >= 0 && close(out)) ok = 0;
    if (ok && rename(tmp, dst)) ok = 0, e = errno;
    if (!ok) {
        unlink(tmp);
        return DV_ERROR(err,
                        "%s: cannot write %s (a copy of %s): %s; the previous one is unchanged",
                        dir, name, src, strerror(e));
    }
    fsync_dir(dir);
    return DV_OK;
}

/* Writes the checkpoint as ckpt-<step>.h5 and points last.h5 at it (with
 * keep = 0: writes last.h5 itself); a new best is copied to best.h5. */
static dv_status save_rank0(const dv_settings *st, int n, dv_model *const *models,
                            const char *const *roots, const dv_train_state *ts,
                            const char *config_text, int best, char *err) {
    const char *dir = st->run_dir;
    char path[1200], name[64];
    if (st->keep == 0)
        snprintf(name, sizeof(name), "last.h5");
    else
        snprintf(name, sizeof(name), "ckpt-%lld.h5", (long long)ts->step);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    DV_TRY(dv_checkpoint_save_models(path, n, models, roots, ts, config_text, err));
    if (st->keep) DV_TRY(link_last(dir, name, err));
    if (best) DV_TRY(copy_into(path, dir, "best.h5", err));
    if (st->keep) prune_checkpoints(dir, st->keep, (long)ts->step);
    return DV_OK;
}

dv_status dv_run_save(dv_comm *c, const dv_settings *st, int n, dv_model *const *models,
                      const char *const *roots, const dv_train_state *ts, const char *config_text,
                      int best, char *err) {
    dv_status rc = DV_OK;
    if (dv_comm_rank(c) == 0) rc = save_rank0(st, n, models, roots, ts, config_text, best, err);
    return dv_agree(c, rc, err);
}
