/* tokens.h — token streams for language models: a 1-D integer dataset of
 * ids read as windows of T+1 tokens (inputs and targets shifted by one),
 * the vocabulary stored beside it in /vocab (docs/data.md, "Token files"),
 * and the strict UTF-8 decoder the text importer and `dive sample` share.
 * A token stream as a split of windows is dv_split_open_tokens (data.h).
 *
 * Errors come back as dv_status with a message in `err` (DV_ERR_LEN bytes)
 * that names the file and the dataset.
 */
#ifndef DV_TOKENS_H
#define DV_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "h5.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- token streams ---------------------------------------------------- */

/* A 1-D integer dataset of token ids read as training windows of length T:
 * window k covers tokens [k*T, k*T + T], T+1 tokens; its inputs are the
 * first T and its targets the last T (the inputs shifted by one). Windows
 * do not overlap (consecutive ones share one boundary token), so a stream
 * of n tokens has (n - 1) / T of them and the tail is never used.
 *
 * Training order: a dv_sampler with n = dv_tokens_windows(t, T) yields
 * window ids; it is used unchanged (one shuffle of the windows per epoch
 * from the seed, rank-strided global batches, drop-last), so docs/design.md's
 * sampling contract holds for token streams as it does for samples. */
typedef struct dv_tokens dv_tokens;

typedef struct dv_tokens_info {
    int64_t n;              /* tokens in the stream, >= 1 */
    int64_t min, max;       /* smallest and largest id present */
    int64_t min_at, max_at; /* first position holding each */
} dv_tokens_info;

/* Opens `dataset` (an absolute path, e.g. "/train/tokens") of `file`,
 * checks it is a non-empty 1-D integer dataset and scans its id range.
 * The reader is owned by the caller (dv_tokens_free), and keeps the file
 * open until then. Chunked and gzip-compressed datasets work. */
dv_status dv_tokens_open(dv_tokens **out, const char *file, const char *dataset, char *err);
void dv_tokens_free(dv_tokens *t);
const dv_tokens_info *dv_tokens_info_get(const dv_tokens *t);
int64_t dv_tokens_count(const dv_tokens *t);
/* Checks every id lies in [0, vocab_size); the message names the file,
 * the dataset, the id and its position. */
dv_status dv_tokens_check(const dv_tokens *t, int64_t vocab_size, char *err);
/* Windows of length T in the stream: (n - 1) / T; 0 when T < 1. */
int64_t dv_tokens_windows(const dv_tokens *t, int T);
/* Reads tokens [start, start+count) into out (count). */
dv_status dv_tokens_read(dv_tokens *t, int64_t start, int64_t count, int32_t *out, char *err);
/* Reads the windows window_ids[0..count) (any order, any repeats; each in
 * [0, dv_tokens_windows)) into x (count, T) inputs and y (count, T)
 * targets: x[i][j] = tokens[w*T + j], y[i][j] = tokens[w*T + j + 1]. */
dv_status dv_tokens_read_windows(dv_tokens *t, int T, const int64_t *window_ids, int count,
                                 int32_t *x, int32_t *y, char *err);

/* The vocabulary stored with a token file (/vocab: attributes kind and
 * size, dataset codepoints). */
typedef enum dv_vocab_kind {
    DV_VOCAB_BYTES = 0, /* id = byte value; size 256 */
    DV_VOCAB_CHARS,     /* id = index of a Unicode code point, sorted */
} dv_vocab_kind;

typedef struct dv_vocab {
    dv_vocab_kind kind;
    int64_t size;        /* V */
    int32_t *codepoints; /* (V), owned: the code point (bytes: the byte) of each id */
} dv_vocab;

/* Reads and validates `group` (NULL: "/vocab") of `file` into v: kind is
 * "bytes" or "chars", size matches codepoints; bytes are 0..255 in order;
 * chars strictly increasing in [0, 0x10FFFF]. Free with dv_vocab_free. */
dv_status dv_vocab_read(dv_vocab *v, const char *file, const char *group, char *err);
/* Writes v as /vocab of `file` (created if missing; an existing /vocab is
 * replaced, everything else kept), in the layout dv_vocab_read reads. */
dv_status dv_vocab_write(const dv_vocab *v, const char *file, char *err);
/* The same into the open file h (a checkpoint being written carries its
 * language model's vocabulary this way, with h's checksums). */
dv_status dv_vocab_write_to(dv_h5 *h, const dv_vocab *v, char *err);
/* Frees v->codepoints and zeroes v (v may be NULL). */
void dv_vocab_free(dv_vocab *v);

/* Incremental UTF-8 decoder, strict (no overlong forms, no surrogates,
 * nothing above U+10FFFF), so a block boundary may fall inside a
 * character: the text importer and `dive sample`'s prompts decode alike.
 * Start from a zeroed dv_utf8; `need` > 0 after the last byte means the
 * input ended inside a character. */
typedef struct dv_utf8 {
    int32_t cp, min;
    int need;
} dv_utf8;

#define DV_UTF8_BAD  (-1) /* invalid input */
#define DV_UTF8_MORE (-2) /* more bytes are needed */

/* Feeds one byte: the code point when one is complete, else DV_UTF8_MORE
 * or DV_UTF8_BAD. */
int32_t dv_utf8_feed(dv_utf8 *u, unsigned char b);

#ifdef __cplusplus
}
#endif
#endif
