/* import.c — turns IDX (MNIST / Fashion-MNIST) and numeric CSV files into
 * Dive's HDF5 layout: /<split>/x and /<split>/y, chunked and gzip-compressed
 * so h5py and every HDF5 tool read them.
 *
 * Both inputs are validated before the output file is touched where that is
 * possible (IDX headers, the whole CSV), and a split that fails half-way is
 * removed again, so a bad input never leaves a split that looks complete.
 * IDX is streamed in blocks, so its size is bounded only by the disk; a CSV
 * is parsed into memory first (CSV data sets are small).
 */
#include "data-impl.h"
#include "h5.h"
#include "import.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define IDX_IMAGES_MAGIC 0x00000803u
#define IDX_LABELS_MAGIC 0x00000801u
#define IDX_CHUNK_ROWS   64
#define IDX_BLOCK_ROWS   8192
/* CSV chunks hold about this many elements (1 MiB of float32). */
#define CSV_CHUNK_ELEMS (1 << 18)

/* ---- HDF5 output -------------------------------------------------------- */

/* "train", "/train/" -> "/train" in buf; 0 if nothing is left. */
static int norm_split(const char *split, char *buf, size_t len) {
    while (*split == '/')
        split++;
    int n = snprintf(buf, len, "/%s", split);
    if (n <= 1 || (size_t)n >= len) return 0;
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    return n > 1;
}

dv_h5 *dv_import_open(const char *out_file, const char *const *replace, int nreplace, char *err) {
    dv_h5 *h = NULL;
    if (dv_h5_open(&h, out_file, DV_H5_WRITE, err) != DV_OK) return NULL;
    for (int i = 0; i < nreplace; i++) {
        if (dv_h5_delete(h, replace[i], err) != DV_OK) {
            DV_ERROR(err, "%s: cannot replace the existing %s", out_file, replace[i]);
            dv_h5_close(h, NULL);
            return NULL;
        }
    }
    return h;
}

dv_status dv_import_close(dv_h5 *h, const char *const *written, int nwritten, dv_status st,
                          char *err) {
    for (int i = 0; st != DV_OK && i < nwritten; i++)
        dv_h5_delete(h, written[i], NULL);
    if (dv_h5_close(h, st == DV_OK ? err : NULL) != DV_OK) st = DV_ERR;
    return st;
}

/* ---- IDX ---------------------------------------------------------------- */

/* gzread reads plain files too, so one path serves .gz and raw IDX. */
static int read_full(gzFile gz, void *buf, size_t len) {
    unsigned char *p = buf;
    while (len > 0) {
        unsigned part = len > (1u << 30) ? (1u << 30) : (unsigned)len;
        int got = gzread(gz, p, part);
        if (got <= 0) return -1;
        p += got;
        len -= (size_t)got;
    }
    return 0;
}

static uint32_t be32(const unsigned char *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Opens an IDX file and reads its header; dims receives ndims sizes. */
static gzFile idx_open(const char *path, uint32_t magic, int ndims, uint32_t *dims, char *err) {
    errno = 0;
    gzFile gz = gzopen(path, "rb");
    if (!gz) {
        DV_ERROR(err, "%s: cannot open: %s", path, errno ? strerror(errno) : "out of memory");
        return NULL;
    }
    unsigned char h[16];
    if (read_full(gz, h, 4) != 0) {
        DV_ERROR(err, "%s: too short for an IDX file", path);
        gzclose(gz);
        return NULL;
    }
    uint32_t m = be32(h);
    if (m != magic) {
        DV_ERROR(err, "%s: bad IDX magic 0x%08x; expected 0x%08x (%s)", path, m, magic,
                 magic == IDX_IMAGES_MAGIC ? "uint8 images of rank 3" : "uint8 labels of rank 1");
        gzclose(gz);
        return NULL;
    }
    if (read_full(gz, h, 4 * (size_t)ndims) != 0) {
        DV_ERROR(err, "%s: truncated IDX header", path);
        gzclose(gz);
        return NULL;
    }
    for (int i = 0; i < ndims; i++)
        dims[i] = be32(h + 4 * i);
    return gz;
}

static dv_status idx_write(dv_h5 *h, const char *group, gzFile gi, gzFile gl, const uint32_t *id,
                           const char *images, const char *labels, const char *out_file,
                           char *err) {
    char xpath[300], ypath[300];
    snprintf(xpath, sizeof(xpath), "%s/x", group);
    snprintf(ypath, sizeof(ypath), "%s/y", group);
    int64_t xd[3] = {id[0], id[1], id[2]}, yd[1] = {id[0]};
    size_t row = (size_t)id[1] * id[2];
    unsigned char *xb = malloc(row * IDX_BLOCK_ROWS), *yb = malloc(IDX_BLOCK_ROWS);
    dv_status st = DV_ERR;
    if (dv_h5_create_dataset(h, xpath, DV_H5_U8, 3, xd, IDX_CHUNK_ROWS, err) != DV_OK ||
        dv_h5_create_dataset(h, ypath, DV_H5_U8, 1, yd, IDX_CHUNK_ROWS * 16, err) != DV_OK)
        goto done;
    if (!xb || !yb) {
        DV_ERROR(err, "%s: out of memory", out_file);
        goto done;
    }
    for (int64_t at = 0; at < id[0]; at += IDX_BLOCK_ROWS) {
        int64_t c = id[0] - at < IDX_BLOCK_ROWS ? id[0] - at : IDX_BLOCK_ROWS;
        if (read_full(gi, xb, row * (size_t)c) != 0) {
            DV_ERROR(err, "%s: truncated: ends before image %llu of %u", images,
                     (unsigned long long)at, id[0]);
            goto done;
        }
        if (read_full(gl, yb, (size_t)c) != 0) {
            DV_ERROR(err, "%s: truncated: ends before label %llu of %u", labels,
                     (unsigned long long)at, id[0]);
            goto done;
        }
        char why[DV_ERR_LEN];
        if (dv_h5_write_rows(h, xpath, DV_H5_U8, at, c, xb, why) != DV_OK ||
            dv_h5_write_rows(h, ypath, DV_H5_U8, at, c, yb, why) != DV_OK) {
            DV_ERROR(err, "%s: writing %s failed (disk full?)", out_file, group);
            goto done;
        }
    }
    st = DV_OK;
done:
    free(xb);
    free(yb);
    return st;
}

static dv_status import_idx_group(const char *images, const char *labels, const char *out_file,
                                  const char *group, char *err) {
    uint32_t id[3], ld[1];
    gzFile gi = idx_open(images, IDX_IMAGES_MAGIC, 3, id, err);
    if (!gi) return DV_ERR;
    gzFile gl = idx_open(labels, IDX_LABELS_MAGIC, 1, ld, err);
    if (!gl) {
        gzclose(gi);
        return DV_ERR;
    }
    dv_status st = DV_ERR;
    if (id[0] != ld[0]) {
        DV_ERROR(err, "%s has %u images but %s has %u labels", images, id[0], labels, ld[0]);
    } else if (id[0] == 0 || id[1] == 0 || id[2] == 0) {
        DV_ERROR(err, "%s: no images (dimensions %u x %u x %u)", images, id[0], id[1], id[2]);
    } else {
        dv_h5 *h = dv_import_open(out_file, &group, 1, err);
        if (h) {
            st = idx_write(h, group, gi, gl, id, images, labels, out_file, err);
            st = dv_import_close(h, &group, 1, st, err);
        }
    }
    gzclose(gi);
    gzclose(gl);
    return st;
}

dv_status dv_import_idx(const char *images, const char *labels, const char *out_file,
                        const char *split, char *err) {
    char group[256];
    if (!norm_split(split, group, sizeof(group))) {
        DV_ERROR(err, "%s: invalid split name \"%s\"", out_file, split);
        return DV_ERR;
    }
    return import_idx_group(images, labels, out_file, group, err);
}

/* ---- CSV ---------------------------------------------------------------- */

typedef struct csv_data {
    float *x;   /* (n, f) */
    int32_t *y; /* (n) */
    size_t n, cap, f;
} csv_data;

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        *--e = '\0';
    return s;
}

static int blank(const char *s) {
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return 0;
    return 1;
}

static size_t count_fields(const char *s) {
    size_t n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* Parses one data line into row `d->n`; `first` fixes the width. */
static dv_status csv_row(csv_data *d, char *line, const char *csv, long lineno, int label_col,
                         long *width_line, char *err) {
    size_t nf = count_fields(line);
    if (d->f == 0) {
        if (nf < 2) {
            DV_ERROR(err, "%s:%ld: %zu field; a row needs a label and at least one feature", csv,
                     lineno, nf);
            return DV_ERR;
        }
        int lc = label_col < 0 ? (int)nf + label_col : label_col;
        if (lc < 0 || (size_t)lc >= nf) {
            DV_ERROR(err, "%s:%ld: label column %d does not exist in a row of %zu fields", csv,
                     lineno, label_col, nf);
            return DV_ERR;
        }
        d->f = nf - 1;
        *width_line = lineno;
    } else if (nf != d->f + 1) {
        DV_ERROR(err, "%s:%ld: %zu fields, expected %zu (as on line %ld)", csv, lineno, nf,
                 d->f + 1, *width_line);
        return DV_ERR;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 1024;
        float *x = realloc(d->x, sizeof(float) * cap * d->f);
        if (x) d->x = x;
        int32_t *y = realloc(d->y, sizeof(int32_t) * cap);
        if (y) d->y = y;
        if (!x || !y) {
            DV_ERROR(err, "%s:%ld: out of memory", csv, lineno);
            return DV_ERR;
        }
        d->cap = cap;
    }
    int lc = label_col < 0 ? (int)nf + label_col : label_col;
    float *xr = d->x + d->n * d->f;
    char *p = line;
    for (int col = 0; col < (int)nf; col++) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        char *field = trim(p);
        char *end;
        errno = 0;
        double v = strtod(field, &end);
        if (*field == '\0' || *end != '\0') {
            DV_ERROR(err, "%s:%ld: field %d (\"%.40s\") is not a number", csv, lineno, col + 1,
                     field);
            return DV_ERR;
        }
        if (col == lc) {
            if (v != floor(v) || v < INT32_MIN || v > INT32_MAX) {
                DV_ERROR(err, "%s:%ld: label \"%.40s\" (field %d) is not an integer", csv, lineno,
                         field, col + 1);
                return DV_ERR;
            }
            d->y[d->n] = (int32_t)v;
        } else {
            *xr++ = (float)v;
        }
        p = comma ? comma + 1 : p + strlen(p);
    }
    d->n++;
    return DV_OK;
}

static dv_status csv_parse(const char *csv, int label_col, int header, csv_data *d, char *err) {
    FILE *f = fopen(csv, "r");
    if (!f) {
        DV_ERROR(err, "%s: cannot open: %s", csv, strerror(errno));
        return DV_ERR;
    }
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0, width_line = 0;
    dv_status st = DV_OK;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        if ((header && lineno == 1) || blank(line)) continue;
        st = csv_row(d, line, csv, lineno, label_col, &width_line, err);
        if (st != DV_OK) break;
    }
    if (st == DV_OK && ferror(f)) {
        DV_ERROR(err, "%s: read error: %s", csv, strerror(errno));
        st = DV_ERR;
    }
    if (st == DV_OK && d->n == 0) {
        DV_ERROR(err, "%s: no data rows", csv);
        st = DV_ERR;
    }
    free(line);
    fclose(f);
    return st;
}

static dv_status csv_write(const csv_data *d, const char *out_file, const char *group, char *err) {
    dv_h5 *h = dv_import_open(out_file, &group, 1, err);
    if (!h) return DV_ERR;
    char xpath[300], ypath[300], why[DV_ERR_LEN];
    snprintf(xpath, sizeof(xpath), "%s/x", group);
    snprintf(ypath, sizeof(ypath), "%s/y", group);
    int64_t xd[2] = {(int64_t)d->n, (int64_t)d->f}, yd[1] = {(int64_t)d->n};
    int64_t rows = CSV_CHUNK_ELEMS / d->f ? (int64_t)(CSV_CHUNK_ELEMS / d->f) : 1;
    dv_status st = DV_OK;
    if (dv_h5_create_dataset(h, xpath, DV_H5_F32, 2, xd, rows, why) != DV_OK ||
        dv_h5_create_dataset(h, ypath, DV_H5_I32, 1, yd, CSV_CHUNK_ELEMS, why) != DV_OK ||
        dv_h5_write_rows(h, xpath, DV_H5_F32, 0, (int64_t)d->n, d->x, why) != DV_OK ||
        dv_h5_write_rows(h, ypath, DV_H5_I32, 0, (int64_t)d->n, d->y, why) != DV_OK) {
        DV_ERROR(err, "%s: writing %s failed (disk full?)", out_file, group);
        st = DV_ERR;
    }
    return dv_import_close(h, &group, 1, st, err);
}

dv_status dv_import_csv(const char *csv, int label_col, int header, const char *out_file,
                        const char *split, char *err) {
    char group[256];
    if (!norm_split(split, group, sizeof(group))) {
        DV_ERROR(err, "%s: invalid split name \"%s\"", out_file, split);
        return DV_ERR;
    }
    csv_data d = {0};
    dv_status st = csv_parse(csv, label_col, header, &d, err);
    if (st == DV_OK) st = csv_write(&d, out_file, group, err);
    free(d.x);
    free(d.y);
    return st;
}
