/* agree.c — the ranks agree on the run before its first step
 * (docs/reliability.md): every rank hashes its effective config (what the
 * settings and the model read, defaults included, after --set), its data
 * plan and its resume point, and the hashes are compared. Ranks started
 * with different configs (an MPMD launch, a config edited between nodes, a
 * node that sees another dataset or checkpoint) would otherwise train
 * apart, or hang when one stops before the others.
 *
 * The common case costs one hash and one small reduction. Only when the
 * hashes differ does rank 0's text travel to every rank, so that each finds
 * the first entry (in rank 0's order) where it differs, and every rank's
 * value of that entry is gathered on rank 0 for the message.
 *
 * Entries are lines "KEY<TAB>VALUE" (dv_config_resolved_text's, then the
 * caller's plan). Per-rank settings, which may differ, are left out:
 * [train] threads, progress and comm_timeout, [data] memory_mb and
 * prefetch.
 */
#include <stdlib.h>
#include <string.h>

#include "run-impl.h"

/* The settings each rank may set for itself (docs/config.md). */
static const char *const per_rank[] = {"[train] threads",      "[train] progress",
                                       "[train] comm_timeout", "[data] memory_mb",
                                       "[data] prefetch",      NULL};

typedef struct entry {
    const char *key, *value; /* into a text whose tabs and newlines became NULs */
} entry;

static int is_per_rank(const char *line, size_t keylen) {
    for (int i = 0; per_rank[i]; i++)
        if (strlen(per_rank[i]) == keylen && !strncmp(line, per_rank[i], keylen)) return 1;
    return 0;
}

/* The config's entries (less the per-rank ones) and the plan, as one text. */
static char *run_text(const dv_config *cfg, const char *plan) {
    char *res = dv_config_resolved_text(cfg);
    if (!res) return NULL;
    char *t = malloc(strlen(res) + strlen(plan) + 1), *p = t;
    if (!t) {
        free(res);
        return NULL;
    }
    for (const char *line = res; *line;) {
        const char *nl = strchr(line, '\n'), *tab = strchr(line, '\t');
        size_t len = nl ? (size_t)(nl - line) + 1 : strlen(line);
        if (!tab || !is_per_rank(line, (size_t)(tab - line))) {
            memcpy(p, line, len);
            p += len;
        }
        line += len;
    }
    strcpy(p, plan);
    free(res);
    return t;
}

/* Splits t in place into entries; *n of them (malloc'd array). */
static entry *split(char *t, int *n) {
    int cap = 1;
    for (const char *p = t; *p; p++)
        cap += *p == '\n';
    entry *e = malloc(sizeof(*e) * (size_t)cap);
    *n = 0;
    if (!e) return NULL;
    for (char *line = t; *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        char *tab = strchr(line, '\t');
        if (tab) {
            *tab = 0;
            e[(*n)++] = (entry){line, tab + 1};
        }
        if (!nl) break;
        line = nl + 1;
    }
    return e;
}

static const entry *find(const entry *e, int n, const char *key) {
    for (int i = 0; i < n; i++)
        if (!strcmp(e[i].key, key)) return &e[i];
    return NULL;
}

#define VALUE_LEN 256

/* Rank 0's message once the ranks are known to differ: the first entry
 * where some rank differs from rank 0, and who holds which value. */
static void explain(dv_comm *c, char *mine, char *err) {
    const int rank = dv_comm_rank(c), world = dv_comm_size(c);
    /* rank 0's text to everyone */
    double len = rank == 0 ? (double)strlen(mine) + 1 : 0;
    if (dv_comm_bcast(c, &len, sizeof len, 0, err)) dv_comm_abort(c, 1, err);
    char *zero = malloc((size_t)len);
    if (!zero) dv_comm_abort(c, 1, "out of memory comparing the ranks' configs");
    if (rank == 0) memcpy(zero, mine, (size_t)len);
    if (dv_comm_bcast(c, zero, (size_t)len, 0, err)) dv_comm_abort(c, 1, err);
    int n0 = 0, n1 = 0;
    entry *e0 = split(zero, &n0), *e1 = split(mine, &n1);
    if (!e0 || !e1) dv_comm_abort(c, 1, "out of memory comparing the ranks' configs");

    /* the first of rank 0's entries this rank differs on (or lacks) */
    double first = (double)n0;
    for (int i = 0; i < n0 && first == n0; i++) {
        const entry *m = find(e1, n1, e0[i].key);
        if (!m || strcmp(m->value, e0[i].value)) first = i;
    }
    if (dv_comm_allreduce_double(c, &first, 1, DV_REDUCE_MIN, err)) dv_comm_abort(c, 1, err);
    char key[VALUE_LEN] = "";
    if (first < n0) {
        snprintf(key, sizeof key, "%s", e0[(int)first].key);
    } else {
        /* every rank has all of rank 0's entries: the lowest rank with an
         * entry rank 0 lacks names its first such entry */
        double who = world;
        for (int i = 0; i < n1 && who == world; i++)
            if (!find(e0, n0, e1[i].key)) {
                who = rank;
                snprintf(key, sizeof key, "%s", e1[i].key);
            }
        if (dv_comm_allreduce_double(c, &who, 1, DV_REDUCE_MIN, err)) dv_comm_abort(c, 1, err);
        if (who >= world) { /* the same entries after all: the hashes collided */
            free(e0);
            free(e1);
            free(zero);
            err[0] = 0;
            return;
        }
        if (dv_comm_bcast(c, key, sizeof key, (int)who, err)) dv_comm_abort(c, 1, err);
    }

    /* every rank's value of that entry, on rank 0 */
    char(*vals)[VALUE_LEN] = rank == 0 ? calloc((size_t)world, VALUE_LEN) : NULL;
    if (rank == 0 && !vals) dv_comm_abort(c, 1, "out of memory comparing the ranks' configs");
    for (int r = 0; r < world; r++) {
        char v[VALUE_LEN] = "";
        if (r == rank) {
            const entry *m = find(e1, n1, key);
            snprintf(v, sizeof v, "%s", m ? m->value : "(not set)");
        }
        if (dv_comm_bcast(c, v, sizeof v, r, err)) dv_comm_abort(c, 1, err);
        if (rank == 0) memcpy(vals[r], v, VALUE_LEN);
    }
    if (rank == 0) {
        char msg[DV_ERR_LEN - 128];
        size_t at = (size_t)snprintf(msg, sizeof msg, "the ranks disagree on %s:", key);
        int *done = calloc((size_t)world, sizeof(int));
        int groups = 0;
        for (int r = 0; r < world && done && at < sizeof msg; r++) {
            if (done[r]) continue;
            if (groups++ == 4) {
                at += (size_t)snprintf(msg + at, sizeof msg - at, " ...");
                break;
            }
            int count = 0, shown = 0;
            for (int q = r; q < world; q++)
                count += !done[q] && !strcmp(vals[q], vals[r]);
            at += (size_t)snprintf(msg + at, sizeof msg - at, "%s rank%s ", groups > 1 ? ";" : "",
                                   count > 1 ? "s" : "");
            for (int q = r; q < world && at < sizeof msg; q++) {
                if (done[q] || strcmp(vals[q], vals[r])) continue;
                done[q] = 1;
                if (shown++ < 8)
                    at += (size_t)snprintf(msg + at, sizeof msg - at, "%s%d", shown > 1 ? "," : "",
                                           q);
            }
            if (at < sizeof msg && shown > 8)
                at += (size_t)snprintf(msg + at, sizeof msg - at, " and %d more", shown - 8);
            if (at < sizeof msg)
                at += (size_t)snprintf(msg + at, sizeof msg - at, " %s '%s'",
                                       count > 1 ? "have" : "has", vals[r]);
        }
        if (at < sizeof msg)
            snprintf(msg + at, sizeof msg - at,
                     ". Every rank must run the same config, data and checkpoint (only "
                     "threads, progress, comm_timeout, memory_mb and prefetch may differ)");
        DV_ERROR(err, "%s", msg);
        free(done);
    }
    free(vals);
    free(e0);
    free(e1);
    free(zero);
}

/* Appends to plan (len bytes, NUL-terminated) the entries of a split: its
 * samples, sample shape and targets per sample (nothing for NULL). */
static void plan_split(char *plan, size_t len, const char *what, const dv_split *s) {
    if (!s) return;
    const dv_split_info *in = dv_split_info_get(s);
    size_t at = strlen(plan);
    at += (size_t)snprintf(plan + at, at < len ? len - at : 0,
                           "data plan: %s samples\t%lld\ndata plan: %s sample shape\t", what,
                           (long long)in->n, what);
    for (int i = 1; i < in->x_rank && at < len; i++)
        at += (size_t)snprintf(plan + at, len - at, "%s%lld", i > 1 ? "," : "",
                               (long long)in->x_dims[i]);
    if (at < len)
        snprintf(plan + at, len - at, "\ndata plan: %s targets per sample\t%zu\n", what,
                 in->y_elems);
}

/* ... and of the resume point: ckpt's path and ts's step, or a new run. */
static void plan_resume(char *plan, size_t len, const char *ckpt, const dv_train_state *ts) {
    size_t at = strlen(plan);
    if (at >= len) return;
    if (!ckpt[0])
        snprintf(plan + at, len - at, "resume point\ta new run\n");
    else
        snprintf(plan + at, len - at, "resume point\t%s at step %lld\n", ckpt, (long long)ts->step);
}

dv_status dv_run_agree(dv_comm *c, const dv_config *cfg, const char *plan, char *err) {
    if (dv_comm_size(c) == 1) return DV_OK;
    char *mine = run_text(cfg, plan);
    if (!mine) dv_comm_abort(c, 1, "out of memory hashing the config");
    uint64_t h = dv_fnv1a(DV_FNV1A_SEED, mine, strlen(mine));
    dv_status rc = DV_OK;
    if (!dv_comm_all_equal(c, &h, sizeof h)) {
        err[0] = 0;
        explain(c, mine, err);
        /* rank 0 holds the message; empty after a collision of the hashes,
         * which passes everywhere */
        double fail = dv_comm_rank(c) == 0 && err[0];
        if (dv_comm_bcast(c, &fail, sizeof fail, 0, err)) dv_comm_abort(c, 1, err);
        if (fail != 0) {
            rc = DV_ERR;
            if (dv_comm_rank(c) == 0)
                dv_error_print("dive: error", err);
            else
                DV_ERROR(err, "the ranks disagree on the run (rank 0 says how)");
        }
    }
    free(mine);
    return rc;
}

dv_status dv_run_agree_start(dv_comm *c, dv_status rc, const dv_config *cfg, const dv_split *train,
                             const dv_split *val, const dv_run_ident *id, const char *ckpt,
                             const dv_train_state *ts, char *err) {
    char plan[2048] = "";
    plan_split(plan, sizeof plan, "train", train);
    plan_split(plan, sizeof plan, "val", val);
    if (!rc) dv_plan_ident(plan, sizeof plan, id);
    plan_resume(plan, sizeof plan, ckpt, ts);
    DV_TRY(dv_agree(c, rc, err));
    return dv_run_agree(c, cfg, plan, err);
}
