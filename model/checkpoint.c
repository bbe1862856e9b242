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
 * A checkpoint is written to a temporary file in the same directory,
 * flushed, fsync'd and renamed over its name, so a crash at any moment
 * leaves either the old file or the new one, never a torn one.
 */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "data.h"

static const char *const train_attrs[] = {"step", "epoch",      "step_in_epoch", "world_size",
                                          "seed", "bad_epochs", "global_batch"};
static const char *const train_dattrs[] = {"best_val_loss", "loss_sum", "correct_sum", "seen"};

static int write_dataset(hid_t loc, const char *name, const dv_param *p, const float *host) {
    hsize_t dims[DV_TENSOR_MAX_DIMS];
    for (int i = 0; i < p->ndim; i++)
        dims[i] = (hsize_t)p->shape[i];
    hid_t space = H5Screate_simple(p->ndim, dims, NULL);
    hid_t ds = H5Dcreate2(loc, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = ds < 0 ? -1 : H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, host);
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(space);
    return rc < 0 ? -1 : 0;
}

/* Writes every param of the model under `root` (e.g. "/model"), taking the
 * values from `flat` (device, trainable layout) or the model's buffers. */
static int write_tree(hid_t file, const char *root, const dv_model *m, const float *flat,
                      int trainable_only, float *host) {
    hid_t g = H5Gcreate2(file, root, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return -1;
    int rc = 0;
    for (int i = 0; i < m->nlayers && !rc; i++) {
        const dv_layer *l = &m->layers[i];
        if (!l->nparam) continue;
        hid_t lg = H5Gcreate2(g, l->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (lg < 0) {
            rc = -1;
            break;
        }
        for (int k = 0; k < l->nparam && !rc; k++) {
            const dv_param *p = &l->param[k];
            if ((trainable_only && !p->trainable) || p->tie) continue; /* tied: stored once */
            const float *src = p->trainable ? flat + p->offset : m->buffers + p->offset;
            m->be->to_host(m->be->ctx, host, src, p->count * sizeof(float));
            rc = write_dataset(lg, p->name, p, host);
        }
        H5Gclose(lg);
    }
    H5Gclose(g);
    return rc;
}

static int write_attr(hid_t loc, const char *name, hid_t type, const void *v) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name, type == H5T_NATIVE_INT64 ? H5T_STD_I64LE : H5T_IEEE_F64LE,
                         space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, type, v);
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    return rc < 0 ? -1 : 0;
}

static int write_string(hid_t loc, const char *name, const char *text) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, strlen(text) + 1);
    H5Tset_strpad(type, H5T_STR_NULLTERM);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t ds = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = ds < 0 ? -1 : H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, text);
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(space);
    H5Tclose(type);
    return rc < 0 ? -1 : 0;
}

static int fsync_path(const char *path, int dir) {
    int fd = open(path, dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* HDF5 here is not thread-safe, and a streaming loader may be reading on
 * its prefetch thread: every HDF5 call of the trainer holds data's lock. */
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
    dv_hdf5_lock();
    int rc = save_locked(path, n, models, roots, ts, config_text, err);
    dv_hdf5_unlock();
    return rc;
}

int dv_checkpoint_load(const char *path, dv_model *m, dv_train_state *ts, int with_optimizer,
                       char *err) {
    return dv_checkpoint_load_model(path, "", m, ts, with_optimizer, err);
}

int dv_checkpoint_load_model(const char *path, const char *root, dv_model *m, dv_train_state *ts,
                             int with_optimizer, char *err) {
    dv_hdf5_lock();
    int rc = load_locked(path, root, m, ts, with_optimizer, err);
    dv_hdf5_unlock();
    return rc;
}

char *dv_checkpoint_config(const char *path, char *err) {
    dv_hdf5_lock();
    char *text = config_locked(path, err);
    dv_hdf5_unlock();
    return text;
}

static int make_group(hid_t f, const char *name) {
    hid_t g = H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return -1;
    H5Gclose(g);
    return 0;
}

/* One model's <root>/model and <root>/optimizer/{m,v} (a forward-only
 * model has no optimizer). */
static int write_model(hid_t f, const char *root, const dv_model *m, float *host) {
    char name[256];
    int rc = root[0] ? make_group(f, root) : 0;
    snprintf(name, sizeof(name), "%s/model", root);
    if (!rc) rc = write_tree(f, name, m, m->params, 0, host);
    if (!m->state1) return rc;
    snprintf(name, sizeof(name), "%s/optimizer", root);
    if (!rc) rc = make_group(f, name);
    snprintf(name, sizeof(name), "%s/optimizer/m", root);
    if (!rc) rc = write_tree(f, name, m, m->state1, 1, host);
    snprintf(name, sizeof(name), "%s/optimizer/v", root);
    if (!rc) rc = write_tree(f, name, m, m->state2, 1, host);
    return rc;
}

static int save_locked(const char *path, int n, dv_model *const *models, const char *const *roots,
                       const dv_train_state *ts, const char *config_text, char *err) {
    const dv_model *m = models[0]; /* the one that may carry streams and a vocabulary */
    char tmp[1200];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    size_t most = 1;
    for (int i = 0; i < n; i++)
        if (dv_model_max_param_count(models[i]) > most) most = dv_model_max_param_count(models[i]);
    float *host = malloc(most * sizeof(float));
    if (!host) return DV_ERROR(err, "%s: out of memory", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) {
        free(host);
        return DV_ERROR(err, "%s: cannot create checkpoint file (%s)", tmp, strerror(errno));
    }
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        rc = write_model(f, roots[i], models[i], host);
    if (!rc) {
        hid_t tg = H5Gcreate2(f, "/train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (tg < 0) rc = -1;
        int64_t iv[] = {ts->step, ts->epoch,      ts->step_in_epoch, ts->world_size,
                        ts->seed, ts->bad_epochs, ts->global_batch};
        double dvals[] = {ts->best_val_loss, ts->loss_sum, ts->correct_sum, ts->seen};
        for (int i = 0; i < 7 && !rc; i++)
            rc = write_attr(tg, train_attrs[i], H5T_NATIVE_INT64, &iv[i]);
        for (int i = 0; i < 4 && !rc; i++)
            rc = write_attr(tg, train_dattrs[i], H5T_NATIVE_DOUBLE, &dvals[i]);
        if (!rc && ts->nsums) {
            hsize_t dim = (hsize_t)ts->nsums;
            hid_t space = H5Screate_simple(1, &dim, NULL);
            hid_t a = H5Acreate2(tg, "sums", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
            if (a < 0 || H5Awrite(a, H5T_NATIVE_DOUBLE, ts->sums) < 0) rc = -1;
            if (a >= 0) H5Aclose(a);
            H5Sclose(space);
        }
        if (tg >= 0) H5Gclose(tg);
    }
    if (!rc) rc = write_string(f, "/config", config_text ? config_text : "");
    if (!rc && m->stream_state) {
        hsize_t dims[2] = {(hsize_t)m->stream_rows, (hsize_t)m->stream_cols};
        hid_t space = H5Screate_simple(2, dims, NULL);
        hid_t ds =
            H5Dcreate2(f, "/streams", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (ds < 0 ||
            H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, m->stream_state) < 0)
            rc = -1;
        if (ds >= 0) H5Dclose(ds);
        H5Sclose(space);
    }
    free(host);
    if (!rc && H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) rc = -1;
    if (H5Fclose(f) < 0) rc = -1;
    char verr[DV_ERR_LEN];
    if (!rc && m->vocab_map && dv_vocab_write(m->vocab_map, tmp, verr) != DV_OK) rc = -1;
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

static int read_tree(hid_t file, const char *root, const char *path, dv_model *m, float *flat,
                     int trainable_only, float *host, char *err) {
    for (int i = 0; i < m->nlayers; i++) {
        dv_layer *l = &m->layers[i];
        for (int k = 0; k < l->nparam; k++) {
            dv_param *p = &l->param[k];
            if ((trainable_only && !p->trainable) || p->tie) continue;
            char name[512];
            snprintf(name, sizeof(name), "%s/%s/%s", root, l->name, p->name);
            if (H5Lexists(file, root, H5P_DEFAULT) <= 0 ||
                H5Oexists_by_name(file, name, H5P_DEFAULT) <= 0)
                return DV_ERROR(err,
                                "%s: checkpoint has no %s — was it written for another "
                                "model?",
                                path, name);
            hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
            if (ds < 0) return DV_ERROR(err, "%s: %s is not a dataset", path, name);
            hid_t space = H5Dget_space(ds);
            int nd = H5Sget_simple_extent_ndims(space);
            hsize_t dims[8] = {0};
            int ok = nd == p->ndim && nd <= 8;
            if (ok) H5Sget_simple_extent_dims(space, dims, NULL);
            for (int d = 0; ok && d < nd; d++)
                ok = dims[d] == (hsize_t)p->shape[d];
            H5Sclose(space);
            if (!ok) {
                H5Dclose(ds);
                char want[64] = "";
                for (int d = 0; d < p->ndim; d++)
                    snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%d", d ? "," : "",
                             p->shape[d]);
                return DV_ERROR(err,
                                "%s: %s has a different shape than the config's model "
                                "(expected %s)",
                                path, name, want);
            }
            herr_t rc = H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, host);
            H5Dclose(ds);
            if (rc < 0) return DV_ERROR(err, "%s: cannot read %s", path, name);
            float *dst = p->trainable ? flat + p->offset : m->buffers + p->offset;
            m->be->to_device(m->be->ctx, dst, host, p->count * sizeof(float));
        }
    }
    return 0;
}

static int read_attr(hid_t loc, const char *name, hid_t type, void *v) {
    if (H5Aexists(loc, name) <= 0) return -1;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) return -1;
    herr_t rc = H5Aread(a, type, v);
    H5Aclose(a);
    return rc < 0 ? -1 : 0;
}

static hid_t open_checkpoint(const char *path, char *err) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (access(path, R_OK)) {
        DV_ERROR(err, "%s: cannot open checkpoint: %s", path, strerror(errno));
        return -1;
    }
    if (H5Fis_hdf5(path) <= 0) {
        DV_ERROR(err, "%s: not an HDF5 file (or it is damaged)", path);
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) DV_ERROR(err, "%s: cannot open checkpoint (damaged HDF5 file?)", path);
    return f;
}

static int load_locked(const char *path, const char *root, dv_model *m, dv_train_state *ts,
                       int with_optimizer, char *err) {
    hid_t f = open_checkpoint(path, err);
    if (f < 0) return -1;
    char model[256], om[256], ov[256];
    snprintf(model, sizeof(model), "%s/model", root);
    snprintf(om, sizeof(om), "%s/optimizer/m", root);
    snprintf(ov, sizeof(ov), "%s/optimizer/v", root);
    if ((root[0] && H5Lexists(f, root, H5P_DEFAULT) <= 0) ||
        H5Lexists(f, model, H5P_DEFAULT) <= 0) {
        int gan = !root[0] && H5Lexists(f, "/generator", H5P_DEFAULT) > 0;
        H5Fclose(f);
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
    if (!rc && ts) {
        memset(ts, 0, sizeof(*ts));
        hid_t tg =
            H5Lexists(f, "/train", H5P_DEFAULT) > 0 ? H5Gopen2(f, "/train", H5P_DEFAULT) : -1;
        int64_t *iv[] = {&ts->step, &ts->epoch,      &ts->step_in_epoch, &ts->world_size,
                         &ts->seed, &ts->bad_epochs, &ts->global_batch};
        double *dvals[] = {&ts->best_val_loss, &ts->loss_sum, &ts->correct_sum, &ts->seen};
        for (int i = 0; i < 7 && !rc; i++)
            if (tg < 0 || read_attr(tg, train_attrs[i], H5T_NATIVE_INT64, iv[i]))
                rc = DV_ERROR(err, "%s: checkpoint lacks /train attribute '%s'", path,
                              train_attrs[i]);
        for (int i = 0; i < 4 && !rc; i++)
            if (read_attr(tg, train_dattrs[i], H5T_NATIVE_DOUBLE, dvals[i]))
                rc = DV_ERROR(err, "%s: checkpoint lacks /train attribute '%s'", path,
                              train_dattrs[i]);
        if (!rc && H5Aexists(tg, "sums") > 0) {
            hid_t a = H5Aopen(tg, "sums", H5P_DEFAULT);
            hid_t space = a < 0 ? -1 : H5Aget_space(a);
            hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
            if (n < 0 || n > DV_TRAIN_SUMS || H5Aread(a, H5T_NATIVE_DOUBLE, ts->sums) < 0)
                rc = DV_ERROR(err, "%s: /train attribute 'sums' is damaged", path);
            else
                ts->nsums = (int)n;
            if (space >= 0) H5Sclose(space);
            if (a >= 0) H5Aclose(a);
        }
        if (tg >= 0) H5Gclose(tg);
    }
    H5Fclose(f);
    return rc;
}

int dv_checkpoint_has(const char *path, const char *name) {
    char err[DV_ERR_LEN];
    dv_hdf5_lock();
    hid_t f = open_checkpoint(path, err);
    int has = f >= 0 && H5Lexists(f, name, H5P_DEFAULT) > 0;
    if (f >= 0) H5Fclose(f);
    dv_hdf5_unlock();
    return has;
}

static char *config_locked(const char *path, char *err) {
    hid_t f = open_checkpoint(path, err);
    if (f < 0) return NULL;
    char *text = NULL;
    if (H5Lexists(f, "/config", H5P_DEFAULT) > 0) {
        hid_t ds = H5Dopen2(f, "/config", H5P_DEFAULT);
        hid_t type = H5Dget_type(ds);
        size_t n = H5Tget_size(type);
        if (H5Tget_class(type) == H5T_STRING && !H5Tis_variable_str(type)) {
            text = calloc(n + 1, 1);
            if (text && H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, text) < 0) {
                free(text);
                text = NULL;
            }
        }
        H5Tclose(type);
        H5Dclose(ds);
    }
    H5Fclose(f);
    if (!text) DV_ERROR(err, "%s: checkpoint holds no readable /config", path);
    return text;
}

/* /streams of a checkpoint as (rows, cols) floats into *out (malloc'd), or
 * *out = NULL when it has none. */
static int streams_locked(const char *path, float **out, int *rows, int *cols, char *err) {
    *out = NULL;
    *rows = *cols = 0;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return DV_ERROR(err, "%s: cannot open", path);
    int rc = 0;
    if (H5Lexists(f, "/streams", H5P_DEFAULT) > 0) {
        hid_t ds = H5Dopen2(f, "/streams", H5P_DEFAULT);
        hid_t space = ds < 0 ? -1 : H5Dget_space(ds);
        hsize_t dims[2] = {0, 0};
        if (space < 0 || H5Sget_simple_extent_ndims(space) != 2 ||
            H5Sget_simple_extent_dims(space, dims, NULL) < 0 || dims[0] > (1u << 30) ||
            dims[1] > (1u << 30)) {
            rc = DV_ERROR(err, "%s: /streams is not a 2-D dataset", path);
        } else {
            *out = malloc((size_t)(dims[0] * dims[1]) * sizeof(float) + 1);
            if (!*out)
                rc = DV_ERROR(err, "%s: out of memory", path);
            else if (H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
                rc = DV_ERROR(err, "%s: cannot read /streams", path);
            *rows = (int)dims[0], *cols = (int)dims[1];
        }
        if (space >= 0) H5Sclose(space);
        if (ds >= 0) H5Dclose(ds);
    }
    H5Fclose(f);
    if (rc) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

int dv_checkpoint_streams(const char *path, float **out, int *rows, int *cols, char *err) {
    dv_hdf5_lock();
    int rc = streams_locked(path, out, rows, cols, err);
    dv_hdf5_unlock();
    return rc;
}
