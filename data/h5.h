/* h5.h — Dive's one door to HDF5 (data/h5.c): files, groups, float and
 * integer datasets written whole or in slabs of rows, string datasets,
 * attributes, and a walk over a file's datasets. Checkpoints (model/),
 * `dive predict` (run/), `dive info` (cli/) and the importers use it; no
 * code outside data/ includes <hdf5.h>.
 *
 * The lock. The HDF5 library (the MPI build) is not thread-safe, and a
 * streaming loader with prefetch reads HDF5 on its own thread. Every
 * function here, and every HDF5 call in data/, holds dv_h5_lock. The lock
 * is recursive: a caller may hold it across several calls to make them one
 * step (a checkpoint write), and call data/ functions while holding it.
 *
 * The error stack. Each function silences HDF5's automatic error printing
 * for the duration of its own call only: it saves the handler in force
 * (H5Eget_auto2), switches it off, and restores it before returning. So a
 * bad file gives one message of Dive's, not an HDF5 stack dump, and no call
 * leaves HDF5's global state changed.
 *
 * Errors follow base.h: dv_status, with a message in `err` (DV_ERR_LEN
 * bytes) naming the file and the object at fault. Paths inside a file are
 * absolute ("/model/dense_1/weight"); `obj` names a group or a dataset
 * ("/train", "/" for the root).
 */
#ifndef DV_H5_H
#define DV_H5_H

#include <stddef.h>
#include <stdint.h>

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

void dv_h5_lock(void);
void dv_h5_unlock(void);

/* ---- files ---------------------------------------------------------------- */

typedef struct dv_h5 dv_h5;

typedef enum dv_h5_mode {
    DV_H5_READ = 0, /* read-only */
    DV_H5_WRITE,    /* read-write; the file is created if missing */
} dv_h5_mode;

/* Opens an existing HDF5 file (DV_H5_WRITE: or creates it). The message
 * says which failed: the file cannot be read ("cannot open: <errno>"), is
 * not HDF5, or is a damaged HDF5 file. */
dv_status dv_h5_open(dv_h5 **out, const char *path, dv_h5_mode mode, char *err);
/* Creates `path` for writing, truncating any file there (predictions). */
dv_status dv_h5_create(dv_h5 **out, const char *path, char *err);
/* Creates `path` for writing where nothing is (no file, no link: a link is
 * never followed), in HDF5's 1.8 format, whose metadata (object headers
 * with their attributes, B-trees, heaps) carries checksums; and everything
 * written through it carries one too: numeric datasets are chunked with a
 * Fletcher32 checksum per chunk (dv_h5_create_dataset keeps its gzip), and
 * scalars and strings are stored compact, inside their checksummed header.
 * HDF5 verifies the checksums on every read: a mismatch is an error that
 * says so (a checkpoint's file). */
dv_status dv_h5_create_checked(dv_h5 **out, const char *path, char *err);
/* Flushes the whole file to the operating system. */
dv_status dv_h5_flush(dv_h5 *h, char *err);
/* Closes h (NULL is a no-op); fails when the data cannot be written out
 * (disk full). err may be NULL. */
dv_status dv_h5_close(dv_h5 *h, char *err);
/* The path h was opened with (borrowed). */
const char *dv_h5_path(const dv_h5 *h);

/* ---- objects -------------------------------------------------------------- */

/* 1 when `path` names a group or dataset of the file, else 0 (a missing
 * intermediate group is not an error). */
int dv_h5_exists(dv_h5 *h, const char *path);
/* Creates group `path` and any missing groups above it; an existing group
 * is kept. */
dv_status dv_h5_group(dv_h5 *h, const char *path, char *err);
/* Removes the link `path` where present (nothing to do otherwise). */
dv_status dv_h5_delete(dv_h5 *h, const char *path, char *err);

/* ---- datasets ------------------------------------------------------------- */

#define DV_H5_MAX_DIMS 32

/* Element types: the type stored in the file (little-endian) and the type
 * of the caller's buffer (native) alike. */
typedef enum dv_h5_type { DV_H5_U8 = 0, DV_H5_I32, DV_H5_F32, DV_H5_TYPE_COUNT } dv_h5_type;

/* The shape of dataset `path`: its rank in *ndim and, when the rank is at
 * most `max`, its sizes in dims. Fails when path is missing or not a
 * dataset. */
dv_status dv_h5_shape(dv_h5 *h, const char *path, int *ndim, int64_t *dims, int max, char *err);
/* Writes data as a new float32 dataset of shape dims[0..ndim) (ndim 0: a
 * scalar), creating missing groups above it. */
dv_status dv_h5_write_floats(dv_h5 *h, const char *path, int ndim, const int64_t *dims,
                             const float *data, char *err);
/* Reads the whole numeric dataset `path` as float32 into out, which holds
 * `count` elements: the dataset must have exactly that many. Data that
 * does not match its checksum is an error naming the dataset. */
dv_status dv_h5_read_floats(dv_h5 *h, const char *path, float *out, size_t count, char *err);

/* Creates an empty dataset of `type` and shape dims[0..ndim) (ndim >= 1),
 * creating missing groups above it. chunk_rows > 0: chunked by that many
 * rows (fewer when the dataset has fewer) and gzip-compressed, as the
 * importers write; 0: contiguous. */
dv_status dv_h5_create_dataset(dv_h5 *h, const char *path, dv_h5_type type, int ndim,
                               const int64_t *dims, int64_t chunk_rows, char *err);
/* Writes rows [at, at+count) of dataset `path` from buf: count whole rows
 * (all dimensions after the first) of `type`. */
dv_status dv_h5_write_rows(dv_h5 *h, const char *path, dv_h5_type type, int64_t at, int64_t count,
                           const void *buf, char *err);

/* A scalar string dataset, fixed-length and NUL-terminated (a
 * checkpoint's /config). */
dv_status dv_h5_write_string(dv_h5 *h, const char *path, const char *text, char *err);
/* Reads such a dataset into *text (malloc'd, NUL-terminated). */
dv_status dv_h5_read_string(dv_h5 *h, const char *path, char **text, char *err);

/* ---- attributes of a group or dataset `obj` -------------------------------- */

/* 1 when obj exists and has attribute `name`, else 0. */
int dv_h5_attr_exists(dv_h5 *h, const char *obj, const char *name);
/* Scalar int64 and float64 attributes, a 1-D float64 one of n values and a
 * variable-length UTF-8 string (as h5py writes `attrs["k"] = "v"`). An
 * existing attribute of that name is replaced. */
dv_status dv_h5_attr_set_int(dv_h5 *h, const char *obj, const char *name, int64_t v, char *err);
dv_status dv_h5_attr_set_double(dv_h5 *h, const char *obj, const char *name, double v, char *err);
dv_status dv_h5_attr_set_doubles(dv_h5 *h, const char *obj, const char *name, const double *v,
                                 size_t n, char *err);
dv_status dv_h5_attr_set_string(dv_h5 *h, const char *obj, const char *name, const char *v,
                                char *err);
/* Reads an attribute of one integer (int), one numeric value (double), up
 * to `max` numeric values (doubles: *n receives how many) or a fixed- or
 * variable-length string (into buf of len bytes). Fails when obj or the
 * attribute is missing or of another kind. */
dv_status dv_h5_attr_get_int(dv_h5 *h, const char *obj, const char *name, int64_t *v, char *err);
dv_status dv_h5_attr_get_double(dv_h5 *h, const char *obj, const char *name, double *v, char *err);
dv_status dv_h5_attr_get_doubles(dv_h5 *h, const char *obj, const char *name, double *v, size_t max,
                                 size_t *n, char *err);
dv_status dv_h5_attr_get_string(dv_h5 *h, const char *obj, const char *name, char *buf, size_t len,
                                char *err);

/* ---- walking a file ------------------------------------------------------- */

/* What dv_h5_visit tells about one dataset. */
typedef struct dv_h5_dataset {
    const char *path; /* from the root, without the leading '/': "train/x" */
    int ndim;
    int64_t dims[DV_H5_MAX_DIMS];
    char type[16];  /* "uint8", "int32", "float32", "float64", "string", "other" */
    int chunk_ndim; /* 0: contiguous */
    int64_t chunk[DV_H5_MAX_DIMS];
    char filters[128]; /* the names of its filters, space-separated ("deflate fletcher32") */
    int checksum;      /* 1: HDF5 verifies its data on every read (a Fletcher32
                          filter, or compact data in a checksummed header) */
} dv_h5_dataset;

/* Calls fn for every dataset of the file, in name order, depth first;
 * stops early when fn returns non-zero. */
dv_status dv_h5_visit(dv_h5 *h, int (*fn)(void *ctx, const dv_h5_dataset *d), void *ctx, char *err);

#ifdef __cplusplus
}
#endif
#endif
