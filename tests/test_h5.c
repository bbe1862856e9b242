/* test_h5.c — unit tests of data/h5.h, Dive's one door to HDF5: floats,
 * attributes, strings, chunked slabs and the walk over a file round-trip;
 * a checked file (a checkpoint's) carries checksums that catch a flipped
 * byte, and is never created over a file or through a link;
 * a missing dataset is a dv_status error whose message names the file and
 * the path; and no helper, failing or not, leaves HDF5's automatic error
 * handler changed (it is silenced only for the helper's own call). Every
 * test writes its files into a fresh temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "h5.h"

static char tmp_dir[256];

/* A path in the test directory; valid until 8 more calls. */
static const char *tpath(const char *name) {
    static char buf[8][512];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 512, "%s/%s", tmp_dir, name);
    return p;
}

static void assert_has(const char *msg, const char *part) {
    if (!strstr(msg, part)) fail_msg("message \"%s\" lacks \"%s\"", msg, part);
}

#define CHECK(call)                                                                                \
    do {                                                                                           \
        if ((call) != DV_OK) fail_msg("%s: %s", #call, err);                                       \
    } while (0)

/* ---- round trips ---------------------------------------------------------- */

typedef struct listing {
    int n;
    char paths[16][64];
    char types[16][16];
    int chunk_ndim[16];
    char filters[16][128];
} listing;

static int list_one(void *ctx, const dv_h5_dataset *d) {
    listing *l = ctx;
    if (l->n < 16) {
        snprintf(l->paths[l->n], sizeof(l->paths[0]), "%s", d->path);
        snprintf(l->types[l->n], sizeof(l->types[0]), "%s", d->type);
        snprintf(l->filters[l->n], sizeof(l->filters[0]), "%s", d->filters);
        l->chunk_ndim[l->n] = d->chunk_ndim;
        l->n++;
    }
    return 0;
}

static void test_h5_roundtrip(void **state) {
    (void)state;
    char err[DV_ERR_LEN];
    const char *file = tpath("round.h5");
    dv_h5 *h = NULL;
    CHECK(dv_h5_create(&h, file, err));
    assert_string_equal(dv_h5_path(h), file);

    /* floats, with the groups above them made on the way */
    float w[6] = {1.5f, -2, 3, 4.25f, 5, -6};
    int64_t wd[2] = {2, 3};
    CHECK(dv_h5_write_floats(h, "/model/dense/w", 2, wd, w, err));
    assert_true(dv_h5_exists(h, "/model"));
    assert_true(dv_h5_exists(h, "/model/dense/w"));
    assert_false(dv_h5_exists(h, "/model/nope"));
    assert_false(dv_h5_exists(h, "/nope/deeper/still"));

    /* groups: new, nested, existing */
    CHECK(dv_h5_group(h, "/train", err));
    CHECK(dv_h5_group(h, "/a/b/c", err));
    CHECK(dv_h5_group(h, "/a/b", err));
    assert_true(dv_h5_exists(h, "/a/b/c"));
    assert_int_equal(dv_h5_group(h, "/model/dense/w", err), DV_ERR);

    /* attributes on a group and on a dataset */
    double sums[3] = {0.25, 1e300, -7};
    CHECK(dv_h5_attr_set_int(h, "/train", "step", 1234567890123LL, err));
    CHECK(dv_h5_attr_set_double(h, "/train", "loss", 0.125, err));
    CHECK(dv_h5_attr_set_doubles(h, "/train", "sums", sums, 3, err));
    CHECK(dv_h5_attr_set_string(h, "/model/dense/w", "kind", "chars", err));
    CHECK(dv_h5_attr_set_int(h, "/train", "step", 42, err)); /* replaced */

    /* a string dataset */
    const char *cfg = "[train]\nepochs = 3\n";
    CHECK(dv_h5_write_string(h, "/config", cfg, err));

    /* a chunked, compressed dataset written in slabs, and a contiguous one */
    int64_t td[1] = {10};
    CHECK(dv_h5_create_dataset(h, "/tok/ids", DV_H5_I32, 1, td, 4, err));
    int32_t a[6] = {0, 1, 2, 3, 4, 5}, b[4] = {6, 7, 8, 9};
    CHECK(dv_h5_write_rows(h, "/tok/ids", DV_H5_I32, 0, 6, a, err));
    CHECK(dv_h5_write_rows(h, "/tok/ids", DV_H5_I32, 6, 4, b, err));
    int64_t pd[2] = {3, 2};
    CHECK(dv_h5_create_dataset(h, "/pix", DV_H5_U8, 2, pd, 0, err));
    uint8_t px[6] = {10, 20, 30, 40, 50, 250};
    CHECK(dv_h5_write_rows(h, "/pix", DV_H5_U8, 0, 3, px, err));

    /* a removed dataset is gone; removing a missing one is no error */
    int64_t six[1] = {6};
    CHECK(dv_h5_write_floats(h, "/tmp", 1, six, w, err));
    CHECK(dv_h5_delete(h, "/tmp", err));
    assert_false(dv_h5_exists(h, "/tmp"));
    CHECK(dv_h5_delete(h, "/tmp", err));
    CHECK(dv_h5_flush(h, err));
    CHECK(dv_h5_close(h, err));

    /* read it all back from a fresh open */
    CHECK(dv_h5_open(&h, file, DV_H5_READ, err));
    int nd = 0;
    int64_t dims[DV_H5_MAX_DIMS] = {0};
    CHECK(dv_h5_shape(h, "/model/dense/w", &nd, dims, DV_H5_MAX_DIMS, err));
    assert_int_equal(nd, 2);
    assert_int_equal(dims[0], 2);
    assert_int_equal(dims[1], 3);
    float r[6] = {0};
    CHECK(dv_h5_read_floats(h, "/model/dense/w", r, 6, err));
    assert_memory_equal(r, w, sizeof(w));
    assert_int_equal(dv_h5_read_floats(h, "/model/dense/w", r, 5, err), DV_ERR);
    assert_has(err, "/model/dense/w");

    int64_t step = 0;
    double loss = 0, got[4] = {0};
    size_t n = 0;
    char kind[16] = "";
    assert_true(dv_h5_attr_exists(h, "/train", "step"));
    assert_false(dv_h5_attr_exists(h, "/train", "nope"));
    assert_false(dv_h5_attr_exists(h, "/nope", "step"));
    CHECK(dv_h5_attr_get_int(h, "/train", "step", &step, err));
    assert_int_equal(step, 42);
    CHECK(dv_h5_attr_get_double(h, "/train", "loss", &loss, err));
    assert_true(loss == 0.125);
    CHECK(dv_h5_attr_get_doubles(h, "/train", "sums", got, 4, &n, err));
    assert_int_equal(n, 3);
    assert_memory_equal(got, sums, sizeof(sums));
    assert_int_equal(dv_h5_attr_get_doubles(h, "/train", "sums", got, 2, &n, err), DV_ERR);
    assert_int_equal(dv_h5_attr_get_int(h, "/train", "loss", &step, err), DV_ERR); /* a double */
    CHECK(dv_h5_attr_get_string(h, "/model/dense/w", "kind", kind, sizeof(kind), err));
    assert_string_equal(kind, "chars");

    char *text = NULL;
    CHECK(dv_h5_read_string(h, "/config", &text, err));
    assert_string_equal(text, cfg);
    free(text);

    float ids[10];
    CHECK(dv_h5_read_floats(h, "/tok/ids", ids, 10, err));
    for (int i = 0; i < 10; i++)
        assert_true(ids[i] == (float)i);
    float fpx[6];
    CHECK(dv_h5_read_floats(h, "/pix", fpx, 6, err));
    assert_true(fpx[5] == 250.0f);

    /* the walk: every dataset, in name order, with its type and layout */
    listing l;
    memset(&l, 0, sizeof(l));
    CHECK(dv_h5_visit(h, list_one, &l, err));
    assert_int_equal(l.n, 4);
    assert_string_equal(l.paths[0], "config");
    assert_string_equal(l.types[0], "string");
    assert_string_equal(l.paths[1], "model/dense/w");
    assert_string_equal(l.types[1], "float32");
    assert_int_equal(l.chunk_ndim[1], 0);
    assert_string_equal(l.paths[2], "pix");
    assert_string_equal(l.types[2], "uint8");
    assert_string_equal(l.paths[3], "tok/ids");
    assert_string_equal(l.types[3], "int32");
    assert_int_equal(l.chunk_ndim[3], 1);
    assert_string_equal(l.filters[3], "deflate");
    CHECK(dv_h5_close(h, err));

    /* DV_H5_WRITE keeps what is there, and creates a missing file */
    CHECK(dv_h5_open(&h, file, DV_H5_WRITE, err));
    assert_true(dv_h5_exists(h, "/config"));
    CHECK(dv_h5_close(h, err));
    CHECK(dv_h5_open(&h, tpath("new.h5"), DV_H5_WRITE, err));
    assert_false(dv_h5_exists(h, "/config"));
    CHECK(dv_h5_close(h, err));
    assert_int_equal(dv_h5_close(NULL, err), DV_OK);
}

/* ---- errors --------------------------------------------------------------- */

/* err.h5, holding only the group /grp, and junk.h5, which is not HDF5. */
static void make_fixtures(void) {
    char err[DV_ERR_LEN];
    dv_h5 *h = NULL;
    CHECK(dv_h5_create(&h, tpath("err.h5"), err));
    CHECK(dv_h5_group(h, "/grp", err));
    CHECK(dv_h5_close(h, err));
    FILE *junk = fopen(tpath("junk.h5"), "w");
    assert_non_null(junk);
    fputs("not hdf5 at all", junk);
    fclose(junk);
}

static void test_h5_errors(void **state) {
    (void)state;
    char err[DV_ERR_LEN];
    const char *file = tpath("err.h5");
    dv_h5 *h = NULL;
    make_fixtures();
    CHECK(dv_h5_open(&h, file, DV_H5_READ, err));

    /* a missing dataset: an error naming the file and the path */
    float f[4];
    err[0] = '\0';
    assert_int_equal(dv_h5_read_floats(h, "/missing/x", f, 4, err), DV_ERR);
    assert_has(err, file);
    assert_has(err, "/missing/x");
    assert_has(err, "not found");
    assert_has(err, "h5.c:"); /* made by dv_error_at */

    int nd;
    int64_t dims[4];
    assert_int_equal(dv_h5_shape(h, "/missing/x", &nd, dims, 4, err), DV_ERR);
    assert_has(err, "/missing/x");
    assert_int_equal(dv_h5_shape(h, "/grp", &nd, dims, 4, err), DV_ERR);
    assert_has(err, "/grp is a group, not a dataset");

    int64_t v;
    assert_int_equal(dv_h5_attr_get_int(h, "/grp", "step", &v, err), DV_ERR);
    assert_has(err, "no attribute 'step'");
    assert_int_equal(dv_h5_attr_get_int(h, "/nope", "step", &v, err), DV_ERR);
    assert_has(err, "/nope not found");
    char *text = NULL;
    assert_int_equal(dv_h5_read_string(h, "/nope", &text, err), DV_ERR);
    assert_null(text);

    /* writing to a read-only file fails with a message */
    int64_t one[1] = {1};
    assert_int_equal(dv_h5_write_floats(h, "/w", 1, one, f, err), DV_ERR);
    assert_has(err, "/w");
    CHECK(dv_h5_close(h, err));

    /* files that cannot be opened say why */
    assert_int_equal(dv_h5_open(&h, tpath("absent.h5"), DV_H5_READ, err), DV_ERR);
    assert_null(h);
    assert_has(err, "absent.h5: cannot open");
    assert_int_equal(dv_h5_open(&h, tpath("junk.h5"), DV_H5_READ, err), DV_ERR);
    assert_has(err, "junk.h5: not an HDF5 file");
    assert_int_equal(dv_h5_open(&h, tpath("junk.h5"), DV_H5_WRITE, err), DV_ERR);
    assert_has(err, "junk.h5: not an HDF5 file");
    assert_int_equal(dv_h5_create(&h, tpath("no/such/dir.h5"), err), DV_ERR);
    assert_has(err, "no/such/dir.h5");
}

/* ---- checked files: checksums on everything, verified on read ------------- */

typedef struct checked_listing {
    int n, with_checksum;
    char filters[8][128];
} checked_listing;

static int list_checked(void *ctx, const dv_h5_dataset *d) {
    checked_listing *l = ctx;
    if (l->n < 8) snprintf(l->filters[l->n], sizeof(l->filters[0]), "%s", d->filters);
    l->n++;
    l->with_checksum += d->checksum;
    return 0;
}

/* Flips `n` bytes of dataset `name`'s first chunk in place, behind HDF5. */
static void flip_bytes(const char *file, const char *name, int n) {
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t sp = H5Dget_space(d);
    hsize_t off[8], size = 0;
    haddr_t addr = 0;
    unsigned mask;
    assert_true(H5Dget_chunk_info(d, sp, 0, off, &mask, &addr, &size) >= 0);
    H5Sclose(sp);
    H5Dclose(d);
    H5Fclose(f);
    FILE *raw = fopen(file, "r+b");
    assert_non_null(raw);
    for (int i = 0; i < n; i++) {
        assert_int_equal(fseek(raw, (long)(addr + (hsize_t)i), SEEK_SET), 0);
        int b = fgetc(raw);
        assert_int_equal(fseek(raw, (long)(addr + (hsize_t)i), SEEK_SET), 0);
        fputc(b ^ 0xff, raw);
    }
    fclose(raw);
}

static void test_h5_checked(void **state) {
    (void)state;
    char err[DV_ERR_LEN];
    const char *file = tpath("checked.h5");
    dv_h5 *h = NULL;
    CHECK(dv_h5_create_checked(&h, file, err));
    float w[600];
    for (int i = 0; i < 600; i++)
        w[i] = (float)i / 7;
    int64_t wd[2] = {20, 30}, big[2] = {2200000, 1}; /* 8.8 MB: two chunks */
    CHECK(dv_h5_write_floats(h, "/model/w", 2, wd, w, err));
    CHECK(dv_h5_write_floats(h, "/scalar", 0, NULL, w, err));
    CHECK(dv_h5_write_string(h, "/config", "[train]\nlr = 0.1\n", err));
    CHECK(dv_h5_group(h, "/train", err));
    for (int i = 0; i < 20; i++) { /* more than HDF5 keeps compact by default */
        char name[16];
        snprintf(name, sizeof name, "a%d", i);
        CHECK(dv_h5_attr_set_int(h, "/train", name, i, err));
    }
    /* a dataset larger than one chunk: several chunks, each checksummed */
    float *b = calloc(2200000, sizeof(float));
    assert_non_null(b);
    CHECK(dv_h5_write_floats(h, "/big", 2, big, b, err));
    CHECK(dv_h5_close(h, err));

    /* every dataset verifies on read; Fletcher32 is listed */
    checked_listing l = {0};
    CHECK(dv_h5_open(&h, file, DV_H5_READ, err));
    CHECK(dv_h5_visit(h, list_checked, &l, err));
    assert_int_equal(l.n, 4);
    assert_int_equal(l.with_checksum, 4);
    assert_string_equal(l.filters[0], "fletcher32"); /* /big */
    assert_string_equal(l.filters[1], "");           /* /config: compact, in its header */
    float back[600];
    CHECK(dv_h5_read_floats(h, "/model/w", back, 600, err));
    assert_memory_equal(back, w, sizeof w);
    CHECK(dv_h5_read_floats(h, "/big", b, 2200000, err));
    int64_t v = 0;
    CHECK(dv_h5_attr_get_int(h, "/train", "a19", &v, err));
    assert_int_equal(v, 19);
    CHECK(dv_h5_close(h, err));
    free(b);

    /* a flipped byte in the data: the read fails, naming the dataset */
    flip_bytes(file, "/model/w", 3);
    CHECK(dv_h5_open(&h, file, DV_H5_READ, err));
    assert_int_equal(dv_h5_read_floats(h, "/model/w", back, 600, err), DV_ERR);
    assert_has(err, "checked.h5: /model/w is damaged: its data does not match its checksum");
    CHECK(dv_h5_close(h, err));

    /* it never creates over something, a link included */
    assert_int_equal(dv_h5_create_checked(&h, file, err), DV_ERR);
    assert_null(h);
    assert_has(err, "something (a file or a link) is there");
    assert_int_equal(symlink(tpath("target.h5"), tpath("link.h5")), 0);
    assert_int_equal(dv_h5_create_checked(&h, tpath("link.h5"), err), DV_ERR);
    assert_int_equal(access(tpath("target.h5"), F_OK), -1); /* not created through the link */
}

/* ---- the error handler is the caller's before and after ------------------- */

static int handler_calls;

static herr_t counting_handler(hid_t estack, void *data) {
    (void)estack;
    (*(int *)data)++;
    return 0;
}

static void assert_handler(H5E_auto2_t func, void *data) {
    H5E_auto2_t f = NULL;
    void *d = NULL;
    assert_true(H5Eget_auto2(H5E_DEFAULT, &f, &d) >= 0);
    assert_ptr_equal((void *)f, (void *)func);
    assert_ptr_equal(d, data);
}

/* Runs failing helpers under whatever handler is installed. */
static void fail_some(void) {
    char err[DV_ERR_LEN];
    dv_h5 *h = NULL;
    assert_int_equal(dv_h5_open(&h, tpath("junk.h5"), DV_H5_READ, err), DV_ERR);
    assert_int_equal(dv_h5_open(&h, tpath("absent.h5"), DV_H5_READ, err), DV_ERR);
    CHECK(dv_h5_open(&h, tpath("err.h5"), DV_H5_READ, err));
    float f[1];
    int64_t v;
    assert_int_equal(dv_h5_read_floats(h, "/missing/x", f, 1, err), DV_ERR);
    assert_int_equal(dv_h5_attr_get_int(h, "/grp", "nope", &v, err), DV_ERR);
    assert_false(dv_h5_exists(h, "/a/b/c"));
    int64_t one[1] = {1};
    assert_int_equal(dv_h5_write_floats(h, "/w", 1, one, f, err), DV_ERR);
    CHECK(dv_h5_close(h, err));
}

static void test_h5_error_handler_kept(void **state) {
    (void)state;
    /* HDF5's own default printer, as a program starts with it */
    H5E_auto2_t func0 = NULL;
    void *data0 = NULL;
    assert_true(H5Eget_auto2(H5E_DEFAULT, &func0, &data0) >= 0);
    make_fixtures();
    assert_handler(func0, data0);
    assert_non_null((void *)func0);
    fail_some();
    assert_handler(func0, data0);

    /* a handler of the caller's own: kept, and never called by a helper */
    handler_calls = 0;
    assert_true(H5Eset_auto2(H5E_DEFAULT, counting_handler, &handler_calls) >= 0);
    fail_some();
    assert_handler(counting_handler, &handler_calls);
    assert_int_equal(handler_calls, 0);

    /* printing switched off by the caller stays off */
    assert_true(H5Eset_auto2(H5E_DEFAULT, NULL, NULL) >= 0);
    fail_some();
    assert_handler(NULL, NULL);

    /* the lock is recursive: helpers run while the caller holds it */
    assert_true(H5Eset_auto2(H5E_DEFAULT, func0, data0) >= 0);
    dv_h5_lock();
    dv_h5_lock();
    fail_some();
    dv_h5_unlock();
    dv_h5_unlock();
    assert_handler(func0, data0);
}

/* ---- main ----------------------------------------------------------------- */

static int setup(void **state) {
    (void)state;
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/dv_test_h5_XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h5_roundtrip),
        cmocka_unit_test(test_h5_errors),
        cmocka_unit_test(test_h5_error_handler_kept),
        cmocka_unit_test(test_h5_checked),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
