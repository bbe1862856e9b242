/* test_data.c — unit tests of data/: splits (values, scaling, index order,
 * every validation error), the sampler's sharding contract, the loader in
 * memory and streaming mode with and without prefetch, the IDX, CSV and
 * text importers, and token streams (windows, vocabulary). Every test writes its own small HDF5 /
 * IDX / CSV files with the HDF5 C API and zlib into a fresh temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "data.h"
#include "data-impl.h"
#include "h5.h"
#include "import.h"
#include "tokens.h"

static char tmp_dir[256];

/* A path in the test directory; valid until 8 more calls. */
static const char *tpath(const char *name) {
    static char buf[8][512];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 512, "%s/%s", tmp_dir, name);
    return p;
}

/* ---- writing test files ------------------------------------------------- */

/* Writes dataset `path` (groups created as needed); chunk_rows 0 means
 * contiguous, otherwise chunked with gzip. */
static void write_ds(hid_t fid, const char *path, hid_t ftype, hid_t mtype, int rank,
                     const hsize_t *dims, const void *data, hsize_t chunk_rows) {
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunk_rows) {
        hsize_t chunk[8];
        for (int i = 0; i < rank; i++)
            chunk[i] = dims[i];
        chunk[0] = chunk_rows;
        H5Pset_chunk(dcpl, rank, chunk);
        H5Pset_deflate(dcpl, 4);
    }
    hid_t d = H5Dcreate2(fid, path, ftype, space, lcpl, dcpl, H5P_DEFAULT);
    assert_true(d >= 0);
    assert_true(H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Pclose(lcpl);
    H5Sclose(space);
}

static hid_t new_file(const char *name) {
    hid_t fid = H5Fcreate(tpath(name), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(fid >= 0);
    return fid;
}

/* x(i, e) for the synthetic data sets: distinct per sample and element. */
static uint8_t xval(int64_t i, size_t e) {
    return (uint8_t)((i * 7 + (int64_t)e * 3) % 251);
}

/* /train/x (n, 2, 3) uint8 chunked+gzip, /train/y (n) uint8 = i % 10. */
static void make_uint8_split(const char *name, int64_t n) {
    hid_t fid = new_file(name);
    uint8_t *x = malloc((size_t)n * 6), *y = malloc((size_t)n);
    for (int64_t i = 0; i < n; i++) {
        for (size_t e = 0; e < 6; e++)
            x[i * 6 + e] = xval(i, e);
        y[i] = (uint8_t)(i % 10);
    }
    hsize_t xd[3] = {(hsize_t)n, 2, 3}, yd[1] = {(hsize_t)n};
    write_ds(fid, "/train/x", H5T_STD_U8LE, H5T_NATIVE_UINT8, 3, xd, x, 7);
    write_ds(fid, "/train/y", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, yd, y, 16);
    H5Fclose(fid);
    free(x);
    free(y);
}

/* Runs `call` with stderr captured and checks nothing was printed: HDF5's
 * error stack must never reach the user. */
#define ASSERT_SILENT(call)                                                                        \
    do {                                                                                           \
        fflush(stderr);                                                                            \
        int saved = dup(2);                                                                        \
        int fd = open(tpath("stderr.txt"), O_CREAT | O_TRUNC | O_WRONLY, 0600);                    \
        dup2(fd, 2);                                                                               \
        close(fd);                                                                                 \
        call;                                                                                      \
        fflush(stderr);                                                                            \
        dup2(saved, 2);                                                                            \
        close(saved);                                                                              \
        struct stat st_;                                                                           \
        assert_int_equal(stat(tpath("stderr.txt"), &st_), 0);                                      \
        assert_int_equal(st_.st_size, 0);                                                          \
    } while (0)

static void assert_has(const char *msg, const char *part) {
    if (!strstr(msg, part)) fail_msg("message \"%s\" lacks \"%s\"", msg, part);
}

/* ---- splits ------------------------------------------------------------- */

static void test_split_uint8_gzip(void **state) {
    (void)state;
    make_uint8_split("u8.h5", 50);
    char err[DV_ERR_LEN];
    dv_split *s;
    assert_int_equal(dv_split_open(&s, tpath("u8.h5"), "/train/x", "/train/y", err), DV_OK);
    const dv_split_info *in = dv_split_info_get(s);
    assert_int_equal(in->n, 50);
    assert_int_equal(in->x_rank, 3);
    assert_int_equal(in->x_dims[0], 50);
    assert_int_equal(in->x_dims[1], 2);
    assert_int_equal(in->x_dims[2], 3);
    assert_int_equal(in->x_elems, 6);
    assert_int_equal(in->y_kind, DV_TARGET_LABELS);
    assert_int_equal(in->y_elems, 1);
    assert_int_equal(in->label_min, 0);
    assert_int_equal(in->label_max, 9);
    assert_int_equal(dv_split_check(s, 6, 10, err), DV_OK);

    /* Sorted, unsorted, repeated, and a run spanning several chunks. */
    int64_t orders[3][10] = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9},
                             {49, 3, 17, 3, 0, 48, 22, 22, 22, 5},
                             {10, 11, 12, 13, 14, 15, 16, 30, 31, 2}};
    float x[10 * 6];
    int32_t y[10];
    for (int o = 0; o < 3; o++) {
        float scale = o == 1 ? 1.0f : 1.0f / 255;
        assert_int_equal(dv_split_read(s, orders[o], 10, scale, x, y, NULL, err), DV_OK);
        for (int i = 0; i < 10; i++) {
            int64_t id = orders[o][i];
            assert_int_equal(y[i], id % 10);
            for (size_t e = 0; e < 6; e++)
                assert_float_equal(x[i * 6 + e], xval(id, e) * scale, 1e-6);
        }
    }
    /* A bigger chunk cache (what a streaming loader asks for) reads the
     * same values. */
    dv_split_set_cache(s, (size_t)64 << 20);
    assert_int_equal(dv_split_read(s, orders[1], 10, 1.0f, x, y, NULL, err), DV_OK);
    for (int i = 0; i < 10; i++)
        assert_float_equal(x[i * 6 + 5], xval(orders[1][i], 5), 0);
    /* x only, y only. */
    assert_int_equal(dv_split_read(s, orders[1], 10, 1.0f, x, NULL, NULL, err), DV_OK);
    assert_float_equal(x[0], xval(49, 0), 0);
    assert_int_equal(dv_split_read(s, orders[1], 10, 1.0f, NULL, y, NULL, err), DV_OK);
    assert_int_equal(y[0], 9);

    int64_t bad = 50;
    assert_int_equal(dv_split_read(s, &bad, 1, 1.0f, x, y, NULL, err), DV_ERR);
    assert_has(err, "50");
    dv_split_free(s);
    dv_split_free(NULL);
}

static void test_split_float64_int64(void **state) {
    (void)state;
    hid_t fid = new_file("f64.h5");
    enum { N = 20, F = 5 };
    double x[N * F];
    int64_t y[N];
    for (int i = 0; i < N; i++) {
        for (int e = 0; e < F; e++)
            x[i * F + e] = i * 0.5 - e * 0.25;
        y[i] = (i * 3) % 4;
    }
    hsize_t xd[2] = {N, F}, yd[2] = {N, 1};
    write_ds(fid, "/data/inputs", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, xd, x, 0);
    write_ds(fid, "/data/labels", H5T_STD_I64LE, H5T_NATIVE_INT64, 2, yd, y, 0);
    H5Fclose(fid);

    char err[DV_ERR_LEN];
    dv_split *s;
    assert_int_equal(dv_split_open(&s, tpath("f64.h5"), "/data/inputs", "/data/labels", err),
                     DV_OK);
    const dv_split_info *in = dv_split_info_get(s);
    assert_int_equal(in->x_elems, F);
    assert_int_equal(in->y_kind, DV_TARGET_LABELS);
    assert_int_equal(in->label_max, 3);
    int64_t idx[4] = {19, 0, 7, 19};
    float xb[4 * F];
    int32_t yb[4];
    assert_int_equal(dv_split_read(s, idx, 4, 2.0f, xb, yb, NULL, err), DV_OK);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(yb[i], y[idx[i]]);
        for (int e = 0; e < F; e++)
            assert_float_equal(xb[i * F + e], 2.0 * x[idx[i] * F + e], 1e-6);
    }
    assert_int_equal(dv_split_check(s, F, 4, err), DV_OK);
    assert_int_equal(dv_split_check(s, F, 3, err), DV_ERR);
    assert_has(err, "label 3");
    dv_split_free(s);
}

static void test_split_float_targets(void **state) {
    (void)state;
    hid_t fid = new_file("tgt.h5");
    enum { N = 30, F = 4, K = 3 };
    int32_t x[N * F];
    float y[N * K];
    for (int i = 0; i < N * F; i++)
        x[i] = i - 50;
    for (int i = 0; i < N * K; i++)
        y[i] = i * 0.1f;
    hsize_t xd[2] = {N, F}, yd[2] = {N, K};
    write_ds(fid, "/r/x", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, xd, x, 8);
    write_ds(fid, "/r/y", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, yd, y, 8);
    H5Fclose(fid);

    char err[DV_ERR_LEN];
    dv_split *s;
    assert_int_equal(dv_split_open(&s, tpath("tgt.h5"), "/r/x", "/r/y", err), DV_OK);
    const dv_split_info *in = dv_split_info_get(s);
    assert_int_equal(in->y_kind, DV_TARGET_FLOATS);
    assert_int_equal(in->y_elems, K);
    assert_int_equal(dv_split_check(s, F, K, err), DV_OK);
    assert_int_equal(dv_split_check(s, F, 2, err), DV_ERR);
    assert_has(err, "/r/y");
    int64_t idx[3] = {29, 1, 29};
    float xb[3 * F], yb[3 * K];
    assert_int_equal(dv_split_read(s, idx, 3, 1.0f, xb, NULL, yb, err), DV_OK);
    for (int i = 0; i < 3; i++) {
        for (int e = 0; e < F; e++)
            assert_float_equal(xb[i * F + e], (float)x[idx[i] * F + e], 0);
        for (int k = 0; k < K; k++)
            assert_float_equal(yb[i * K + k], y[idx[i] * K + k], 0);
    }
    dv_split_free(s);
}

static void expect_open_error(const char *file, const char *x, const char *y, const char *part1,
                              const char *part2) {
    char err[DV_ERR_LEN] = "";
    dv_split *s = (dv_split *)1;
    dv_status st = DV_OK;
    ASSERT_SILENT(st = dv_split_open(&s, file, x, y, err));
    assert_int_equal(st, DV_ERR);
    assert_null(s);
    assert_has(err, part1);
    if (part2) assert_has(err, part2);
}

static void test_split_errors(void **state) {
    (void)state;
    /* A valid file to break in various ways. */
    hid_t fid = new_file("bad.h5");
    enum { N = 200, F = 100 };
    float *x = calloc(N * F, sizeof(float));
    int32_t y[N];
    for (int i = 0; i < N; i++)
        y[i] = i % 10;
    y[137] = 12;
    hsize_t xd[2] = {N, F}, yd[1] = {N}, yd1[1] = {N - 1};
    write_ds(fid, "/train/x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, xd, x, 0);
    write_ds(fid, "/train/y", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, yd, y, 0);
    write_ds(fid, "/short/y", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, yd1, y, 0);
    hsize_t sd[1] = {N};
    const char *strs[N];
    for (int i = 0; i < N; i++)
        strs[i] = "cat";
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, H5T_VARIABLE);
    write_ds(fid, "/text/y", st, st, 1, sd, strs, 0);
    H5Tclose(st);
    H5Fclose(fid);
    free(x);
    char bad[512];
    snprintf(bad, sizeof(bad), "%s", tpath("bad.h5"));

    expect_open_error(tpath("missing.h5"), "/train/x", "/train/y", "missing.h5", "No such file");

    FILE *f = fopen(tpath("text.h5"), "w");
    fputs("this is not HDF5\n", f);
    fclose(f);
    expect_open_error(tpath("text.h5"), "/train/x", "/train/y", "text.h5", "not an HDF5 file");

    /* Truncated: the first 3 KB of a valid file. */
    char buf[3072];
    f = fopen(bad, "rb");
    assert_int_equal(fread(buf, 1, sizeof(buf), f), sizeof(buf));
    fclose(f);
    f = fopen(tpath("trunc.h5"), "wb");
    fwrite(buf, 1, sizeof(buf), f);
    fclose(f);
    expect_open_error(tpath("trunc.h5"), "/train/x", "/train/y", "trunc.h5", "truncated");

    expect_open_error(bad, "/train/nope", "/train/y", "dataset /train/nope not found", "bad.h5");
    expect_open_error(bad, "/nogroup/x", "/train/y", "dataset /nogroup/x not found", NULL);
    expect_open_error(bad, "/train", "/train/y", "/train is a group", NULL);
    expect_open_error(bad, "/train/x", "/short/y", "/short/y has 199 rows but /train/x has 200",
                      "bad.h5");
    expect_open_error(bad, "/train/x", "/text/y", "/text/y has a string type", "bad.h5");

    char err[DV_ERR_LEN];
    dv_split *s;
    assert_int_equal(dv_split_open(&s, bad, "/train/x", "/train/y", err), DV_OK);
    assert_int_equal(dv_split_check(s, F, 10, err), DV_ERR);
    assert_has(err, "bad.h5");
    assert_has(err, "label 12 in /train/y is out of range for a model with 10 outputs");
    assert_has(err, "sample 137");
    assert_int_equal(dv_split_check(s, F, 13, err), DV_OK);
    assert_int_equal(dv_split_check(s, 784, 13, err), DV_ERR);
    assert_has(err, "/train/x has 100 elements per sample");
    assert_has(err, "784");
    assert_int_equal(dv_split_check(s, F, 1, err), DV_ERR); /* binary: labels in {0, 1} */
    dv_split_free(s);
}

/* ---- sampler ------------------------------------------------------------ */

static void test_sampler_permutation(void **state) {
    (void)state;
    int64_t ns[] = {1, 2, 7, 100, 1000};
    for (size_t t = 0; t < sizeof(ns) / sizeof(ns[0]); t++) {
        int64_t n = ns[t];
        int64_t *a = malloc(sizeof(int64_t) * n), *b = malloc(sizeof(int64_t) * n);
        char *seen = calloc(n, 1);
        dv_sampler_permutation(n, 42, 3, a);
        for (int64_t i = 0; i < n; i++) {
            assert_true(a[i] >= 0 && a[i] < n);
            assert_false(seen[a[i]]);
            seen[a[i]] = 1;
        }
        dv_sampler_permutation(n, 42, 3, b);
        assert_memory_equal(a, b, sizeof(int64_t) * n);
        if (n >= 100) {
            dv_sampler_permutation(n, 42, 4, b);
            assert_memory_not_equal(a, b, sizeof(int64_t) * n);
            dv_sampler_permutation(n, 43, 3, b);
            assert_memory_not_equal(a, b, sizeof(int64_t) * n);
        }
        free(a);
        free(b);
        free(seen);
    }
    /* Pinned values: the permutation must be the same on every machine and
     * build, or a resumed run would see different batches. */
    int64_t p[10];
    const int64_t e0[10] = {7, 8, 0, 1, 5, 3, 2, 4, 6, 9};
    const int64_t e1[10] = {5, 1, 7, 6, 0, 3, 4, 9, 8, 2};
    dv_sampler_permutation(10, 42, 0, p);
    assert_memory_equal(p, e0, sizeof(p));
    dv_sampler_permutation(10, 42, 1, p);
    assert_memory_equal(p, e1, sizeof(p));
}

static void test_sampler_shards(void **state) {
    (void)state;
    const int64_t n = 103;
    const int G = 12;
    int worlds[] = {1, 2, 3, 4, 6, 12};
    int64_t perm[103];
    for (int shuffle = 0; shuffle < 2; shuffle++) {
        for (int64_t epoch = 0; epoch < 3; epoch++) {
            if (shuffle)
                dv_sampler_permutation(n, 7, epoch, perm);
            else
                for (int64_t i = 0; i < n; i++)
                    perm[i] = i;
            for (size_t w = 0; w < sizeof(worlds) / sizeof(worlds[0]); w++) {
                int W = worlds[w];
                int per = G / W;
                int count[103] = {0};
                int64_t steps = -1;
                for (int r = 0; r < W; r++) {
                    dv_sampler s = {n, G, W, r, 7, shuffle};
                    int64_t st = dv_sampler_steps(&s);
                    assert_int_equal(st, n / G);
                    if (steps >= 0) assert_int_equal(st, steps);
                    steps = st;
                    int64_t cache[103], cache_epoch = -1;
                    for (int64_t step = 0; step < st; step++) {
                        int64_t idx[12], pos[12], idx2[12];
                        dv_sampler_indices(&s, epoch, step, cache, &cache_epoch, idx, pos);
                        dv_sampler_indices(&s, epoch, step, NULL, NULL, idx2, NULL);
                        assert_memory_equal(idx, idx2, sizeof(int64_t) * per);
                        for (int k = 0; k < per; k++) {
                            assert_int_equal(pos[k], step * G + r + k * W);
                            assert_int_equal(idx[k], perm[pos[k]]);
                            count[idx[k]]++;
                        }
                    }
                }
                /* Disjoint, and the union is exactly perm[0 .. steps*G). */
                for (int64_t i = 0; i < steps * G; i++)
                    assert_int_equal(count[perm[i]], 1);
                for (int64_t i = steps * G; i < n; i++)
                    assert_int_equal(count[perm[i]], 0);
            }
        }
    }
}

static void test_eval_shard(void **state) {
    (void)state;
    int64_t ns[] = {0, 1, 5, 10, 103, 10000};
    for (size_t t = 0; t < sizeof(ns) / sizeof(ns[0]); t++) {
        for (int W = 1; W <= 7; W++) {
            int64_t expect = 0, lo = INT64_MAX, hi = 0;
            for (int r = 0; r < W; r++) {
                int64_t b, e;
                dv_eval_shard(ns[t], W, r, &b, &e);
                assert_int_equal(b, expect);
                assert_true(e >= b);
                expect = e;
                if (e - b < lo) lo = e - b;
                if (e - b > hi) hi = e - b;
            }
            assert_int_equal(expect, ns[t]);
            assert_true(hi - lo <= 1);
        }
    }
}

/* ---- loader ------------------------------------------------------------- */

static dv_loader *make_loader(dv_split *s, int eval, int G, int W, int r, int batch, int memory,
                              int prefetch) {
    dv_loader_config c = {0};
    c.sampler = (dv_sampler){dv_split_info_get(s)->n, G, W, r, 99, 1};
    c.eval = eval;
    c.batch = batch;
    c.x_scale = 0.5f;
    c.memory_budget = memory ? (size_t)1 << 30 : 0;
    c.prefetch = prefetch;
    dv_loader *l;
    char err[DV_ERR_LEN];
    if (dv_loader_create(&l, s, &c, err) != DV_OK) fail_msg("%s", err);
    assert_int_equal(dv_loader_in_memory(l), memory);
    return l;
}

/* Checks a batch against a direct read of its indices. */
static void check_batch(dv_split *s, const dv_batch *b) {
    size_t xe = dv_split_info_get(s)->x_elems;
    float *x = malloc(sizeof(float) * xe * b->count);
    int32_t *y = malloc(sizeof(int32_t) * b->count);
    char err[DV_ERR_LEN];
    assert_int_equal(dv_split_read(s, b->index, b->count, 0.5f, x, y, NULL, err), DV_OK);
    assert_memory_equal(x, b->x, sizeof(float) * xe * b->count);
    assert_memory_equal(y, b->labels, sizeof(int32_t) * b->count);
    assert_null(b->targets);
    free(x);
    free(y);
}

static void batch_equal(const dv_batch *a, const dv_batch *b, size_t xe) {
    assert_int_equal(a->count, b->count);
    assert_memory_equal(a->index, b->index, sizeof(int64_t) * a->count);
    assert_memory_equal(a->global_pos, b->global_pos, sizeof(int64_t) * a->count);
    assert_memory_equal(a->labels, b->labels, sizeof(int32_t) * a->count);
    assert_memory_equal(a->x, b->x, sizeof(float) * xe * a->count);
}

static void test_loader_train_modes(void **state) {
    (void)state;
    make_uint8_split("load.h5", 97);
    char err[DV_ERR_LEN];
    dv_split *s;
    assert_int_equal(dv_split_open(&s, tpath("load.h5"), "/train/x", "/train/y", err), DV_OK);
    const int G = 8, W = 2;
    for (int r = 0; r < W; r++) {
        dv_loader *l[4];
        for (int m = 0; m < 4; m++)
            l[m] = make_loader(s, 0, G, W, r, G / W, m & 1, m >> 1);
        assert_int_equal(dv_loader_steps(l[0]), 97 / G);
        for (int64_t epoch = 0; epoch < 2; epoch++) {
            for (int m = 0; m < 4; m++)
                assert_int_equal(dv_loader_start(l[m], epoch, 0, err), DV_OK);
            int64_t cache[97], ce = -1;
            dv_sampler sm = {97, G, W, r, 99, 1};
            for (int64_t step = 0; step <= 97 / G; step++) {
                dv_batch b[4];
                for (int m = 0; m < 4; m++)
                    assert_int_equal(dv_loader_next(l[m], &b[m], err), DV_OK);
                if (step == 97 / G) {
                    for (int m = 0; m < 4; m++)
                        assert_int_equal(b[m].count, 0);
                    break;
                }
                int64_t idx[4], pos[4];
                dv_sampler_indices(&sm, epoch, step, cache, &ce, idx, pos);
                assert_int_equal(b[0].count, G / W);
                assert_memory_equal(b[0].index, idx, sizeof(idx));
                assert_memory_equal(b[0].global_pos, pos, sizeof(pos));
                check_batch(s, &b[0]);
                for (int m = 1; m < 4; m++)
                    batch_equal(&b[0], &b[m], 6);
            }
        }
        for (int m = 0; m < 4; m++)
            dv_loader_free(l[m]);
    }
    dv_split_free(s);
}

static void test_loader_eval(void **state) {
    (void)state;
    make_uint8_split("eval.h5", 41);
    char err[DV_ERR_LEN];
    dv_split *s;
    assert_int_equal(dv_split_open(&s, tpath("eval.h5"), "/train/x", "/train/y", err), DV_OK);
    const int W = 3, B = 4;
    int seen[41] = {0};
    for (int r = 0; r < W; r++) {
        dv_loader *l[4];
        for (int m = 0; m < 4; m++)
            l[m] = make_loader(s, 1, 0, W, r, B, m & 1, m >> 1);
        int64_t b0, e0;
        dv_eval_shard(41, W, r, &b0, &e0);
        int64_t steps = dv_loader_steps(l[0]);
        assert_int_equal(steps, (e0 - b0 + B - 1) / B);
        for (int m = 0; m < 4; m++)
            assert_int_equal(dv_loader_start(l[m], 5, 0, err), DV_OK);
        int64_t next = b0;
        for (int64_t step = 0; step <= steps; step++) {
            dv_batch b[4];
            for (int m = 0; m < 4; m++)
                assert_int_equal(dv_loader_next(l[m], &b[m], err), DV_OK);
            if (step == steps) {
                assert_int_equal(b[0].count, 0);
                break;
            }
            int64_t want = e0 - next < B ? e0 - next : B;
            assert_int_equal(b[0].count, want);
            for (int i = 0; i < b[0].count; i++) {
                assert_int_equal(b[0].index[i], next + i);
                seen[b[0].index[i]]++;
            }
            next += b[0].count;
            check_batch(s, &b[0]);
            for (int m = 1; m < 4; m++)
                batch_equal(&b[0], &b[m], 6);
        }
        for (int m = 0; m < 4; m++)
            dv_loader_free(l[m]);
    }
    for (int i = 0; i < 41; i++)
        assert_int_equal(seen[i], 1);
    dv_split_free(s);
}

static void test_loader_start_middle(void **state) {
    (void)state;
    make_uint8_split("mid.h5", 120);
    char err[DV_ERR_LEN];
    dv_split *s;
    assert_int_equal(dv_split_open(&s, tpath("mid.h5"), "/train/x", "/train/y", err), DV_OK);
    for (int m = 0; m < 4; m++) {
        dv_loader *a = make_loader(s, 0, 12, 3, 2, 4, m & 1, m >> 1);
        dv_loader *b = make_loader(s, 0, 12, 3, 2, 4, m & 1, m >> 1);
        dv_batch ba, bb;
        /* Iterate a to step 6 of epoch 2; start b there directly. */
        assert_int_equal(dv_loader_start(a, 2, 0, err), DV_OK);
        for (int i = 0; i <= 6; i++)
            assert_int_equal(dv_loader_next(a, &ba, err), DV_OK);
        assert_int_equal(dv_loader_start(b, 2, 6, err), DV_OK);
        assert_int_equal(dv_loader_next(b, &bb, err), DV_OK);
        batch_equal(&ba, &bb, 6);
        /* And the batch after it, then restart earlier while a prefetch may
         * be in flight. */
        assert_int_equal(dv_loader_next(a, &ba, err), DV_OK);
        assert_int_equal(dv_loader_next(b, &bb, err), DV_OK);
        batch_equal(&ba, &bb, 6);
        assert_int_equal(dv_loader_start(a, 0, 3, err), DV_OK);
        assert_int_equal(dv_loader_start(a, 1, 1, err), DV_OK);
        assert_int_equal(dv_loader_next(a, &ba, err), DV_OK);
        dv_loader *c = make_loader(s, 0, 12, 3, 2, 4, 0, 0);
        assert_int_equal(dv_loader_start(c, 1, 1, err), DV_OK);
        assert_int_equal(dv_loader_next(c, &bb, err), DV_OK);
        batch_equal(&ba, &bb, 6);
        /* Without a start the loader begins at epoch 0, step 0. */
        dv_loader *d = make_loader(s, 0, 12, 3, 2, 4, m & 1, m >> 1);
        assert_int_equal(dv_loader_start(c, 0, 0, err), DV_OK);
        assert_int_equal(dv_loader_next(c, &bb, err), DV_OK);
        assert_int_equal(dv_loader_next(d, &ba, err), DV_OK);
        batch_equal(&ba, &bb, 6);
        assert_int_equal(dv_loader_start(a, 0, 11, err), DV_ERR);
        dv_loader_free(a);
        dv_loader_free(b);
        dv_loader_free(c);
        dv_loader_free(d);
    }
    dv_split_free(s);
}

static void test_loader_targets_and_errors(void **state) {
    (void)state;
    hid_t fid = new_file("lt.h5");
    enum { N = 40, F = 3, K = 2 };
    double x[N * F];
    float y[N * K];
    for (int i = 0; i < N * F; i++)
        x[i] = i;
    for (int i = 0; i < N * K; i++)
        y[i] = -i;
    hsize_t xd[2] = {N, F}, yd[2] = {N, K};
    write_ds(fid, "/x", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, xd, x, 5);
    write_ds(fid, "/y", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, yd, y, 5);
    H5Fclose(fid);
    char err[DV_ERR_LEN];
    dv_split *s;
    assert_int_equal(dv_split_open(&s, tpath("lt.h5"), "/x", "/y", err), DV_OK);
    dv_loader *l[2];
    for (int m = 0; m < 2; m++) {
        dv_loader_config c = {0};
        c.sampler = (dv_sampler){N, 8, 2, 1, 5, 1};
        c.batch = 4;
        c.x_scale = 1.0f;
        c.memory_budget = m ? 1 << 20 : 0;
        c.prefetch = 1;
        assert_int_equal(dv_loader_create(&l[m], s, &c, err), DV_OK);
        assert_int_equal(dv_loader_in_memory(l[m]), m);
    }
    for (int step = 0; step < N / 8; step++) {
        dv_batch b[2];
        for (int m = 0; m < 2; m++) {
            assert_int_equal(dv_loader_next(l[m], &b[m], err), DV_OK);
            assert_null(b[m].labels);
            assert_non_null(b[m].targets);
        }
        for (int i = 0; i < 4; i++) {
            int64_t id = b[0].index[i];
            for (int e = 0; e < F; e++)
                assert_float_equal(b[1].x[i * F + e], x[id * F + e], 0);
            for (int k = 0; k < K; k++)
                assert_float_equal(b[1].targets[i * K + k], y[id * K + k], 0);
        }
        assert_memory_equal(b[0].x, b[1].x, sizeof(float) * 4 * F);
        assert_memory_equal(b[0].targets, b[1].targets, sizeof(float) * 4 * K);
    }
    dv_loader_free(l[0]);
    dv_loader_free(l[1]);

    dv_loader_config c = {0};
    c.sampler = (dv_sampler){N, 8, 3, 0, 5, 1};
    c.batch = 2;
    dv_loader *bad = (dv_loader *)1;
    assert_int_equal(dv_loader_create(&bad, s, &c, err), DV_ERR);
    assert_null(bad);
    assert_has(err, "does not divide");
    c.sampler = (dv_sampler){N, 64, 2, 0, 5, 1};
    c.batch = 32;
    assert_int_equal(dv_loader_create(&bad, s, &c, err), DV_ERR);
    assert_has(err, "fewer than one global batch");
    dv_split_free(s);
}

static void test_loader_io_error(void **state) {
    (void)state;
    make_uint8_split("corrupt.h5", 60);
    /* Overwrite chunk 1 of /train/x (rows 7..13) with garbage: the file still
     * opens, but inflating that chunk fails. */
    hid_t fid = H5Fopen(tpath("corrupt.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(fid, "/train/x", H5P_DEFAULT);
    hid_t sp = H5Dget_space(d);
    haddr_t addr;
    hsize_t size, off[3];
    unsigned mask;
    assert_true(H5Dget_chunk_info(d, sp, 1, off, &mask, &addr, &size) >= 0);
    assert_int_equal(off[0], 7);
    H5Sclose(sp);
    H5Dclose(d);
    H5Fclose(fid);
    FILE *f = fopen(tpath("corrupt.h5"), "r+b");
    fseek(f, (long)addr, SEEK_SET);
    for (hsize_t i = 0; i < size; i++)
        fputc(0xA5, f);
    fclose(f);

    char err[DV_ERR_LEN];
    dv_split *s;
    assert_int_equal(dv_split_open(&s, tpath("corrupt.h5"), "/train/x", "/train/y", err), DV_OK);
    for (int pf = 0; pf < 2; pf++) {
        /* Eval, one row per batch: rows 0..6 read fine, row 7 fails. */
        dv_loader *l = make_loader(s, 1, 0, 1, 0, 1, 0, pf);
        assert_int_equal(dv_loader_start(l, 0, 0, err), DV_OK);
        dv_batch b;
        for (int i = 0; i < 7; i++)
            assert_int_equal(dv_loader_next(l, &b, err), DV_OK);
        dv_status st = DV_OK;
        ASSERT_SILENT(st = dv_loader_next(l, &b, err));
        assert_int_equal(st, DV_ERR);
        assert_has(err, "corrupt.h5");
        assert_has(err, "/train/x");
        /* Past the bad chunk the loader works again. */
        assert_int_equal(dv_loader_start(l, 0, 14, err), DV_OK);
        assert_int_equal(dv_loader_next(l, &b, err), DV_OK);
        assert_int_equal(b.index[0], 14);
        dv_loader_free(l);
    }
    dv_split_free(s);
}

/* ---- importers ---------------------------------------------------------- */

static void put_be32(unsigned char *b, uint32_t v) {
    b[0] = v >> 24, b[1] = v >> 16, b[2] = v >> 8, b[3] = v;
}

/* Writes an IDX file; gz selects gzip. dims[0] is N. */
static void write_idx(const char *name, uint32_t magic, int nd, const uint32_t *dims,
                      const uint8_t *data, size_t len, int gz) {
    unsigned char h[16];
    put_be32(h, magic);
    for (int i = 0; i < nd; i++)
        put_be32(h + 4 + 4 * i, dims[i]);
    if (gz) {
        gzFile g = gzopen(tpath(name), "wb");
        gzwrite(g, h, 4 + 4 * nd);
        gzwrite(g, data, (unsigned)len);
        gzclose(g);
    } else {
        FILE *f = fopen(tpath(name), "wb");
        fwrite(h, 1, 4 + 4 * nd, f);
        fwrite(data, 1, len, f);
        fclose(f);
    }
}

static void check_idx_split(const char *file, const char *group, int n, const uint8_t *img,
                            const uint8_t *lab) {
    char err[DV_ERR_LEN], xp[64], yp[64];
    snprintf(xp, sizeof(xp), "/%s/x", group);
    snprintf(yp, sizeof(yp), "/%s/y", group);
    dv_split *s;
    if (dv_split_open(&s, file, xp, yp, err) != DV_OK) fail_msg("%s", err);
    const dv_split_info *in = dv_split_info_get(s);
    assert_int_equal(in->n, n);
    assert_int_equal(in->x_rank, 3);
    assert_int_equal(in->x_dims[1], 4);
    assert_int_equal(in->x_dims[2], 5);
    int64_t *idx = malloc(sizeof(int64_t) * n);
    float *x = malloc(sizeof(float) * n * 20);
    int32_t *y = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++)
        idx[i] = i;
    assert_int_equal(dv_split_read(s, idx, n, 1.0f, x, y, NULL, err), DV_OK);
    for (int i = 0; i < n * 20; i++)
        assert_float_equal(x[i], img[i], 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(y[i], lab[i]);
    free(idx);
    free(x);
    free(y);
    dv_split_free(s);
}

static void test_import_idx(void **state) {
    (void)state;
    enum { N = 2100 }; /* more than one chunk and more than one block */
    uint8_t *img = malloc(N * 20), lab[N];
    for (int i = 0; i < N * 20; i++)
        img[i] = (uint8_t)(i * 13 + 5);
    for (int i = 0; i < N; i++)
        lab[i] = (uint8_t)(i % 10);
    uint32_t id[3] = {N, 4, 5}, ld[1] = {N};
    write_idx("img.idx", 0x803, 3, id, img, N * 20, 0);
    write_idx("lab.idx.gz", 0x801, 1, ld, lab, N, 1);
    write_idx("img.idx.gz", 0x803, 3, id, img, 10 * 20, 1);
    uint32_t id10[3] = {10, 4, 5};
    write_idx("img10.idx.gz", 0x803, 3, id10, img, 10 * 20, 1);
    write_idx("lab10.idx", 0x801, 1, id10, lab, 10, 0);

    char err[DV_ERR_LEN];
    char out[512];
    snprintf(out, sizeof(out), "%s", tpath("idx.h5"));
    unlink(out);
    if (dv_import_idx(tpath("img.idx"), tpath("lab.idx.gz"), out, "train", err) != DV_OK)
        fail_msg("%s", err);
    if (dv_import_idx(tpath("img10.idx.gz"), tpath("lab10.idx"), out, "/test", err) != DV_OK)
        fail_msg("%s", err);
    check_idx_split(out, "train", N, img, lab);
    check_idx_split(out, "test", 10, img, lab);
    /* Re-import replaces a split and keeps the others. */
    if (dv_import_idx(tpath("img10.idx.gz"), tpath("lab10.idx"), out, "train", err) != DV_OK)
        fail_msg("%s", err);
    check_idx_split(out, "train", 10, img, lab);
    check_idx_split(out, "test", 10, img, lab);

    /* Stored as uint8, chunked and compressed. */
    hid_t fid = H5Fopen(out, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(fid, "/test/x", H5P_DEFAULT);
    hid_t t = H5Dget_type(d), p = H5Dget_create_plist(d);
    assert_true(H5Tequal(t, H5T_STD_U8LE) > 0);
    assert_int_equal(H5Pget_layout(p), H5D_CHUNKED);
    assert_true(H5Pget_nfilters(p) >= 1);
    H5Pclose(p);
    H5Tclose(t);
    H5Dclose(d);
    H5Fclose(fid);

    dv_status st = DV_OK;
    /* Images given as labels: bad magic names the file. */
    ASSERT_SILENT(st = dv_import_idx(tpath("lab.idx.gz"), tpath("lab.idx.gz"), out, "x", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "lab.idx.gz: bad IDX magic");
    /* Counts differ. */
    ASSERT_SILENT(st = dv_import_idx(tpath("img.idx"), tpath("lab10.idx"), out, "x", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "img.idx has 2100 images");
    assert_has(err, "lab10.idx has 10 labels");
    /* Truncated data (header says N, data holds 10). */
    ASSERT_SILENT(st = dv_import_idx(tpath("img.idx.gz"), tpath("lab.idx.gz"), out, "x", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "img.idx.gz: truncated");
    ASSERT_SILENT(st = dv_import_idx(tpath("nope.gz"), tpath("lab.idx.gz"), out, "x", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "nope.gz");
    /* The failed imports left no split "x" behind. */
    dv_split *s;
    assert_int_equal(dv_split_open(&s, out, "/x/x", "/x/y", err), DV_ERR);
    free(img);
}

static void test_import_csv(void **state) {
    (void)state;
    FILE *f = fopen(tpath("a.csv"), "w");
    fputs("f1,f2,f3,label\n", f);
    fputs("1.5,2,-3e2,4\n", f);
    fputs(" 0 , 0.25 ,7,0\r\n", f);
    fputs("\n", f);
    fputs("9,8,7,2\n", f);
    fclose(f);
    char err[DV_ERR_LEN];
    char out[512];
    snprintf(out, sizeof(out), "%s", tpath("csv.h5"));
    unlink(out);
    if (dv_import_csv(tpath("a.csv"), -1, 1, out, "train", err) != DV_OK) fail_msg("%s", err);
    dv_split *s;
    assert_int_equal(dv_split_open(&s, out, "/train/x", "/train/y", err), DV_OK);
    const dv_split_info *in = dv_split_info_get(s);
    assert_int_equal(in->n, 3);
    assert_int_equal(in->x_elems, 3);
    assert_int_equal(in->y_kind, DV_TARGET_LABELS);
    int64_t idx[3] = {0, 1, 2};
    float x[9];
    int32_t y[3];
    float want[9] = {1.5f, 2, -300, 0, 0.25f, 7, 9, 8, 7};
    int32_t wy[3] = {4, 0, 2};
    assert_int_equal(dv_split_read(s, idx, 3, 1.0f, x, y, NULL, err), DV_OK);
    assert_memory_equal(x, want, sizeof(want));
    assert_memory_equal(y, wy, sizeof(wy));
    dv_split_free(s);

    /* Label first, no header, into a second split. */
    f = fopen(tpath("b.csv"), "w");
    fputs("3,0.5,0.75\n1,1,2\n", f);
    fclose(f);
    if (dv_import_csv(tpath("b.csv"), 0, 0, out, "val", err) != DV_OK) fail_msg("%s", err);
    assert_int_equal(dv_split_open(&s, out, "/val/x", "/val/y", err), DV_OK);
    assert_int_equal(dv_split_info_get(s)->x_elems, 2);
    assert_int_equal(dv_split_read(s, idx, 2, 1.0f, x, y, NULL, err), DV_OK);
    assert_float_equal(x[0], 0.5f, 0);
    assert_float_equal(x[3], 2.0f, 0);
    assert_int_equal(y[0], 3);
    assert_int_equal(y[1], 1);
    dv_split_free(s);
    assert_int_equal(dv_split_open(&s, out, "/train/x", "/train/y", err), DV_OK);
    dv_split_free(s);

    f = fopen(tpath("bad.csv"), "w");
    fputs("1,2,3\n4,five,6\n", f);
    fclose(f);
    assert_int_equal(dv_import_csv(tpath("bad.csv"), -1, 0, out, "bad", err), DV_ERR);
    assert_has(err, "bad.csv:2:");
    assert_has(err, "five");
    f = fopen(tpath("wide.csv"), "w");
    fputs("1,2,3\n4,5,6\n7,8,9,10\n", f);
    fclose(f);
    assert_int_equal(dv_import_csv(tpath("wide.csv"), -1, 0, out, "bad", err), DV_ERR);
    assert_has(err, "wide.csv:3:");
    assert_has(err, "4 fields, expected 3");
    f = fopen(tpath("frac.csv"), "w");
    fputs("1,2,3.5\n", f);
    fclose(f);
    assert_int_equal(dv_import_csv(tpath("frac.csv"), -1, 0, out, "bad", err), DV_ERR);
    assert_has(err, "frac.csv:1:");
    assert_int_equal(dv_import_csv(tpath("none.csv"), -1, 0, out, "bad", err), DV_ERR);
    assert_has(err, "none.csv");
}

/* ---- text import and token streams -------------------------------------- */

/* Writes `len` bytes to a file in the test directory (parents must exist). */
static void write_bytes(const char *name, const void *data, size_t len) {
    FILE *f = fopen(tpath(name), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void write_text(const char *name, const char *text) {
    write_bytes(name, text, strlen(text));
}

static void make_dir(const char *name) {
    assert_int_equal(mkdir(tpath(name), 0700), 0);
}

typedef struct skips {
    int n;
    char last[512];
} skips;

static void note_skip(void *ctx, const char *path, const char *why) {
    skips *k = ctx;
    k->n++;
    snprintf(k->last, sizeof(k->last), "%s: %s", path, why);
}

/* Imports inputs into `out` (replacing the file); fails the test on error. */
static dv_text_report import_ok(const char *const *inputs, int n, dv_vocab_kind vocab, double val,
                                const char *out, skips *k) {
    dv_text_options opt = {.vocab = vocab, .val_fraction = val, .on_skip = note_skip, .ctx = k};
    dv_text_report r;
    char err[DV_ERR_LEN];
    unlink(out);
    if (dv_import_text(inputs, n, &opt, out, &r, err) != DV_OK) fail_msg("%s", err);
    return r;
}

/* The whole of dataset `path` of `file`; *n receives its length. */
static int32_t *read_tokens(const char *file, const char *path, int64_t *n) {
    char err[DV_ERR_LEN];
    dv_tokens *t;
    if (dv_tokens_open(&t, file, path, err) != DV_OK) fail_msg("%s", err);
    *n = dv_tokens_count(t);
    int32_t *v = malloc(sizeof(int32_t) * (size_t)*n);
    assert_int_equal(dv_tokens_read(t, 0, *n, v, err), DV_OK);
    dv_tokens_free(t);
    return v;
}

static void test_import_text_bytes(void **state) {
    (void)state;
    make_dir("tb");
    write_text("tb/one.txt", "Hello\n");
    write_text("tb/two.txt", "w\xc3\xa9!\n"); /* "wé!": é is two bytes */
    char out[512];
    snprintf(out, sizeof(out), "%s", tpath("tb.h5"));
    const char *in[] = {tpath("tb")};
    skips k = {0};
    dv_text_report r = import_ok(in, 1, DV_VOCAB_BYTES, 0, out, &k);
    assert_int_equal(k.n, 0);
    assert_int_equal(r.files_read, 2);
    assert_int_equal(r.files_skipped, 0);
    assert_int_equal(r.n_train, 11);
    assert_int_equal(r.n_val, 0);
    assert_int_equal(r.vocab_size, 256);
    int64_t n;
    int32_t *tok = read_tokens(out, "/train/tokens", &n);
    const unsigned char want[] = "Hello\nw\xc3\xa9!\n";
    assert_int_equal(n, 11);
    for (int i = 0; i < 11; i++)
        assert_int_equal(tok[i], want[i]);
    free(tok);
    dv_vocab v;
    char err[DV_ERR_LEN];
    if (dv_vocab_read(&v, out, NULL, err) != DV_OK) fail_msg("%s", err);
    assert_int_equal(v.kind, DV_VOCAB_BYTES);
    assert_int_equal(v.size, 256);
    for (int i = 0; i < 256; i++)
        assert_int_equal(v.codepoints[i], i);
    dv_vocab_free(&v);
    assert_null(v.codepoints);
    /* No val split was asked for: there is none. */
    dv_tokens *t;
    assert_int_equal(dv_tokens_open(&t, out, "/val/tokens", err), DV_ERR);
    assert_has(err, "/val/tokens not found");
}

static void test_import_text_chars(void **state) {
    (void)state;
    /* é U+00E9 (2 bytes), € U+20AC (3 bytes), 𝄞 U+1D11E (4 bytes). */
    write_text("chars.txt", "caf\xc3\xa9 5\xe2\x82\xac \xf0\x9d\x84\x9e\n");
    char out[512];
    snprintf(out, sizeof(out), "%s", tpath("chars.h5"));
    const char *in[] = {tpath("chars.txt")};
    skips k = {0};
    dv_text_report r = import_ok(in, 1, DV_VOCAB_CHARS, 0, out, &k);
    const int32_t text[] = {'c', 'a', 'f', 0xE9, ' ', '5', 0x20AC, ' ', 0x1D11E, '\n'};
    const int32_t sorted[] = {'\n', ' ', '5', 'a', 'c', 'f', 0xE9, 0x20AC, 0x1D11E};
    assert_int_equal(r.n_train, 10);
    assert_int_equal(r.vocab_size, 9);
    dv_vocab v;
    char err[DV_ERR_LEN];
    if (dv_vocab_read(&v, out, "/vocab", err) != DV_OK) fail_msg("%s", err);
    assert_int_equal(v.kind, DV_VOCAB_CHARS);
    assert_int_equal(v.size, 9);
    for (int i = 0; i < 9; i++)
        assert_int_equal(v.codepoints[i], sorted[i]);
    int64_t n;
    int32_t *tok = read_tokens(out, "/train/tokens", &n);
    assert_int_equal(n, 10);
    for (int i = 0; i < 10; i++) /* round trip: id -> code point */
        assert_int_equal(v.codepoints[tok[i]], text[i]);
    free(tok);
    dv_vocab_free(&v);
}

static void test_import_text_walk(void **state) {
    (void)state;
    /* Sorted by full path in byte order: "a.txt" < "a/..." ('.' < '/'). */
    make_dir("walk");
    make_dir("walk/a");
    make_dir("walk/c");
    make_dir("walk/c/d");
    write_text("walk/b.txt", "B");
    write_text("walk/a/z.txt", "Z");
    write_text("walk/a.txt", "A");
    write_text("walk/c/d/e.txt", "E");
    write_text("walk/c/empty.txt", "");
    write_bytes("walk/c/bin.dat", "x\0y", 3);
    write_text("walk/c/latin1.txt", "caf\xe9");                    /* not UTF-8 */
    assert_int_equal(symlink("b.txt", tpath("walk/link.txt")), 0); /* not followed */
    write_text("first.txt", "F");
    char out[512];
    snprintf(out, sizeof(out), "%s", tpath("walk.h5"));
    const char *in[] = {tpath("first.txt"), tpath("walk")};
    skips k = {0};
    dv_text_report r = import_ok(in, 2, DV_VOCAB_CHARS, 0, out, &k);
    assert_int_equal(k.n, 2); /* bin.dat and latin1.txt, in path order */
    assert_has(k.last, "latin1.txt: not valid UTF-8");
    assert_int_equal(r.files_read, 6);
    assert_int_equal(r.files_skipped, 2);
    int64_t n;
    int32_t *tok = read_tokens(out, "/train/tokens", &n);
    dv_vocab v;
    char err[DV_ERR_LEN];
    assert_int_equal(dv_vocab_read(&v, out, NULL, err), DV_OK);
    char got[16] = "";
    for (int64_t i = 0; i < n && i < 15; i++)
        got[i] = (char)v.codepoints[tok[i]];
    assert_string_equal(got, "FAZBE");
    free(tok);
    dv_vocab_free(&v);

    /* With bytes, Latin-1 is text; the NUL file is still skipped. */
    k = (skips){0};
    r = import_ok(in, 2, DV_VOCAB_BYTES, 0, out, &k);
    assert_int_equal(k.n, 1);
    assert_has(k.last, "bin.dat: contains a NUL byte at offset 1");
    assert_int_equal(r.n_train, 9);
}

static void test_import_text_split(void **state) {
    (void)state;
    char text[101];
    for (int i = 0; i < 100; i++)
        text[i] = (char)('a' + i % 26);
    text[100] = '\0';
    write_text("split.txt", text);
    char out[512];
    snprintf(out, sizeof(out), "%s", tpath("split.h5"));
    const char *in[] = {tpath("split.txt")};
    skips k = {0};
    dv_text_report r = import_ok(in, 1, DV_VOCAB_BYTES, 0.25, out, &k);
    assert_int_equal(r.n_train, 75);
    assert_int_equal(r.n_val, 25);
    int64_t nt, nv;
    int32_t *tr = read_tokens(out, "/train/tokens", &nt);
    int32_t *va = read_tokens(out, "/val/tokens", &nv);
    assert_int_equal(nt, 75);
    assert_int_equal(nv, 25);
    for (int i = 0; i < 100; i++) /* contiguous: train then val */
        assert_int_equal(i < 75 ? tr[i] : va[i - 75], text[i]);
    free(tr);
    free(va);
    r = import_ok(in, 1, DV_VOCAB_BYTES, 0.1, out, &k);
    assert_int_equal(r.n_train, 90);
    assert_int_equal(r.n_val, 10);

    /* A re-import replaces the token file's parts and keeps other data:
     * with --val 0 the old /val/tokens must go. */
    hid_t fid = H5Fopen(out, H5F_ACC_RDWR, H5P_DEFAULT);
    const hsize_t dims[1] = {3};
    const uint8_t x[3] = {1, 2, 3};
    write_ds(fid, "/train/x", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, dims, x, 0);
    H5Fclose(fid);
    dv_text_options opt = {.vocab = DV_VOCAB_CHARS};
    char err[DV_ERR_LEN];
    assert_int_equal(dv_import_text(in, 1, &opt, out, &r, err), DV_OK);
    assert_int_equal(r.n_train, 100);
    assert_int_equal(r.vocab_size, 26);
    dv_tokens *t;
    assert_int_equal(dv_tokens_open(&t, out, "/val/tokens", err), DV_ERR);
    dv_split *s;
    if (dv_split_open(&s, out, "/train/x", NULL, err) != DV_OK) fail_msg("%s", err);
    dv_split_free(s);
}

/* A stream 0..n-1 written directly, as any HDF5 writer could. */
static void make_stream(const char *name, int n) {
    hid_t fid = new_file(name);
    int32_t *v = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        v[i] = i;
    const hsize_t dims[1] = {(hsize_t)n};
    write_ds(fid, "/train/tokens", H5T_STD_I16LE, H5T_NATIVE_INT32, 1, dims, v, 4);
    H5Fclose(fid);
    free(v);
}

static void test_tokens_windows(void **state) {
    (void)state;
    make_stream("win.h5", 10);
    char err[DV_ERR_LEN];
    dv_tokens *t;
    if (dv_tokens_open(&t, tpath("win.h5"), "/train/tokens", err) != DV_OK) fail_msg("%s", err);
    const dv_tokens_info *in = dv_tokens_info_get(t);
    assert_int_equal(in->n, 10);
    assert_int_equal(in->min, 0);
    assert_int_equal(in->max, 9);
    assert_int_equal(dv_tokens_windows(t, 3), 3); /* (10 - 1) / 3 */
    assert_int_equal(dv_tokens_windows(t, 9), 1);
    assert_int_equal(dv_tokens_windows(t, 10), 0);
    assert_int_equal(dv_tokens_windows(t, 0), 0);
    /* Any order, repeats; the last window ends on the last token. */
    const int64_t ids[4] = {2, 0, 2, 1};
    int32_t x[12], y[12];
    if (dv_tokens_read_windows(t, 3, ids, 4, x, y, err) != DV_OK) fail_msg("%s", err);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) {
            assert_int_equal(x[i * 3 + j], ids[i] * 3 + j);
            assert_int_equal(y[i * 3 + j], ids[i] * 3 + j + 1);
        }
    assert_int_equal(y[2], 9);
    const int64_t bad[1] = {3};
    assert_int_equal(dv_tokens_read_windows(t, 3, bad, 1, x, y, err), DV_ERR);
    assert_has(err, "window 3 is outside [0, 3)");
    assert_int_equal(dv_tokens_read(t, 8, 3, x, err), DV_ERR);
    assert_has(err, "outside");
    assert_int_equal(dv_tokens_check(t, 10, err), DV_OK);
    assert_int_equal(dv_tokens_check(t, 9, err), DV_ERR);
    assert_has(err, "token id 9 in /train/tokens (position 9)");
    dv_tokens_free(t);
    dv_tokens_free(NULL);

    /* The sampler over windows: every window once per epoch, in one order
     * for every world size. */
    make_stream("win2.h5", 101);
    assert_int_equal(dv_tokens_open(&t, tpath("win2.h5"), "/train/tokens", err), DV_OK);
    dv_sampler sm = {
        .n = dv_tokens_windows(t, 4), .global_batch = 5, .world = 1, .seed = 3, .shuffle = 1};
    assert_int_equal(sm.n, 25);
    assert_int_equal(dv_sampler_steps(&sm), 5);
    int seen[25] = {0};
    int64_t idx[5];
    for (int64_t step = 0; step < 5; step++) {
        dv_sampler_indices(&sm, 0, step, NULL, NULL, idx, NULL);
        int32_t wx[20], wy[20];
        assert_int_equal(dv_tokens_read_windows(t, 4, idx, 5, wx, wy, err), DV_OK);
        for (int i = 0; i < 5; i++) {
            seen[idx[i]]++;
            assert_int_equal(wx[i * 4], idx[i] * 4);
            assert_int_equal(wy[i * 4 + 3], idx[i] * 4 + 4);
        }
    }
    for (int i = 0; i < 25; i++)
        assert_int_equal(seen[i], 1);
    dv_tokens_free(t);
}

/* A token stream as a split of windows, through the loader (memory and
 * streaming, with prefetch): x holds the window's int32 ids bit for bit,
 * labels the ids one step later; and the streams order, where row k of
 * consecutive steps walks through one contiguous stream on any world. */
static void test_token_split_loader(void **state) {
    (void)state;
    make_stream("tsplit.h5", 201); /* 50 windows of 4 */
    char err[DV_ERR_LEN];
    dv_split *s;
    if (dv_split_open_tokens(&s, tpath("tsplit.h5"), "/train/tokens", 4, err) != DV_OK)
        fail_msg("%s", err);
    const dv_split_info *in = dv_split_info_get(s);
    assert_int_equal(in->n, 50);
    assert_int_equal(in->x_elems, 4);
    assert_int_equal(in->y_elems, 4);
    assert_int_equal(in->x_tokens, 1);
    assert_int_equal(dv_split_check(s, 4, 201, err), DV_OK);
    assert_int_equal(dv_split_check(s, 4, 150, err), DV_ERR);
    assert_has(err, "token id 200 in /train/tokens (position 200)");
    assert_int_equal(dv_split_check(s, 5, 201, err), DV_ERR);
    for (int mode = 0; mode < 4; mode++) {
        const int G = 10, W = 2;
        for (int r = 0; r < W; r++) {
            dv_loader_config c = {0};
            c.sampler =
                (dv_sampler){50, G, W, r, 7, mode < 2 ? DV_ORDER_SHUFFLE : DV_ORDER_STREAMS};
            c.batch = G / W;
            c.x_scale = 0.5f; /* ignored for ids */
            c.x_shift = 3.0f; /* ignored for ids */
            c.memory_budget = (mode & 1) ? (size_t)1 << 30 : 0;
            c.prefetch = 1;
            dv_loader *l;
            if (dv_loader_create(&l, s, &c, err) != DV_OK) fail_msg("%s", err);
            assert_int_equal(dv_loader_steps(l), 5);
            assert_int_equal(dv_loader_start(l, 1, 0, err), DV_OK);
            for (int step = 0; step < 5; step++) {
                dv_batch b;
                assert_int_equal(dv_loader_next(l, &b, err), DV_OK);
                assert_int_equal(b.count, G / W);
                for (int i = 0; i < b.count; i++) {
                    const int32_t *x = (const int32_t *)(const void *)b.x + i * 4;
                    int64_t w = b.index[i];
                    if (mode >= 2) /* global position k = r + i*W reads k*S + step */
                        assert_int_equal(w, (int64_t)(r + i * W) * 5 + step);
                    for (int j = 0; j < 4; j++) {
                        assert_int_equal(x[j], w * 4 + j);
                        assert_int_equal(b.labels[i * 4 + j], w * 4 + j + 1);
                    }
                }
            }
            dv_loader_free(l);
        }
    }
    dv_split_free(s);
    assert_int_equal(dv_split_open_tokens(&s, tpath("tsplit.h5"), "/train/tokens", 300, err),
                     DV_ERR);
    assert_has(err, "too few for one window of 300");
}

/* Writes a string attribute of fixed length (as the C API usually does). */
static void put_fixed_str(hid_t obj, const char *name, const char *value) {
    hid_t st = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
    H5Tset_size(st, strlen(value));
    hid_t a = H5Acreate2(obj, name, st, sp, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(H5Awrite(a, st, value) >= 0);
    H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(st);
}

static void put_int_attr(hid_t obj, const char *name, int64_t value) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(H5Awrite(a, H5T_NATIVE_INT64, &value) >= 0);
    H5Aclose(a);
    H5Sclose(sp);
}

/* A /vocab group written by hand: kind, size, codepoints (n of them). */
static void make_vocab(const char *name, const char *kind, int64_t size, const int32_t *cp, int n) {
    hid_t fid = new_file(name);
    const hsize_t dims[1] = {(hsize_t)n};
    write_ds(fid, "/vocab/codepoints", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, dims, cp, 0);
    hid_t g = H5Gopen2(fid, "/vocab", H5P_DEFAULT);
    if (kind) put_fixed_str(g, "kind", kind);
    put_int_attr(g, "size", size);
    H5Gclose(g);
    H5Fclose(fid);
}

static void test_vocab_errors(void **state) {
    (void)state;
    const int32_t cp[3] = {'a', 'b', 0xE9};
    dv_vocab v;
    char err[DV_ERR_LEN];
    make_vocab("v_ok.h5", "chars", 3, cp, 3);
    if (dv_vocab_read(&v, tpath("v_ok.h5"), NULL, err) != DV_OK) fail_msg("%s", err);
    assert_int_equal(v.kind, DV_VOCAB_CHARS);
    assert_int_equal(v.codepoints[2], 0xE9);
    dv_vocab_free(&v);
    make_vocab("v_kind.h5", "words", 3, cp, 3);
    ASSERT_SILENT(assert_int_equal(dv_vocab_read(&v, tpath("v_kind.h5"), NULL, err), DV_ERR));
    assert_has(err, "'kind', \"bytes\" or \"chars\" (it is \"words\")");
    make_vocab("v_nokind.h5", NULL, 3, cp, 3);
    assert_int_equal(dv_vocab_read(&v, tpath("v_nokind.h5"), NULL, err), DV_ERR);
    assert_has(err, "'kind'");
    make_vocab("v_size.h5", "chars", 4, cp, 3);
    assert_int_equal(dv_vocab_read(&v, tpath("v_size.h5"), NULL, err), DV_ERR);
    assert_has(err, "must be 4 integer code points");
    const int32_t unsorted[3] = {'b', 'a', 'c'};
    make_vocab("v_order.h5", "chars", 3, unsorted, 3);
    assert_int_equal(dv_vocab_read(&v, tpath("v_order.h5"), NULL, err), DV_ERR);
    assert_has(err, "/vocab/codepoints[1] = 97");
    make_vocab("v_bytes.h5", "bytes", 3, cp, 3);
    assert_int_equal(dv_vocab_read(&v, tpath("v_bytes.h5"), NULL, err), DV_ERR);
    assert_has(err, "size 256");
    make_stream("v_none.h5", 4);
    ASSERT_SILENT(assert_int_equal(dv_vocab_read(&v, tpath("v_none.h5"), NULL, err), DV_ERR));
    assert_has(err, "/vocab not found");
    assert_null(v.codepoints);
    dv_tokens *t;
    assert_int_equal(dv_tokens_open(&t, tpath("v_ok.h5"), "/vocab", err), DV_ERR);
    assert_has(err, "/vocab is a group");
    assert_int_equal(dv_tokens_open(&t, tpath("nothing.h5"), "/train/tokens", err), DV_ERR);
    assert_has(err, "nothing.h5: cannot open");
}

static void test_import_text_errors(void **state) {
    (void)state;
    char out[512];
    snprintf(out, sizeof(out), "%s", tpath("bad_text.h5"));
    dv_text_options opt = {.vocab = DV_VOCAB_BYTES, .val_fraction = 0.1};
    dv_text_report r;
    char err[DV_ERR_LEN];
    make_dir("notext");
    write_bytes("notext/a.bin", "\x01\x00", 2);
    write_text("notext/empty.txt", "");
    const char *no_text[] = {tpath("notext")};
    ASSERT_SILENT(assert_int_equal(dv_import_text(no_text, 1, &opt, out, &r, err), DV_ERR));
    assert_has(err, "no text to import: 1 file read, 1 skipped");
    assert_int_equal(r.files_skipped, 1);
    const char *missing[] = {tpath("missing.txt")};
    assert_int_equal(dv_import_text(missing, 1, &opt, out, &r, err), DV_ERR);
    assert_has(err, "missing.txt: cannot open: No such file");
    assert_int_equal(access(out, F_OK), -1); /* nothing written */
    write_text("short.txt", "abcdefghij");
    const char *in[] = {tpath("short.txt")};
    const double bad_val[] = {1.0, -0.1, 0.0 / 0.0};
    for (int i = 0; i < 3; i++) {
        opt.val_fraction = bad_val[i];
        assert_int_equal(dv_import_text(in, 1, &opt, out, &r, err), DV_ERR);
        assert_has(err, "outside [0, 1)");
    }
    opt.val_fraction = 0.1; /* one val token: no window */
    assert_int_equal(dv_import_text(in, 1, &opt, out, &r, err), DV_ERR);
    assert_has(err, "10 tokens of text are too few for --val 0.1");
    assert_int_equal(dv_import_text(in, 0, &opt, out, &r, err), DV_ERR);
    /* An existing output that is not HDF5 is left alone. */
    write_text("not_h5.h5", "hello");
    opt.val_fraction = 0;
    assert_int_equal(dv_import_text(in, 1, &opt, tpath("not_h5.h5"), &r, err), DV_ERR);
    assert_has(err, "not_h5.h5: not an HDF5 file");
}

/* ---- data safety: imports keep what exists, sizes are checked -------------- */

/* The whole file at path (malloc'd) and its size; NULL when missing. */
static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

/* Nothing named *.tmp.* is left in the test directory. */
static void assert_no_temporaries(void) {
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "ls '%s' | grep -q '\\.tmp\\.'", tmp_dir);
    assert_int_not_equal(system(cmd), 0);
}

/* A failed import (found half-way or up front) leaves the output byte for
 * byte as it was; a symbolic link to the output keeps pointing at it. */
static void test_import_keeps_existing(void **state) {
    (void)state;
    enum { N = 300 };
    uint8_t *img = calloc(N * 20, 1), lab[N] = {0};
    uint32_t id[3] = {N, 4, 5}, ld[1] = {N};
    write_idx("k_img.idx", 0x803, 3, id, img, N * 20, 0);
    write_idx("k_lab.idx", 0x801, 1, ld, lab, N, 0);
    write_idx("k_short.idx", 0x803, 3, id, img, 100 * 20, 0); /* header N, 100 images */
    write_idx("k_short.idx.gz", 0x803, 3, id, img, 100 * 20 + 7, 1);
    uint32_t huge[3] = {60000, 100000, 100000};
    write_idx("k_huge.idx", 0x803, 3, huge, img, 64, 0);
    uint32_t big[3] = {60000, 28, 28}; /* a sane image, a header asking for 47 MB */
    write_idx("k_big.idx", 0x803, 3, big, img, 64, 0);
    write_idx("k_biglab.idx", 0x801, 1, big, lab, N, 0);
    write_text("k_bad.csv", "1,2,0\n3,4,1\n5,x,0\n");
    FILE *f = fopen(tpath("k_nul.csv"), "wb");
    fwrite("1,2,0\n3,\0004,1\n5,6,0\n", 1, 18, f);
    fclose(f);

    char err[DV_ERR_LEN], out[512];
    snprintf(out, sizeof(out), "%s", tpath("keep.h5"));
    unlink(out);
    if (dv_import_idx(tpath("k_img.idx"), tpath("k_lab.idx"), out, "train", err) != DV_OK)
        fail_msg("%s", err);
    size_t n0, n1;
    char *before = slurp(out, &n0);
    assert_non_null(before);

    dv_status st = DV_OK;
    ASSERT_SILENT(st = dv_import_idx(tpath("k_short.idx"), tpath("k_lab.idx"), out, "train", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "k_short.idx: truncated: its header promises 300 images of 20 bytes but it "
                    "holds 100 whole images");
    ASSERT_SILENT(
        st = dv_import_idx(tpath("k_short.idx.gz"), tpath("k_lab.idx"), out, "train", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "k_short.idx.gz: truncated");
    assert_has(err, "holds 100 whole images");
    ASSERT_SILENT(st =
                      dv_import_idx(tpath("k_huge.idx"), tpath("k_biglab.idx"), out, "train", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "images of 100000 x 100000 pixels");
    ASSERT_SILENT(st = dv_import_idx(tpath("k_big.idx"), tpath("k_biglab.idx"), out, "train", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "k_big.idx: truncated: its header promises 60000 images of 784 bytes but it "
                    "holds 0 whole images");
    ASSERT_SILENT(st = dv_import_csv(tpath("k_bad.csv"), -1, 0, out, "train", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "k_bad.csv:3: field 2");
    ASSERT_SILENT(st = dv_import_csv(tpath("k_nul.csv"), -1, 0, out, "train", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "k_nul.csv:2: a NUL byte");
    char *after = slurp(out, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(after);
    assert_no_temporaries();

    /* a link to the output: the file behind it is replaced, the link kept */
    char link[512];
    snprintf(link, sizeof(link), "%s", tpath("keep_link.h5"));
    unlink(link);
    assert_int_equal(symlink(out, link), 0);
    write_text("k_ok.csv", "1,2,0\n3,4,1\n");
    if (dv_import_csv(tpath("k_ok.csv"), -1, 0, link, "val", err) != DV_OK) fail_msg("%s", err);
    struct stat sb;
    assert_int_equal(lstat(link, &sb), 0);
    assert_true(S_ISLNK(sb.st_mode));
    dv_split *s = NULL;
    if (dv_split_open(&s, out, "/val/x", "/val/y", err) != DV_OK) fail_msg("%s", err);
    assert_int_equal(dv_split_info_get(s)->n, 2);
    dv_split_free(s);
    if (dv_split_open(&s, out, "/train/x", "/train/y", err) != DV_OK) fail_msg("%s", err);
    assert_int_equal(dv_split_info_get(s)->n, N);
    dv_split_free(s);
    assert_no_temporaries();
    free(before);
    free(img);
}

/* A declared shape is trusted only as far as the file backs it. */
static void test_split_declared_sizes(void **state) {
    (void)state;
    char err[DV_ERR_LEN];
    dv_h5 *h = NULL;
    if (dv_h5_create(&h, tpath("sizes.h5"), err) != DV_OK) fail_msg("%s", err);
    /* 10^12 rows, chunked, never written: the file is a few KB */
    int64_t rows[2] = {1000000000000LL, 4}, labels[1] = {1000000000000LL};
    if (dv_h5_create_dataset(h, "/ghost/x", DV_H5_F32, 2, rows, 64, err) != DV_OK ||
        dv_h5_create_dataset(h, "/ghost/y", DV_H5_I32, 1, labels, 64, err) != DV_OK)
        fail_msg("%s", err);
    /* samples of 2^20 * 2^20 * 5 elements */
    int64_t wide[4] = {2, 1 << 20, 1 << 20, 5}, two[1] = {2};
    if (dv_h5_create_dataset(h, "/wide/x", DV_H5_U8, 4, wide, 0, err) != DV_OK ||
        dv_h5_create_dataset(h, "/wide/y", DV_H5_I32, 1, two, 2, err) != DV_OK)
        fail_msg("%s", err);
    if (dv_h5_close(h, err) != DV_OK) fail_msg("%s", err);
    dv_split *s = NULL;
    dv_status st = DV_OK;
    ASSERT_SILENT(st = dv_split_open(&s, tpath("sizes.h5"), "/ghost/x", "/ghost/y", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "/ghost/x declares 1000000000000 rows");
    assert_has(err, "a truncated or never written dataset");
    ASSERT_SILENT(st = dv_split_open(&s, tpath("sizes.h5"), "/wide/x", "/wide/y", err));
    assert_int_equal(st, DV_ERR);
    assert_has(err, "/wide/x: samples of more than 2^31 - 1 elements");
}

/* ---- main --------------------------------------------------------------- */

static int setup(void **state) {
    (void)state;
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/dv_test_data_XXXXXX",
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
        cmocka_unit_test(test_split_uint8_gzip),
        cmocka_unit_test(test_split_float64_int64),
        cmocka_unit_test(test_split_float_targets),
        cmocka_unit_test(test_split_errors),
        cmocka_unit_test(test_sampler_permutation),
        cmocka_unit_test(test_sampler_shards),
        cmocka_unit_test(test_eval_shard),
        cmocka_unit_test(test_loader_train_modes),
        cmocka_unit_test(test_loader_eval),
        cmocka_unit_test(test_loader_start_middle),
        cmocka_unit_test(test_loader_targets_and_errors),
        cmocka_unit_test(test_loader_io_error),
        cmocka_unit_test(test_import_idx),
        cmocka_unit_test(test_import_csv),
        cmocka_unit_test(test_import_text_bytes),
        cmocka_unit_test(test_import_text_chars),
        cmocka_unit_test(test_import_text_walk),
        cmocka_unit_test(test_import_text_split),
        cmocka_unit_test(test_tokens_windows),
        cmocka_unit_test(test_token_split_loader),
        cmocka_unit_test(test_vocab_errors),
        cmocka_unit_test(test_import_text_errors),
        cmocka_unit_test(test_import_keeps_existing),
        cmocka_unit_test(test_split_declared_sizes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
