/* test_kernels_rnn.c — the recurrent cells of kernels.h (lstm_cell_*,
 * gru_cell_*).
 *
 * Part A, the CPU backend (always runs):
 *  - forward against a naive reference in double;
 *  - backward against central finite differences of
 *    L = sum(wh * h) + sum(wc * c) (random wh, wc; so dh = wh, dc = wc)
 *    with respect to every input of the cell, with the NULL variants
 *    (c_prev / h_prev NULL, dc NULL);
 *  - several steps unrolled through a recurrent weight W_hh, the full
 *    gradient by backpropagation through time (the cells plus the GEMMs a
 *    layer would add) against finite differences of the whole unrolled
 *    loss, which shows the cells' contracts compose through time.
 * Part B, CUDA against the CPU: the same inputs to both backends, results
 * within TOL (|cuda - cpu| <= TOL*|cpu| + TOL*max(1, max|cpu|)). Without a
 * usable device one line says why and those cases are skipped. Built
 * against tests/cuda_emu as test_kernels_rnn_emu, Part B runs the real
 * kernels on the CPU emulation of CUDA and must not skip.
 *
 * Output buffers start as NaN, so a value an op fails to write shows.
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

#include "kernels.h"
#include "test_rand.h"

static dv_backend *cpu, *gpu;
static char why[512];
static int told; /* the "no CUDA device" line is printed once */

/* CUDA vs CPU: elementwise ops, so only expf/tanhf rounding differs. */
#define TOL 1e-5

#define REQUIRE_GPU()                                                                              \
    do {                                                                                           \
        if (!gpu) {                                                                                \
            if (!told)                                                                             \
                printf("test_kernels_rnn: no CUDA device (%s); the CUDA comparisons are "          \
                       "skipped\n",                                                                \
                       why);                                                                       \
            told = 1;                                                                              \
            fflush(stdout);                                                                        \
            skip();                                                                                \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* ---- helpers ---------------------------------------------------------- */

static float *rand_buf(size_t n, float lo, float hi) {
    float *x = test_fbuf(n);
    test_rand_fill(x, n, lo, hi);
    return x;
}

static float *nan_buf(size_t n) {
    float *x = test_fbuf(n);
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
    return x;
}

static float *dup_buf(const float *src, size_t n) {
    float *x = test_fbuf(n);
    memcpy(x, src, n * sizeof *x);
    return x;
}

static void expect_finite(const float *x, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) fail_msg("%s[%zu of %zu] not written: %g", what, i, n, x[i]);
}

static double sigmoid_ref(double x) {
    return 1.0 / (1.0 + exp(-x));
}

static void expect_ref(const float *got, const double *want, size_t n, double tol,
                       const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= tol * (1.0 + fabs(want[i]))))
            fail_msg("%s[%zu]: got %.9g, reference %.9g", what, i, got[i], want[i]);
}

/* A scalar loss of the current inputs, re-running the forward op;
 * fd_check perturbs one element of `param` at a time. A gradient passes
 * when |fd - analytic| <= 1e-2 |fd| + 1e-3 max|analytic|. */
typedef double (*loss_fn)(void *st);

static void fd_check(loss_fn f, void *st, float *param, const float *grad, size_t n, float step,
                     const char *what) {
    const float gmax = test_max_abs(grad, n);
    assert_true(gmax > 0.0f); /* an all-zero gradient would pass vacuously */
    for (size_t i = 0; i < n; i++) {
        const float old = param[i];
        param[i] = old + step;
        const double lp = f(st);
        param[i] = old - step;
        const double lm = f(st);
        param[i] = old;
        const double num = (lp - lm) / (2.0 * (double)step);
        const double err = fabs(num - (double)grad[i]);
        if (!(err <= 1e-2 * fabs(num) + 1e-3 * gmax))
            fail_msg("%s[%zu]: analytic %.7g, finite-difference %.7g", what, i, grad[i], num);
    }
}

/* ---- Part A: LSTM, one step ------------------------------------------- */

typedef struct lstm_st {
    int B, H;
    float *pre;           /* (B, 4H) pre-activations, i f g o */
    float *c_prev;        /* (B, H) or NULL */
    float *wh, *wc;       /* (B, H); wc NULL: dc = 0 */
    float *gates, *c, *h; /* scratch */
} lstm_st;

static double lstm_loss(void *p) {
    lstm_st *s = p;
    const size_t nh = (size_t)s->B * s->H;
    memcpy(s->gates, s->pre, 4 * nh * sizeof *s->gates);
    cpu->lstm_cell_forward(cpu->ctx, s->B, s->H, s->gates, s->c_prev, s->c, s->h);
    return test_dot(s->wh, s->h, nh) + (s->wc ? test_dot(s->wc, s->c, nh) : 0.0);
}

static void run_lstm_cpu(int B, int H, int with_c_prev, int with_dc) {
    char what[96];
    const size_t nh = (size_t)B * H, ng = 4 * nh;
    /* one statement per draw: the order of an initializer list's calls is
     * unspecified, and the inputs should not depend on the compiler */
    lstm_st s = {.B = B, .H = H};
    s.pre = rand_buf(ng, -2.0f, 2.0f);
    s.c_prev = with_c_prev ? rand_buf(nh, -1.5f, 1.5f) : NULL;
    s.wh = rand_buf(nh, -1.0f, 1.0f);
    s.wc = with_dc ? rand_buf(nh, -1.0f, 1.0f) : NULL;
    s.gates = nan_buf(ng);
    s.c = nan_buf(nh);
    s.h = nan_buf(nh);
    snprintf(what, sizeof what, "lstm B=%d H=%d c_prev=%d dc=%d", B, H, with_c_prev, with_dc);

    /* forward against the reference; act, c, h kept for backward (s's
     * own buffers are the finite differences' scratch) */
    float *act = dup_buf(s.pre, ng), *c = nan_buf(nh), *h = nan_buf(nh);
    cpu->lstm_cell_forward(cpu->ctx, B, H, act, s.c_prev, c, h);
    double *rg = calloc(ng, sizeof *rg), *rc = calloc(nh, sizeof *rc), *rh = calloc(nh, sizeof *rh);
    assert_true(rg && rc && rh);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < H; j++) {
            const float *p = s.pre + (size_t)b * 4 * H;
            double *g = rg + (size_t)b * 4 * H;
            const size_t u = (size_t)b * H + j;
            g[j] = sigmoid_ref(p[j]);
            g[H + j] = sigmoid_ref(p[H + j]);
            g[2 * H + j] = tanh(p[2 * H + j]);
            g[3 * H + j] = sigmoid_ref(p[3 * H + j]);
            rc[u] = g[H + j] * (s.c_prev ? s.c_prev[u] : 0.0) + g[j] * g[2 * H + j];
            rh[u] = g[3 * H + j] * tanh(rc[u]);
        }
    expect_ref(act, rg, ng, 1e-5, "lstm forward gates");
    expect_ref(c, rc, nh, 1e-5, "lstm forward c");
    expect_ref(h, rh, nh, 1e-5, "lstm forward h");
    free(rg);
    free(rc);
    free(rh);

    /* backward: dh = wh, dc = wc */
    float *dgates = nan_buf(ng), *dc_prev = nan_buf(nh);
    cpu->lstm_cell_backward(cpu->ctx, B, H, act, s.c_prev, c, s.wh, s.wc, dgates,
                            s.c_prev ? dc_prev : NULL);
    expect_finite(dgates, ng, "lstm dgates");
    if (!s.c_prev) /* c_prev = 0: the forget gate does not reach the loss */
        for (int b = 0; b < B; b++)
            for (int j = 0; j < H; j++)
                assert_true(dgates[(size_t)b * 4 * H + H + j] == 0.0f);
    fd_check(lstm_loss, &s, s.pre, dgates, ng, 5e-3f, what);
    if (s.c_prev) {
        expect_finite(dc_prev, nh, "lstm dc_prev");
        fd_check(lstm_loss, &s, s.c_prev, dc_prev, nh, 5e-3f, what);
        /* dc_prev NULL ("not needed") leaves dgates as they were */
        float *dg2 = nan_buf(ng);
        cpu->lstm_cell_backward(cpu->ctx, B, H, act, s.c_prev, c, s.wh, s.wc, dg2, NULL);
        assert_memory_equal(dg2, dgates, ng * sizeof *dg2);
        free(dg2);
    }
    free(act);
    free(c);
    free(h);
    free(dgates);
    free(dc_prev);
    free(s.pre);
    free(s.c_prev);
    free(s.wh);
    free(s.wc);
    free(s.gates);
    free(s.c);
    free(s.h);
}

static void test_lstm_cpu(void **state) {
    (void)state;
    run_lstm_cpu(3, 5, 1, 1);
    run_lstm_cpu(3, 5, 1, 0); /* dc NULL */
    run_lstm_cpu(2, 7, 0, 1); /* c_prev NULL */
    run_lstm_cpu(2, 7, 0, 0);
    run_lstm_cpu(1, 1, 1, 1);
}

/* ---- Part A: GRU, one step -------------------------------------------- */

typedef struct gru_st {
    int B, H;
    float *gi, *gh;  /* (B, 3H), r z n */
    float *h_prev;   /* (B, H) or NULL */
    float *wh;       /* (B, H) */
    float *h, *save; /* scratch */
} gru_st;

static double gru_loss(void *p) {
    gru_st *s = p;
    const size_t nh = (size_t)s->B * s->H;
    cpu->gru_cell_forward(cpu->ctx, s->B, s->H, s->gi, s->gh, s->h_prev, s->h, s->save);
    return test_dot(s->wh, s->h, nh);
}

static void run_gru_cpu(int B, int H, int with_h_prev) {
    char what[96];
    const size_t nh = (size_t)B * H, n3 = 3 * nh, n4 = 4 * nh;
    gru_st s = {.B = B, .H = H};
    s.gi = rand_buf(n3, -2.0f, 2.0f);
    s.gh = rand_buf(n3, -2.0f, 2.0f);
    s.h_prev = with_h_prev ? rand_buf(nh, -1.0f, 1.0f) : NULL;
    s.wh = rand_buf(nh, -1.0f, 1.0f);
    s.h = nan_buf(nh);
    s.save = nan_buf(n4);
    snprintf(what, sizeof what, "gru B=%d H=%d h_prev=%d", B, H, with_h_prev);

    gru_loss(&s);
    double *rh = calloc(nh, sizeof *rh), *rs = calloc(n4, sizeof *rs);
    assert_true(rh && rs);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < H; j++) {
            const float *xi = s.gi + (size_t)b * 3 * H, *xh = s.gh + (size_t)b * 3 * H;
            double *sv = rs + (size_t)b * 4 * H;
            const size_t u = (size_t)b * H + j;
            const double r = sigmoid_ref((double)xi[j] + xh[j]);
            const double z = sigmoid_ref((double)xi[H + j] + xh[H + j]);
            const double n = tanh(xi[2 * H + j] + r * xh[2 * H + j]);
            sv[j] = r;
            sv[H + j] = z;
            sv[2 * H + j] = n;
            sv[3 * H + j] = xh[2 * H + j];
            rh[u] = (1.0 - z) * n + z * (s.h_prev ? s.h_prev[u] : 0.0);
        }
    expect_ref(s.h, rh, nh, 1e-5, "gru forward h");
    expect_ref(s.save, rs, n4, 1e-5, "gru forward save");
    free(rh);
    free(rs);

    float *dgi = nan_buf(n3), *dgh = nan_buf(n3), *dh_prev = nan_buf(nh);
    cpu->gru_cell_backward(cpu->ctx, B, H, s.save, s.h_prev, s.wh, dgi, dgh, dh_prev);
    expect_finite(dgi, n3, "gru dgi");
    expect_finite(dgh, n3, "gru dgh");
    expect_finite(dh_prev, nh, "gru dh_prev");
    fd_check(gru_loss, &s, s.gi, dgi, n3, 5e-3f, what);
    fd_check(gru_loss, &s, s.gh, dgh, n3, 5e-3f, what);
    /* gh is an independent input here, so h_prev reaches the loss only
     * through z * h_prev: the finite difference is the direct path dh * z,
     * which is exactly what dh_prev holds (the path through gh = h_prev
     * W_hh^T is the caller's dgh W_hh; test_gru_bptt checks it). */
    if (s.h_prev) fd_check(gru_loss, &s, s.h_prev, dh_prev, nh, 5e-3f, what);
    /* dh_prev NULL leaves dgi, dgh as they were */
    float *dgi2 = nan_buf(n3), *dgh2 = nan_buf(n3);
    gru_loss(&s);
    cpu->gru_cell_backward(cpu->ctx, B, H, s.save, s.h_prev, s.wh, dgi2, dgh2, NULL);
    assert_memory_equal(dgi2, dgi, n3 * sizeof *dgi);
    assert_memory_equal(dgh2, dgh, n3 * sizeof *dgh);
    free(dgi2);
    free(dgh2);
    free(dgi);
    free(dgh);
    free(dh_prev);
    free(s.gi);
    free(s.gh);
    free(s.h_prev);
    free(s.wh);
    free(s.h);
    free(s.save);
}

static void test_gru_cpu(void **state) {
    (void)state;
    run_gru_cpu(3, 5, 1);
    run_gru_cpu(2, 7, 0); /* h_prev NULL */
    run_gru_cpu(1, 1, 1);
}

/* ---- Part A: several steps, backpropagation through time --------------
 * T steps of B rows and H units; step t's input part X_t (the x W_ih^T + b
 * a layer computes) is given, the recurrent part is h_{t-1} W^T with
 * W (G*H, H), G = 4 (LSTM) or 3 (GRU). L = sum_t sum(wh_t * h_t)
 * (+ sum(wc * c_{T-1}) for the LSTM). The gradient is taken with respect
 * to every X_t and to the initial state h0 (and c0). */

#define BPTT_T 3

typedef struct bptt_st {
    int lstm; /* 1: LSTM, 0: GRU */
    int B, H, G;
    float *X[BPTT_T]; /* (B, G*H) */
    float *W;         /* (G*H, H) */
    float *h0, *c0;   /* (B, H); c0 LSTM only */
    float *wh[BPTT_T], *wc;
    /* forward state kept for backward */
    float *gates[BPTT_T]; /* LSTM: activated gates; GRU: gh_t */
    float *save[BPTT_T];  /* GRU: (B, 4H) */
    float *h[BPTT_T], *c[BPTT_T];
} bptt_st;

static double bptt_forward(void *p) {
    bptt_st *s = p;
    const size_t nh = (size_t)s->B * s->H, ng = (size_t)s->G * nh;
    const float *hp = s->h0, *cp = s->c0;
    double L = 0.0;
    for (int t = 0; t < BPTT_T; t++) {
        if (s->lstm) {
            memcpy(s->gates[t], s->X[t], ng * sizeof(float));
            cpu->gemm(cpu->ctx, 0, 1, s->B, s->G * s->H, s->H, 1.0f, hp, s->W, 1.0f, s->gates[t]);
            cpu->lstm_cell_forward(cpu->ctx, s->B, s->H, s->gates[t], cp, s->c[t], s->h[t]);
            cp = s->c[t];
        } else {
            cpu->gemm(cpu->ctx, 0, 1, s->B, s->G * s->H, s->H, 1.0f, hp, s->W, 0.0f, s->gates[t]);
            cpu->gru_cell_forward(cpu->ctx, s->B, s->H, s->X[t], s->gates[t], hp, s->h[t],
                                  s->save[t]);
        }
        hp = s->h[t];
        L += test_dot(s->wh[t], s->h[t], nh);
    }
    if (s->lstm) L += test_dot(s->wc, s->c[BPTT_T - 1], nh);
    return L;
}

static void run_bptt(int lstm, int B, int H) {
    const int G = lstm ? 4 : 3;
    const size_t nh = (size_t)B * H, ng = (size_t)G * nh;
    bptt_st s = {.lstm = lstm, .B = B, .H = H, .G = G};
    for (int t = 0; t < BPTT_T; t++) {
        s.X[t] = rand_buf(ng, -1.5f, 1.5f);
        s.wh[t] = rand_buf(nh, -1.0f, 1.0f);
        s.gates[t] = nan_buf(ng);
        s.save[t] = nan_buf(4 * nh);
        s.h[t] = nan_buf(nh);
        s.c[t] = nan_buf(nh);
    }
    s.W = rand_buf((size_t)G * H * H, -0.6f, 0.6f); /* (G*H, H) */
    s.h0 = rand_buf(nh, -1.0f, 1.0f);
    s.c0 = lstm ? rand_buf(nh, -1.0f, 1.0f) : NULL;
    s.wc = lstm ? rand_buf(nh, -1.0f, 1.0f) : NULL;

    bptt_forward(&s);
    float *dX[BPTT_T];
    float *dg = test_fbuf(ng), *dh = test_fbuf(nh), *dh_next = test_fbuf(nh);
    float *dc_next = lstm ? dup_buf(s.wc, nh) : NULL, *dc_prev = test_fbuf(nh);
    for (int t = BPTT_T - 1; t >= 0; t--) {
        const float *hp = t > 0 ? s.h[t - 1] : s.h0;
        for (size_t u = 0; u < nh; u++)
            dh[u] = s.wh[t][u] + dh_next[u];
        dX[t] = nan_buf(ng);
        if (lstm) {
            const float *cp = t > 0 ? s.c[t - 1] : s.c0;
            cpu->lstm_cell_backward(cpu->ctx, B, H, s.gates[t], cp, s.c[t], dh, dc_next, dX[t],
                                    dc_prev);
            memcpy(dc_next, dc_prev, nh * sizeof *dc_next);
            /* dh_{t-1} = dgates W */
            cpu->gemm(cpu->ctx, 0, 0, B, H, G * H, 1.0f, dX[t], s.W, 0.0f, dh_next);
        } else {
            /* dh_{t-1} = dh z (direct) + dgh W */
            cpu->gru_cell_backward(cpu->ctx, B, H, s.save[t], hp, dh, dX[t], dg, dh_next);
            cpu->gemm(cpu->ctx, 0, 0, B, H, G * H, 1.0f, dg, s.W, 1.0f, dh_next);
        }
    }
    const char *what = lstm ? "lstm bptt" : "gru bptt";
    for (int t = 0; t < BPTT_T; t++)
        fd_check(bptt_forward, &s, s.X[t], dX[t], ng, 1e-2f, what);
    fd_check(bptt_forward, &s, s.h0, dh_next, nh, 1e-2f, lstm ? "lstm bptt dh0" : "gru bptt dh0");
    if (lstm) fd_check(bptt_forward, &s, s.c0, dc_next, nh, 1e-2f, "lstm bptt dc0");

    for (int t = 0; t < BPTT_T; t++) {
        free(dX[t]);
        free(s.X[t]);
        free(s.wh[t]);
        free(s.gates[t]);
        free(s.save[t]);
        free(s.h[t]);
        free(s.c[t]);
    }
    free(dg);
    free(dh);
    free(dh_next);
    free(dc_next);
    free(dc_prev);
    free(s.W);
    free(s.h0);
    free(s.c0);
    free(s.wc);
}

static void test_lstm_bptt(void **state) {
    (void)state;
    run_bptt(1, 3, 4);
}

static void test_gru_bptt(void **state) {
    (void)state;
    run_bptt(0, 3, 4);
}

/* ---- Part B: CUDA against the CPU -------------------------------------- */

static void *dalloc(size_t bytes) {
    void *p = gpu->alloc(gpu->ctx, bytes);
    assert_non_null(p);
    return p;
}

/* One tensor on both backends: h on the CPU, d on the device, the same
 * values until the ops under test run. NULL src: NaN (an output). */
typedef struct pair {
    float *h, *d;
    size_t n;
} pair;

static pair pair_from(const float *src, size_t n) {
    pair p = {src ? dup_buf(src, n) : nan_buf(n), NULL, n};
    p.d = dalloc(n * sizeof *p.d);
    gpu->to_device(gpu->ctx, p.d, p.h, n * sizeof *p.h);
    return p;
}

static pair pair_rand(size_t n, float lo, float hi) {
    float *t = rand_buf(n, lo, hi);
    pair p = pair_from(t, n);
    free(t);
    return p;
}

static void pair_free(pair *p) {
    free(p->h);
    if (gpu && p->d) gpu->free(gpu->ctx, p->d);
    p->h = p->d = NULL;
}

/* Optional operands: NULL on both sides when absent. */
static float *ph(const pair *p, int on) {
    return on ? p->h : NULL;
}

static float *pd(const pair *p, int on) {
    return on ? p->d : NULL;
}

static void pair_expect(const pair *p, const char *op, const char *what) {
    char err[DV_ERR_LEN] = "";
    if (gpu->check(gpu->ctx, err) != 0) fail_msg("%s: backend error: %s", op, err);
    float *g = test_fbuf(p->n);
    gpu->to_host(gpu->ctx, g, p->d, p->n * sizeof *g);
    expect_finite(p->h, p->n, what);
    double scale = 1.0;
    for (size_t i = 0; i < p->n; i++)
        if (fabs((double)p->h[i]) > scale) scale = fabs((double)p->h[i]);
    for (size_t i = 0; i < p->n; i++) {
        const double w = p->h[i], d = g[i];
        if (!(fabs(d - w) <= TOL * fabs(w) + TOL * scale))
            fail_msg("%s %s[%zu of %zu]: cuda %.9g, cpu %.9g", op, what, i, p->n, g[i], p->h[i]);
    }
    free(g);
}

static void cmp_lstm(int B, int H, int cp_on, int dc_on, int dcp_on) {
    char op[96];
    snprintf(op, sizeof op, "lstm B=%d H=%d c_prev=%d dc=%d dc_prev=%d", B, H, cp_on, dc_on,
             dcp_on);
    const size_t nh = (size_t)B * H, ng = 4 * nh;
    pair gates = pair_rand(ng, -4.0f, 4.0f), c_prev = pair_rand(nh, -2.0f, 2.0f);
    pair c = pair_from(NULL, nh), h = pair_from(NULL, nh);
    cpu->lstm_cell_forward(cpu->ctx, B, H, gates.h, ph(&c_prev, cp_on), c.h, h.h);
    gpu->lstm_cell_forward(gpu->ctx, B, H, gates.d, pd(&c_prev, cp_on), c.d, h.d);
    pair_expect(&gates, op, "forward gates");
    pair_expect(&c, op, "forward c");
    pair_expect(&h, op, "forward h");

    /* backward from the CPU's forward state, given to both */
    pair ag = pair_from(gates.h, ng), ac = pair_from(c.h, nh);
    pair dh = pair_rand(nh, -1.0f, 1.0f), dc = pair_rand(nh, -1.0f, 1.0f);
    pair dgates = pair_from(NULL, ng), dc_prev = pair_from(NULL, nh);
    cpu->lstm_cell_backward(cpu->ctx, B, H, ag.h, ph(&c_prev, cp_on), ac.h, dh.h, ph(&dc, dc_on),
                            dgates.h, ph(&dc_prev, dcp_on));
    gpu->lstm_cell_backward(gpu->ctx, B, H, ag.d, pd(&c_prev, cp_on), ac.d, dh.d, pd(&dc, dc_on),
                            dgates.d, pd(&dc_prev, dcp_on));
    pair_expect(&dgates, op, "backward dgates");
    if (dcp_on) pair_expect(&dc_prev, op, "backward dc_prev");

    pair *all[] = {&gates, &c_prev, &c, &h, &ag, &ac, &dh, &dc, &dgates, &dc_prev};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        pair_free(all[i]);
}

static void cmp_gru(int B, int H, int hp_on, int dhp_on) {
    char op[96];
    snprintf(op, sizeof op, "gru B=%d H=%d h_prev=%d dh_prev=%d", B, H, hp_on, dhp_on);
    const size_t nh = (size_t)B * H, n3 = 3 * nh, n4 = 4 * nh;
    pair gi = pair_rand(n3, -3.0f, 3.0f), gh = pair_rand(n3, -3.0f, 3.0f);
    pair h_prev = pair_rand(nh, -1.0f, 1.0f);
    pair h = pair_from(NULL, nh), save = pair_from(NULL, n4);
    cpu->gru_cell_forward(cpu->ctx, B, H, gi.h, gh.h, ph(&h_prev, hp_on), h.h, save.h);
    gpu->gru_cell_forward(gpu->ctx, B, H, gi.d, gh.d, pd(&h_prev, hp_on), h.d, save.d);
    pair_expect(&h, op, "forward h");
    pair_expect(&save, op, "forward save");

    pair as = pair_from(save.h, n4), dh = pair_rand(nh, -1.0f, 1.0f);
    pair dgi = pair_from(NULL, n3), dgh = pair_from(NULL, n3), dh_prev = pair_from(NULL, nh);
    cpu->gru_cell_backward(cpu->ctx, B, H, as.h, ph(&h_prev, hp_on), dh.h, dgi.h, dgh.h,
                           ph(&dh_prev, dhp_on));
    gpu->gru_cell_backward(gpu->ctx, B, H, as.d, pd(&h_prev, hp_on), dh.d, dgi.d, dgh.d,
                           pd(&dh_prev, dhp_on));
    pair_expect(&dgi, op, "backward dgi");
    pair_expect(&dgh, op, "backward dgh");
    if (dhp_on) pair_expect(&dh_prev, op, "backward dh_prev");

    pair *all[] = {&gi, &gh, &h_prev, &h, &save, &as, &dh, &dgi, &dgh, &dh_prev};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        pair_free(all[i]);
}

/* Shapes: small and ragged (H not a multiple of anything), and one with
 * more units than the emulation's grid (2 SMs x 32 blocks x 256 threads),
 * so the grid-stride loop goes round. */
static const int shapes[][2] = {{1, 1}, {5, 37}, {33, 509}};
#define NSHAPES (sizeof shapes / sizeof *shapes)

static void test_lstm_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    for (size_t k = 0; k < NSHAPES; k++) {
        const int B = shapes[k][0], H = shapes[k][1];
        cmp_lstm(B, H, 1, 1, 1);
        cmp_lstm(B, H, 0, 1, 1); /* c_prev NULL */
        cmp_lstm(B, H, 1, 0, 1); /* dc NULL */
        cmp_lstm(B, H, 0, 0, 0); /* all optional operands NULL */
        cmp_lstm(B, H, 1, 1, 0); /* dc_prev not needed */
    }
}

static void test_gru_cuda(void **state) {
    (void)state;
    REQUIRE_GPU();
    for (size_t k = 0; k < NSHAPES; k++) {
        const int B = shapes[k][0], H = shapes[k][1];
        cmp_gru(B, H, 1, 1);
        cmp_gru(B, H, 0, 1); /* h_prev NULL */
        cmp_gru(B, H, 1, 0); /* dh_prev not needed */
    }
}

/* ---- setup ------------------------------------------------------------ */

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
    test_rand_seed(20240607); /* the inputs' generator (test_rand.h) */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lstm_cpu),  cmocka_unit_test(test_gru_cpu),
        cmocka_unit_test(test_lstm_bptt), cmocka_unit_test(test_gru_bptt),
        cmocka_unit_test(test_lstm_cuda), cmocka_unit_test(test_gru_cuda),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
