/* data-impl.h — what the files of data/ share, private to data/: the
 * bracket around HDF5 calls, and the reading helpers of the split and token
 * readers (all in h5.c, the one owner of HDF5).
 *
 * dv_h5_enter / dv_h5_leave bracket every run of HDF5 calls made outside
 * h5.c's own functions: they take the HDF5 lock and silence HDF5's
 * automatic error-stack printing, then restore the caller's handler, so a
 * bad file gives one message of ours, not a dump.
 */
#ifndef DV_DATA_IMPL_H
#define DV_DATA_IMPL_H

#include "data.h"
#include "h5.h"
#include "tokens.h"

#include <hdf5.h>

typedef struct dv_h5_quiet {
    H5E_auto2_t func;
    void *data;
} dv_h5_quiet;

void dv_h5_enter(dv_h5_quiet *q);
void dv_h5_leave(dv_h5_quiet *q);

/* The HDF5 file id of h, for the readers that keep datasets open. */
hid_t dv_h5_id(const dv_h5 *h);

/* Decompressed chunks cached per dataset by default; a streaming loader
 * raises this to its memory budget (dv_split_set_cache). */
#define DV_H5_CHUNK_CACHE ((size_t)32 << 20)

/* Gives the x dataset's chunk cache `bytes` (never less than the default):
 * a streaming loader whose float32 copy did not fit its memory budget may
 * still fit the stored chunks, and random batches then stop re-inflating
 * the same chunks. */
void dv_split_set_cache(dv_split *s, size_t bytes);

/* ---- reading (h5.c), shared by the split and token readers ------------ */

/* Opens dataset `path` of fid with a chunk cache of `bytes` (call inside
 * enter/leave). */
hid_t dv_h5_open_cached(hid_t fid, const char *path, size_t bytes);

/* Opens `path` of fid as a numeric dataset of rank 1..8 (with the default
 * chunk cache); *cls receives its type class (H5T_INTEGER or H5T_FLOAT),
 * dims its shape. Errors name `file` and `path`. */
dv_status dv_h5_open_dataset(hid_t fid, const char *file, const char *path, hid_t *out, int *rank,
                             hsize_t *dims, H5T_class_t *cls, char *err);

/* Reads rows [start, start+count) of dataset d into buf as `mtype`. */
herr_t dv_h5_read_rows(hid_t d, hid_t mtype, int64_t start, int64_t count, void *buf);

/* Scans the n values of the integer dataset d in blocks: the smallest and
 * largest, and the first row holding each. */
dv_status dv_h5_scan_range(hid_t d, int64_t n, const char *file, const char *path, int64_t *lo,
                           int64_t *lo_at, int64_t *hi, int64_t *hi_at, char *err);

/* ---- writing (import.c), shared by the importers --------------------- */

/* An import's output, written beside the file it replaces and swapped in
 * whole: dv_import_open copies out_file (when it exists) to a temporary
 * file in the same directory, `<out_file>.tmp.<pid>` (created with O_EXCL,
 * never through a symlink), and removes there the objects
 * `replace[0..nreplace)` (absolute paths) where present; the importer
 * writes into `h`; dv_import_close renames the temporary over out_file
 * only when the import succeeded, so a failed import (a bad input found
 * half-way, a full disk, a crash) leaves out_file as it was. Where
 * out_file is a symbolic link, the file it points to is replaced. */
typedef struct dv_import_out {
    dv_h5 *h;
    char path[4096]; /* the file to replace (out_file, its links resolved) */
    char tmp[4200];  /* the temporary beside it; "" once renamed or removed */
} dv_import_out;
dv_status dv_import_open(dv_import_out *o, const char *out_file, const char *const *replace,
                         int nreplace, char *err);
/* Closes o->h; with st == DV_OK syncs the temporary to disk and renames
 * it over the file (then syncs the directory), else removes it. Returns st,
 * or DV_ERR when the close, sync or rename fails (the file is then
 * unchanged too). */
dv_status dv_import_close(dv_import_out *o, dv_status st, char *err);

#endif
