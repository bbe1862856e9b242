/* test_train_mpi.c — the data-parallel contracts of docs/design.md, checked on
 * the real `dive` binary: the same config and seed on 1, 2 and 3 ranks ends
 * with the same parameters (within 1e-5 relative: only the summation order
 * differs), and a run stopped mid-epoch and resumed continues bit for bit
 * as the run that was never stopped (and within tolerance when resumed on
 * another number of ranks). The same for sequence models and for a GAN's
 * two models, whose losses must also move the right way.
 *
 * Runs `dive` through mpirun (DIVE_BIN from CTest); the data is a small
 * generated HDF5 file. Label: mpi.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];
static const char *dive;

static void write_ds(hid_t f, const char *name, hid_t mem, hid_t file_type, int rank,
                     const hsize_t *dims, const void *data) {
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t ds = H5Dcreate2(f, name, file_type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(ds >= 0);
    assert_true(H5Dwrite(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
    H5Dclose(ds);
    H5Sclose(sp);
}

/* 3 classes of 10-feature points, labelled by a fixed linear rule. */
static void make_data(const char *path) {
    enum { N = 360, V = 90, F = 10 };
    static float x[N + V][F];
    static int32_t y[N + V];
    uint64_t s = 12345;
    for (int i = 0; i < N + V; i++) {
        float a = 0, b = 0;
        for (int j = 0; j < F; j++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            x[i][j] = (float)((double)(s >> 11) / 9007199254740992.0 * 2 - 1);
            a += x[i][j] * (j % 3 == 0 ? 1.0f : -0.5f);
            b += x[i][j] * (j % 2 ? 0.7f : -0.2f);
        }
        y[i] = a > 0.2f ? 0 : (b > 0 ? 1 : 2);
    }
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g1 = H5Gcreate2(f, "/train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g2 = H5Gcreate2(f, "/val", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dx[2] = {N, F}, dy[1] = {N}, vx[2] = {V, F}, vy[1] = {V};
    write_ds(f, "/train/x", H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, 2, dx, x);
    write_ds(f, "/train/y", H5T_NATIVE_INT32, H5T_STD_I32LE, 1, dy, y);
    write_ds(f, "/val/x", H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, 2, vx, x[N]);
    write_ds(f, "/val/y", H5T_NATIVE_INT32, H5T_STD_I32LE, 1, vy, y + N);
    H5Gclose(g1);
    H5Gclose(g2);
    H5Fclose(f);
}

static void write_config(const char *path, const char *data, const char *optimizer) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "[data]\nfile = %s\ntrain = /train\nval = /val\nprefetch = 1\n\n"
            "[train]\nepochs = 3\nbatch = 12\noptimizer = %s\nlr = 0.01\nseed = 7\n"
            "loss = cross_entropy\nkeep = 0\n\n"
            "[input]\nshape = 10\n\n"
            "[dense]\nunits = 24\nactivation = tanh\n\n"
            "[dropout]\nrate = 0.25\n\n"
            "[dense]\nunits = 16\nactivation = relu\n\n"
            "[dense]\nunits = 3\n",
            data, optimizer);
    fclose(f);
}

/* Runs dive train on np ranks (0: without mpirun); returns the exit code.
 * A new run (no --resume in extra) replaces what an earlier case left in
 * run_dir (--overwrite). */
static int train(int np, const char *cfg, const char *run_dir, const char *extra) {
    char cmd[2048];
    char launcher[128] = "";
    if (np) snprintf(launcher, sizeof(launcher), "mpirun --oversubscribe -np %d ", np);
    const char *fresh = extra && strstr(extra, "--resume") ? "" : "--overwrite";
    snprintf(cmd, sizeof(cmd),
             "%s%s train %s --set train.run_dir=%s --set train.threads=1 %s %s > %s.log 2>&1",
             launcher, dive, cfg, run_dir, extra ? extra : "", fresh, run_dir);
    int rc = system(cmd);
    if (rc) {
        char cat[600];
        snprintf(cat, sizeof(cat), "cat %s.log", run_dir);
        if (system(cat)) {
        }
    }
    return rc;
}

/* Reads every /model dataset of a checkpoint into one array (in visit order). */
typedef struct params {
    float *v;
    size_t n, cap;
} params;

static herr_t collect(hid_t obj, const char *name, const H5O_info_t *info, void *data) {
    params *p = data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t ds = H5Dopen2(obj, name, H5P_DEFAULT);
    hid_t sp = H5Dget_space(ds);
    size_t n = (size_t)H5Sget_simple_extent_npoints(sp);
    if (p->n + n > p->cap) {
        p->cap = (p->n + n) * 2;
        p->v = realloc(p->v, p->cap * sizeof(float));
    }
    H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, p->v + p->n);
    p->n += n;
    H5Sclose(sp);
    H5Dclose(ds);
    return 0;
}

/* Every dataset under `group` of a checkpoint, in visit order. */
static params load_group(const char *path, const char *group) {
    params p = {0};
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
    assert_true(g >= 0);
    H5Ovisit2(g, H5_INDEX_NAME, H5_ITER_INC, collect, &p, H5O_INFO_BASIC);
    H5Gclose(g);
    H5Fclose(f);
    assert_true(p.n > 0);
    return p;
}

static params load(const char *path) {
    return load_group(path, "/model");
}

static double max_rel_diff(const params *a, const params *b) {
    assert_int_equal(a->n, b->n);
    double worst = 0;
    for (size_t i = 0; i < a->n; i++) {
        double d = fabs((double)a->v[i] - b->v[i]);
        double scale = fabs((double)a->v[i]) > 1e-2 ? fabs((double)a->v[i]) : 1e-2;
        if (d / scale > worst) worst = d / scale;
    }
    return worst;
}

/* The largest relative difference between the params of two checkpoints. */
static double ckpt_rel_diff(const char *a_path, const char *b_path) {
    params a = load(a_path), b = load(b_path);
    double d = max_rel_diff(&a, &b);
    free(a.v);
    free(b.v);
    return d;
}

static void path_of(char *out, const char *name) {
    snprintf(out, 512, "%s/%s", dir, name);
}

static void test_world_sizes_agree(void **state) {
    (void)state;
    const char *opts[] = {"adam", "nesterov"};
    for (int o = 0; o < 2; o++) {
        char cfg[512], r1[512], r2[512], r3[512], c1[600], c2[600], c3[600], data[512];
        path_of(data, "data.h5");
        path_of(cfg, "agree.cfg");
        write_config(cfg, data, opts[o]);
        path_of(r1, "r1");
        path_of(r2, "r2");
        path_of(r3, "r3");
        assert_int_equal(train(0, cfg, r1, NULL), 0);
        assert_int_equal(train(2, cfg, r2, NULL), 0);
        assert_int_equal(train(3, cfg, r3, NULL), 0);
        snprintf(c1, sizeof(c1), "%s/last.h5", r1);
        snprintf(c2, sizeof(c2), "%s/last.h5", r2);
        snprintf(c3, sizeof(c3), "%s/last.h5", r3);
        params p1 = load(c1), p2 = load(c2), p3 = load(c3);
        double d2 = max_rel_diff(&p1, &p2), d3 = max_rel_diff(&p1, &p3);
        printf("# %s: 1 vs 2 ranks max rel diff %.3g, 1 vs 3 ranks %.3g\n", opts[o], d2, d3);
        assert_true(d2 < 1e-5);
        assert_true(d3 < 1e-5);
        /* and training moved the parameters: compare against an untrained model */
        char r0[512], c0[600];
        path_of(r0, "r0");
        assert_int_equal(train(0, cfg, r0, "--set train.max_steps=1"), 0);
        snprintf(c0, sizeof(c0), "%s/last.h5", r0);
        params p0 = load(c0);
        assert_true(max_rel_diff(&p0, &p1) > 1e-2);
        free(p0.v);
        free(p1.v);
        free(p2.v);
        free(p3.v);
    }
}

static int files_equal_models(const char *a, const char *b) {
    params pa = load(a), pb = load(b);
    int same = pa.n == pb.n && !memcmp(pa.v, pb.v, pa.n * sizeof(float));
    free(pa.v);
    free(pb.v);
    return same;
}

static void test_resume_is_exact(void **state) {
    (void)state;
    char cfg[512], data[512], full[512], part[512], other[512], c[3][600];
    path_of(data, "data.h5");
    path_of(cfg, "resume.cfg");
    write_config(cfg, data, "adam");
    path_of(full, "full");
    path_of(part, "part");
    path_of(other, "other");
    /* 30 steps per epoch: stop at step 40, in the middle of epoch 2 */
    assert_int_equal(train(2, cfg, full, NULL), 0);
    assert_int_equal(train(2, cfg, part, "--set train.max_steps=40"), 0);
    assert_int_equal(train(2, cfg, part, "--resume auto"), 0);
    snprintf(c[0], 600, "%s/last.h5", full);
    snprintf(c[1], 600, "%s/last.h5", part);
    assert_true(files_equal_models(c[0], c[1]));
    /* the same stop, resumed on 3 ranks: same global batch, same trajectory */
    assert_int_equal(train(2, cfg, other, "--set train.max_steps=40"), 0);
    assert_int_equal(train(3, cfg, other, "--resume auto"), 0);
    snprintf(c[2], 600, "%s/last.h5", other);
    double d = ckpt_rel_diff(c[0], c[2]);
    printf("# resumed 2 -> 3 ranks vs uninterrupted: max rel diff %.3g\n", d);
    assert_true(d < 1e-5);
    /* metrics.csv of the resumed run matches the uninterrupted one's losses */
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "cut -d, -f1-5 %s/metrics.csv > %s/a.txt && cut -d, -f1-5 %s/metrics.csv > "
             "%s/b.txt && cmp -s %s/a.txt %s/b.txt",
             full, dir, part, dir, dir, dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- sequence models on a token file ------------------------------------ */

/* A text with structure to learn, imported as a character token file. */
static void make_text_data(const char *path) {
    char txt[512], cmd[2048];
    path_of(txt, "corpus.txt");
    FILE *f = fopen(txt, "w");
    assert_non_null(f);
    static const char *const words[] = {"the ",   "cat ", "sat ", "on ",  "a ",
                                        "mat.\n", "dog ", "ran ", "far ", "away.\n"};
    uint64_t s = 99;
    for (int i = 0; i < 3000; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        fputs(words[(s >> 33) % 10], f);
    }
    fclose(f);
    snprintf(cmd, sizeof(cmd), "%s import text %s -o %s --vocab chars --val 0.1 > %s.log 2>&1",
             dive, txt, path, path);
    assert_int_equal(system(cmd), 0);
}

static void write_seq_config(const char *path, const char *data, const char *model,
                             const char *optimizer) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "[data]\nfile = %s\nval = /val\n\n"
            "[train]\nepochs = 2\nbatch = 12\noptimizer = %s\nlr = %s\nmomentum = 0.9\n"
            "seed = 5\nloss = cross_entropy\nkeep = 0\nclip_norm = 1\n\n"
            "[input]\ntokens = 16\n\n%s",
            data, optimizer, strcmp(optimizer, "adam") ? "0.05" : "0.01", model);
    fclose(f);
}

static const char lstm_model[] = "[embedding]\ndim = 8\npositions = none\n\n"
                                 "[lstm]\nunits = 16\nlayers = 2\n\n"
                                 "[dense]\nunits = vocab\n";
static const char stateful_model[] = "[embedding]\ndim = 8\npositions = none\n\n"
                                     "[gru]\nunits = 16\nstateful = true\n\n"
                                     "[dense]\nunits = vocab\n";
static const char gpt_model[] = "[embedding]\nname = tok\ndim = 16\n\n"
                                "[transformer]\nheads = 2\ndropout = 0.1\n\n"
                                "[transformer]\nheads = 2\ndropout = 0.1\n\n"
                                "[layernorm]\n\n"
                                "[dense]\ntie = tok\n";

/* 1, 2 and 3 ranks train the same LSTM, stateful GRU and GPT (dropout
 * included) to the same parameters; a run stopped mid-epoch and resumed
 * ends bit for bit where the uninterrupted run ends, the stateful GRU's
 * carried state included. The world sizes are
 * compared under momentum SGD: Adam divides by the root of each
 * gradient's square, so on weights whose gradients are nearly zero it
 * turns the last-bit differences of another summation order into
 * full-size steps (1e-3 apart after 100 steps here), which says nothing
 * about the data-parallel arithmetic. Resume is checked under Adam. */
static void test_sequence_models(void **state) {
    (void)state;
    char data[512];
    path_of(data, "text.h5");
    make_text_data(data);
    const char *const models[] = {lstm_model, stateful_model, gpt_model};
    const char *const names[] = {"lstm", "stateful gru", "gpt"};
    for (int k = 0; k < 3; k++) {
        char cfg[512], r[4][512], c[4][2100];
        path_of(cfg, "seq.cfg");
        write_seq_config(cfg, data, models[k], "momentum");
        for (int i = 0; i < 4; i++) {
            char name[16];
            snprintf(name, sizeof(name), "seq%d_%d", k, i);
            path_of(r[i], name);
            snprintf(c[i], sizeof(c[i]), "%s/last.h5", r[i]);
        }
        assert_int_equal(train(0, cfg, r[0], NULL), 0);
        assert_int_equal(train(2, cfg, r[1], NULL), 0);
        assert_int_equal(train(3, cfg, r[2], NULL), 0);
        params p1 = load(c[0]), p2 = load(c[1]), p3 = load(c[2]);
        double d2 = max_rel_diff(&p1, &p2), d3 = max_rel_diff(&p1, &p3);
        printf("# %s: 1 vs 2 ranks max rel diff %.3g, 1 vs 3 ranks %.3g\n", names[k], d2, d3);
        /* rounding only (it grows over the steps: ~2e-7 after one step,
         * ~1e-5 to 6e-5 after 112 for the GPT); a misplaced row, position
         * or mask would be ~1e-2 off */
        assert_true(d2 < 2e-4);
        assert_true(d3 < 2e-4);
        free(p1.v);
        free(p2.v);
        free(p3.v);
        if (k == 1) {
            /* the stateful GRU stopped mid-epoch on 2 ranks and resumed on
             * 3: the checkpoint's carried state is re-sharded to the new
             * ranks, so it ends where the uninterrupted run ends (rounding
             * apart); restarting the streams from zeros would be ~1e-2 off */
            assert_int_equal(train(2, cfg, r[3], "--set train.max_steps=70"), 0);
            assert_int_equal(train(3, cfg, r[3], "--resume auto"), 0);
            double d = ckpt_rel_diff(c[1], c[3]);
            printf("# stateful gru: stopped on 2 ranks, resumed on 3, vs uninterrupted: %.3g\n", d);
            assert_true(d < 2e-4);
        }
        /* stop in the middle of epoch 2 and resume: bit for bit (the
         * stateful GRU's streams go on from the checkpoint's state) */
        write_seq_config(cfg, data, models[k], "adam");
        assert_int_equal(train(2, cfg, r[1], NULL), 0);
        assert_int_equal(train(2, cfg, r[3], "--set train.max_steps=70"), 0);
        assert_int_equal(train(2, cfg, r[3], "--resume auto"), 0);
        assert_true(files_equal_models(c[1], c[3]));
    }
}

/* ---- a GAN -------------------------------------------------------------- */

/* 8x8 images in [-1, 1]: a bright horizontal or vertical bar on a dark
 * background, at a random row or column. */
static void make_image_data(const char *path) {
    enum { N = 192, S = 8 };
    static float x[N][1][S][S];
    uint64_t s = 99;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        int at = (int)((s >> 33) % S), vertical = (int)((s >> 40) & 1);
        for (int r = 0; r < S; r++)
            for (int c = 0; c < S; c++)
                x[i][0][r][c] = (vertical ? c : r) == at ? 0.9f : -0.9f;
    }
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g = H5Gcreate2(f, "/train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dx[4] = {N, 1, S, S};
    write_ds(f, "/train/x", H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, 4, dx, x);
    H5Gclose(g);
    H5Fclose(f);
}

/* A GAN on those images: G dense -> dropout -> dense -> reshape -> tanh, D
 * a strided conv with dropout (the masks of both follow global rows, so 1
 * and N ranks agree). */
static void write_gan_config(const char *path, const char *data, const char *extra) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "[data]\nfile = %s\ntrain = /train\n\n"
            "[train]\nepochs = 3\nbatch = 12\nlr = 0.002\nbeta1 = 0.5\nseed = 11\nkeep = 0\n\n"
            "[gan]\nlatent = 6\nsamples = 10\n\n"
            "[generator.dense]\nunits = 32\nactivation = relu\n\n"
            "[generator.dropout]\nrate = 0.1\n\n"
            "[generator.dense]\nunits = 64\nactivation = tanh\n\n"
            "[generator.reshape]\nshape = 1,8,8\n\n"
            "[discriminator.conv2d]\nfilters = 4\nsize = 3\nstride = 2\npad = 1\n"
            "activation = leaky_relu\nalpha = 0.2\n\n"
            "[discriminator.flatten]\n\n"
            "[discriminator.dropout]\nrate = 0.2\n\n"
            "[discriminator.dense]\nunits = 1\n%s",
            data, extra ? extra : "");
    fclose(f);
}

/* 1 if the checkpoint at `path` has the group `name`. */
static int has_group(const char *path, const char *name) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    int has = H5Lexists(f, name, H5P_DEFAULT) > 0;
    H5Fclose(f);
    return has;
}

/* Both models' parameters of a GAN checkpoint, and the averaged
 * generator's when both have one. */
static double gan_rel_diff(const char *a, const char *b) {
    double worst = 0;
    const char *groups[] = {"/generator/model", "/discriminator/model", "/generator_ema/model"};
    const int n = has_group(a, "/generator_ema") && has_group(b, "/generator_ema") ? 3 : 2;
    for (int i = 0; i < n; i++) {
        params pa = load_group(a, groups[i]), pb = load_group(b, groups[i]);
        double d = max_rel_diff(&pa, &pb);
        worst = d > worst ? d : worst;
        free(pa.v);
        free(pb.v);
    }
    return worst;
}

/* Column `col` (1-based) of metrics.csv row `row` (1 = the first epoch). */
static double metric(const char *run_dir, int row, int col) {
    char path[600], line[1024];
    snprintf(path, sizeof(path), "%s/metrics.csv", run_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    for (int i = 0; i <= row; i++)
        assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    char *p = line;
    for (int c = 1; c < col; c++) {
        p = strchr(p, ',');
        assert_non_null(p);
        p++;
    }
    return strtod(p, NULL);
}

/* The GAN of `cfg` with `opts`, run as <name>1 on 1 rank and <name>2 on 2
 * with the same global batch: the same models (c[0], c[1] their last.h5);
 * and <name>part, stopped at step 20 and resumed (c[2]): bit for bit. */
static void gan_ranks_and_resume(const char *cfg, const char *name, const char *opts,
                                 char c[3][600]) {
    char run[3][512], tag[64], stop[256];
    const char *suffix[] = {"1", "2", "part"};
    for (int i = 0; i < 3; i++) {
        snprintf(tag, sizeof(tag), "%s%s", name, suffix[i]);
        path_of(run[i], tag);
        snprintf(c[i], 600, "%.580s/last.h5", run[i]);
    }
    assert_int_equal(train(0, cfg, run[0], opts), 0);
    assert_int_equal(train(2, cfg, run[1], opts), 0);
    double d = gan_rel_diff(c[0], c[1]);
    printf("# %s: 1 vs 2 ranks max rel diff %.3g\n", name, d);
    assert_true(d < 1e-5);
    /* 16 steps per epoch: stopped at 20 and resumed, bit for bit */
    snprintf(stop, sizeof(stop), "%s --set train.max_steps=20", opts ? opts : "");
    assert_int_equal(train(2, cfg, run[2], stop), 0);
    assert_int_equal(train(2, cfg, run[2], "--resume auto"), 0);
    assert_true(gan_rel_diff(c[1], c[2]) == 0.0);
}

/* 0 if `dive sample` of ckpt with the run's seed, into dir/png, draws the
 * run's grid of its third (last) epoch. */
static int sample_is_last_grid(const char *ckpt, const char *run_dir, const char *png) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "%s sample %s -o %s/%s --count 10 > /dev/null && cmp %s/%s "
             "%s/samples-epoch-003.png",
             dive, ckpt, dir, png, dir, png, run_dir);
    return system(cmd);
}

static void test_gan_contracts(void **state) {
    (void)state;
    char data[512], cfg[512], r1[512], r2[512], part[512], c[3][600];
    path_of(data, "images.h5");
    make_image_data(data);
    path_of(cfg, "gan.cfg");
    write_gan_config(cfg, data, NULL);
    path_of(r1, "gan1");
    path_of(r2, "gan2");
    path_of(part, "ganpart");
    gan_ranks_and_resume(cfg, "gan", NULL, c);
    /* the same stop resumed on 3 ranks: the same global batch, the same run */
    char other[512], oc[600];
    path_of(other, "ganother");
    assert_int_equal(train(2, cfg, other, "--set train.max_steps=20"), 0);
    assert_int_equal(train(3, cfg, other, "--resume auto"), 0);
    snprintf(oc, sizeof(oc), "%s/last.h5", other);
    double d = gan_rel_diff(c[1], oc);
    printf("# GAN: stopped on 2 ranks, resumed on 3, vs uninterrupted: %.3g\n", d);
    assert_true(d < 1e-5);
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "cmp -s %s/metrics.csv %s/metrics.csv || "
             "(cut -d, -f1-7 %s/metrics.csv > %s/ga.txt && cut -d, -f1-7 %s/metrics.csv > "
             "%s/gb.txt && cmp %s/ga.txt %s/gb.txt)",
             r2, part, r2, dir, part, dir, dir, dir);
    assert_int_equal(system(cmd), 0);
    /* a grid per epoch; dive sample of the run's seed draws the last one */
    for (int e = 1; e <= 3; e++) {
        snprintf(cmd, sizeof(cmd), "test -s %s/samples-epoch-%03d.png", r1, e);
        assert_int_equal(system(cmd), 0);
    }
    assert_int_equal(sample_is_last_grid(c[0], r1, "again.png"), 0);
    /* 10 images of 8x8 in a 4-wide grid with 2-pixel gaps: 42 x 32 */
    char png[600];
    snprintf(png, sizeof(png), "%s/again.png", dir);
    FILE *f = fopen(png, "rb");
    assert_non_null(f);
    unsigned char h[24];
    assert_int_equal(fread(h, 1, 24, f), 24);
    fclose(f);
    assert_memory_equal(h, "\x89PNG\r\n\x1a\n", 8);
    assert_int_equal((h[16] << 24) | (h[17] << 16) | (h[18] << 8) | h[19], 4 * 10 + 2);
    assert_int_equal((h[20] << 24) | (h[21] << 16) | (h[22] << 8) | h[23], 3 * 10 + 2);
}

/* [gan] ema: the averaged generator follows its recurrence, leaves the
 * training alone, keeps the 1-vs-N and resume contracts, and is what the
 * grids and `dive sample` draw. */
static void test_gan_ema(void **state) {
    (void)state;
    char data[512], cfg[512], plain[512], e1[512], part[512], c[3][600], p[600], cmd[4096];
    path_of(data, "images.h5");
    make_image_data(data);
    path_of(cfg, "gan_ema.cfg");
    write_gan_config(cfg, data, NULL);
    path_of(plain, "ema_plain");
    path_of(e1, "ema1");
    gan_ranks_and_resume(cfg, "ema", "--set gan.ema=0.9", c);
    assert_int_equal(train(0, cfg, plain, NULL), 0);
    snprintf(p, sizeof(p), "%s/last.h5", plain);
    assert_false(has_group(p, "/generator_ema"));
    assert_true(has_group(c[0], "/generator_ema"));
    /* the average is kept beside the game, not in it: G and D unchanged */
    assert_true(gan_rel_diff(p, c[0]) == 0.0);
    /* a run that turns ema on when it resumes averages from there on */
    char late[512], lc[600];
    path_of(late, "ema_late");
    assert_int_equal(train(0, cfg, late, "--set train.max_steps=20"), 0);
    assert_int_equal(train(0, cfg, late, "--set gan.ema=0.9 --resume auto"), 0);
    snprintf(lc, sizeof(lc), "%s/last.h5", late);
    assert_true(has_group(lc, "/generator_ema"));
    assert_true(gan_rel_diff(p, lc) == 0.0);
    /* the grid comes from the averaged generator, and dive sample draws it */
    snprintf(cmd, sizeof(cmd), "cmp -s %s/samples-epoch-003.png %s/samples-epoch-003.png", plain,
             e1);
    assert_int_not_equal(system(cmd), 0);
    assert_int_equal(sample_is_last_grid(c[0], e1, "ema_again.png"), 0);

    /* the recurrence, weights and batch-norm statistics alike: after step
     * 2 (t = 1), E = d E' + (1 - d) G with d = min(0.5, 2/11) */
    path_of(cfg, "gan_ema_bn.cfg");
    write_gan_config(cfg, data, "\n[generator.batchnorm]\n");
    path_of(part, "emabn");
    assert_int_equal(train(0, cfg, part, "--set gan.ema=0.5 --set train.max_steps=1"), 0);
    char one[600];
    path_of(one, "emabn_step1.h5");
    snprintf(cmd, sizeof(cmd), "cp %s/last.h5 %s", part, one);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(train(0, cfg, part, "--set gan.ema=0.5 --set train.max_steps=2 --resume auto"),
                     0);
    snprintf(c[0], 600, "%s/last.h5", part);
    params e0 = load_group(one, "/generator_ema/model"), g = load_group(c[0], "/generator/model"),
           e = load_group(c[0], "/generator_ema/model");
    assert_int_equal(e.n, g.n);
    assert_int_equal(e0.n, g.n);
    const double k = 2.0 / 11;
    double worst = 0, apart = 0;
    for (size_t i = 0; i < e.n; i++) {
        double want = k * e0.v[i] + (1 - k) * g.v[i];
        double err = fabs(e.v[i] - want) / (fabs(want) > 1e-2 ? fabs(want) : 1e-2);
        worst = err > worst ? err : worst;
        apart = fmax(apart, fabs((double)e.v[i] - g.v[i]));
    }
    printf("# GAN ema recurrence: max rel err %.3g over %zu values (E - G up to %.3g)\n", worst,
           e.n, apart);
    assert_true(worst < 1e-5);
    assert_true(apart > 1e-4); /* the average is not the generator itself */
    free(e0.v);
    free(g.v);
    free(e.v);
}

/* Each model learns against a frozen other: with D's lr at 0 G's loss
 * falls, with G's at 0 D's loss falls. */
static void test_gan_losses_move(void **state) {
    (void)state;
    char data[512], cfg[512], run[512];
    path_of(data, "images.h5");
    path_of(cfg, "frozen_d.cfg");
    write_gan_config(cfg, data, "\n[discriminator.train]\nlr = 0\n");
    path_of(run, "frozen_d");
    assert_int_equal(train(0, cfg, run, "--set train.epochs=4"), 0);
    double g1 = metric(run, 1, 5), g4 = metric(run, 4, 5);
    printf("# D frozen: g_loss %.4f -> %.4f\n", g1, g4);
    assert_true(g4 < 0.7 * g1);
    path_of(cfg, "frozen_g.cfg");
    write_gan_config(cfg, data, "\n[generator.train]\nlr = 0\n");
    path_of(run, "frozen_g");
    assert_int_equal(train(0, cfg, run, "--set train.epochs=4"), 0);
    double d1 = metric(run, 1, 4), d4 = metric(run, 4, 4);
    printf("# G frozen: d_loss %.4f -> %.4f\n", d1, d4);
    assert_true(d4 < 0.7 * d1);
}

int main(void) {
    dive = getenv("DIVE_BIN");
    if (!dive) {
        fprintf(stderr, "DIVE_BIN is not set (run through ctest)\n");
        return 1;
    }
    snprintf(dir, sizeof(dir), "/tmp/dive-test-mpi-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    char data[512];
    path_of(data, "data.h5");
    make_data(data);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_world_sizes_agree), cmocka_unit_test(test_resume_is_exact),
        cmocka_unit_test(test_sequence_models),   cmocka_unit_test(test_gan_contracts),
        cmocka_unit_test(test_gan_losses_move),   cmocka_unit_test(test_gan_ema),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (!failed) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd)) {
        }
    }
    return failed;
}
