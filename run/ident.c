/* ident.c — what a checkpoint records of the run that wrote it
 * (dv_run_ident, checkpoint.h: the optimizer, the loss and the training
 * data), made for this run and compared when a run resumes
 * (docs/checkpoints.md, "Resume"): a run that changed is refused, each
 * change named, unless --resume-force.
 *
 * The training data is known by its file's name, the datasets read in it,
 * its shape, and a hash of a sample of its rows (up to 64, spread over the
 * whole split, read as stored: x_scale and x_shift aside), so a data set
 * replaced under the same name is seen without reading it all.
 */
#include <stdlib.h>
#include <string.h>

#include "run-impl.h"

#define HASH_ROWS 64 /* rows of the training split a data hash reads */
#define HASH_READ 8  /* rows read at a time */

/* A hash of up to HASH_ROWS rows of s spread evenly over it, the first and
 * the last included: their inputs as float32 (unscaled) and their targets. */
static dv_status split_hash(dv_split *s, uint64_t *out, char *err) {
    const dv_split_info *in = dv_split_info_get(s);
    const int64_t n = in->n, m = n < HASH_ROWS ? n : HASH_ROWS;
    const size_t xe = in->x_elems ? in->x_elems : 1, ye = in->y_elems ? in->y_elems : 1;
    float *x = malloc(HASH_READ * xe * sizeof(float));
    float *t = malloc(HASH_READ * ye * sizeof(float));
    int32_t *lab = malloc(HASH_READ * ye * sizeof(int32_t));
    uint64_t h = DV_FNV1A_SEED;
    dv_status st = x && t && lab ? DV_OK : DV_ERROR(err, "out of memory hashing the data");
    for (int64_t k = 0; !st && k < m; k += HASH_READ) {
        int64_t idx[HASH_READ];
        int count = 0;
        for (; count < HASH_READ && k + count < m; count++)
            idx[count] = m > 1 ? (k + count) * (n - 1) / (m - 1) : 0;
        const int labels = in->y_elems && in->y_kind == DV_TARGET_LABELS;
        const int floats = in->y_elems && in->y_kind == DV_TARGET_FLOATS;
        st = dv_split_read(s, idx, count, 1.0f, x, labels ? lab : NULL, floats ? t : NULL, err);
        if (st) break;
        h = dv_fnv1a(h, x, (size_t)count * in->x_elems * sizeof(float));
        if (labels) h = dv_fnv1a(h, lab, (size_t)count * in->y_elems * sizeof(int32_t));
        if (floats) h = dv_fnv1a(h, t, (size_t)count * in->y_elems * sizeof(float));
    }
    free(x);
    free(t);
    free(lab);
    *out = h;
    return st;
}

dv_status dv_run_ident_make(dv_run_ident *id, const char *optimizer, const char *loss,
                            const dv_settings *st, const char *datasets, dv_split *s, char *err) {
    memset(id, 0, sizeof(*id));
    snprintf(id->optimizer, sizeof id->optimizer, "%s", optimizer);
    snprintf(id->loss, sizeof id->loss, "%s", loss);
    snprintf(id->data_file, sizeof id->data_file, "%s", st->file);
    snprintf(id->data_train, sizeof id->data_train, "%s", datasets);
    const dv_split_info *in = dv_split_info_get(s);
    size_t at = (size_t)snprintf(id->data_shape, sizeof id->data_shape, "%lld samples of (",
                                 (long long)in->n);
    for (int i = 1; i < in->x_rank && at < sizeof id->data_shape; i++)
        at += (size_t)snprintf(id->data_shape + at, sizeof id->data_shape - at, "%s%lld",
                               i > 1 ? ", " : "", (long long)in->x_dims[i]);
    if (at < sizeof id->data_shape)
        snprintf(id->data_shape + at, sizeof id->data_shape - at, "), %zu target%s each",
                 in->y_elems, in->y_elems == 1 ? "" : "s");
    uint64_t h = 0;
    DV_TRY(split_hash(s, &h, err));
    snprintf(id->data_hash, sizeof id->data_hash, "%016llx", (unsigned long long)h);
    return DV_OK;
}

void dv_plan_ident(char *plan, size_t len, const dv_run_ident *id) {
    size_t at = strlen(plan);
    if (at < len)
        snprintf(plan + at, len - at, "data plan: train sample hash\t%s\n", id->data_hash);
}

/* The last part of a path: the file's name, wherever its directory. */
static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

dv_status dv_run_ident_check(dv_comm *c, const char *path, const dv_run_ident *ckpt,
                             const dv_run_ident *now, int force, char *err) {
    const int rank0 = dv_comm_rank(c) == 0;
    if (!ckpt->optimizer[0] && !ckpt->data_hash[0]) {
        if (rank0)
            printf("note: %s was written by an older Dive, which did not record its optimizer, "
                   "loss and data set: they are not checked\n",
                   path);
        return DV_OK;
    }
    char diff[DV_ERR_LEN - 200] = "";
    size_t at = 0;
#define DIFF(...)                                                                                  \
    do {                                                                                           \
        if (at < sizeof diff)                                                                      \
            at += (size_t)snprintf(diff + at, sizeof diff - at, "%s", at ? "; " : "");             \
        if (at < sizeof diff) at += (size_t)snprintf(diff + at, sizeof diff - at, __VA_ARGS__);    \
    } while (0)
    if (strcmp(ckpt->optimizer, now->optimizer))
        DIFF("the optimizer is %s, the checkpoint's run used %s", now->optimizer, ckpt->optimizer);
    if (strcmp(ckpt->loss, now->loss))
        DIFF("the loss is %s, the checkpoint's run used %s", now->loss, ckpt->loss);
    /* the file's directory may change (data staged to local disk); its
     * name and contents may not */
    if (strcmp(base_name(ckpt->data_file), base_name(now->data_file)))
        DIFF("the data file is %s, the checkpoint's run read %s", now->data_file, ckpt->data_file);
    if (strcmp(ckpt->data_train, now->data_train))
        DIFF("the training data is %s, the checkpoint's run read %s", now->data_train,
             ckpt->data_train);
    if (strcmp(ckpt->data_shape, now->data_shape))
        DIFF("the training data has %s, the checkpoint's run's had %s", now->data_shape,
             ckpt->data_shape);
    else if (strcmp(ckpt->data_hash, now->data_hash))
        DIFF("the training data's contents differ (a sample of its rows hashes to %s, the "
             "checkpoint's run's to %s)",
             now->data_hash, ckpt->data_hash);
#undef DIFF
    if (!diff[0]) return DV_OK;
    if (force) {
        if (rank0) {
            fprintf(stderr,
                    "warning: --resume-force: resuming from %s although this run differs from "
                    "the one that wrote it: %s\n",
                    path, diff);
            fflush(stderr);
        }
        return DV_OK;
    }
    return DV_ERROR(err,
                    "%s: this run differs from the one that wrote the checkpoint: %s. Resume with "
                    "that run's settings and data, start a new run (--overwrite, or another "
                    "run_dir), or pass --resume-force to resume anyway",
                    path, diff);
}
