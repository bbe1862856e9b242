/* h5.c — the one owner of HDF5 in Dive (h5.h): the lock, the error stack,
 * and the file, dataset and attribute helpers that checkpoints, `dive
 * predict`, `dive info` and the importers use; with them the reading
 * helpers the split and token readers of data/ share (data-impl.h).
 *
 * Assumes the HDF5 library is not thread-safe (the Debian MPI build is
 * not): every call here runs between dv_h5_enter and dv_h5_leave, which
 * take the recursive lock and switch HDF5's automatic error printing off,
 * then restore the handler the caller had. Errors come back as messages.
 */
#include "h5.h"
#include "data-impl.h"

#include <errno.h>
#include <hdf5.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The compression level of chunked datasets (the importers'). */
#define GZIP_LEVEL 4
/* Labels and token ids are scanned in blocks so a huge dataset never needs
 * one allocation. */
#define SCAN_ROWS (1 << 20)

struct dv_h5 {
    hid_t fid;
    char *path;
    int checked; /* dv_h5_create_checked: checksums on everything written */
};

/* A checked file's float datasets are cut into chunks of at most this many
 * bytes, each with its own Fletcher32 checksum (HDF5 caps a chunk at 4 GiB). */
#define CHECKED_CHUNK_BYTES ((size_t)8 << 20)
/* Scalars and strings up to this size are stored compact, inside their
 * object header, which a checked file's format checksums. */
#define COMPACT_BYTES 60000
/* A checked file's groups keep this many attributes in their (checksummed)
 * object header before HDF5 would move them to a separate heap. */
#define COMPACT_ATTRS 64

/* ---- the lock and the error stack ----------------------------------------- */

static pthread_mutex_t hdf5_mutex = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

void dv_h5_lock(void) {
    pthread_mutex_lock(&hdf5_mutex);
}

void dv_h5_unlock(void) {
    pthread_mutex_unlock(&hdf5_mutex);
}

void dv_h5_enter(dv_h5_quiet *q) {
    dv_h5_lock();
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void dv_h5_leave(dv_h5_quiet *q) {
    H5Eclear2(H5E_DEFAULT);
    H5Eset_auto2(H5E_DEFAULT, q->func, q->data);
    dv_h5_unlock();
}

/* 1 when the error stack HDF5 left says a checksum did not match: the
 * Fletcher32 filter's on a dataset's data, or a metadata checksum. */
static herr_t find_checksum(unsigned n, const H5E_error2_t *e, void *data) {
    (void)n;
    if (e->desc && (strstr(e->desc, "checksum") || strstr(e->desc, "Fletcher32"))) *(int *)data = 1;
    return 0;
}

static int checksum_failed(void) {
    int found = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, find_checksum, &found);
    return found;
}

hid_t dv_h5_id(const dv_h5 *h) {
    return h->fid;
}

const char *dv_h5_path(const dv_h5 *h) {
    return h->path;
}

/* ---- files ---------------------------------------------------------------- */

/* Checks that `file` exists and is HDF5, so the message says which of the
 * two it is rather than HDF5's generic open failure. */
static dv_status check_file(const char *file, char *err) {
    if (access(file, R_OK) != 0) return DV_ERROR(err, "%s: cannot open: %s", file, strerror(errno));
    if (H5Fis_hdf5(file) <= 0) return DV_ERROR(err, "%s: not an HDF5 file", file);
    return DV_OK;
}

static dv_h5 *h5_new(const char *path, char *err) {
    dv_h5 *h = calloc(1, sizeof(*h));
    if (!h || !(h->path = strdup(path))) {
        free(h);
        DV_ERROR(err, "%s: out of memory", path);
        return NULL;
    }
    h->fid = H5I_INVALID_HID;
    return h;
}

static void h5_free(dv_h5 *h) {
    if (!h) return;
    free(h->path);
    free(h);
}

static dv_status open_locked(dv_h5 *h, dv_h5_mode mode, char *err) {
    if (mode == DV_H5_WRITE && access(h->path, F_OK) != 0) {
        h->fid = H5Fcreate(h->path, H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
        if (h->fid < 0) return DV_ERROR(err, "%s: cannot create: %s", h->path, strerror(errno));
        return DV_OK;
    }
    DV_TRY(check_file(h->path, err));
    h->fid = H5Fopen(h->path, mode == DV_H5_WRITE ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
    if (h->fid >= 0) return DV_OK;
    if (mode == DV_H5_WRITE)
        return DV_ERROR(err, "%s: cannot open for writing (read-only, or a corrupt HDF5 file?)",
                        h->path);
    return DV_ERROR(err, "%s: cannot open (truncated or corrupt HDF5 file?)", h->path);
}

dv_status dv_h5_open(dv_h5 **out, const char *path, dv_h5_mode mode, char *err) {
    *out = NULL;
    dv_h5 *h = h5_new(path, err);
    if (!h) return DV_ERR;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = open_locked(h, mode, err);
    dv_h5_leave(&q);
    if (st != DV_OK) {
        h5_free(h);
        return st;
    }
    *out = h;
    return DV_OK;
}

dv_status dv_h5_create(dv_h5 **out, const char *path, char *err) {
    *out = NULL;
    dv_h5 *h = h5_new(path, err);
    if (!h) return DV_ERR;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    errno = 0;
    h->fid = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    int e = errno;
    dv_h5_leave(&q);
    if (h->fid < 0) {
        h5_free(h);
        return DV_ERROR(err, "%s: cannot create HDF5 file (%s)", path,
                        e ? strerror(e) : "HDF5 error");
    }
    *out = h;
    return DV_OK;
}

dv_status dv_h5_create_checked(dv_h5 **out, const char *path, char *err) {
    *out = NULL;
    dv_h5 *h = h5_new(path, err);
    if (!h) return DV_ERR;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    /* the 1.8 format: object headers, B-trees and heaps carry checksums, and
     * every HDF5 since 1.8 reads it */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0) H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18);
    errno = 0;
    h->fid = H5Fcreate(path, H5F_ACC_EXCL, H5P_DEFAULT, fapl >= 0 ? fapl : H5P_DEFAULT);
    int e = errno;
    if (fapl >= 0) H5Pclose(fapl);
    dv_h5_leave(&q);
    if (h->fid < 0) {
        h5_free(h);
        if (e == EEXIST)
            return DV_ERROR(err, "%s: cannot create: something (a file or a link) is there", path);
        return DV_ERROR(err, "%s: cannot create HDF5 file (%s)", path,
                        e ? strerror(e) : "HDF5 error");
    }
    h->checked = 1;
    *out = h;
    return DV_OK;
}

dv_status dv_h5_flush(dv_h5 *h, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    herr_t e = H5Fflush(h->fid, H5F_SCOPE_GLOBAL);
    dv_h5_leave(&q);
    if (e < 0) return DV_ERROR(err, "%s: flushing failed (disk full?)", h->path);
    return DV_OK;
}

dv_status dv_h5_close(dv_h5 *h, char *err) {
    if (!h) return DV_OK;
    dv_status st = DV_OK;
    if (h->fid >= 0) {
        dv_h5_quiet q;
        dv_h5_enter(&q);
        herr_t e = H5Fclose(h->fid);
        dv_h5_leave(&q);
        if (e < 0) st = DV_ERROR(err, "%s: closing failed (disk full?)", h->path);
    }
    h5_free(h);
    return st;
}

/* ---- objects -------------------------------------------------------------- */

static int exists_locked(hid_t fid, const char *path) {
    if (!path || !*path) return 0;
    if (!strcmp(path, "/")) return 1;
    /* H5Lexists fails, rather than answering 0, below a missing group:
     * test each prefix first. */
    char *p = strdup(path);
    if (!p) return 0;
    int ok = 1;
    for (char *s = strchr(p + 1, '/'); ok && s; s = strchr(s + 1, '/')) {
        *s = '\0';
        ok = H5Lexists(fid, p, H5P_DEFAULT) > 0 && H5Oexists_by_name(fid, p, H5P_DEFAULT) > 0;
        *s = '/';
    }
    if (ok) ok = H5Lexists(fid, p, H5P_DEFAULT) > 0 && H5Oexists_by_name(fid, p, H5P_DEFAULT) > 0;
    free(p);
    return ok;
}

int dv_h5_exists(dv_h5 *h, const char *path) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    int ok = exists_locked(h->fid, path);
    dv_h5_leave(&q);
    return ok;
}

/* The kind of object at path: H5I_GROUP, H5I_DATASET, H5I_DATATYPE, or
 * H5I_BADID when there is none. */
static H5I_type_t kind_of(hid_t fid, const char *path) {
    if (!exists_locked(fid, path)) return H5I_BADID;
    hid_t o = H5Oopen(fid, path, H5P_DEFAULT);
    if (o < 0) return H5I_BADID;
    H5I_type_t k = H5Iget_type(o);
    H5Oclose(o);
    return k;
}

/* A link creation list that makes missing groups above the new object. */
static hid_t make_parents(void) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl >= 0) H5Pset_create_intermediate_group(lcpl, 1);
    return lcpl;
}

static dv_status group_locked(dv_h5 *h, const char *path, char *err) {
    H5I_type_t k = kind_of(h->fid, path);
    if (k == H5I_GROUP) return DV_OK;
    if (k != H5I_BADID) return DV_ERROR(err, "%s: %s exists and is not a group", h->path, path);
    hid_t lcpl = make_parents();
    hid_t gcpl = H5P_DEFAULT;
    if (h->checked && (gcpl = H5Pcreate(H5P_GROUP_CREATE)) >= 0)
        H5Pset_attr_phase_change(gcpl, COMPACT_ATTRS, COMPACT_ATTRS);
    hid_t g = H5Gcreate2(h->fid, path, lcpl, gcpl >= 0 ? gcpl : H5P_DEFAULT, H5P_DEFAULT);
    if (gcpl >= 0 && gcpl != H5P_DEFAULT) H5Pclose(gcpl);
    H5Pclose(lcpl);
    if (g < 0) return DV_ERROR(err, "%s: cannot create group %s", h->path, path);
    H5Gclose(g);
    return DV_OK;
}

dv_status dv_h5_group(dv_h5 *h, const char *path, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = group_locked(h, path, err);
    dv_h5_leave(&q);
    return st;
}

dv_status dv_h5_delete(dv_h5 *h, const char *path, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = DV_OK;
    if (exists_locked(h->fid, path) && H5Ldelete(h->fid, path, H5P_DEFAULT) < 0)
        st = DV_ERROR(err, "%s: cannot remove %s", h->path, path);
    dv_h5_leave(&q);
    return st;
}

/* ---- datasets ------------------------------------------------------------- */

static hid_t file_type(dv_h5_type t) {
    switch (t) {
    case DV_H5_U8:
        return H5T_STD_U8LE;
    case DV_H5_I32:
        return H5T_STD_I32LE;
    case DV_H5_F32:
        return H5T_IEEE_F32LE;
    default:
        return H5I_INVALID_HID;
    }
}

static hid_t mem_type(dv_h5_type t) {
    switch (t) {
    case DV_H5_U8:
        return H5T_NATIVE_UCHAR;
    case DV_H5_I32:
        return H5T_NATIVE_INT32;
    case DV_H5_F32:
        return H5T_NATIVE_FLOAT;
    default:
        return H5I_INVALID_HID;
    }
}

/* Opens dataset `path`, with a message naming it when it is missing or
 * something else. */
static hid_t open_ds(dv_h5 *h, const char *path, char *err) {
    H5I_type_t k = kind_of(h->fid, path);
    if (k == H5I_BADID) {
        DV_ERROR(err, "%s: dataset %s not found", h->path, path);
        return H5I_INVALID_HID;
    }
    if (k != H5I_DATASET) {
        DV_ERROR(err, "%s: %s is a %s, not a dataset", h->path, path,
                 k == H5I_GROUP ? "group" : "named type");
        return H5I_INVALID_HID;
    }
    hid_t d = H5Dopen2(h->fid, path, H5P_DEFAULT);
    if (d < 0)
        DV_ERROR(err, "%s: cannot open dataset %s%s", h->path, path,
                 checksum_failed()
                     ? ": its header does not match its checksum (the file is damaged)"
                     : "");
    return d;
}

dv_status dv_h5_shape(dv_h5 *h, const char *path, int *ndim, int64_t *dims, int max, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = DV_ERR;
    hid_t d = open_ds(h, path, err);
    if (d >= 0) {
        hid_t sp = H5Dget_space(d);
        int r = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
        hsize_t hd[H5S_MAX_RANK];
        if (r < 0 || H5Sget_simple_extent_dims(sp, hd, NULL) < 0) {
            DV_ERROR(err, "%s: cannot read the shape of %s", h->path, path);
        } else {
            *ndim = r;
            for (int i = 0; r <= max && i < r; i++)
                dims[i] = (int64_t)hd[i];
            st = DV_OK;
        }
        if (sp >= 0) H5Sclose(sp);
        H5Dclose(d);
    }
    dv_h5_leave(&q);
    return st;
}

/* The creation list of a checked file's dataset of shape dims[0..ndim) and
 * `elem`-byte elements: chunks of whole rows (at most CHECKED_CHUNK_BYTES
 * where a row allows it) with a Fletcher32 checksum each; a scalar is
 * compact instead (HDF5 chunks only arrays), inside its checksummed header. */
static hid_t checked_dcpl(int ndim, const hsize_t *dims, size_t elem) {
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl < 0) return H5P_DEFAULT;
    if (ndim == 0) {
        H5Pset_layout(dcpl, H5D_COMPACT);
        return dcpl;
    }
    hsize_t chunk[DV_H5_MAX_DIMS];
    size_t row = elem;
    for (int i = 1; i < ndim; i++) {
        chunk[i] = dims[i] ? dims[i] : 1;
        row *= (size_t)chunk[i];
    }
    hsize_t rows = (hsize_t)(CHECKED_CHUNK_BYTES / row);
    chunk[0] = dims[0] ? dims[0] : 1;
    if (rows < 1) rows = 1;
    if (chunk[0] > rows) chunk[0] = rows;
    H5Pset_chunk(dcpl, ndim, chunk);
    H5Pset_fletcher32(dcpl);
    return dcpl;
}

static dv_status write_floats_locked(dv_h5 *h, const char *path, int ndim, const int64_t *dims,
                                     const float *data, char *err) {
    if (ndim < 0 || ndim > DV_H5_MAX_DIMS)
        return DV_ERROR(err, "%s: %s: rank %d is outside [0, %d]", h->path, path, ndim,
                        DV_H5_MAX_DIMS);
    hsize_t hd[DV_H5_MAX_DIMS];
    for (int i = 0; i < ndim; i++)
        hd[i] = (hsize_t)dims[i];
    hid_t sp = ndim ? H5Screate_simple(ndim, hd, NULL) : H5Screate(H5S_SCALAR);
    hid_t lcpl = make_parents();
    hid_t dcpl = h->checked ? checked_dcpl(ndim, hd, sizeof(float)) : H5P_DEFAULT;
    hid_t d = H5Dcreate2(h->fid, path, H5T_IEEE_F32LE, sp, lcpl, dcpl, H5P_DEFAULT);
    herr_t e = d < 0 ? -1 : H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (d >= 0) H5Dclose(d);
    if (dcpl != H5P_DEFAULT) H5Pclose(dcpl);
    H5Pclose(lcpl);
    H5Sclose(sp);
    if (d < 0) return DV_ERROR(err, "%s: cannot create %s", h->path, path);
    if (e < 0) return DV_ERROR(err, "%s: writing %s failed (disk full?)", h->path, path);
    return DV_OK;
}

dv_status dv_h5_write_floats(dv_h5 *h, const char *path, int ndim, const int64_t *dims,
                             const float *data, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = write_floats_locked(h, path, ndim, dims, data, err);
    dv_h5_leave(&q);
    return st;
}

/* The message of a failed read of dataset `path`: its checksum, when HDF5
 * says so, else a damaged or truncated file. */
static dv_status read_failed(dv_h5 *h, const char *path, char *err) {
    if (checksum_failed())
        return DV_ERROR(err, "%s: %s is damaged: its data does not match its checksum", h->path,
                        path);
    return DV_ERROR(err, "%s: reading %s failed (corrupt or truncated file?)", h->path, path);
}

static dv_status read_floats_locked(dv_h5 *h, const char *path, float *out, size_t count,
                                    char *err) {
    hid_t d = open_ds(h, path, err);
    if (d < 0) return DV_ERR;
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    H5T_class_t c = H5Tget_class(t);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    dv_status st = DV_OK;
    if (c != H5T_INTEGER && c != H5T_FLOAT)
        st = DV_ERROR(err, "%s: %s is not a numeric dataset", h->path, path);
    else if (n < 0 || (size_t)n != count)
        st = DV_ERROR(err, "%s: %s has %lld values; expected %zu", h->path, path, (long long)n,
                      count);
    else if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
        st = read_failed(h, path, err);
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(d);
    return st;
}

dv_status dv_h5_read_floats(dv_h5 *h, const char *path, float *out, size_t count, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = read_floats_locked(h, path, out, count, err);
    dv_h5_leave(&q);
    return st;
}

static dv_status create_dataset_locked(dv_h5 *h, const char *path, dv_h5_type type, int ndim,
                                       const int64_t *dims, int64_t chunk_rows, char *err) {
    if (ndim < 1 || ndim > DV_H5_MAX_DIMS || file_type(type) < 0)
        return DV_ERROR(err, "%s: %s: rank %d or type %d is not supported", h->path, path, ndim,
                        (int)type);
    hsize_t hd[DV_H5_MAX_DIMS], chunk[DV_H5_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        hd[i] = (hsize_t)dims[i];
        chunk[i] = hd[i] ? hd[i] : 1;
    }
    if (chunk_rows > 0 && (hsize_t)chunk_rows < chunk[0]) chunk[0] = (hsize_t)chunk_rows;
    hid_t sp = H5Screate_simple(ndim, hd, NULL);
    hid_t lcpl = make_parents();
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunk_rows > 0) {
        H5Pset_chunk(dcpl, ndim, chunk);
        H5Pset_deflate(dcpl, GZIP_LEVEL);
        if (h->checked) H5Pset_fletcher32(dcpl);
    }
    hid_t d = H5Dcreate2(h->fid, path, file_type(type), sp, lcpl, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Pclose(lcpl);
    H5Sclose(sp);
    if (d < 0) return DV_ERROR(err, "%s: cannot create %s", h->path, path);
    H5Dclose(d);
    return DV_OK;
}

dv_status dv_h5_create_dataset(dv_h5 *h, const char *path, dv_h5_type type, int ndim,
                               const int64_t *dims, int64_t chunk_rows, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = create_dataset_locked(h, path, type, ndim, dims, chunk_rows, err);
    dv_h5_leave(&q);
    return st;
}

/* Writes rows [at, at+count) of d from buf (memory type mtype). */
static herr_t write_rows(hid_t d, hid_t mtype, hsize_t at, hsize_t count, const void *buf) {
    hid_t fs = H5Dget_space(d);
    int r = H5Sget_simple_extent_ndims(fs);
    if (r < 1 || r > DV_H5_MAX_DIMS) {
        H5Sclose(fs);
        return -1;
    }
    hsize_t dims[DV_H5_MAX_DIMS], off[DV_H5_MAX_DIMS] = {0}, cnt[DV_H5_MAX_DIMS];
    H5Sget_simple_extent_dims(fs, dims, NULL);
    for (int i = 0; i < r; i++)
        cnt[i] = i == 0 ? count : dims[i];
    off[0] = at;
    herr_t e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, off, NULL, cnt, NULL);
    /* Same shape as the file selection: a flat memory space is several
     * times slower in HDF5. */
    hid_t ms = H5Screate_simple(r, cnt, NULL);
    if (e >= 0) e = H5Dwrite(d, mtype, ms, fs, H5P_DEFAULT, buf);
    H5Sclose(ms);
    H5Sclose(fs);
    return e;
}

dv_status dv_h5_write_rows(dv_h5 *h, const char *path, dv_h5_type type, int64_t at, int64_t count,
                           const void *buf, char *err) {
    if (mem_type(type) < 0 || at < 0 || count < 0)
        return DV_ERROR(err, "%s: %s: bad row range [%lld, +%lld) or type %d", h->path, path,
                        (long long)at, (long long)count, (int)type);
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = DV_ERR;
    hid_t d = open_ds(h, path, err);
    if (d >= 0) {
        if (write_rows(d, mem_type(type), (hsize_t)at, (hsize_t)count, buf) < 0)
            DV_ERROR(err, "%s: writing %s failed (disk full?)", h->path, path);
        else
            st = DV_OK;
        H5Dclose(d);
    }
    dv_h5_leave(&q);
    return st;
}

static dv_status write_string_locked(dv_h5 *h, const char *path, const char *text, char *err) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(text) + 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t lcpl = make_parents();
    hid_t dcpl = H5P_DEFAULT;
    if (h->checked && strlen(text) < COMPACT_BYTES && (dcpl = H5Pcreate(H5P_DATASET_CREATE)) >= 0)
        H5Pset_layout(dcpl, H5D_COMPACT); /* in its checksummed header */
    hid_t d = H5Dcreate2(h->fid, path, t, sp, lcpl, dcpl >= 0 ? dcpl : H5P_DEFAULT, H5P_DEFAULT);
    herr_t e = d < 0 ? -1 : H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, text);
    if (d >= 0) H5Dclose(d);
    if (dcpl >= 0 && dcpl != H5P_DEFAULT) H5Pclose(dcpl);
    H5Pclose(lcpl);
    H5Sclose(sp);
    H5Tclose(t);
    if (e < 0) return DV_ERROR(err, "%s: writing the string %s failed", h->path, path);
    return DV_OK;
}

dv_status dv_h5_write_string(dv_h5 *h, const char *path, const char *text, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = write_string_locked(h, path, text, err);
    dv_h5_leave(&q);
    return st;
}

static dv_status read_string_locked(dv_h5 *h, const char *path, char **text, char *err) {
    hid_t d = open_ds(h, path, err);
    if (d < 0) return DV_ERR;
    hid_t t = H5Dget_type(d);
    dv_status st = DV_ERR;
    if (H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) != 0) {
        DV_ERROR(err, "%s: %s is not a fixed-length string", h->path, path);
    } else {
        size_t n = H5Tget_size(t);
        char *s = calloc(n + 1, 1);
        if (!s)
            DV_ERROR(err, "%s: out of memory reading %s", h->path, path);
        else if (H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s) < 0)
            read_failed(h, path, err);
        else
            *text = s, s = NULL, st = DV_OK;
        free(s);
    }
    H5Tclose(t);
    H5Dclose(d);
    return st;
}

dv_status dv_h5_read_string(dv_h5 *h, const char *path, char **text, char *err) {
    *text = NULL;
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = read_string_locked(h, path, text, err);
    dv_h5_leave(&q);
    return st;
}

/* ---- attributes ----------------------------------------------------------- */

static hid_t open_obj(dv_h5 *h, const char *obj, char *err) {
    hid_t o = exists_locked(h->fid, obj) ? H5Oopen(h->fid, obj, H5P_DEFAULT) : H5I_INVALID_HID;
    if (o < 0) DV_ERROR(err, "%s: %s not found", h->path, obj);
    return o;
}

int dv_h5_attr_exists(dv_h5 *h, const char *obj, const char *name) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    int ok = 0;
    if (exists_locked(h->fid, obj)) ok = H5Aexists_by_name(h->fid, obj, name, H5P_DEFAULT) > 0;
    dv_h5_leave(&q);
    return ok;
}

/* Writes attribute `name` of obj: `n` values of memory type mtype (n 0: a
 * scalar) stored as ftype, replacing one of that name. */
static dv_status attr_set(dv_h5 *h, const char *obj, const char *name, hid_t ftype, hid_t mtype,
                          size_t n, const void *v, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = DV_ERR;
    hid_t o = open_obj(h, obj, err);
    if (o >= 0) {
        hsize_t dim = (hsize_t)n;
        hid_t sp = n ? H5Screate_simple(1, &dim, NULL) : H5Screate(H5S_SCALAR);
        if (H5Aexists(o, name) > 0) H5Adelete(o, name);
        hid_t a = H5Acreate2(o, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
        if (a < 0 || H5Awrite(a, mtype, v) < 0)
            DV_ERROR(err, "%s: writing attribute '%s' of %s failed", h->path, name, obj);
        else
            st = DV_OK;
        if (a >= 0) H5Aclose(a);
        H5Sclose(sp);
        H5Oclose(o);
    }
    dv_h5_leave(&q);
    return st;
}

dv_status dv_h5_attr_set_int(dv_h5 *h, const char *obj, const char *name, int64_t v, char *err) {
    return attr_set(h, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &v, err);
}

dv_status dv_h5_attr_set_double(dv_h5 *h, const char *obj, const char *name, double v, char *err) {
    return attr_set(h, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, &v, err);
}

dv_status dv_h5_attr_set_doubles(dv_h5 *h, const char *obj, const char *name, const double *v,
                                 size_t n, char *err) {
    if (n == 0) return DV_ERROR(err, "%s: attribute '%s' of %s: no values", h->path, name, obj);
    return attr_set(h, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, n, v, err);
}

dv_status dv_h5_attr_set_string(dv_h5 *h, const char *obj, const char *name, const char *v,
                                char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    /* A variable-length UTF-8 string, as h5py writes `attrs["kind"] = "chars"`. */
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    dv_status st = attr_set(h, obj, name, t, t, 0, &v, err);
    H5Tclose(t);
    dv_h5_leave(&q);
    return st;
}

/* Opens attribute `name` of obj: its type class and number of values. */
static hid_t attr_open(dv_h5 *h, const char *obj, const char *name, H5T_class_t *cls, hssize_t *n,
                       char *err) {
    hid_t o = open_obj(h, obj, err);
    if (o < 0) return H5I_INVALID_HID;
    hid_t a = H5Aexists(o, name) > 0 ? H5Aopen(o, name, H5P_DEFAULT) : H5I_INVALID_HID;
    H5Oclose(o);
    if (a < 0) {
        DV_ERROR(err, "%s: %s has no attribute '%s'", h->path, obj, name);
        return a;
    }
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    *cls = H5Tget_class(t);
    *n = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    H5Tclose(t);
    return a;
}

/* Reads up to `max` numeric values of an attribute as mtype; integers only
 * when `integer`. */
static dv_status attr_get(dv_h5 *h, const char *obj, const char *name, hid_t mtype, int integer,
                          void *v, size_t max, size_t *n, char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    H5T_class_t cls = H5T_NO_CLASS;
    hssize_t count = 0;
    dv_status st = DV_ERR;
    hid_t a = attr_open(h, obj, name, &cls, &count, err);
    if (a >= 0) {
        if (cls != H5T_INTEGER && (integer || cls != H5T_FLOAT))
            DV_ERROR(err, "%s: attribute '%s' of %s is not %s", h->path, name, obj,
                     integer ? "an integer" : "numeric");
        else if (count < 1 || (size_t)count > max)
            DV_ERROR(err, "%s: attribute '%s' of %s has %lld values; expected %s%zu", h->path, name,
                     obj, (long long)count, max > 1 ? "at most " : "", max);
        else if (H5Aread(a, mtype, v) < 0)
            DV_ERROR(err, "%s: reading attribute '%s' of %s failed", h->path, name, obj);
        else
            st = DV_OK;
        if (n) *n = (size_t)(count < 0 ? 0 : count);
        H5Aclose(a);
    }
    dv_h5_leave(&q);
    return st;
}

dv_status dv_h5_attr_get_int(dv_h5 *h, const char *obj, const char *name, int64_t *v, char *err) {
    return attr_get(h, obj, name, H5T_NATIVE_INT64, 1, v, 1, NULL, err);
}

dv_status dv_h5_attr_get_double(dv_h5 *h, const char *obj, const char *name, double *v, char *err) {
    return attr_get(h, obj, name, H5T_NATIVE_DOUBLE, 0, v, 1, NULL, err);
}

dv_status dv_h5_attr_get_doubles(dv_h5 *h, const char *obj, const char *name, double *v, size_t max,
                                 size_t *n, char *err) {
    *n = 0;
    dv_status st = attr_get(h, obj, name, H5T_NATIVE_DOUBLE, 0, v, max, n, err);
    if (st != DV_OK) *n = 0;
    return st;
}

/* Reads a string attribute (fixed or variable length, as the C API or h5py
 * write it) into buf. */
static dv_status str_attr_locked(dv_h5 *h, const char *obj, const char *name, char *buf, size_t len,
                                 char *err) {
    H5T_class_t cls;
    hssize_t count;
    hid_t a = attr_open(h, obj, name, &cls, &count, err);
    if (a < 0) return DV_ERR;
    hid_t ft = H5Aget_type(a);
    int ok = 0;
    if (cls == H5T_STRING && count == 1) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_cset(mt, H5Tget_cset(ft)); /* HDF5 converts no character set to another */
        if (H5Tis_variable_str(ft) > 0) {
            char *s = NULL;
            H5Tset_size(mt, H5T_VARIABLE);
            if (H5Aread(a, mt, &s) >= 0 && s) {
                snprintf(buf, len, "%s", s);
                H5free_memory(s);
                ok = 1;
            }
        } else {
            size_t sz = H5Tget_size(ft);
            char *s = calloc(1, sz + 1);
            H5Tset_size(mt, sz + 1);
            if (s && H5Aread(a, mt, s) >= 0) {
                snprintf(buf, len, "%s", s);
                ok = 1;
            }
            free(s);
        }
        H5Tclose(mt);
    }
    H5Tclose(ft);
    H5Aclose(a);
    if (!ok) return DV_ERROR(err, "%s: attribute '%s' of %s is not a string", h->path, name, obj);
    return DV_OK;
}

dv_status dv_h5_attr_get_string(dv_h5 *h, const char *obj, const char *name, char *buf, size_t len,
                                char *err) {
    dv_h5_quiet q;
    dv_h5_enter(&q);
    dv_status st = str_attr_locked(h, obj, name, buf, len, err);
    dv_h5_leave(&q);
    return st;
}

/* ---- walking a file ------------------------------------------------------- */

typedef struct visit_ctx {
    int (*fn)(void *ctx, const dv_h5_dataset *d);
    void *ctx;
} visit_ctx;

static void type_name(hid_t t, char *buf, size_t len) {
    H5T_class_t c = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    if (c == H5T_INTEGER)
        snprintf(buf, len, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", sz * 8);
    else if (c == H5T_FLOAT)
        snprintf(buf, len, "float%zu", sz * 8);
    else if (c == H5T_STRING)
        snprintf(buf, len, "string");
    else
        snprintf(buf, len, "other");
}

static herr_t visit_one(hid_t obj, const char *name, const H5O_info_t *info, void *data) {
    visit_ctx *v = data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t ds = H5Dopen2(obj, name, H5P_DEFAULT);
    if (ds < 0) return 0;
    dv_h5_dataset d;
    memset(&d, 0, sizeof(d));
    d.path = name;
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds), pl = H5Dget_create_plist(ds);
    int nd = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[H5S_MAX_RANK];
    if (nd > 0 && nd <= DV_H5_MAX_DIMS && H5Sget_simple_extent_dims(sp, dims, NULL) >= 0) {
        d.ndim = nd;
        for (int i = 0; i < nd; i++)
            d.dims[i] = (int64_t)dims[i];
    }
    type_name(ty, d.type, sizeof(d.type));
    H5D_layout_t layout = H5Pget_layout(pl);
    /* compact data lives in the object header, checksummed from format 1.8 on */
    d.checksum = layout == H5D_COMPACT && info->hdr.version >= 2;
    if (layout == H5D_CHUNKED) {
        hsize_t ch[H5S_MAX_RANK];
        int cn = H5Pget_chunk(pl, H5S_MAX_RANK, ch);
        for (int i = 0; i < cn && i < DV_H5_MAX_DIMS; i++)
            d.chunk[d.chunk_ndim++] = (int64_t)ch[i];
        int nf = H5Pget_nfilters(pl);
        for (int i = 0; i < nf; i++) {
            unsigned flags, cd[8];
            size_t ncd = 8, at = strlen(d.filters);
            char fname[64] = "";
            H5Z_filter_t id =
                H5Pget_filter2(pl, (unsigned)i, &flags, &ncd, cd, sizeof(fname), fname, NULL);
            if (id == H5Z_FILTER_FLETCHER32) {
                snprintf(fname, sizeof(fname), "fletcher32");
                d.checksum = 1;
            } else if (id == H5Z_FILTER_SHUFFLE) {
                snprintf(fname, sizeof(fname), "shuffle");
            }
            snprintf(d.filters + at, sizeof(d.filters) - at, "%s%s", at ? " " : "", fname);
        }
    }
    H5Pclose(pl);
    H5Tclose(ty);
    H5Sclose(sp);
    H5Dclose(ds);
    return v->fn(v->ctx, &d) ? 1 : 0;
}

dv_status dv_h5_visit(dv_h5 *h, int (*fn)(void *ctx, const dv_h5_dataset *d), void *ctx,
                      char *err) {
    visit_ctx v = {fn, ctx};
    dv_h5_quiet q;
    dv_h5_enter(&q);
    herr_t e =
        H5Ovisit2(h->fid, H5_INDEX_NAME, H5_ITER_INC, visit_one, &v, H5O_INFO_BASIC | H5O_INFO_HDR);
    dv_h5_leave(&q);
    if (e < 0) return DV_ERROR(err, "%s: cannot list the objects (damaged HDF5 file?)", h->path);
    return DV_OK;
}

/* ---- reading, for the split and token readers (data-impl.h) ---------------- */

static const char *class_name(hid_t type) {
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

/* HDF5 wants the slot count prime and ~100x the number of chunks that fit,
 * or chunks collide in the hash and evict each other long before the cache
 * is full. */
hid_t dv_h5_open_cached(hid_t fid, const char *path, size_t bytes) {
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

/* A dataset's declared shape is trusted only as far as the file backs it:
 * a sample (a row) of at most 2^31 - 1 elements, a size that does not
 * overflow, and stored bytes that could hold it (deflate, the strongest
 * filter HDF5 ships, compresses at most about 1032:1, so a dataset stored
 * in fewer than 1/1100 of its bytes is truncated or was never written,
 * whatever its fill value reads as). */
static dv_status check_extent(hid_t d, const char *file, const char *path, int rank,
                              const hsize_t *dims, size_t elem, char *err) {
    uint64_t row = 1, bytes = elem;
    for (int i = 1; i < rank; i++)
        if (__builtin_mul_overflow(row, (uint64_t)dims[i], &row) || row > INT32_MAX)
            return DV_ERROR(err,
                            "%s: %s: samples of more than 2^31 - 1 elements (shape dimension %d "
                            "is %llu)",
                            file, path, i, (unsigned long long)dims[i]);
    if (__builtin_mul_overflow(bytes, row, &bytes) ||
        __builtin_mul_overflow(bytes, (uint64_t)dims[0], &bytes))
        return DV_ERROR(err, "%s: %s declares %llu rows of %llu elements: too large", file, path,
                        (unsigned long long)dims[0], (unsigned long long)row);
    const uint64_t stored = H5Dget_storage_size(d);
    if (bytes > 0 && stored < bytes / 1100)
        return DV_ERROR(err,
                        "%s: %s declares %llu rows (%llu bytes) but the file stores %llu bytes "
                        "of it: a truncated or never written dataset",
                        file, path, (unsigned long long)dims[0], (unsigned long long)bytes,
                        (unsigned long long)stored);
    return DV_OK;
}

dv_status dv_h5_open_dataset(hid_t fid, const char *file, const char *path, hid_t *out, int *rank,
                             hsize_t *dims, H5T_class_t *cls, char *err) {
    *out = H5I_INVALID_HID;
    if (!path || !*path) return DV_ERROR(err, "%s: empty dataset path", file);
    /* H5Oopen fails for a missing intermediate group too, which is what
     * "not found" should cover. */
    hid_t obj = H5Oopen(fid, path, H5P_DEFAULT);
    if (obj < 0) return DV_ERROR(err, "%s: dataset %s not found", file, path);
    H5I_type_t kind = H5Iget_type(obj);
    H5Oclose(obj);
    if (kind != H5I_DATASET)
        return DV_ERROR(err, "%s: %s is a %s, not a dataset", file, path,
                        kind == H5I_GROUP ? "group" : "named type");
    hid_t d = dv_h5_open_cached(fid, path, DV_H5_CHUNK_CACHE);
    if (d < 0) return DV_ERROR(err, "%s: cannot open dataset %s", file, path);
    hid_t type = H5Dget_type(d);
    hid_t space = H5Dget_space(d);
    *cls = H5Tget_class(type);
    int r = H5Sget_simple_extent_ndims(space);
    dv_status st = DV_OK;
    if (*cls != H5T_INTEGER && *cls != H5T_FLOAT) {
        st = DV_ERROR(err,
                      "%s: %s has a %s type; expected a numeric type (uint8, int, float32, "
                      "float64)",
                      file, path, class_name(type));
    } else if (r < 1) {
        st = DV_ERROR(err, "%s: %s is a scalar; expected an array of shape (N, ...)", file, path);
    } else if (r > 8) {
        st = DV_ERROR(err, "%s: %s has rank %d; at most 8 is supported", file, path, r);
    } else {
        H5Sget_simple_extent_dims(space, dims, NULL);
        *rank = r;
        st = check_extent(d, file, path, r, dims, H5Tget_size(type), err);
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
    if (r < 1 || r > 8) {
        H5Sclose(fs);
        return -1;
    }
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
    if (!buf) return DV_ERROR(err, "%s: out of memory scanning %s", file, path);
    *lo = INT64_MAX, *hi = INT64_MIN, *lo_at = *hi_at = 0;
    for (int64_t at = 0; at < n; at += SCAN_ROWS) {
        int64_t c = n - at < SCAN_ROWS ? n - at : SCAN_ROWS;
        if (dv_h5_read_rows(d, H5T_NATIVE_INT64, at, c, buf) < 0) {
            free(buf);
            return DV_ERROR(err, "%s: reading %s failed (corrupt or truncated file?)", file, path);
        }
        for (int64_t i = 0; i < c; i++) {
            if (buf[i] < *lo) *lo = buf[i], *lo_at = at + i;
            if (buf[i] > *hi) *hi = buf[i], *hi_at = at + i;
        }
    }
    free(buf);
    return DV_OK;
}
