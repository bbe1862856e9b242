/* import.c — turns IDX (MNIST / Fashion-MNIST) and numeric CSV files into
 * Dive's HDF5 layout: /<split>/x and /<split>/y, chunked and gzip-compressed
 * so h5py and every HDF5 tool read them.
 *
 * Inputs are validated before anything is written: an IDX file's size must
 * be what its header promises (read through once, so no header is trusted
 * with an allocation), and a CSV is parsed whole. Every importer writes
 * into a copy of the output file beside it and renames the copy over the
 * file only once the import succeeded (dv_import_open / dv_import_close),
 * so a failed import, or a crash in the middle of one, leaves the file as
 * it was. IDX is streamed in blocks, so its size is bounded only by the
 * disk; a CSV is parsed into memory first (CSV data sets are small).
 */
#include "data-impl.h"
#include "h5.h"
#include "import.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define IDX_IMAGES_MAGIC 0x00000803u
#define IDX_LABELS_MAGIC 0x00000801u
#define IDX_CHUNK_ROWS   64
#define IDX_BLOCK_ROWS   8192
#define IDX_BLOCK_BYTES  (64u << 20) /* a block holds at most this, or one image */
#define IDX_MAX_PIXELS   (1u << 26)  /* 8192 x 8192 */
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

/* Copies the file src to a new file dst (created with O_EXCL|O_NOFOLLOW,
 * mode 0644 less the umask) and syncs it. */
static dv_status copy_file(const char *src, const char *dst, char *err) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return DV_ERROR(err, "%s: cannot open: %s", src, strerror(errno));
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (out < 0) {
        int e = errno;
        close(in);
        return DV_ERROR(err, "%s: cannot create: %s", dst, strerror(e));
    }
    char buf[1 << 16];
    dv_status st = DV_OK;
    for (;;) {
        ssize_t got = read(in, buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            st = DV_ERROR(err, "%s: read error: %s", src, strerror(errno));
            break;
        }
        if (got == 0) break;
        for (ssize_t done = 0; done < got;) {
            ssize_t put = write(out, buf + done, (size_t)(got - done));
            if (put < 0 && errno == EINTR) continue;
            if (put < 0) {
                st = DV_ERROR(err, "%s: cannot write: %s", dst, strerror(errno));
                break;
            }
            done += put;
        }
        if (st) break;
    }
    if (!st && fsync(out)) st = DV_ERROR(err, "%s: cannot sync: %s", dst, strerror(errno));
    close(in);
    if (close(out) && !st) st = DV_ERROR(err, "%s: cannot write: %s", dst, strerror(errno));
    return st;
}

/* fsync of a file or directory by path; 0 on success. */
static int sync_path(const char *path, int dir) {
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

dv_status dv_import_open(dv_import_out *o, const char *out_file, const char *const *replace,
                         int nreplace, char *err) {
    memset(o, 0, sizeof(*o));
    struct stat sb;
    int exists = stat(out_file, &sb) == 0;
    if (exists && !S_ISREG(sb.st_mode)) return DV_ERROR(err, "%s: not a regular file", out_file);
    if (exists) {
        if (!realpath(out_file, o->path))
            return DV_ERROR(err, "%s: cannot resolve: %s", out_file, strerror(errno));
    } else if (strlen(out_file) >= sizeof(o->path)) {
        return DV_ERROR(err, "%.100s...: path too long", out_file);
    } else {
        snprintf(o->path, sizeof(o->path), "%s", out_file);
    }
    if (exists) { /* an output that is not HDF5 is named as itself, and left alone */
        dv_h5 *check = NULL;
        DV_TRY(dv_h5_open(&check, o->path, DV_H5_READ, err));
        DV_TRY(dv_h5_close(check, err));
    }
    snprintf(o->tmp, sizeof(o->tmp), "%s.tmp.%ld", o->path, (long)getpid());
    unlink(o->tmp); /* left by a killed import of a process with this pid */
    dv_status st = exists ? copy_file(o->path, o->tmp, err) : DV_OK;
    if (!st)
        st =
            exists ? dv_h5_open(&o->h, o->tmp, DV_H5_WRITE, err) : dv_h5_create(&o->h, o->tmp, err);
    for (int i = 0; !st && i < nreplace; i++)
        if (dv_h5_delete(o->h, replace[i], err) != DV_OK)
            st = DV_ERROR(err, "%s: cannot replace the existing %s", out_file, replace[i]);
    if (st) {
        dv_h5_close(o->h, NULL);
        o->h = NULL;
        unlink(o->tmp);
        o->tmp[0] = 0;
    }
    return st;
}

dv_status dv_import_close(dv_import_out *o, dv_status st, char *err) {
    if (dv_h5_close(o->h, st == DV_OK ? err : NULL) != DV_OK) st = DV_ERR;
    o->h = NULL;
    if (!o->tmp[0]) return DV_ERR;
    if (st == DV_OK && sync_path(o->tmp, 0))
        st = DV_ERROR(err, "%s: cannot sync: %s", o->tmp, strerror(errno));
    if (st == DV_OK && rename(o->tmp, o->path))
        st = DV_ERROR(err, "%s: cannot replace it with %s: %s", o->path, o->tmp, strerror(errno));
    if (st != DV_OK) {
        unlink(o->tmp);
    } else {
        /* the rename itself reaches the disk with the directory */
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s", o->path);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            slash[1] = 0;
        else if (slash)
            *slash = 0;
        else
            snprintf(dir, sizeof(dir), ".");
        sync_path(dir, 1);
    }
    o->tmp[0] = 0;
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

/* The bytes of a file after gzip decompression (a plain file as it is):
 * read through once, so the check below trusts no header; -1 on a read
 * error. */
static int64_t content_bytes(const char *path) {
    gzFile gz = gzopen(path, "rb");
    if (!gz) return -1;
    char buf[1 << 16];
    int64_t n = 0;
    int got;
    while ((got = gzread(gz, buf, sizeof buf)) > 0)
        n += got;
    int bad = got < 0;
    gzclose(gz);
    return bad ? -1 : n;
}

/* Whether an IDX file holds exactly what its header (of `header` bytes)
 * promises: `count` items of `item` bytes. */
static dv_status idx_check_size(const char *path, int header, uint64_t count, uint64_t item,
                                const char *what, char *err) {
    int64_t have = content_bytes(path);
    if (have < 0) return DV_ERROR(err, "%s: read error (a damaged gzip file?)", path);
    const uint64_t body = (uint64_t)(have - header); /* have >= header: the header was read */
    if (body == count * item) return DV_OK;
    if (body < count * item)
        return DV_ERROR(err,
                        "%s: truncated: its header promises %llu %s of %llu bytes but it holds "
                        "%llu whole %s (%llu bytes after the header)",
                        path, (unsigned long long)count, what, (unsigned long long)item,
                        (unsigned long long)(body / item), what, (unsigned long long)body);
    return DV_ERROR(err,
                    "%s: %llu bytes after its header, more than the %llu %s of %llu bytes it "
                    "promises: not an IDX file of this header",
                    path, (unsigned long long)body, (unsigned long long)count, what,
                    (unsigned long long)item);
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
    int64_t block = IDX_BLOCK_BYTES / row;
    if (block > IDX_BLOCK_ROWS) block = IDX_BLOCK_ROWS;
    if (block < 1) block = 1;
    unsigned char *xb = malloc(row * (size_t)block), *yb = malloc((size_t)block);
    dv_status st = DV_ERR;
    if (dv_h5_create_dataset(h, xpath, DV_H5_U8, 3, xd, IDX_CHUNK_ROWS, err) != DV_OK ||
        dv_h5_create_dataset(h, ypath, DV_H5_U8, 1, yd, IDX_CHUNK_ROWS * 16, err) != DV_OK)
        goto done;
    if (!xb || !yb) {
        DV_ERROR(err, "%s: out of memory", out_file);
        goto done;
    }
    for (int64_t at = 0; at < id[0]; at += block) {
        int64_t c = id[0] - at < block ? id[0] - at : block;
        /* the sizes were checked: a short read here means the file changed */
        if (read_full(gi, xb, row * (size_t)c) != 0) {
            DV_ERROR(err, "%s: ends inside images %llu..%llu of %u (changed while importing?)",
                     images, (unsigned long long)at + 1, (unsigned long long)(at + c), id[0]);
            goto done;
        }
        if (read_full(gl, yb, (size_t)c) != 0) {
            DV_ERROR(err, "%s: ends inside labels %llu..%llu of %u (changed while importing?)",
                     labels, (unsigned long long)at + 1, (unsigned long long)(at + c), id[0]);
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
    const uint64_t row = (uint64_t)id[1] * id[2];
    if (id[0] != ld[0]) {
        DV_ERROR(err, "%s has %u images but %s has %u labels", images, id[0], labels, ld[0]);
    } else if (id[0] == 0 || id[1] == 0 || id[2] == 0) {
        DV_ERROR(err, "%s: no images (dimensions %u x %u x %u)", images, id[0], id[1], id[2]);
    } else if (row > IDX_MAX_PIXELS) {
        DV_ERROR(err, "%s: images of %u x %u pixels; at most %u pixels an image", images, id[1],
                 id[2], IDX_MAX_PIXELS);
    } else if (idx_check_size(images, 16, id[0], row, "images", err) == DV_OK &&
               idx_check_size(labels, 8, ld[0], 1, "labels", err) == DV_OK) {
        dv_import_out o;
        if (dv_import_open(&o, out_file, &group, 1, err) == DV_OK) {
            st = idx_write(o.h, group, gi, gl, id, images, labels, out_file, err);
            st = dv_import_close(&o, st, err);
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
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (memchr(line, 0, (size_t)len)) {
            DV_ERROR(err, "%s:%ld: a NUL byte: not a text CSV file", csv, lineno);
            st = DV_ERR;
            break;
        }
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
    dv_import_out o;
    DV_TRY(dv_import_open(&o, out_file, &group, 1, err));
    dv_h5 *h = o.h;
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
    return dv_import_close(&o, st, err);
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
