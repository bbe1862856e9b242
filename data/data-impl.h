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

/* snprintf into err (DV_ERR_LEN bytes); err may be NULL. */
void dv_errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
