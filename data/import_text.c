/* import_text.c — `dive import text`: files and directories of text into a
 * token file (/train/tokens, /val/tokens, /vocab; docs/data.md, "Token
 * files").
 *
 * Two passes over the inputs. The first walks the directories, rejects
 * files that are not text (a NUL byte; for a character vocabulary, invalid
 * UTF-8), counts tokens and collects the code points present. Only then is
 * the output touched: the split point and the vocabulary are known, so the
 * second pass streams ids into fixed-size datasets in blocks, and memory
 * stays bounded whatever the size of the corpus. A file that changes
 * between the passes is an error, never a silently wrong split.
 */
#include "data-impl.h"
#include "h5.h"
#include "import.h"
#include "tokens.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define READ_BLOCK  (1 << 16)
#define TOKEN_CHUNK (1 << 16) /* tokens per HDF5 chunk and per write */
#define MAX_CODE    0x110000

/* ---- the list of input files ----------------------------------------- */

typedef struct text_file {
    char *path;
    int64_t tokens; /* counted in the first pass */
    int skipped;
} text_file;

typedef struct file_list {
    text_file *f;
    size_t n, cap;
} file_list;

static int list_add(file_list *l, const char *path) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        text_file *f = realloc(l->f, sizeof(*f) * cap);
        if (!f) return -1;
        l->f = f, l->cap = cap;
    }
    char *p = strdup(path);
    if (!p) return -1;
    l->f[l->n++] = (text_file){.path = p};
    return 0;
}

static void list_free(file_list *l) {
    for (size_t i = 0; i < l->n; i++)
        free(l->f[i].path);
    free(l->f);
}

static int cmp_path(const void *a, const void *b) {
    return strcmp(((const text_file *)a)->path, ((const text_file *)b)->path);
}

/* Adds the regular files below dir (not following symbolic links, so a
 * link cycle or a link to a sibling file never repeats text). */
static dv_status walk(file_list *l, const char *dir, char *err) {
    DIR *d = opendir(dir);
    if (!d) {
        DV_ERROR(err, "%s: cannot read directory: %s", dir, strerror(errno));
        return DV_ERR;
    }
    dv_status st = DV_OK;
    struct dirent *e;
    while (st == DV_OK && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        char *p = malloc(len);
        if (!p) {
            DV_ERROR(err, "%s: out of memory", dir);
            st = DV_ERR;
            break;
        }
        snprintf(p, len, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", e->d_name);
        struct stat sb;
        if (lstat(p, &sb) != 0) {
            DV_ERROR(err, "%s: cannot stat: %s", p, strerror(errno));
            st = DV_ERR;
        } else if (S_ISDIR(sb.st_mode)) {
            st = walk(l, p, err);
        } else if (S_ISREG(sb.st_mode) && list_add(l, p) != 0) {
            DV_ERROR(err, "%s: out of memory", dir);
            st = DV_ERR;
        }
        free(p);
    }
    closedir(d);
    return st;
}

/* Expands the inputs: files as given (a link to a file is followed),
 * directories walked and sorted by path. */
static dv_status collect(file_list *l, const char *const *inputs, int n_inputs, char *err) {
    for (int i = 0; i < n_inputs; i++) {
        struct stat sb;
        if (stat(inputs[i], &sb) != 0) {
            DV_ERROR(err, "%s: cannot open: %s", inputs[i], strerror(errno));
            return DV_ERR;
        }
        if (S_ISDIR(sb.st_mode)) {
            size_t first = l->n;
            if (walk(l, inputs[i], err) != DV_OK) return DV_ERR;
            qsort(l->f + first, l->n - first, sizeof(*l->f), cmp_path);
        } else if (!S_ISREG(sb.st_mode)) {
            DV_ERROR(err, "%s: not a regular file or a directory", inputs[i]);
            return DV_ERR;
        } else if (list_add(l, inputs[i]) != 0) {
            DV_ERROR(err, "%s: out of memory", inputs[i]);
            return DV_ERR;
        }
    }
    return DV_OK;
}

/* ---- decoding ----------------------------------------------------------- */

int32_t dv_utf8_feed(dv_utf8 *u, unsigned char b) {
    if (u->need == 0) {
        if (b < 0x80) return b;
        if (b >= 0xC2 && b <= 0xDF)
            u->need = 1, u->cp = b & 0x1F, u->min = 0x80;
        else if (b >= 0xE0 && b <= 0xEF)
            u->need = 2, u->cp = b & 0x0F, u->min = 0x800;
        else if (b >= 0xF0 && b <= 0xF4)
            u->need = 3, u->cp = b & 0x07, u->min = 0x10000;
        else
            return DV_UTF8_BAD;
        return DV_UTF8_MORE;
    }
    if ((b & 0xC0) != 0x80) return DV_UTF8_BAD;
    u->cp = (u->cp << 6) | (b & 0x3F);
    if (--u->need > 0) return DV_UTF8_MORE;
    if (u->cp < u->min || u->cp >= MAX_CODE || (u->cp >= 0xD800 && u->cp <= 0xDFFF))
        return DV_UTF8_BAD;
    return u->cp;
}

/* Reads `path` block by block and calls emit(ctx, code) for each token
 * (a byte, or a code point with `chars`). Returns 0, or 1 if the file is
 * not text (*why says how), or -1 on a read error (message in err). */
static int scan_file(const char *path, int chars, void (*emit)(void *, int32_t), void *ctx,
                     char *why, size_t why_len, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        DV_ERROR(err, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    unsigned char *buf = malloc(READ_BLOCK);
    if (!buf) {
        fclose(f);
        DV_ERROR(err, "%s: out of memory", path);
        return -1;
    }
    dv_utf8 u = {0};
    int64_t at = 0;
    int rc = 0;
    size_t got;
    while (rc == 0 && (got = fread(buf, 1, READ_BLOCK, f)) > 0) {
        for (size_t i = 0; i < got; i++, at++) {
            if (buf[i] == 0) {
                snprintf(why, why_len, "contains a NUL byte at offset %lld (binary?)",
                         (long long)at);
                rc = 1;
                break;
            }
            int32_t c = chars ? dv_utf8_feed(&u, buf[i]) : buf[i];
            if (c == DV_UTF8_BAD) {
                snprintf(why, why_len, "not valid UTF-8 at byte offset %lld", (long long)at);
                rc = 1;
                break;
            }
            if (c >= 0) emit(ctx, c);
        }
    }
    if (rc == 0 && ferror(f)) {
        DV_ERROR(err, "%s: read error: %s", path, strerror(errno));
        rc = -1;
    } else if (rc == 0 && u.need) {
        snprintf(why, why_len, "not valid UTF-8: ends inside a character");
        rc = 1;
    }
    free(buf);
    fclose(f);
    return rc;
}

/* ---- pass 1: validate, count, collect the vocabulary ------------------ */

typedef struct counter {
    int64_t n;
    uint8_t *present; /* (MAX_CODE / 8) bitmap of the code points seen */
} counter;

static void count_token(void *ctx, int32_t c) {
    counter *k = ctx;
    k->n++;
    k->present[c >> 3] |= (uint8_t)(1u << (c & 7));
}

static dv_status count_files(file_list *l, const dv_text_options *opt, counter *k, char *err) {
    int chars = opt->vocab == DV_VOCAB_CHARS;
    for (size_t i = 0; i < l->n; i++) {
        text_file *f = &l->f[i];
        int64_t before = k->n;
        /* A file may turn out not to be text only at its end, and its code
         * points must then stay out of the vocabulary: count it into the
         * scratch half of the bitmap and merge once it is accepted. */
        counter one = {0, k->present + MAX_CODE / 8};
        memset(one.present, 0, MAX_CODE / 8);
        char why[160];
        int rc = scan_file(f->path, chars, count_token, &one, why, sizeof(why), err);
        if (rc < 0) return DV_ERR;
        if (rc > 0) {
            f->skipped = 1;
            if (opt->on_skip) opt->on_skip(opt->ctx, f->path, why);
            continue;
        }
        for (size_t b = 0; b < MAX_CODE / 8; b++)
            k->present[b] |= one.present[b];
        f->tokens = one.n;
        k->n = before + one.n;
    }
    return DV_OK;
}

/* ---- pass 2: write ---------------------------------------------------- */

typedef struct writer {
    dv_h5 *h;
    int64_t n_train;
    int64_t pos;           /* tokens emitted so far */
    int64_t block_at;      /* stream position of buf[0] */
    int fill;              /* tokens in buf */
    const int32_t *id_map; /* code point -> id (chars), or NULL (bytes) */
    int failed;
    int32_t buf[TOKEN_CHUNK];
} writer;

static int flush(writer *w) {
    if (w->fill == 0) return 0;
    int in_train = w->block_at < w->n_train;
    int64_t at = in_train ? w->block_at : w->block_at - w->n_train;
    if (dv_h5_write_rows(w->h, in_train ? "/train/tokens" : "/val/tokens", DV_H5_I32, at, w->fill,
                         w->buf, NULL) != DV_OK)
        return -1;
    w->block_at += w->fill;
    w->fill = 0;
    return 0;
}

static void write_token(void *ctx, int32_t c) {
    writer *w = ctx;
    if (w->failed) return;
    w->buf[w->fill++] = w->id_map ? w->id_map[c] : c;
    w->pos++;
    /* A block never straddles the train/val boundary. */
    if ((w->fill == TOKEN_CHUNK || w->pos == w->n_train) && flush(w) != 0) w->failed = 1;
}

static const char *const written[] = {"/train/tokens", "/val/tokens", "/vocab"};

static dv_status write_out(file_list *l, const dv_text_options *opt, const int32_t *codepoints,
                           int64_t v, writer *w, int64_t n, const char *out_file, char *err) {
    dv_import_out o;
    DV_TRY(dv_import_open(&o, out_file, written, 3, err));
    w->h = o.h;
    dv_status st = DV_ERR;
    int64_t dt[1] = {w->n_train}, dv[1] = {n - w->n_train};
    if (dv_h5_create_dataset(w->h, written[0], DV_H5_I32, 1, dt, TOKEN_CHUNK, err) != DV_OK ||
        (dv[0] &&
         dv_h5_create_dataset(w->h, written[1], DV_H5_I32, 1, dv, TOKEN_CHUNK, err) != DV_OK))
        goto done;
    for (size_t i = 0; i < l->n; i++) {
        text_file *f = &l->f[i];
        if (f->skipped) continue;
        int64_t before = w->pos;
        char why[160];
        int rc =
            scan_file(f->path, opt->vocab == DV_VOCAB_CHARS, write_token, w, why, sizeof(why), err);
        if (rc < 0) goto done;
        if (w->failed) {
            DV_ERROR(err, "%s: writing tokens failed (disk full?)", out_file);
            goto done;
        }
        if (rc > 0 || w->pos - before != f->tokens) {
            DV_ERROR(err, "%s: changed while it was being imported; run the import again", f->path);
            goto done;
        }
    }
    if (flush(w) != 0) {
        DV_ERROR(err, "%s: writing tokens failed (disk full?)", out_file);
        goto done;
    }
    dv_vocab vocab = {opt->vocab, v, (int32_t *)codepoints};
    st = dv_vocab_write_to(w->h, &vocab, err);
done:
    st = dv_import_close(&o, st, err);
    w->h = NULL;
    return st;
}

/* ---- the import ------------------------------------------------------- */

/* Builds the vocabulary from the bitmap: codepoints (V) sorted and, for
 * chars, the map code point -> id. */
static int64_t build_vocab(const dv_text_options *opt, const uint8_t *present, int32_t *codepoints,
                           int32_t *id_map) {
    int64_t v = 0;
    for (int32_t c = 0; c < (opt->vocab == DV_VOCAB_CHARS ? MAX_CODE : 256); c++) {
        if (opt->vocab == DV_VOCAB_BYTES || (present[c >> 3] >> (c & 7) & 1)) {
            if (id_map) id_map[c] = (int32_t)v;
            codepoints[v++] = c;
        }
    }
    return v;
}

static dv_status import_text(file_list *l, const dv_text_options *opt, const char *out_file,
                             dv_text_report *rep, char *err) {
    dv_status st = DV_ERR;
    counter k = {0, calloc(2, MAX_CODE / 8)}; /* the bitmap, then one file's */
    int32_t *codepoints = malloc(sizeof(int32_t) * MAX_CODE);
    int chars = opt->vocab == DV_VOCAB_CHARS;
    int32_t *id_map = chars ? malloc(sizeof(int32_t) * MAX_CODE) : NULL;
    writer *w = calloc(1, sizeof(*w));
    if (!k.present || !codepoints || (chars && !id_map) || !w) {
        DV_ERROR(err, "%s: out of memory", out_file);
        goto done;
    }
    if (count_files(l, opt, &k, err) != DV_OK) goto done;
    for (size_t i = 0; i < l->n; i++)
        rep->files_skipped += l->f[i].skipped;
    rep->files_read = (int64_t)l->n - rep->files_skipped;
    if (k.n == 0) {
        DV_ERROR(err, "no text to import: %lld file%s read, %lld skipped (binary%s)",
                 (long long)rep->files_read, rep->files_read == 1 ? "" : "s",
                 (long long)rep->files_skipped, chars ? " or not UTF-8" : "");
        goto done;
    }
    int64_t n_val = (int64_t)llround(opt->val_fraction * (double)k.n);
    if (k.n - n_val < 2 || (opt->val_fraction > 0 && n_val < 2)) {
        DV_ERROR(err,
                 "%lld tokens of text are too few for --val %g: /train and /val need 2 tokens "
                 "each (one window)",
                 (long long)k.n, opt->val_fraction);
        goto done;
    }
    rep->n_train = k.n - n_val;
    rep->n_val = n_val;
    rep->vocab_size = build_vocab(opt, k.present, codepoints, id_map);
    w->n_train = rep->n_train;
    w->id_map = id_map;
    st = write_out(l, opt, codepoints, rep->vocab_size, w, k.n, out_file, err);
done:
    free(k.present);
    free(codepoints);
    free(id_map);
    free(w);
    return st;
}

dv_status dv_import_text(const char *const *inputs, int n_inputs, const dv_text_options *opt,
                         const char *out_file, dv_text_report *report, char *err) {
    dv_text_report rep = {0};
    if (report) *report = rep;
    if (n_inputs < 1) {
        DV_ERROR(err, "no input files or directories");
        return DV_ERR;
    }
    if (!(opt->val_fraction >= 0 && opt->val_fraction < 1)) {
        DV_ERROR(err, "validation fraction %g is outside [0, 1)", opt->val_fraction);
        return DV_ERR;
    }
    file_list l = {0};
    dv_status st = collect(&l, inputs, n_inputs, err);
    if (st == DV_OK) st = import_text(&l, opt, out_file, &rep, err);
    list_free(&l);
    if (report) *report = rep;
    return st;
}
