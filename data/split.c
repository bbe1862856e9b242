/* split.c — a split is an x dataset and a y dataset of the same N in one
 * HDF5 file. Opening validates both (so a bad file fails at start-up with a
 * message naming the file and dataset, not mid-training) and scans the label
 * range; reading gathers samples by index in any order, letting HDF5
 * convert the stored type to float32 / int32.
 *
 * Assumes the HDF5 library is not thread-safe (the Debian MPI build is not):
 * every HDF5 call in data/ runs under dv_hdf5_lock, which other modules take
 * too while a prefetching loader may be reading. HDF5's automatic error
 * printing is switched off inside our calls; errors come back as messages.
 */
#include "data.h"
#include "data-impl.h"
#include "tokens.h"

#include <errno.h>
#include <hdf5.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Decompressed chunks cached per dataset by default; a streaming loader
 * raises this to its memory budget (dv_split_set_cache). */
#define CHUNK_CACHE_BYTES ((size_t)32 << 20)
/* Labels are scanned in blocks so a huge y never needs one allocation. */
#define SCAN_ROWS (1 << 20)

struct dv_split {
    char *file;
    char *x_path, *y_path;
    hid_t fid, x, y;
    dv_split_info info;
    int64_t label_min_at, label_max_at; /* first sample holding min / max */
    dv_tokens *tok;                     /* a token split: the stream, windows of T */
    int T;
};

static pthread_mutex_t hdf5_mutex = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

void dv_hdf5_lock(void) {
    pthread_mutex_lock(&hdf5_mutex);
}

void dv_hdf5_unlock(void) {
    pthread_mutex_unlock(&hdf5_mutex);
}

void dv_h5_enter(dv_h5_quiet *q) {
    dv_hdf5_lock();
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void dv_h5_leave(dv_h5_quiet *q) {
    H5Eclear2(H5E_DEFAULT);
    H5Eset_auto2(H5E_DEFAULT, q->func, q->data);
    dv_hdf5_unlock();
}

/* Checks that `file` exists and is HDF5, so the caller's message says which
 * of the two it is rather than HDF5's generic open failure. */
dv_status dv_h5_check_file(const char *file, char *err) {
    if (access(file, R_OK) != 0) {
        DV_ERROR(err, "%s: cannot open: %s", file, strerror(errno));
        return DV_ERR;
    }
    htri_t is = H5Fis_hdf5(file);
    if (is <= 0) {
        DV_ERROR(err, "%s: not an HDF5 file", file);
        return DV_ERR;
    }
    return DV_OK;
}

static const char *type_name(hid_t type) {
    switch (H5Tget_class(type)) {
    case H5T_STRING:
        return "string";
    case H5T_COMPOUND:
        return "compound";
    case H5T_ENUM:
        return "enum";
    case H5T_ARRAY:
        return "array";
    case H5T_VLEN:
        return "variable-length";
    case H5T_OPAQUE:
        return "opaque";
    case H5T_BITFIELD:
        return "bitfield";
    case H5T_REFERENCE:
        return "reference";
    case H5T_TIME:
        return "time";
    default:
        return "non-numeric";
    }
}

static int is_prime(size_t n) {
    if (n < 2) return 0;
    for (size_t d = 2; d * d <= n; d++)
        if (n % d == 0) return 0;
    return 1;
}

/* Opens dataset `path` with a chunk cache of `bytes`. HDF5 wants the slot
 * count prime and ~100x the number of chunks that fit, or chunks collide in
 * the hash and evict each other long before the cache is full. */
static hid_t open_cached(hid_t fid, const char *path, size_t bytes) {
    hid_t d = H5Dopen2(fid, path, H5P_DEFAULT);
    if (d < 0) return d;
    size_t chunk_bytes = 0;
    hid_t dcpl = H5Dget_create_plist(d);
    if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
        hsize_t cd[32];
        int r = H5Pget_chunk(dcpl, 32, cd);
        hid_t t = H5Dget_type(d);
        chunk_bytes = H5Tget_size(t);
        H5Tclose(t);
        for (int i = 0; i < r; i++)
            chunk_bytes *= (size_t)cd[i];
    }
    H5Pclose(dcpl);
    if (chunk_bytes == 0) return d; /* contiguous: no chunk cache involved */
    /* HDF5 shares one object among opens of a dataset and keeps the first
     * open's cache, so this one must be closed before reopening. */
    H5Dclose(d);
    size_t fit = bytes / chunk_bytes + 1;
    size_t slots = fit * 100 < 521 ? 521 : fit * 100;
    if (slots > ((size_t)1 << 17)) slots = (size_t)1 << 17; /* the slot array is 8 B each */
    while (!is_prime(slots))
        slots++;
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    H5Pset_chunk_cache(dapl, slots, bytes, 0.75);
    d = H5Dopen2(fid, path, dapl);
    H5Pclose(dapl);
    return d;
}

dv_status dv_h5_open_dataset(hid_t fid, const char *file, const char *path, hid_t *out, int *rank,
                             hsize_t *dims, H5T_class_t *cls, char *err) {
    *out = H5I_INVALID_HID;
    if (!path || !*path) {
        DV_ERROR(err, "%s: empty dataset path", file);
        return DV_ERR;
    }
    /* H5Oopen fails for a missing intermediate group too, which is what
     * "not found" should cover. */
    hid_t obj = H5Oopen(fid, path, H5P_DEFAULT);
    if (obj < 0) {
        DV_ERROR(err, "%s: dataset %s not found", file, path);
        return DV_ERR;
    }
    H5I_type_t kind = H5Iget_type(obj);
    H5Oclose(obj);
    if (kind != H5I_DATASET) {
        DV_ERROR(err, "%s: %s is a %s, not a dataset", file, path,
                 kind == H5I_GROUP ? "group" : "named type");
        return DV_ERR;
    }
    hid_t d = open_cached(fid, path, CHUNK_CACHE_BYTES);
    if (d < 0) {
        DV_ERROR(err, "%s: cannot open dataset %s", file, path);
        return DV_ERR;
    }
    hid_t type = H5Dget_type(d);
    hid_t space = H5Dget_space(d);
    *cls = H5Tget_class(type);
    int r = H5Sget_simple_extent_ndims(space);
    dv_status st = DV_OK;
    if (*cls != H5T_INTEGER && *cls != H5T_FLOAT) {
        DV_ERROR(err,
                 "%s: %s has a %s type; expected a numeric type (uint8, int, float32, float64)",
                 file, path, type_name(type));
        st = DV_ERR;
    } else if (r < 1) {
        DV_ERROR(err, "%s: %s is a scalar; expected an array of shape (N, ...)", file, path);
        st = DV_ERR;
    } else if (r > 8) {
        DV_ERROR(err, "%s: %s has rank %d; at most 8 is supported", file, path, r);
        st = DV_ERR;
    } else {
        H5Sget_simple_extent_dims(space, dims, NULL);
        *rank = r;
    }
    H5Sclose(space);
    H5Tclose(type);
    if (st != DV_OK) {
        H5Dclose(d);
        return st;
    }
    *out = d;
    return DV_OK;
}

herr_t dv_h5_read_rows(hid_t d, hid_t mtype, int64_t start, int64_t count, void *buf) {
    hid_t fs = H5Dget_space(d);
    int r = H5Sget_simple_extent_ndims(fs);
    hsize_t dims[8], off[8] = {0}, cnt[8];
    H5Sget_simple_extent_dims(fs, dims, NULL);
    for (int i = 0; i < r; i++)
        cnt[i] = i == 0 ? (hsize_t)count : dims[i];
    off[0] = (hsize_t)start;
    herr_t e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, off, NULL, cnt, NULL);
    /* A memory space of the file selection's shape, not a flat one: HDF5
     * only takes its fast contiguous path when the two shapes match. */
    hid_t ms = H5Screate_simple(r, cnt, NULL);
    if (e >= 0) e = H5Dread(d, mtype, ms, fs, H5P_DEFAULT, buf);
    H5Sclose(ms);
    H5Sclose(fs);
    return e;
}

dv_status dv_h5_scan_range(hid_t d, int64_t n, const char *file, const char *path, int64_t *lo,
                           int64_t *lo_at, int64_t *hi, int64_t *hi_at, char *err) {
    int64_t *buf = malloc(sizeof(int64_t) * (size_t)(n < SCAN_ROWS ? n : SCAN_ROWS));
    if (!buf) {
        DV_ERROR(err, "%s: out of memory scanning %s", file, path);
        return DV_ERR;
    }
    *lo = INT64_MAX, *hi = INT64_MIN, *lo_at = *hi_at = 0;
    for (int64_t at = 0; at < n; at += SCAN_ROWS) {
        int64_t c = n - at < SCAN_ROWS ? n - at : SCAN_ROWS;
        if (dv_h5_read_rows(d, H5T_NATIVE_INT64, at, c, buf) < 0) {
            free(buf);
            DV_ERROR(err, "%s: reading %s failed (corrupt or truncated file?)", file, path);
            return DV_ERR;
        }
        for (int64_t i = 0; i < c; i++) {
            if (buf[i] < *lo) *lo = buf[i], *lo_at = at + i;
            if (buf[i] > *hi) *hi = buf[i], *hi_at = at + i;
        }
    }
    free(buf);
    return DV_OK;
}

static dv_status scan_labels(dv_split *s, char *err) {
    return dv_h5_scan_range(s->y, s->info.n, s->file, s->y_path, &s->info.label_min,
                            &s->label_min_at, &s->info.label_max, &s->label_max_at, err);
}

static dv_status open_locked(dv_split *s, char *err) {
    if (dv_h5_check_file(s->file, err) != DV_OK) return DV_ERR;
    s->fid = H5Fopen(s->file, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (s->fid < 0) {
        DV_ERROR(err, "%s: cannot open (truncated or corrupt HDF5 file?)", s->file);
        return DV_ERR;
    }
    int xr = 0, yr = 0;
    hsize_t xd[8], yd[8];
    H5T_class_t xc, yc;
    if (dv_h5_open_dataset(s->fid, s->file, s->x_path, &s->x, &xr, xd, &xc, err) != DV_OK)
        return DV_ERR;
    if (!s->y_path[0]) { /* inputs only (prediction) */
        yr = 1;
        yd[0] = xd[0];
        yc = H5T_NO_CLASS;
    } else if (dv_h5_open_dataset(s->fid, s->file, s->y_path, &s->y, &yr, yd, &yc, err) != DV_OK) {
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
    s->fid = s->x = s->y = H5I_INVALID_HID;
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
    s->fid = s->x = s->y = H5I_INVALID_HID;
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
    if (s->fid >= 0) H5Fclose(s->fid);
    dv_h5_leave(&q);
    free(s->file);
    free(s->x_path);
    free(s->y_path);
    free(s);
}

void dv_split_set_cache(dv_split *s, size_t bytes) {
    if (bytes <= CHUNK_CACHE_BYTES || s->tok) return;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    H5Dclose(s->x);
    s->x = open_cached(s->fid, s->x_path, bytes);
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
