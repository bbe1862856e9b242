/* import.h — importers that turn other formats into Dive's HDF5 layout
 * (docs/data.md): IDX (MNIST / Fashion-MNIST) and numeric CSV into a split
 * /<split>/x, /<split>/y, and text into a token file (/train/tokens,
 * /val/tokens, /vocab). Outputs are chunked and gzip-compressed so h5py and
 * every HDF5 tool read them; an import replaces what it writes, keeps the
 * rest of the file, and is atomic: it writes a copy of the file beside it
 * and swaps the copy in only when everything was read, validated and
 * written, so a failed import leaves the file as it was.
 */
#ifndef DV_IMPORT_H
#define DV_IMPORT_H

#include <stdint.h>

#include "base.h"
#include "tokens.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- importers -------------------------------------------------------- */

/* IDX (MNIST / Fashion-MNIST; raw or gzip): images (N, rows, cols) uint8 and
 * labels (N) uint8 into `out_file` as /<split>/x and /<split>/y (chunked,
 * gzip). The file is created if missing; an existing split is replaced;
 * other splits are kept. */
dv_status dv_import_idx(const char *images, const char *labels, const char *out_file,
                        const char *split, char *err);

/* Numeric CSV: one sample per line, `label_col` (0-based; negative counts
 * from the end, -1 = last) holds an integer label, the other columns are
 * float32 features. `header` 1 skips the first line. Writes /<split>/x
 * (N, F) float32 and /<split>/y (N) int32. */
dv_status dv_import_csv(const char *csv, int label_col, int header, const char *out_file,
                        const char *split, char *err);

/* Text into a token file: the regular files named by `inputs`, each a
 * file or a directory walked recursively (symbolic links inside it are
 * not followed) in sorted path order (byte order, like `LC_ALL=C sort`),
 * the inputs in the order given. A file with a NUL byte, or with
 * DV_VOCAB_CHARS one that is not valid UTF-8, is skipped (on_skip is told
 * why). The files' tokens, concatenated in that order, are split: the last
 * round(val_fraction * n) tokens (0 <= val_fraction < 1) go to
 * /val/tokens, the rest to /train/tokens (int32, chunked, gzip); the
 * vocabulary to /vocab. Those three are replaced if present; everything
 * else in out_file is kept. Inputs are read twice (validate and count,
 * then write), so memory does not grow with the corpus. */
typedef struct dv_text_options {
    dv_vocab_kind vocab;
    double val_fraction;
    /* Called once per skipped file (may be NULL). */
    void (*on_skip)(void *ctx, const char *path, const char *why);
    void *ctx;
} dv_text_options;

typedef struct dv_text_report {
    int64_t files_read, files_skipped;
    int64_t n_train, n_val; /* tokens */
    int64_t vocab_size;
} dv_text_report;

dv_status dv_import_text(const char *const *inputs, int n_inputs, const dv_text_options *opt,
                         const char *out_file, dv_text_report *report, char *err);

#ifdef __cplusplus
}
#endif
#endif
