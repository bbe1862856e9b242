/* tokens.c — token streams for language models: a 1-D integer dataset of
 * ids read as windows of T+1 tokens (inputs and targets shifted by one),
 * and the vocabulary stored beside it in /vocab, read and written here
 * (docs/data.md, "Token files").
 *
 * Each window is one hyperslab read through HDF5's chunk cache, so random
 * windows from a gzip-compressed stream inflate each chunk once while it
 * stays cached. Like the rest of data/, every HDF5 call holds the HDF5 lock.
 */
#include "data.h"
#include "data-impl.h"
#include "tokens.h"

#include <hdf5.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CODE 0x10FFFF

struct dv_tokens {
    char *file, *path;
    dv_h5 *h;
    hid_t d;
    dv_tokens_info info;
};

static dv_status open_locked(dv_tokens *t, char *err) {
    DV_TRY(dv_h5_open(&t->h, t->file, DV_H5_READ, err));
    int rank = 0;
    hsize_t dims[8];
    H5T_class_t cls;
    if (dv_h5_open_dataset(dv_h5_id(t->h), t->file, t->path, &t->d, &rank, dims, &cls, err) !=
        DV_OK)
        return DV_ERR;
    if (cls != H5T_INTEGER || rank != 1) {
        DV_ERROR(err, "%s: %s is a %s dataset of rank %d; a token stream is 1-D integer ids",
                 t->file, t->path, cls == H5T_INTEGER ? "integer" : "float", rank);
        return DV_ERR;
    }
    if (dims[0] == 0) {
        DV_ERROR(err, "%s: %s holds no tokens", t->file, t->path);
        return DV_ERR;
    }
    t->info.n = (int64_t)dims[0];
    return dv_h5_scan_range(t->d, t->info.n, t->file, t->path, &t->info.min, &t->info.min_at,
                            &t->info.max, &t->info.max_at, err);
}

dv_status dv_tokens_open(dv_tokens **out, const char *file, const char *dataset, char *err) {
    *out = NULL;
    dv_tokens *t = calloc(1, sizeof(*t));
    if (!t || !(t->file = strdup(file)) || !(t->path = strdup(dataset ? dataset : ""))) {
        DV_ERROR(err, "%s: out of memory", file);
        dv_tokens_free(t);
        return DV_ERR;
    }
    t->d = H5I_INVALID_HID;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = open_locked(t, err);
    dv_h5_leave(&q);
    if (st != DV_OK) {
        dv_tokens_free(t);
        return st;
    }
    *out = t;
    return DV_OK;
}

void dv_tokens_free(dv_tokens *t) {
    if (!t) return;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    if (t->d >= 0) H5Dclose(t->d);
    dv_h5_close(t->h, NULL);
    dv_h5_leave(&q);
    free(t->file);
    free(t->path);
    free(t);
}

const dv_tokens_info *dv_tokens_info_get(const dv_tokens *t) {
    return &t->info;
}

int64_t dv_tokens_count(const dv_tokens *t) {
    return t->info.n;
}

dv_status dv_tokens_check(const dv_tokens *t, int64_t vocab_size, char *err) {
    const dv_tokens_info *in = &t->info;
    int64_t bad = in->min < 0 ? in->min : in->max >= vocab_size ? in->max : 0;
    if (in->min < 0 || in->max >= vocab_size) {
        DV_ERROR(err,
                 "%s: token id %lld in %s (position %lld) is outside the vocabulary of %lld; ids "
                 "must lie in [0, %lld]",
                 t->file, (long long)bad, t->path,
                 (long long)(in->min < 0 ? in->min_at : in->max_at), (long long)vocab_size,
                 (long long)vocab_size - 1);
        return DV_ERR;
    }
    return DV_OK;
}

int64_t dv_tokens_windows(const dv_tokens *t, int T) {
    return T < 1 ? 0 : (t->info.n - 1) / T;
}

static dv_status read_locked(dv_tokens *t, int64_t start, int64_t count, int32_t *out, char *err) {
    if (start < 0 || count < 0 || start + count > t->info.n) {
        DV_ERROR(err, "%s: tokens [%lld, %lld) are outside the %lld of %s", t->file,
                 (long long)start, (long long)(start + count), (long long)t->info.n, t->path);
        return DV_ERR;
    }
    if (count && dv_h5_read_rows(t->d, H5T_NATIVE_INT32, start, count, out) < 0) {
        DV_ERROR(err, "%s: reading %s failed (corrupt or truncated file?)", t->file, t->path);
        return DV_ERR;
    }
    return DV_OK;
}

dv_status dv_tokens_read(dv_tokens *t, int64_t start, int64_t count, int32_t *out, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = read_locked(t, start, count, out, err);
    dv_h5_leave(&q);
    return st;
}

dv_status dv_tokens_read_windows(dv_tokens *t, int T, const int64_t *window_ids, int count,
                                 int32_t *x, int32_t *y, char *err) {
    int64_t windows = dv_tokens_windows(t, T);
    for (int i = 0; i < count; i++) {
        if (window_ids[i] < 0 || window_ids[i] >= windows) {
            DV_ERROR(err, "%s: window %lld is outside [0, %lld) of %s for length %d", t->file,
                     (long long)window_ids[i], (long long)windows, t->path, T);
            return DV_ERR;
        }
    }
    int32_t *buf = malloc(sizeof(int32_t) * ((size_t)T + 1));
    if (!buf) {
        DV_ERROR(err, "%s: out of memory reading windows of %s", t->file, t->path);
        return DV_ERR;
    }
    dv_status st = DV_OK;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    for (int i = 0; i < count && st == DV_OK; i++) {
        st = read_locked(t, window_ids[i] * T, (int64_t)T + 1, buf, err);
        if (st != DV_OK) break;
        memcpy(x + (size_t)i * T, buf, sizeof(int32_t) * (size_t)T);
        memcpy(y + (size_t)i * T, buf + 1, sizeof(int32_t) * (size_t)T);
    }
    dv_h5_leave(&q);
    free(buf);
    return st;
}

/* ---- the vocabulary ----------------------------------------------------- */

static dv_status check_codepoints(const dv_vocab *v, const char *file, const char *path,
                                  char *err) {
    for (int64_t i = 0; i < v->size; i++) {
        int32_t c = v->codepoints[i];
        int bad = v->kind == DV_VOCAB_BYTES
                      ? c != i
                      : c < 0 || c > MAX_CODE || (i && c <= v->codepoints[i - 1]);
        if (bad) {
            DV_ERROR(err, "%s: %s[%lld] = %d; %s", file, path, (long long)i, (int)c,
                     v->kind == DV_VOCAB_BYTES
                         ? "a bytes vocabulary is 0..255 in order"
                         : "code points must increase strictly and lie in [0, 0x10FFFF]");
            return DV_ERR;
        }
    }
    return DV_OK;
}

static dv_status vocab_locked(dv_vocab *v, dv_h5 *h, const char *group, char *err) {
    const char *file = dv_h5_path(h);
    char path[300], kind[32] = "", why[DV_ERR_LEN];
    snprintf(path, sizeof(path), "%s/codepoints", group);
    hid_t d = H5I_INVALID_HID;
    int rank = 0;
    hsize_t dims[8];
    H5T_class_t cls;
    dv_status st = DV_ERR;
    if (!dv_h5_exists(h, group)) {
        DV_ERROR(err,
                 "%s: no vocabulary: %s not found (is this a token file from `dive import "
                 "text`?)",
                 file, group);
    } else if (dv_h5_attr_get_string(h, group, "kind", kind, sizeof(kind), why) != DV_OK ||
               (strcmp(kind, "bytes") && strcmp(kind, "chars"))) {
        DV_ERROR(err, "%s: %s needs a string attribute 'kind', \"bytes\" or \"chars\"%s%s%s", file,
                 group, *kind ? " (it is \"" : "", kind, *kind ? "\")" : "");
    } else if (dv_h5_attr_get_int(h, group, "size", &v->size, why) != DV_OK || v->size < 1) {
        DV_ERROR(err, "%s: %s needs a positive integer attribute 'size'", file, group);
    } else if (dv_h5_open_dataset(dv_h5_id(h), file, path, &d, &rank, dims, &cls, err) != DV_OK) {
        /* message set */
    } else if (cls != H5T_INTEGER || rank != 1 || (int64_t)dims[0] != v->size) {
        DV_ERROR(err, "%s: %s must be %lld integer code points (size), one per id", file, path,
                 (long long)v->size);
    } else if (!strcmp(kind, "bytes") && v->size != 256) {
        DV_ERROR(err, "%s: a bytes vocabulary has size 256, not %lld", file, (long long)v->size);
    } else if (!(v->codepoints = malloc(sizeof(int32_t) * (size_t)v->size))) {
        DV_ERROR(err, "%s: out of memory reading %s", file, path);
    } else if (dv_h5_read_rows(d, H5T_NATIVE_INT32, 0, v->size, v->codepoints) < 0) {
        DV_ERROR(err, "%s: reading %s failed (corrupt or truncated file?)", file, path);
    } else {
        v->kind = !strcmp(kind, "chars") ? DV_VOCAB_CHARS : DV_VOCAB_BYTES;
        st = check_codepoints(v, file, path, err);
    }
    if (d >= 0) H5Dclose(d);
    return st;
}

dv_status dv_vocab_read(dv_vocab *v, const char *file, const char *group, char *err) {
    memset(v, 0, sizeof(*v));
    dv_h5 *h = NULL;
    DV_TRY(dv_h5_open(&h, file, DV_H5_READ, err));
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = vocab_locked(v, h, group ? group : "/vocab", err);
    dv_h5_leave(&q);
    dv_h5_close(h, NULL);
    if (st != DV_OK) dv_vocab_free(v);
    return st;
}

dv_status dv_vocab_write_to(dv_h5 *h, const dv_vocab *v, char *err) {
    int64_t dims[1] = {v->size};
    char why[DV_ERR_LEN];
    if (dv_h5_delete(h, "/vocab", err) != DV_OK ||
        dv_h5_create_dataset(h, "/vocab/codepoints", DV_H5_I32, 1, dims, v->size, why) != DV_OK ||
        dv_h5_write_rows(h, "/vocab/codepoints", DV_H5_I32, 0, v->size, v->codepoints, why) !=
            DV_OK ||
        dv_h5_attr_set_string(h, "/vocab", "kind", v->kind == DV_VOCAB_CHARS ? "chars" : "bytes",
                              why) != DV_OK ||
        dv_h5_attr_set_int(h, "/vocab", "size", v->size, why) != DV_OK)
        return DV_ERROR(err, "%s: writing /vocab failed (disk full?)", dv_h5_path(h));
    return DV_OK;
}

dv_status dv_vocab_write(const dv_vocab *v, const char *file, char *err) {
    dv_h5 *h = NULL;
    DV_TRY(dv_h5_open(&h, file, DV_H5_WRITE, err));
    dv_status st = dv_vocab_write_to(h, v, err);
    if (st != DV_OK) dv_h5_delete(h, "/vocab", NULL);
    if (dv_h5_close(h, st == DV_OK ? err : NULL) != DV_OK) st = DV_ERR;
    return st;
}

void dv_vocab_free(dv_vocab *v) {
    if (!v) return;
    free(v->codepoints);
    memset(v, 0, sizeof(*v));
}
