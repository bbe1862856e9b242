/* split.c — a split is an x dataset and a y dataset of the same N in one
 * HDF5 file. Opening validates both (so a bad file fails at start-up with a
 * message naming the file and dataset, not mid-training) and scans the label
 * range; reading gathers samples by index in any order, letting HDF5
 * convert the stored type to float32 / int32.
 *
 * Files are opened through h5.h; the dataset reads are HDF5 calls of their
 * own, made between dv_h5_enter and dv_h5_leave (data-impl.h): under the
 * HDF5 lock, which other modules' HDF5 calls take too while a prefetching
 * loader may be reading, and with HDF5's error printing off for the
 * duration only. Errors come back as messages.
 */
#include "data.h"
#include "data-impl.h"
#include "tokens.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct dv_split {
    char *file;
    char *x_path, *y_path;
    dv_h5 *h; /* the open file */
    hid_t x, y;
    dv_split_info info;
    int64_t label_min_at, label_max_at; /* first sample holding min / max */
    dv_tokens *tok;                     /* a token split: the stream, windows of T */
    int T;
};

static dv_status scan_labels(dv_split *s, char *err) {
    return dv_h5_scan_range(s->y, s->info.n, s->file, s->y_path, &s->info.label_min,
                            &s->label_min_at, &s->info.label_max, &s->label_max_at, err);
}

static dv_status open_locked(dv_split *s, char *err) {
    DV_TRY(dv_h5_open(&s->h, s->file, DV_H5_READ, err));
    hid_t fid = dv_h5_id(s->h);
    int xr = 0, yr = 0;
    hsize_t xd[8], yd[8];
    H5T_class_t xc, yc;
    if (dv_h5_open_dataset(fid, s->file, s->x_path, &s->x, &xr, xd, &xc, err) != DV_OK)
        return DV_ERR;
    if (!s->y_path[0]) { /* inputs only (prediction) */
        yr = 1;
        yd[0] = xd[0];
        yc = H5T_NO_CLASS;
    } else if (dv_h5_open_dataset(fid, s->file, s->y_path, &s->y, &yr, yd, &yc, err) != DV_OK) {
        return DV_ERR;
    }
    if (xd[0] != yd[0]) {
        DV_ERROR(err, "%s: %s has %llu rows but %s has %llu", s->file, s->y_path,
                 (unsigned long long)yd[0], s->x_path, (unsigned long long)xd[0]);
        return DV_ERR;
    }
    if (xd[0] == 0) {
        DV_ERROR(err, "%s: %s has no samples", s->file, s->x_path);
        return DV_ERR;
    }
    if (yr > 2) {
        DV_ERROR(err, "%s: %s has rank %d; targets must be (N) labels or (N, K) floats", s->file,
                 s->y_path, yr);
        return DV_ERR;
    }
    dv_split_info *in = &s->info;
    in->n = (int64_t)xd[0];
    in->x_rank = xr;
    in->x_elems = 1;
    for (int i = 0; i < xr; i++) {
        in->x_dims[i] = (int64_t)xd[i];
        if (i) in->x_elems *= (size_t)xd[i];
    }
    if (in->x_elems == 0) {
        DV_ERROR(err, "%s: %s has samples of zero elements", s->file, s->x_path);
        return DV_ERR;
    }
    if (!s->y_path[0]) {
        in->y_kind = DV_TARGET_LABELS;
        in->y_elems = 0;
        return DV_OK;
    }
    size_t k = yr == 2 ? (size_t)yd[1] : 1;
    if (yc == H5T_INTEGER && k == 1) {
        in->y_kind = DV_TARGET_LABELS;
        in->y_elems = 1;
        return scan_labels(s, err);
    }
    if (k == 0) {
        DV_ERROR(err, "%s: %s has zero targets per sample", s->file, s->y_path);
        return DV_ERR;
    }
    /* Integer (N, K>1) arrays (multi-hot) are targets like floats. */
    in->y_kind = DV_TARGET_FLOATS;
    in->y_elems = k;
    return DV_OK;
}

dv_status dv_split_open(dv_split **out, const char *file, const char *x_path, const char *y_path,
                        char *err) {
    *out = NULL;
    dv_split *s = calloc(1, sizeof(*s));
    if (!s || !(s->file = strdup(file)) || !(s->x_path = strdup(x_path ? x_path : "")) ||
        !(s->y_path = strdup(y_path ? y_path : ""))) {
        DV_ERROR(err, "%s: out of memory", file);
        dv_split_free(s);
        return DV_ERR;
    }
    s->x = s->y = H5I_INVALID_HID;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = open_locked(s, err);
    dv_h5_leave(&q);
    if (st != DV_OK) {
        dv_split_free(s);
        return st;
    }
    *out = s;
    return DV_OK;
}

dv_status dv_split_open_tokens(dv_split **out, const char *file, const char *dataset, int T,
                               char *err) {
    *out = NULL;
    dv_split *s = calloc(1, sizeof(*s));
    if (!s || !(s->file = strdup(file)) || !(s->x_path = strdup(dataset)) ||
        !(s->y_path = strdup(dataset))) {
        DV_ERROR(err, "%s: out of memory", file);
        dv_split_free(s);
        return DV_ERR;
    }
    s->x = s->y = H5I_INVALID_HID;
    s->T = T;
    if (dv_tokens_open(&s->tok, file, dataset, err) != DV_OK) {
        dv_split_free(s);
        return DV_ERR;
    }
    const dv_tokens_info *ti = dv_tokens_info_get(s->tok);
    dv_split_info *in = &s->info;
    in->n = dv_tokens_windows(s->tok, T);
    if (in->n < 1) {
        DV_ERROR(err, "%s: %s has %lld tokens, too few for one window of %d (+1)", file, dataset,
                 (long long)ti->n, T);
        dv_split_free(s);
        return DV_ERR;
    }
    in->x_rank = 2;
    in->x_dims[0] = in->n;
    in->x_dims[1] = T;
    in->x_elems = (size_t)T;
    in->y_kind = DV_TARGET_LABELS;
    in->y_elems = (size_t)T;
    in->label_min = ti->min;
    in->label_max = ti->max;
    in->x_tokens = 1;
    *out = s;
    return DV_OK;
}

void dv_split_free(dv_split *s) {
    if (!s) return;
    dv_tokens_free(s->tok);
    dv_h5_quiet q;
    dv_h5_enter(&q);
    if (s->x >= 0) H5Dclose(s->x);
    if (s->y >= 0) H5Dclose(s->y);
    dv_h5_close(s->h, NULL);
    dv_h5_leave(&q);
    free(s->file);
    free(s->x_path);
    free(s->y_path);
    free(s);
}

void dv_split_set_cache(dv_split *s, size_t bytes) {
    if (bytes <= DV_H5_CHUNK_CACHE || s->tok) return;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    H5Dclose(s->x);
    s->x = dv_h5_open_cached(dv_h5_id(s->h), s->x_path, bytes);
    /* It opened before, so failing now is unlikely; reads report it. */
    dv_h5_leave(&q);
}

const dv_split_info *dv_split_info_get(const dv_split *s) {
    return &s->info;
}

dv_status dv_split_check(const dv_split *s, size_t in_elems, int classes, char *err) {
    const dv_split_info *in = &s->info;
    if (s->tok && in->x_elems == in_elems) return dv_tokens_check(s->tok, classes, err);
    if (in->x_elems != in_elems) {
        char shape[160] = "";
        size_t at = 0;
        for (int i = 1; i < in->x_rank && at < sizeof(shape) - 24; i++)
            at += (size_t)snprintf(shape + at, sizeof(shape) - at, i > 1 ? ",%lld" : "%lld",
                                   (long long)in->x_dims[i]);
        DV_ERROR(err,
                 "%s: %s has %zu elements per sample (shape %s) but the model's input takes %zu",
                 s->file, s->x_path, in->x_elems, shape, in_elems);
        return DV_ERR;
    }
    if (in->y_kind == DV_TARGET_LABELS) {
        int64_t hi = classes == 1 ? 1 : classes - 1;
        int64_t bad = 0, at = -1;
        if (in->label_min < 0)
            bad = in->label_min, at = s->label_min_at;
        else if (in->label_max > hi)
            bad = in->label_max, at = s->label_max_at;
        if (at >= 0) {
            DV_ERROR(err,
                     "%s: label %lld in %s is out of range for a model with %d output%s (sample "
                     "%lld); labels must lie in [0, %lld]",
                     s->file, (long long)bad, s->y_path, classes, classes == 1 ? "" : "s",
                     (long long)at, (long long)hi);
            return DV_ERR;
        }
    } else if (in->y_elems != (size_t)classes) {
        DV_ERROR(err, "%s: %s has %zu targets per sample but the model has %d output%s", s->file,
                 s->y_path, in->y_elems, classes, classes == 1 ? "" : "s");
        return DV_ERR;
    }
    return DV_OK;
}

typedef struct {
    int64_t idx;
    int pos;
} idx_pos;

static int cmp_idx_pos(const void *a, const void *b) {
    int64_t x = ((const idx_pos *)a)->idx, y = ((const idx_pos *)b)->idx;
    return (x > y) - (x < y);
}

/* Selects rows u[0..nu) (sorted, unique) of d's file space, merging runs of
 * consecutive rows into one hyperslab each. */
static hid_t select_rows(hid_t d, const int64_t *u, int nu) {
    hid_t fs = H5Dget_space(d);
    int r = H5Sget_simple_extent_ndims(fs);
    hsize_t dims[8], off[8] = {0}, cnt[8];
    H5Sget_simple_extent_dims(fs, dims, NULL);
    for (int i = 1; i < r; i++)
        cnt[i] = dims[i];
    H5S_seloper_t op = H5S_SELECT_SET;
    for (int i = 0; i < nu;) {
        int j = i + 1;
        while (j < nu && u[j] == u[j - 1] + 1)
            j++;
        off[0] = (hsize_t)u[i];
        cnt[0] = (hsize_t)(j - i);
        if (H5Sselect_hyperslab(fs, op, off, NULL, cnt, NULL) < 0) {
            H5Sclose(fs);
            return H5I_INVALID_HID;
        }
        op = H5S_SELECT_OR;
        i = j;
    }
    return fs;
}

static herr_t read_selected(hid_t d, hid_t mtype, const int64_t *u, int nu, void *buf) {
    hid_t fs = select_rows(d, u, nu);
    if (fs < 0) return -1;
    /* (nu, dims[1..]): matching the file's rank keeps HDF5 on its fast path. */
    hsize_t dims[8];
    int r = H5Sget_simple_extent_ndims(fs);
    H5Sget_simple_extent_dims(fs, dims, NULL);
    dims[0] = (hsize_t)nu;
    hid_t ms = H5Screate_simple(r, dims, NULL);
    herr_t e = H5Dread(d, mtype, ms, fs, H5P_DEFAULT, buf);
    H5Sclose(ms);
    H5Sclose(fs);
    return e;
}

/* Reads the unique sorted rows u[0..nu) into the caller's buffers when
 * `direct`, else into scratch, then scatters rows to request order. */
static dv_status read_locked(dv_split *s, const int64_t *idx, int count, float x_scale, float *x,
                             int32_t *labels, float *targets, char *err) {
    const dv_split_info *in = &s->info;
    for (int i = 0; i < count; i++) {
        if (idx[i] < 0 || idx[i] >= in->n) {
            DV_ERROR(err, "%s: sample index %lld is outside [0, %lld) of %s", s->file,
                     (long long)idx[i], (long long)in->n, s->x_path);
            return DV_ERR;
        }
    }
    int sorted = 1;
    for (int i = 1; i < count && sorted; i++)
        sorted = idx[i] > idx[i - 1];

    int nu = count;
    const int64_t *u = idx;
    int *slot = NULL; /* slot[i]: row of request i among the unique rows */
    int64_t *ubuf = NULL;
    idx_pos *ip = NULL;
    float *sx = x, *sy = targets;
    int32_t *sl = labels;
    dv_status st = DV_ERR;
    int want_y = in->y_kind == DV_TARGET_LABELS ? labels != NULL : targets != NULL;
    if (!in->y_elems) want_y = 0; /* inputs alone (a GAN's images, prediction) */

    if (!sorted) {
        ip = malloc(sizeof(*ip) * (size_t)count);
        ubuf = malloc(sizeof(*ubuf) * (size_t)count);
        slot = malloc(sizeof(*slot) * (size_t)count);
        if (!ip || !ubuf || !slot) goto oom;
        for (int i = 0; i < count; i++)
            ip[i].idx = idx[i], ip[i].pos = i;
        qsort(ip, (size_t)count, sizeof(*ip), cmp_idx_pos);
        nu = 0;
        for (int i = 0; i < count; i++) {
            if (nu == 0 || ubuf[nu - 1] != ip[i].idx) ubuf[nu++] = ip[i].idx;
            slot[ip[i].pos] = nu - 1;
        }
        u = ubuf;
        sx = x ? malloc(sizeof(float) * (size_t)nu * in->x_elems) : NULL;
        if (x && !sx) goto oom;
        if (want_y && in->y_kind == DV_TARGET_LABELS) {
            if (!(sl = malloc(sizeof(int32_t) * (size_t)nu))) goto oom;
        } else if (want_y) {
            if (!(sy = malloc(sizeof(float) * (size_t)nu * in->y_elems))) goto oom;
        }
    }

    if (x && read_selected(s->x, H5T_NATIVE_FLOAT, u, nu, sx) < 0) {
        DV_ERROR(err, "%s: reading %s failed (corrupt or truncated file?)", s->file, s->x_path);
        goto done;
    }
    if (want_y) {
        herr_t e = in->y_kind == DV_TARGET_LABELS
                       ? read_selected(s->y, H5T_NATIVE_INT32, u, nu, sl)
                       : read_selected(s->y, H5T_NATIVE_FLOAT, u, nu, sy);
        if (e < 0) {
            DV_ERROR(err, "%s: reading %s failed (corrupt or truncated file?)", s->file, s->y_path);
            goto done;
        }
    }

    size_t xe = in->x_elems, ye = in->y_elems;
    if (sorted) {
        if (x && x_scale != 1.0f) {
            size_t total = (size_t)count * xe;
            for (size_t i = 0; i < total; i++)
                x[i] *= x_scale;
        }
    } else {
        for (int i = 0; i < count; i++) {
            size_t k = (size_t)slot[i];
            if (x) {
                const float *src = sx + k * xe;
                float *dst = x + (size_t)i * xe;
                for (size_t e = 0; e < xe; e++)
                    dst[e] = src[e] * x_scale;
            }
            if (want_y && in->y_kind == DV_TARGET_LABELS)
                labels[i] = sl[k];
            else if (want_y)
                memcpy(targets + (size_t)i * ye, sy + k * ye, sizeof(float) * ye);
        }
    }
    st = DV_OK;
    goto done;
oom:
    DV_ERROR(err, "%s: out of memory reading %d samples", s->file, count);
done:
    if (!sorted) {
        if (sx != x) free(sx);
        if (sl != labels) free(sl);
        if (sy != targets) free(sy);
    }
    free(ip);
    free(ubuf);
    free(slot);
    return st;
}

dv_status dv_split_read(dv_split *s, const int64_t *idx, int count, float x_scale, float *x,
                        int32_t *labels, float *targets, char *err) {
    if (count <= 0) return DV_OK;
    if (s->tok)
        return dv_tokens_read_windows(s->tok, s->T, idx, count, (int32_t *)(void *)x, labels, err);
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = read_locked(s, idx, count, x_scale, x, labels, targets, err);
    dv_h5_leave(&q);
    return st;
}
