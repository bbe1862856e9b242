/* checkpoint.c — HDF5 checkpoints that h5py can read (docs/checkpoints.md):
 *
 *   /model/<layer>/<param>          float32, the parameter's own shape
 *   /optimizer/m/<layer>/<param>    first moment / momentum (trainable only)
 *   /optimizer/v/<layer>/<param>    second moment (Adam)
 *   /train (attributes)             step, epoch, step_in_epoch, world_size,
 *                                   global_batch,
 *                                   seed, best_val_loss, bad_epochs, and the
 *                                   epoch's running metrics (`sums`: more of
 *                                   them, a GAN's losses)
 *
 * A checkpoint of several models (a GAN) holds each model's /model and
 * /optimizer under a group of its own: /generator/model/..., and so on; a
 * forward-only model (the averaged generator, /generator_ema) has no
 * /optimizer.
 *   /config                         the effective config text
 *   /streams                        stateful recurrent layers: each stream's
 *                                   carried state (global batch, floats)
 *
 * A checkpoint is written to a new temporary file in the same directory
 * (created where nothing is, so never through a link), flushed, fsync'd
 * and renamed over its name, so a crash at any moment leaves either the
 * old file or the new one, never a torn one.
 *
 * Verified: the file is HDF5's 1.8 format with every dataset chunked under
 * a Fletcher32 checksum (strings compact, in checksummed headers; see
 * dv_h5_create_checked), so HDF5 verifies every read. A load also refuses
 * weights and optimizer state that are not finite, and /train attributes
 * out of range (dv_train_state_check); dv_checkpoint_verify checks a whole
 * file without a model. /train also records the run that wrote it
 * (dv_run_ident: optimizer, loss, data set) and the format.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "h5.h"
#include "tokens.h"

static const char *const train_attrs[] = {"step", "epoch",      "step_in_epoch", "world_size",
                                          "seed", "bad_epochs", "global_batch"};
static const char *const train_dattrs[] = {"best_val_loss", "loss_sum", "correct_sum", "seen"};
/* the run's identity (dv_run_ident), string attributes of /train */
static const char *const ident_attrs[] = {"optimizer",  "loss",       "data_file",
                                          "data_train", "data_shape", "data_hash"};

/* The fields of ident in the order of ident_attrs, and their sizes. */
static char *ident_field(dv_run_ident *id, int i, size_t *len) {
    char *f[] = {id->optimizer,  id->loss,       id->data_file,
                 id->data_train, id->data_shape, id->data_hash};
    size_t n[] = {sizeof id->optimizer,  sizeof id->loss,       sizeof id->data_file,
                  sizeof id->data_train, sizeof id->data_shape, sizeof id->data_hash};
    *len = n[i];
    return f[i];
}

/* The first value of x[0..n) that is not finite: its index, or n. */
static size_t first_nonfinite(const float *x, size_t n, size_t *count) {
    size_t first = n;
    *count = 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) {
            if (first == n) first = i;
            (*count)++;
        }
    return first;
}

/* DV_ERR naming dataset `name` of `path` when x[0..n) holds a NaN or an
 * infinity. */
static dv_status check_finite(const float *x, size_t n, const char *path, const char *name,
                              char *err) {
    size_t bad = 0, first = first_nonfinite(x, n, &bad);
    if (!bad) return DV_OK;
    return DV_ERROR(err,
                    "%s: %s holds %zu value%s that %s NaN or infinite (the first at element %zu "
                    "of %zu): a diverged or damaged checkpoint cannot be used",
                    path, name, bad, bad > 1 ? "s" : "", bad > 1 ? "are" : "is", first, n);
}

/* Writes every param of the model under `root` (e.g. "/model"), taking the
 * values from `flat` (device, trainable layout) or the model's buffers. */
static dv_status write_tree(dv_h5 *f, const char *root, const dv_model *m, const float *flat,
                            int trainable_only, float *host, char *err) {
    DV_TRY(dv_h5_group(f, root, err));
    for (int i = 0; i < m->nlayers; i++) {
        const dv_layer *l = &m->layers[i];
        if (!l->nparam) continue;
        char name[512];
        snprintf(name, sizeof(name), "%s/%s", root, l->name);
        DV_TRY(dv_h5_group(f, name, err));
        for (int k = 0; k < l->nparam; k++) {
            const dv_param *p = &l->param[k];
            if ((trainable_only && !p->trainable) || p->tie) continue; /* tied: stored once */
            const float *src = p->trainable ? flat + p->offset : m->buffers + p->offset;
            m->be->to_host(m->be->ctx, host, src, p->count * sizeof(float));
            int64_t dims[DV_TENSOR_MAX_DIMS];
            for (int d = 0; d < p->ndim; d++)
                dims[d] = p->shape[d];
            snprintf(name, sizeof(name), "%s/%s/%s", root, l->name, p->name);
            DV_TRY(dv_h5_write_floats(f, name, p->ndim, dims, host, err));
        }
    }
    return DV_OK;
}

static int fsync_path(const char *path, int dir) {
    int fd = open(path, dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* HDF5 here is not thread-safe, and a streaming loader may be reading on
 * its prefetch thread: every HDF5 call goes through data's h5.h, which
 * takes the HDF5 lock; a whole save or load holds it too, so it is one
 * step for the prefetch thread. */
static int save_locked(const char *path, int n, dv_model *const *models, const char *const *roots,
                       const dv_train_state *ts, const char *config_text, char *err);
static int load_locked(const char *path, const char *root, dv_model *m, dv_train_state *ts,
                       int with_optimizer, char *err);
static char *config_locked(const char *path, char *err);

int dv_checkpoint_save(const char *path, const dv_model *m, const dv_train_state *ts,
                       const char *config_text, char *err) {
    static const char *const root[] = {""};
    dv_model *const models[] = {(dv_model *)m};
    return dv_checkpoint_save_models(path, 1, models, root, ts, config_text, err);
}

int dv_checkpoint_save_models(const char *path, int n, dv_model *const *models,
                              const char *const *roots, const dv_train_state *ts,
                              const char *config_text, char *err) {
    dv_h5_lock();
    int rc = save_locked(path, n, models, roots, ts, config_text, err);
    dv_h5_unlock();
    return rc;
}

int dv_checkpoint_load(const char *path, dv_model *m, dv_train_state *ts, int with_optimizer,
                       char *err) {
    return dv_checkpoint_load_model(path, "", m, ts, with_optimizer, err);
}

int dv_checkpoint_load_model(const char *path, const char *root, dv_model *m, dv_train_state *ts,
                             int with_optimizer, char *err) {
    dv_h5_lock();
    int rc = load_locked(path, root, m, ts, with_optimizer, err);
    dv_h5_unlock();
    return rc;
}

char *dv_checkpoint_config(const char *path, char *err) {
    dv_h5_lock();
    char *text = config_locked(path, err);
    dv_h5_unlock();
    return text;
}

/* One model's <root>/model and <root>/optimizer/{m,v} (a forward-only
 * model has no optimizer). */
static dv_status write_model(dv_h5 *f, const char *root, const dv_model *m, float *host,
                             char *err) {
    char name[256];
    if (root[0]) DV_TRY(dv_h5_group(f, root, err));
    snprintf(name, sizeof(name), "%s/model", root);
    DV_TRY(write_tree(f, name, m, m->params, 0, host, err));
    if (!m->state1) return DV_OK;
    snprintf(name, sizeof(name), "%s/optimizer", root);
    DV_TRY(dv_h5_group(f, name, err));
    snprintf(name, sizeof(name), "%s/optimizer/m", root);
    DV_TRY(write_tree(f, name, m, m->state1, 1, host, err));
    snprintf(name, sizeof(name), "%s/optimizer/v", root);
    return write_tree(f, name, m, m->state2, 1, host, err);
}

/* The /train attributes, the config text and the carried streams. */
static dv_status write_state(dv_h5 *f, const dv_model *m, const dv_train_state *ts,
                             const char *config_text, char *err) {
    DV_TRY(dv_h5_group(f, "/train", err));
    int64_t iv[] = {ts->step, ts->epoch,      ts->step_in_epoch, ts->world_size,
                    ts->seed, ts->bad_epochs, ts->global_batch};
    double dvals[] = {ts->best_val_loss, ts->loss_sum, ts->correct_sum, ts->seen};
    for (int i = 0; i < 7; i++)
        DV_TRY(dv_h5_attr_set_int(f, "/train", train_attrs[i], iv[i], err));
    for (int i = 0; i < 4; i++)
        DV_TRY(dv_h5_attr_set_double(f, "/train", train_dattrs[i], dvals[i], err));
    if (ts->nsums)
        DV_TRY(dv_h5_attr_set_doubles(f, "/train", "sums", ts->sums, (size_t)ts->nsums, err));
    DV_TRY(dv_h5_attr_set_int(f, "/train", "format", DV_CHECKPOINT_FORMAT, err));
    dv_run_ident id = ts->ident;
    for (int i = 0; i < (int)DV_ARRAY_LEN(ident_attrs); i++) {
        size_t len;
        const char *v = ident_field(&id, i, &len);
        DV_TRY(dv_h5_attr_set_string(f, "/train", ident_attrs[i], v, err));
    }
    DV_TRY(dv_h5_write_string(f, "/config", config_text ? config_text : "", err));
    if (m->stream_state) {
        int64_t dims[2] = {m->stream_rows, m->stream_cols};
        DV_TRY(dv_h5_write_floats(f, "/streams", 2, dims, m->stream_state, err));
    }
    return DV_OK;
}

static int save_locked(const char *path, int n, dv_model *const *models, const char *const *roots,
                       const dv_train_state *ts, const char *config_text, char *err) {
    const dv_model *m = models[0]; /* the one that may carry streams and a vocabulary */
    char tmp[1200];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    size_t most = 1;
    for (int i = 0; i < n; i++)
        if (dv_model_max_param_count(models[i]) > most) most = dv_model_max_param_count(models[i]);
    float *host = malloc(most * sizeof(float));
    if (!host) return DV_ERROR(err, "%s: out of memory", path);
    dv_h5 *f = NULL;
    unlink(tmp); /* a killed writer's of the same pid (or a link someone put there) */
    if (dv_h5_create_checked(&f, tmp, err) != DV_OK) {
        free(host);
        return DV_ERR;
    }
    char why[DV_ERR_LEN] = "";
    errno = 0;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        rc = write_model(f, roots[i], models[i], host, why);
    if (!rc) rc = write_state(f, m, ts, config_text, why);
    free(host);
    if (!rc && m->vocab_map && dv_vocab_write_to(f, m->vocab_map, why) != DV_OK) rc = -1;
    if (!rc) rc = dv_h5_flush(f, why);
    if (dv_h5_close(f, rc ? NULL : why) != DV_OK) rc = -1;
    if (!rc && fsync_path(tmp, 0)) rc = -1;
    if (rc) {
        int e = errno;
        unlink(tmp);
        return DV_ERROR(err,
                        "%s: writing the checkpoint failed (%s); the previous checkpoint is "
                        "unchanged",
                        path, e ? strerror(e) : "HDF5 error");
    }
    if (rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return DV_ERROR(err, "%s: cannot rename the new checkpoint into place: %s", path,
                        strerror(e));
    }
    char dir[1200];
    snprintf(dir, sizeof(dir), "%s", path);
    fsync_path(dirname(dir), 1);
    return 0;
}

static int read_tree(dv_h5 *f, const char *root, const char *path, dv_model *m, float *flat,
                     int trainable_only, float *host, char *err) {
    for (int i = 0; i < m->nlayers; i++) {
        dv_layer *l = &m->layers[i];
        for (int k = 0; k < l->nparam; k++) {
            dv_param *p = &l->param[k];
            if ((trainable_only && !p->trainable) || p->tie) continue;
            char name[512], why[DV_ERR_LEN];
            snprintf(name, sizeof(name), "%s/%s/%s", root, l->name, p->name);
            if (!dv_h5_exists(f, name))
                return DV_ERROR(err,
                                "%s: checkpoint has no %s — was it written for another "
                                "model?",
                                path, name);
            int nd = 0;
            int64_t dims[DV_H5_MAX_DIMS] = {0};
            if (dv_h5_shape(f, name, &nd, dims, DV_H5_MAX_DIMS, why) != DV_OK)
                return DV_ERROR(err, "%s: %s is not a dataset", path, name);
            int ok = nd == p->ndim && nd <= DV_H5_MAX_DIMS;
            for (int d = 0; ok && d < nd; d++)
                ok = dims[d] == p->shape[d];
            if (!ok) {
                char want[64] = "";
                for (int d = 0; d < p->ndim; d++)
                    snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%d", d ? "," : "",
                             p->shape[d]);
                return DV_ERROR(err,
                                "%s: %s has a different shape than the config's model "
                                "(expected %s)",
                                path, name, want);
            }
            if (dv_h5_read_floats(f, name, host, p->count, err) != DV_OK) return DV_ERR;
            DV_TRY(check_finite(host, p->count, path, name, err));
            float *dst = p->trainable ? flat + p->offset : m->buffers + p->offset;
            m->be->to_device(m->be->ctx, dst, host, p->count * sizeof(float));
        }
    }
    return 0;
}

/* Opens a checkpoint for reading; a missing file is named as a checkpoint. */
static dv_h5 *open_checkpoint(const char *path, char *err) {
    if (access(path, R_OK)) {
        DV_ERROR(err, "%s: cannot open checkpoint: %s", path, strerror(errno));
        return NULL;
    }
    dv_h5 *f = NULL;
    if (dv_h5_open(&f, path, DV_H5_READ, err) != DV_OK) return NULL;
    return f;
}

/* The /train attributes into ts. */
static int read_state(dv_h5 *f, const char *path, dv_train_state *ts, char *err) {
    char why[DV_ERR_LEN];
    memset(ts, 0, sizeof(*ts));
    int64_t *iv[] = {&ts->step, &ts->epoch,      &ts->step_in_epoch, &ts->world_size,
                     &ts->seed, &ts->bad_epochs, &ts->global_batch};
    double *dvals[] = {&ts->best_val_loss, &ts->loss_sum, &ts->correct_sum, &ts->seen};
    for (int i = 0; i < 7; i++)
        if (dv_h5_attr_get_int(f, "/train", train_attrs[i], iv[i], why) != DV_OK)
            return DV_ERROR(err, "%s: checkpoint lacks /train attribute '%s'", path,
                            train_attrs[i]);
    for (int i = 0; i < 4; i++)
        if (dv_h5_attr_get_double(f, "/train", train_dattrs[i], dvals[i], why) != DV_OK)
            return DV_ERROR(err, "%s: checkpoint lacks /train attribute '%s'", path,
                            train_dattrs[i]);
    if (dv_h5_attr_exists(f, "/train", "sums")) {
        size_t n = 0;
        if (dv_h5_attr_get_doubles(f, "/train", "sums", ts->sums, DV_TRAIN_SUMS, &n, why) != DV_OK)
            return DV_ERROR(err, "%s: /train attribute 'sums' is damaged", path);
        ts->nsums = (int)n;
    }
    int64_t format = 0;
    if (dv_h5_attr_exists(f, "/train", "format") &&
        dv_h5_attr_get_int(f, "/train", "format", &format, why) != DV_OK)
        return DV_ERROR(err, "%s: /train attribute 'format' is damaged", path);
    if (format < 0 || format > DV_CHECKPOINT_FORMAT)
        return DV_ERROR(err,
                        "%s: /train format = %lld: written by a newer Dive (this one reads "
                        "formats up to %d)",
                        path, (long long)format, DV_CHECKPOINT_FORMAT);
    ts->format = (int)format;
    for (int i = 0; i < (int)DV_ARRAY_LEN(ident_attrs); i++) {
        size_t len;
        char *v = ident_field(&ts->ident, i, &len);
        if (dv_h5_attr_exists(f, "/train", ident_attrs[i]) &&
            dv_h5_attr_get_string(f, "/train", ident_attrs[i], v, len, why) != DV_OK)
            return DV_ERROR(err, "%s: /train attribute '%s' is damaged", path, ident_attrs[i]);
    }
    return dv_train_state_check(ts, path, err);
}

dv_status dv_train_state_check(const dv_train_state *ts, const char *path, char *err) {
    /* int64 attributes: name, value, smallest and largest allowed */
    const struct {
        const char *name;
        int64_t v, lo, hi;
    } iv[] = {
        {"step", ts->step, 0, INT64_MAX / 2},
        {"step_in_epoch", ts->step_in_epoch, 0, ts->step},
        {"epoch", ts->epoch, 0, ts->step - ts->step_in_epoch},
        {"world_size", ts->world_size, 1, 1 << 24},
        {"global_batch", ts->global_batch, 1, INT32_MAX},
        {"bad_epochs", ts->bad_epochs, 0, ts->epoch},
    };
    for (int i = 0; i < (int)DV_ARRAY_LEN(iv); i++) {
        if (iv[i].v >= iv[i].lo && iv[i].v <= iv[i].hi) continue;
        if (i == 2 && iv[i].v > 0)
            return DV_ERROR(err,
                            "%s: /train epoch = %lld does not fit step = %lld, step_in_epoch = "
                            "%lld (every finished epoch takes at least one step): the checkpoint "
                            "is damaged",
                            path, (long long)ts->epoch, (long long)ts->step,
                            (long long)ts->step_in_epoch);
        return DV_ERROR(err,
                        "%s: /train %s = %lld is out of range (%lld to %lld): the checkpoint is "
                        "damaged",
                        path, iv[i].name, (long long)iv[i].v, (long long)iv[i].lo,
                        (long long)(iv[i].hi < iv[i].lo ? iv[i].lo : iv[i].hi));
    }
    const struct {
        const char *name;
        double v;
    } dv[] = {{"loss_sum", ts->loss_sum}, {"correct_sum", ts->correct_sum}, {"seen", ts->seen}};
    for (int i = 0; i < (int)DV_ARRAY_LEN(dv); i++)
        if (!isfinite(dv[i].v) || (i == 2 && dv[i].v < 0))
            return DV_ERROR(err, "%s: /train %s = %g is out of range: the checkpoint is damaged",
                            path, dv[i].name, dv[i].v);
    if (isnan(ts->best_val_loss))
        return DV_ERROR(err, "%s: /train best_val_loss is NaN: the checkpoint is damaged", path);
    for (int i = 0; i < ts->nsums; i++)
        if (!isfinite(ts->sums[i]))
            return DV_ERROR(err,
                            "%s: /train sums[%d] = %g is not finite: the checkpoint is damaged",
                            path, i, ts->sums[i]);
    return DV_OK;
}

static int load_locked(const char *path, const char *root, dv_model *m, dv_train_state *ts,
                       int with_optimizer, char *err) {
    dv_h5 *f = open_checkpoint(path, err);
    if (!f) return -1;
    char model[256], om[256], ov[256];
    snprintf(model, sizeof(model), "%s/model", root);
    snprintf(om, sizeof(om), "%s/optimizer/m", root);
    snprintf(ov, sizeof(ov), "%s/optimizer/v", root);
    if (!dv_h5_exists(f, model)) {
        int gan = !root[0] && dv_h5_exists(f, "/generator");
        dv_h5_close(f, NULL);
        if (gan)
            return DV_ERROR(
                err, "%s: a GAN checkpoint (its models are /generator and /discriminator)", path);
        return DV_ERROR(err, "%s: not a Dive checkpoint%s (no %s group)", path,
                        root[0] ? " of this kind" : "", model);
    }
    float *host = malloc(dv_model_max_param_count(m) * sizeof(float));
    int rc = host ? 0 : DV_ERROR(err, "out of memory");
    if (!rc) rc = read_tree(f, model, path, m, m->params, 0, host, err);
    if (!rc && with_optimizer) {
        rc = read_tree(f, om, path, m, m->state1, 1, host, err);
        if (!rc) rc = read_tree(f, ov, path, m, m->state2, 1, host, err);
    }
    free(host);
    if (!rc && ts) rc = read_state(f, path, ts, err);
    dv_h5_close(f, NULL);
    return rc;
}

int dv_checkpoint_has(const char *path, const char *name) {
    char err[DV_ERR_LEN];
    dv_h5_lock();
    dv_h5 *f = open_checkpoint(path, err);
    int has = f && dv_h5_exists(f, name);
    dv_h5_close(f, NULL);
    dv_h5_unlock();
    return has;
}

static char *config_locked(const char *path, char *err) {
    dv_h5 *f = open_checkpoint(path, err);
    if (!f) return NULL;
    char *text = NULL, why[DV_ERR_LEN];
    if (dv_h5_exists(f, "/config") && dv_h5_read_string(f, "/config", &text, why) != DV_OK)
        text = NULL;
    dv_h5_close(f, NULL);
    if (!text) DV_ERROR(err, "%s: checkpoint holds no readable /config", path);
    return text;
}

/* /streams of a checkpoint as (rows, cols) floats into *out (malloc'd), or
 * *out = NULL when it has none. */
static int streams_locked(const char *path, float **out, int *rows, int *cols, char *err) {
    *out = NULL;
    *rows = *cols = 0;
    dv_h5 *f = NULL;
    if (dv_h5_open(&f, path, DV_H5_READ, err) != DV_OK) return -1;
    int rc = 0;
    if (dv_h5_exists(f, "/streams")) {
        int nd = 0;
        int64_t dims[2] = {0, 0};
        char why[DV_ERR_LEN];
        if (dv_h5_shape(f, "/streams", &nd, dims, 2, why) != DV_OK || nd != 2 ||
            dims[0] > (1 << 30) || dims[1] > (1 << 30)) {
            rc = DV_ERROR(err, "%s: /streams is not a 2-D dataset", path);
        } else {
            size_t count = (size_t)(dims[0] * dims[1]);
            *out = malloc(count * sizeof(float) + 1);
            if (!*out)
                rc = DV_ERROR(err, "%s: out of memory", path);
            else if (dv_h5_read_floats(f, "/streams", *out, count, err) != DV_OK)
                rc = DV_ERR;
            else
                rc = check_finite(*out, count, path, "/streams", err);
            *rows = (int)dims[0], *cols = (int)dims[1];
        }
    }
    dv_h5_close(f, NULL);
    if (rc) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

int dv_checkpoint_streams(const char *path, float **out, int *rows, int *cols, char *err) {
    dv_h5_lock();
    int rc = streams_locked(path, out, rows, cols, err);
    dv_h5_unlock();
    return rc;
}

/* ---- verifying a whole file --------------------------------------------- */

typedef struct ds_list {
    int n, cap;
    struct ds_entry {
        char *path; /* absolute */
        char type[16];
        size_t count;
        int checksum;
    } * e;
} ds_list;

static int list_dataset(void *ctx, const dv_h5_dataset *d) {
    ds_list *l = ctx;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        struct ds_entry *e = realloc(l->e, (size_t)cap * sizeof(*e));
        if (!e) return 1;
        l->e = e, l->cap = cap;
    }
    struct ds_entry *e = &l->e[l->n];
    size_t count = 1;
    for (int i = 0; i < d->ndim && i < DV_H5_MAX_DIMS; i++)
        count *= (size_t)d->dims[i];
    size_t len = strlen(d->path) + 2;
    if (!(e->path = malloc(len))) return 1;
    snprintf(e->path, len, "/%s", d->path);
    snprintf(e->type, sizeof e->type, "%s", d->type);
    e->count = count;
    e->checksum = d->checksum;
    l->n++;
    return 0;
}

/* Reads dataset e whole (HDF5 verifies its checksum) and, for floats,
 * checks that every value is finite. */
static dv_status verify_dataset(dv_h5 *f, const char *path, const struct ds_entry *e,
                                dv_checkpoint_report *rep, char *err) {
    if (!strcmp(e->type, "string")) {
        char *text = NULL;
        dv_status st = dv_h5_read_string(f, e->path, &text, err);
        free(text);
        return st;
    }
    if (!strcmp(e->type, "other")) return DV_OK; /* nothing Dive writes */
    float *x = malloc((e->count ? e->count : 1) * sizeof(float));
    if (!x) return DV_ERROR(err, "%s: out of memory reading %s", path, e->path);
    dv_status st = dv_h5_read_floats(f, e->path, x, e->count, err);
    if (!st && !strncmp(e->type, "float", 5)) st = check_finite(x, e->count, path, e->path, err);
    free(x);
    if (!st) rep->values += (double)e->count;
    return st;
}

static dv_status verify_locked(const char *path, dv_checkpoint_report *rep, char *err) {
    dv_h5 *f = open_checkpoint(path, err);
    if (!f) return DV_ERR;
    dv_status st = DV_OK;
    if (!dv_h5_exists(f, "/train") ||
        (!dv_h5_exists(f, "/model") && !dv_h5_exists(f, "/generator")))
        st = DV_ERROR(err, "%s: not a Dive checkpoint (no /train, or no /model or /generator)",
                      path);
    ds_list l = {0};
    if (!st && dv_h5_visit(f, list_dataset, &l, err) != DV_OK) st = DV_ERR;
    for (int i = 0; !st && i < l.n; i++) {
        st = verify_dataset(f, path, &l.e[i], rep, err);
        rep->datasets += !st;
        rep->checksummed += !st && l.e[i].checksum;
    }
    for (int i = 0; i < l.n; i++)
        free(l.e[i].path);
    free(l.e);
    if (!st) st = read_state(f, path, &rep->ts, err);
    dv_h5_close(f, NULL);
    return st;
}

dv_status dv_checkpoint_verify(const char *path, dv_checkpoint_report *rep, char *err) {
    dv_checkpoint_report mine;
    if (!rep) rep = &mine;
    memset(rep, 0, sizeof(*rep));
    dv_h5_lock();
    dv_status st = verify_locked(path, rep, err);
    dv_h5_unlock();
    return st;
}
