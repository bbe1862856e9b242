/* data-impl.h — helpers shared by the files of data/, private to it.
 *
 * dv_h5_enter / dv_h5_leave bracket every run of HDF5 calls: they take the
 * HDF5 lock and silence HDF5's automatic error-stack printing, then restore
 * the caller's setting, so a bad file gives one message of ours, not a dump.
 */
#ifndef DV_DATA_IMPL_H
#define DV_DATA_IMPL_H

#include "data.h"

#include <hdf5.h>

typedef struct dv_h5_quiet {
    H5E_auto2_t func;
    void *data;
} dv_h5_quiet;

void dv_h5_enter(dv_h5_quiet *q);
void dv_h5_leave(dv_h5_quiet *q);

/* Checks that `file` can be read and is HDF5 (call inside enter/leave). */
dv_status dv_h5_check_file(const char *file, char *err);

/* Gives the x dataset's chunk cache `bytes` (never less than the default):
 * a streaming loader whose float32 copy did not fit its memory budget may
 * still fit the stored chunks, and random batches then stop re-inflating
 * the same chunks. */
void dv_split_set_cache(dv_split *s, size_t bytes);

/* ---- reading (split.c), shared with the token reader ---------------- */

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

/* ---- writing (import.c), shared by the importers ------------------- */

/* Opens out_file for writing, creating it if missing, and removes the
 * objects `replace[0..nreplace)` (absolute paths) where present, so an
 * import replaces what it writes and keeps everything else. */
hid_t dv_import_open(const char *out_file, const char *const *replace, int nreplace, char *err);

/* Closes fid; when st is not DV_OK first removes `written`, so a failed
 * import never leaves data that looks complete. Returns st, or DV_ERR if
 * the close fails (disk full). */
dv_status dv_import_close(hid_t fid, const char *const *written, int nwritten, dv_status st,
                          const char *out_file, char *err);

/* Creates a chunked, gzip-compressed dataset of `rank` dims, chunks of
 * chunk_rows along the first; missing groups are created. */
hid_t dv_import_create_ds(hid_t fid, const char *path, hid_t type, int rank, const hsize_t *dims,
                          hsize_t chunk_rows);

/* Writes rows [at, at+count) of d from buf (memory type mtype). */
herr_t dv_import_write_rows(hid_t d, hid_t mtype, hsize_t at, hsize_t count, const void *buf);

#endif
