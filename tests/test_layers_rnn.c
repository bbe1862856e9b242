/* test_layers_rnn.c — the recurrent layers [rnn], [lstm], [gru]
 * (model/layer_rnn.c), built from config text into whole models.
 *
 *  - config: param names and shapes, output shapes, and the errors for a
 *    non-sequence input, too many layers, a missing `units`;
 *  - forward against a reference in double of PyTorch's equations, written
 *    here from the params by name (so the weight layouts are PyTorch's);
 *  - the whole model's gradient (params and the model input) against
 *    central differences of a loss computed on the host in double, for every
 *    cell, return = all / last, one or two stacked layers, with and without
 *    a [dense] after it, cross-entropy and mse;
 *  - causality: with return = all, changing step t leaves every output
 *    before t bit for bit unchanged (and changes step t);
 *  - stateful: two training windows with carry = 1 give the outputs of one
 *    forward over the concatenated sequence, an eval forward between them
 *    changes nothing, carry = 0 restarts from zeros; the truncated-BPTT
 *    gradient of a carried window against differences that keep the carried
 *    state fixed;
 *  - the CUDA backend against the CPU: the same models and inputs, outputs,
 *    every gradient and dx within 1e-4 relative. Without a usable device one
 *    "no CUDA device" line says why and that case is skipped; the emulated
 *    build (test_layers_rnn_emu) must run it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_model.h"
#include "test_rand.h"

static dv_backend *cpu, *gpu;
static char why[512];

static const char *const cells[] = {"rnn", "lstm", "gru"};
#define NCELLS 3

/* ---- models from config text ------------------------------------------- */

typedef struct spec {
    const char *cell;
    int T, F, H, layers;
    int last;     /* return = last */
    int stateful; /* stateful = true */
    int dense;    /* units of a [dense] after it; 0: none */
} spec;

static void spec_text(const spec *s, char *buf, size_t len) {
    int n = snprintf(buf, len,
                     "[input]\nshape = %d,%d\nsequence = true\n[%s]\nunits = %d\nlayers = %d\n"
                     "return = %s\nstateful = %s\n",
                     s->T, s->F, s->cell, s->H, s->layers, s->last ? "last" : "all",
                     s->stateful ? "true" : "false");
    if (s->dense) snprintf(buf + n, len - (size_t)n, "[dense]\nunits = %d\n", s->dense);
}

static dv_model *build(const spec *s, dv_backend *be, dv_loss loss, int B) {
    char text[512];
    spec_text(s, text, sizeof text);
    return test_model_build(text, be, loss, B, 0);
}

static const dv_param *find_param(const dv_layer *l, const char *name) {
    for (int k = 0; k < l->nparam; k++)
        if (!strcmp(l->param[k].name, name)) return &l->param[k];
    fail_msg("%s has no param %s", l->name, name);
    return NULL;
}

/* ---- one training step, on either backend ------------------------------- */

/* Host copies of what a step reads; x1, when not NULL, is a first window
 * run (training, carry = 0) before x (training, carry = 1), as a stateful
 * layer sees two consecutive batches. */
typedef struct run {
    dv_model *m;
    int B;
    float *x1, *x;   /* (B, in_elems) */
    int32_t *labels; /* (B * positions) */
    float *targets;  /* (B * positions, outputs) */
    dv_loss loss;
} run;

static void upload(dv_model *m, const void *host, void *dev, size_t bytes) {
    m->be->to_device(m->be->ctx, dev, host, bytes);
}

static void run_init(run *r, dv_model *m, int B, dv_loss loss, int two_windows) {
    memset(r, 0, sizeof *r);
    r->m = m;
    r->B = B;
    r->loss = loss;
    const size_t nx = (size_t)B * m->in_elems, rows = (size_t)B * m->positions;
    r->x = test_fbuf(nx);
    test_rand_fill(r->x, nx, -1.0f, 1.0f);
    if (two_windows) {
        r->x1 = test_fbuf(nx);
        test_rand_fill(r->x1, nx, -1.0f, 1.0f);
    }
    r->labels = calloc(rows, sizeof *r->labels);
    assert_non_null(r->labels);
    for (size_t i = 0; i < rows; i++)
        r->labels[i] = (int32_t)((i * 7 + 3) % (size_t)m->outputs);
    r->targets = test_fbuf(rows * (size_t)m->outputs);
    test_rand_fill(r->targets, rows * (size_t)m->outputs, -0.5f, 0.5f);
    upload(m, r->labels, m->labels, rows * sizeof *r->labels);
    upload(m, r->targets, m->targets, rows * (size_t)m->outputs * sizeof(float));
}

static void run_free(run *r) {
    free(r->x1);
    free(r->x);
    free(r->labels);
    free(r->targets);
}

/* The first window (if any), then the second with *slot = value when slot
 * is not NULL (restored after), so a carried state is the unperturbed one. */
static void forward_windows(run *r, float *slot, float value) {
    dv_model *m = r->m;
    const size_t bytes = (size_t)r->B * m->in_elems * sizeof(float);
    if (r->x1) {
        upload(m, r->x1, m->input, bytes);
        m->carry = 0;
        dv_model_forward(m, r->B, 1);
    }
    const float base = slot ? *slot : 0.0f;
    if (slot) *slot = value;
    upload(m, r->x, m->input, bytes);
    m->carry = r->x1 != NULL;
    dv_model_forward(m, r->B, 1);
    if (slot) *slot = base;
}

static float *last_output(dv_model *m, int B) {
    const dv_layer *l = &m->layers[m->nlayers - 1];
    return test_dget(m->be, m->acts[m->nlayers - 1], (size_t)B * l->out_elems * sizeof(float));
}

/* The loss of the last forward in double, as the backend's losses define
 * it: -log softmax(logits)[label] per row, or sum_k (p - t)^2 / K. */
static double host_loss(run *r) {
    dv_model *m = r->m;
    const int K = m->outputs;
    const size_t rows = (size_t)r->B * m->positions;
    float *out = last_output(m, r->B);
    double total = 0;
    for (size_t i = 0; i < rows; i++) {
        const float *o = out + i * K;
        if (r->loss == DV_LOSS_XENT) {
            double mx = o[0], s = 0;
            for (int k = 1; k < K; k++)
                mx = fmax(mx, o[k]);
            for (int k = 0; k < K; k++)
                s += exp(o[k] - mx);
            total += mx + log(s) - o[r->labels[i]];
        } else {
            double s = 0;
            for (int k = 0; k < K; k++) {
                const double d = (double)o[k] - r->targets[i * K + k];
                s += d * d;
            }
            total += s / K;
        }
    }
    free(out);
    return total;
}

/* dv_model_backward, but with the first layer's dx (the model input's
 * gradient) written to dx (device, B * in_elems). */
static void backward_with_dx(dv_model *m, int B, float *dx) {
    int cur = 0;
    for (int i = m->nlayers - 1; i >= 0; i--) {
        dv_layer *l = &m->layers[i];
        const float *x = i ? m->acts[i - 1] : m->input;
        l->ops->backward(l, m, x, m->acts[i], m->dbuf[cur], i ? m->dbuf[cur ^ 1] : dx, B);
        cur ^= 1;
    }
}

/* Zeroed grads, the step's forward, the fused loss and backward. */
static void grad_step(run *r, float *dx) {
    dv_model *m = r->m;
    m->be->fill(m->be->ctx, m->grads, 0.0f, m->nparams);
    forward_windows(r, NULL, 0.0f);
    m->be->fill(m->be->ctx, m->stats, 0.0f, 2);
    dv_model_loss(m, r->B, 1.0f);
    backward_with_dx(m, r->B, dx);
}

/* ---- finite differences (CPU backend: params are host memory) ----------- */

/* The loss with *slot = value in the last window only: a first window runs
 * at the unperturbed value, so a carried state stays what it was. */
static double loss_at(run *r, float *slot, float value) {
    forward_windows(r, slot, value);
    return host_loss(r);
}

/* Worst |fd - analytic| / max(1e-2, |fd| + |analytic|) over vals[0..n). */
static double fd_worst(run *r, float *vals, const float *grad, size_t n, const char *what) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const float base = vals[i], hp = base + 1e-2f, hm = base - 1e-2f;
        const double lp = loss_at(r, &vals[i], hp), lm = loss_at(r, &vals[i], hm);
        const double fd = (lp - lm) / ((double)hp - (double)hm), an = grad[i];
        const double err = fabs(fd - an) / fmax(1e-2, fabs(fd) + fabs(an));
        if (err > worst) {
            worst = err;
            at = i;
        }
    }
    printf("# %-44s worst relative error %.2e (at %zu of %zu)\n", what, worst, at, n);
    return worst;
}

static void check_gradient(const spec *s, dv_loss loss, int two_windows) {
    const int B = 3;
    char what[128];
    snprintf(what, sizeof what, "%s L=%d %s%s%s %s", s->cell, s->layers, s->last ? "last" : "all",
             s->dense ? "+dense" : "", two_windows ? " carried" : "",
             loss == DV_LOSS_XENT ? "xent" : "mse");
    dv_model *m = build(s, cpu, loss, B);
    run r;
    run_init(&r, m, B, loss, two_windows);
    const size_t nx = (size_t)B * m->in_elems;
    float *dx = test_fbuf(nx);
    for (size_t i = 0; i < nx; i++)
        dx[i] = NAN; /* dx is overwritten */
    grad_step(&r, dx);
    /* every param of the recurrent layer gets a gradient */
    const dv_layer *l = &m->layers[0];
    for (int k = 0; k < l->nparam; k++)
        if (!(test_max_abs(l->param[k].grad, l->param[k].count) > 0))
            fail_msg("%s: %s has no gradient", what, l->param[k].name);
    char w2[160];
    snprintf(w2, sizeof w2, "%s params", what);
    assert_true(fd_worst(&r, m->params, m->grads, m->nparams, w2) < 1e-2);
    snprintf(w2, sizeof w2, "%s input", what);
    assert_true(test_max_abs(dx, nx) > 0);
    assert_true(fd_worst(&r, r.x, dx, nx, w2) < 1e-2);
    free(dx);
    run_free(&r);
    dv_model_free(m);
}

static void test_gradients(void **state) {
    (void)state;
    for (int c = 0; c < NCELLS; c++) {
        spec s = {.cell = cells[c], .T = 4, .F = 3, .H = 5, .layers = 2};
        s.dense = 4; /* per position */
        check_gradient(&s, DV_LOSS_XENT, 0);
        s.last = 1;
        s.dense = 3;
        check_gradient(&s, DV_LOSS_MSE, 0);
        s.last = 0;
        s.dense = 0; /* (T, H) per-position mse on the layer itself */
        check_gradient(&s, DV_LOSS_MSE, 0);
        s.last = 1;
        s.layers = 1; /* the final h as 5 logits */
        check_gradient(&s, DV_LOSS_XENT, 0);
    }
}

/* A carried window: the analytic gradient treats the carried state as a
 * constant (truncated BPTT), which is what differences taken with the first
 * window at the unperturbed params measure. */
static void test_gradients_carried(void **state) {
    (void)state;
    for (int c = 0; c < NCELLS; c++) {
        spec s = {.cell = cells[c], .T = 3, .F = 3, .H = 4, .layers = 2, .stateful = 1, .dense = 3};
        check_gradient(&s, DV_LOSS_XENT, 1);
        s.last = 1;
        s.dense = 0;
        check_gradient(&s, DV_LOSS_MSE, 1);
    }
}

/* ---- config --------------------------------------------------------------- */

static void expect_shape(const dv_param *p, int d0, int d1) {
    assert_int_equal(p->ndim, d1 ? 2 : 1);
    assert_int_equal(p->shape[0], d0);
    if (d1) assert_int_equal(p->shape[1], d1);
    assert_true(p->trainable);
}

static void test_config(void **state) {
    (void)state;
    const int F = 3, H = 5;
    for (int c = 0; c < NCELLS; c++) {
        const int G = c == 0 ? 1 : c == 1 ? 4 : 3;
        spec s = {.cell = cells[c], .T = 6, .F = F, .H = H, .layers = 3};
        dv_model *m = build(&s, cpu, DV_LOSS_MSE, 2);
        const dv_layer *l = &m->layers[0];
        assert_int_equal(l->out_ndim, 2);
        assert_int_equal(l->out_shape[0], 6);
        assert_int_equal(l->out_shape[1], H);
        assert_int_equal(l->nparam, 3 * (c == 2 ? 4 : 3));
        size_t total = 0;
        for (int k = 0; k < 3; k++) {
            char n[64];
            snprintf(n, sizeof n, "weight_ih_%d", k);
            expect_shape(find_param(l, n), G * H, k ? H : F);
            snprintf(n, sizeof n, "weight_hh_%d", k);
            expect_shape(find_param(l, n), G * H, H);
            if (c == 2) {
                snprintf(n, sizeof n, "bias_ih_%d", k);
                expect_shape(find_param(l, n), G * H, 0);
                snprintf(n, sizeof n, "bias_hh_%d", k);
                expect_shape(find_param(l, n), G * H, 0);
            } else {
                snprintf(n, sizeof n, "bias_%d", k);
                expect_shape(find_param(l, n), G * H, 0);
            }
            total += (size_t)G * H * ((k ? H : F) + H + (c == 2 ? 2 : 1));
        }
        assert_int_equal(m->nparams, total);
        /* uniform(-1/sqrt(H), 1/sqrt(H)), and not all zero */
        float mx = test_max_abs(m->params, m->nparams);
        assert_true(mx > 0.5f / sqrtf((float)H) && mx <= 1.0f / sqrtf((float)H));
        assert_int_equal(m->positions, 6);
        dv_model_free(m);

        s.last = 1;
        m = build(&s, cpu, DV_LOSS_MSE, 2);
        assert_int_equal(m->layers[0].out_ndim, 1);
        assert_int_equal(m->layers[0].out_shape[0], H);
        assert_int_equal(m->positions, 1);
        dv_model_free(m);
    }

    char err[DV_ERR_LEN];
    const char *bad[][2] = {
        {"[input]\nshape = 8\n[lstm]\nunits = 4\n", "sequence = true"},
        {"[input]\nshape = 4,3\n[gru]\nunits = 4\n", "sequence = true"}, /* an image (1, 4, 3) */
        {"[input]\nshape = 4,3\nsequence = true\n[rnn]\nunits = 4\nlayers = 5\n", "layers"},
        {"[input]\nshape = 4,3\nsequence = true\n[lstm]\nlayers = 2\n", "units"},
        {"[input]\nshape = 4,3\nsequence = true\n[lstm]\nunits = 2\nreturn = first\n", "return"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        dv_model *m = test_model_try(bad[i][0], cpu, DV_LOSS_MSE, 2, 0, err);
        if (m) fail_msg("built a bad config:\n%s", bad[i][0]);
        printf("# %s\n", err);
        assert_non_null(strstr(err, "t.cfg:"));
        assert_non_null(strstr(err, bad[i][1]));
    }
}

/* ---- forward against PyTorch's equations --------------------------------- */

static double sigmoid(double v) {
    return 1.0 / (1.0 + exp(-v));
}

/* y[j] = sum_i W[j][i] v[i] + b[j] for j < rows (b may be NULL). */
static void affine(const float *W, const double *v, int rows, int cols, const float *b, double *y) {
    for (int j = 0; j < rows; j++) {
        double s = b ? b[j] : 0.0;
        for (int i = 0; i < cols; i++)
            s += (double)W[(size_t)j * cols + i] * v[i];
        y[j] = s;
    }
}

/* The top layer's h for every row and step (B, T, H), in double. */
static void reference_forward(const dv_layer *l, const char *cell, int L, int B, int T, int F,
                              int H, const float *x, double *out) {
    enum { MAXH = 16 };
    assert_true(H <= MAXH && F <= MAXH);
    for (int b = 0; b < B; b++) {
        double h[4][MAXH] = {{0}}, c[4][MAXH] = {{0}};
        for (int t = 0; t < T; t++) {
            double in[MAXH], gi[4 * MAXH], gh[4 * MAXH];
            for (int f = 0; f < F; f++)
                in[f] = x[((size_t)b * T + t) * F + f];
            for (int k = 0; k < L; k++) {
                char n[4][32];
                snprintf(n[0], 32, "weight_ih_%d", k);
                snprintf(n[1], 32, "weight_hh_%d", k);
                snprintf(n[2], 32, strcmp(cell, "gru") ? "bias_%d" : "bias_ih_%d", k);
                snprintf(n[3], 32, "bias_hh_%d", k);
                const float *wih = find_param(l, n[0])->data, *whh = find_param(l, n[1])->data;
                const float *bi = find_param(l, n[2])->data;
                const int Fk = k ? H : F;
                if (!strcmp(cell, "rnn")) {
                    affine(wih, in, H, Fk, bi, gi);
                    affine(whh, h[k], H, H, NULL, gh);
                    for (int j = 0; j < H; j++)
                        h[k][j] = tanh(gi[j] + gh[j]);
                } else if (!strcmp(cell, "lstm")) {
                    affine(wih, in, 4 * H, Fk, bi, gi);
                    affine(whh, h[k], 4 * H, H, NULL, gh);
                    for (int j = 0; j < H; j++) {
                        const double ig = sigmoid(gi[j] + gh[j]);
                        const double fg = sigmoid(gi[H + j] + gh[H + j]);
                        const double gg = tanh(gi[2 * H + j] + gh[2 * H + j]);
                        const double og = sigmoid(gi[3 * H + j] + gh[3 * H + j]);
                        c[k][j] = fg * c[k][j] + ig * gg;
                        h[k][j] = og * tanh(c[k][j]);
                    }
                } else {
                    affine(wih, in, 3 * H, Fk, bi, gi);
                    affine(whh, h[k], 3 * H, H, find_param(l, n[3])->data, gh);
                    for (int j = 0; j < H; j++) {
                        const double r = sigmoid(gi[j] + gh[j]);
                        const double z = sigmoid(gi[H + j] + gh[H + j]);
                        const double nn = tanh(gi[2 * H + j] + r * gh[2 * H + j]);
                        h[k][j] = (1 - z) * nn + z * h[k][j];
                    }
                }
                for (int j = 0; j < H; j++)
                    in[j] = h[k][j];
            }
            for (int j = 0; j < H; j++)
                out[((size_t)b * T + t) * H + j] = h[L - 1][j];
        }
    }
}

static void test_reference(void **state) {
    (void)state;
    const int B = 3, T = 5, F = 3, H = 6, L = 2;
    for (int c = 0; c < NCELLS; c++) {
        spec s = {.cell = cells[c], .T = T, .F = F, .H = H, .layers = L};
        dv_model *m = build(&s, cpu, DV_LOSS_MSE, B);
        s.last = 1;
        dv_model *ml = build(&s, cpu, DV_LOSS_MSE, B);
        float *x = test_fbuf((size_t)B * T * F);
        test_rand_fill(x, (size_t)B * T * F, -1.5f, 1.5f);
        double *ref = calloc((size_t)B * T * H, sizeof *ref);
        assert_non_null(ref);
        reference_forward(&m->layers[0], cells[c], L, B, T, F, H, x, ref);
        memcpy(m->input, x, (size_t)B * T * F * sizeof *x);
        memcpy(ml->input, x, (size_t)B * T * F * sizeof *x);
        dv_model_forward(m, B, 0);
        dv_model_forward(ml, B, 1);
        for (size_t i = 0; i < (size_t)B * T * H; i++)
            if (!(fabs(m->acts[0][i] - ref[i]) <= 1e-5))
                fail_msg("%s output[%zu]: %.8g, reference %.8g", cells[c], i, m->acts[0][i],
                         ref[i]);
        for (int b = 0; b < B; b++) /* return = last: step T - 1 */
            for (int j = 0; j < H; j++)
                assert_true(fabs(ml->acts[0][b * H + j] - ref[((size_t)b * T + T - 1) * H + j]) <=
                            1e-5);
        free(ref);
        free(x);
        dv_model_free(m);
        dv_model_free(ml);
    }
}

/* ---- causality ------------------------------------------------------------ */

static void test_causality(void **state) {
    (void)state;
    const int B = 2, T = 6, F = 3, H = 4;
    for (int c = 0; c < NCELLS; c++) {
        spec s = {.cell = cells[c], .T = T, .F = F, .H = H, .layers = 2, .dense = 3};
        dv_model *m = build(&s, cpu, DV_LOSS_XENT, B);
        const size_t nx = (size_t)B * T * F, K = 3;
        float *x = test_fbuf(nx), *y0 = test_fbuf((size_t)B * T * K);
        test_rand_fill(x, nx, -1.0f, 1.0f);
        memcpy(m->input, x, nx * sizeof *x);
        dv_model_forward(m, B, 0);
        memcpy(y0, m->acts[1], (size_t)B * T * K * sizeof *y0);
        for (int t = 0; t < T; t++) {
            memcpy(m->input, x, nx * sizeof *x);
            for (int b = 0; b < B; b++)
                for (int f = 0; f < F; f++)
                    m->input[((size_t)b * T + t) * F + f] += 0.5f;
            dv_model_forward(m, B, 0);
            for (int b = 0; b < B; b++) {
                const float *got = m->acts[1] + (size_t)b * T * K, *was = y0 + (size_t)b * T * K;
                if (memcmp(got, was, (size_t)t * K * sizeof *got))
                    fail_msg("%s: a change at step %d reached an earlier output (row %d)", cells[c],
                             t, b);
                int moved = 0;
                for (size_t k = 0; k < K; k++)
                    moved |= got[(size_t)t * K + k] != was[(size_t)t * K + k];
                if (!moved) fail_msg("%s: a change at step %d left step %d alone", cells[c], t, t);
            }
        }
        free(x);
        free(y0);
        dv_model_free(m);
    }
}

/* ---- stateful -------------------------------------------------------------- */

static float max_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

/* The forward of m's input (B rows, layer 0's n outputs kept in ye) is the
 * same bits with carry = 0 and carry = 1. */
static void expect_carry_ignored(dv_model *m, int B, int training, float *ye, size_t n) {
    m->carry = 0;
    dv_model_forward(m, B, training);
    memcpy(ye, m->acts[0], n * sizeof *ye);
    m->carry = 1;
    dv_model_forward(m, B, training);
    assert_memory_equal(m->acts[0], ye, n * sizeof *ye);
}

static void test_stateful(void **state) {
    (void)state;
    const int B = 3, T = 4, F = 2, H = 5;
    const size_t win = (size_t)T * H; /* one row's outputs of one window */
    for (int c = 0; c < NCELLS; c++) {
        spec s = {.cell = cells[c], .T = T, .F = F, .H = H, .layers = 2, .stateful = 1};
        dv_model *m = build(&s, cpu, DV_LOSS_MSE, B);
        s.T = 2 * T;
        dv_model *lm = build(&s, cpu, DV_LOSS_MSE, B);
        /* the same seed gives the same params, whatever T */
        assert_int_equal(m->nparams, lm->nparams);
        assert_memory_equal(m->params, lm->params, m->nparams * sizeof(float));

        float *x = test_fbuf((size_t)B * 2 * T * F), *xo = test_fbuf((size_t)B * T * F);
        test_rand_fill(x, (size_t)B * 2 * T * F, -1.0f, 1.0f);
        test_rand_fill(xo, (size_t)B * T * F, -1.0f, 1.0f);
        memcpy(lm->input, x, (size_t)B * 2 * T * F * sizeof *x);
        lm->carry = 0;
        dv_model_forward(lm, B, 1);
        float *y1 = test_fbuf((size_t)B * win), *y2 = test_fbuf((size_t)B * win);
        float *ye = test_fbuf((size_t)B * win);
        /* window w of row b: steps [w T, (w + 1) T) of the long row */
        for (int w = 0; w < 2; w++) {
            for (int b = 0; b < B; b++)
                memcpy(m->input + (size_t)b * T * F, x + ((size_t)b * 2 + w) * T * F,
                       (size_t)T * F * sizeof *x);
            m->carry = w;
            dv_model_forward(m, B, 1);
            for (int b = 0; b < B; b++) {
                const float *want = lm->acts[0] + ((size_t)b * 2 + w) * win;
                float d = max_diff(m->acts[0] + (size_t)b * win, want, win);
                if (!(d <= 1e-5f))
                    fail_msg("%s: window %d of row %d is off the long forward by %g", cells[c], w,
                             b, d);
            }
            memcpy(w ? y2 : y1, m->acts[0], (size_t)B * win * sizeof *y1);
            if (w) break;
            /* an eval forward between the windows, with carry = 1 set: it
             * starts from zeros (as with carry = 0) and keeps the state */
            memcpy(m->input, xo, (size_t)B * T * F * sizeof *xo);
            expect_carry_ignored(m, B, 0, ye, (size_t)B * win);
        }
        /* carry = 0 restarts: the second window alone, from zeros, as an
         * eval forward computes it, and not as the carried one did */
        m->carry = 0;
        dv_model_forward(m, B, 1);
        memcpy(ye, m->acts[0], (size_t)B * win * sizeof *ye);
        dv_model_forward(m, B, 0);
        assert_memory_equal(m->acts[0], ye, (size_t)B * win * sizeof *ye);
        assert_true(max_diff(ye, y2, (size_t)B * win) > 1e-3f);
        /* a smaller batch carries its rows' state */
        for (int b = 0; b < B; b++)
            memcpy(m->input + (size_t)b * T * F, x + (size_t)b * 2 * T * F,
                   (size_t)T * F * sizeof *x);
        m->carry = 0;
        dv_model_forward(m, B, 1);
        for (int b = 0; b < 2; b++)
            memcpy(m->input + (size_t)b * T * F, x + ((size_t)b * 2 + 1) * T * F,
                   (size_t)T * F * sizeof *x);
        m->carry = 1;
        dv_model_forward(m, 2, 1);
        assert_true(max_diff(m->acts[0], y2, 2 * win) <= 1e-5f);

        /* a layer without stateful = true ignores carry */
        s.T = T;
        s.stateful = 0;
        dv_model *ns = build(&s, cpu, DV_LOSS_MSE, B);
        memcpy(ns->input, xo, (size_t)B * T * F * sizeof *xo);
        expect_carry_ignored(ns, B, 1, ye, (size_t)B * win);

        free(x);
        free(xo);
        free(y1);
        free(y2);
        free(ye);
        dv_model_free(ns);
        dv_model_free(m);
        dv_model_free(lm);
    }
}

/* ---- CUDA against the CPU --------------------------------------------------- */

typedef struct step_out {
    float *out, *hidden, *grads, *dx; /* host copies */
    size_t nout, nhidden, ngrads, nx;
} step_out;

/* A carried training step (two windows) on backend be: the outputs, the
 * recurrent layer's output, every gradient and dx. */
static step_out step_on(dv_backend *be, const spec *s, dv_loss loss, int B) {
    test_rand_seed(77); /* the same inputs on every backend */
    dv_model *m = build(s, be, loss, B);
    run r;
    run_init(&r, m, B, loss, 1);
    step_out o;
    o.nx = (size_t)B * m->in_elems;
    o.nout = (size_t)B * m->layers[m->nlayers - 1].out_elems;
    o.nhidden = (size_t)B * m->layers[0].out_elems;
    o.ngrads = m->nparams;
    float *dx = test_dalloc(be, o.nx * sizeof(float));
    grad_step(&r, dx);
    test_expect_ok(be, s->cell);
    o.out = test_dget(be, m->acts[m->nlayers - 1], o.nout * sizeof(float));
    o.hidden = test_dget(be, m->acts[0], o.nhidden * sizeof(float));
    o.grads = test_dget(be, m->grads, o.ngrads * sizeof(float));
    o.dx = test_dget(be, dx, o.nx * sizeof(float));
    be->free(be->ctx, dx);
    run_free(&r);
    dv_model_free(m);
    return o;
}

static void step_free(step_out *o) {
    free(o->out);
    free(o->hidden);
    free(o->grads);
    free(o->dx);
}

static void expect_close(const float *got, const float *want, size_t n, const char *what) {
    const double tol = 1e-4, scale = fmax(1.0, test_max_abs(want, n));
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= tol * fabs(want[i]) + 0.1 * tol * scale))
            fail_msg("%s[%zu]: cuda %.8g, cpu %.8g", what, i, got[i], want[i]);
}

static void test_cuda(void **state) {
    (void)state;
    if (!gpu) {
        printf("test_layers_rnn: no CUDA device (%s); the CPU-vs-CUDA comparison is skipped\n",
               why);
        fflush(stdout);
        skip();
        return;
    }
    for (int c = 0; c < NCELLS; c++)
        for (int v = 0; v < 2; v++) {
            /* tiny: the emulation runs every block on the CPU */
            spec s = {.cell = cells[c], .T = 4, .F = 3, .H = 7, .layers = 2, .stateful = 1};
            s.last = v;
            s.dense = v ? 0 : 3;
            const dv_loss loss = v ? DV_LOSS_MSE : DV_LOSS_XENT;
            step_out a = step_on(cpu, &s, loss, 3), g = step_on(gpu, &s, loss, 3);
            char what[96];
            snprintf(what, sizeof what, "%s return=%s outputs", s.cell, v ? "last" : "all");
            expect_close(g.out, a.out, a.nout, what);
            expect_close(g.hidden, a.hidden, a.nhidden, what);
            assert_true(test_max_abs(a.grads, a.ngrads) > 0 && test_max_abs(a.dx, a.nx) > 0);
            snprintf(what, sizeof what, "%s return=%s grads", s.cell, v ? "last" : "all");
            expect_close(g.grads, a.grads, a.ngrads, what);
            snprintf(what, sizeof what, "%s return=%s dx", s.cell, v ? "last" : "all");
            expect_close(g.dx, a.dx, a.nx, what);
            printf("# cuda %s return=%s: outputs, %zu grads and dx agree with the cpu\n", s.cell,
                   v ? "last" : "all", a.ngrads);
            step_free(&a);
            step_free(&g);
        }
}

/* ---- setup ---------------------------------------------------------------- */

static int setup(void **state) {
    (void)state;
    return test_backends_open(&cpu, &gpu, why, sizeof why);
}

static int teardown(void **state) {
    (void)state;
    test_backends_close(&cpu, &gpu);
    return 0;
}

int main(void) {
    test_rand_seed(20240611);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),    cmocka_unit_test(test_reference),
        cmocka_unit_test(test_gradients), cmocka_unit_test(test_gradients_carried),
        cmocka_unit_test(test_causality), cmocka_unit_test(test_stateful),
        cmocka_unit_test(test_cuda),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
