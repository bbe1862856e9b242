/* test_layers_seq.c — the Transformer-side layers of model/layer_seq.c
 * ([embedding], [layernorm], [gelu], [attention], [transformer]) inside
 * whole models built from config text.
 *
 * 1. Gradients against central finite differences of the model's loss, on
 *    every trainable param (a fixed sample of large ones) and, for the layers
 *    that can come first on a (T, C) sequence input, on the input itself;
 *    with dropout on (its masks are a function of step seed and row, so the
 *    loss stays a fixed function). A tiny GPT ties its output layer to the
 *    embedding table, whose gradient must then sum both uses.
 * 2. Causality: changing the input at position t leaves every output before
 *    t bit for bit as it was, and changes position t.
 * 3. The same models on the CUDA backend against the CPU: init, outputs and
 *    every gradient. Without a device that part prints "no CUDA device" and
 *    skips; tests/cuda_emu builds this file on the emulated backend, where
 *    it must run.
 * Plus the config errors the layers report, and param counts and shapes.
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

/* ---- configs ------------------------------------------------------------ */

#define GPT_T   6
#define GPT_V   11
#define GPT_D   8
#define GPT_HID 16

/* embedding -> 2 blocks -> layer norm -> the embedding table again */
static const char gpt_cfg[] = "[input]\n"
                              "tokens = 6\n"
                              "vocab = 11\n"
                              "[embedding]\n"
                              "name = tok\n"
                              "dim = 8\n"
                              "dropout = 0.1\n"
                              "[transformer]\n"
                              "heads = 2\n"
                              "hidden = 16\n"
                              "dropout = 0.1\n"
                              "[transformer]\n"
                              "heads = 4\n"
                              "hidden = 16\n"
                              "[layernorm]\n"
                              "[dense]\n"
                              "tie = tok\n";

static const char emb_learned_cfg[] = "[input]\n"
                                      "tokens = 5\n"
                                      "vocab = 7\n"
                                      "[embedding]\n"
                                      "dim = 6\n"
                                      "dropout = 0.2\n"
                                      "[dense]\n"
                                      "units = vocab\n";

static const char emb_sin_cfg[] = "[input]\n"
                                  "tokens = 5\n"
                                  "vocab = 7\n"
                                  "[embedding]\n"
                                  "dim = 6\n"
                                  "positions = sinusoidal\n"
                                  "[dense]\n"
                                  "units = vocab\n";

static const char emb_none_cfg[] = "[input]\n"
                                   "tokens = 5\n"
                                   "vocab = 7\n"
                                   "[embedding]\n"
                                   "dim = 6\n"
                                   "positions = none\n"
                                   "[dense]\n"
                                   "units = vocab\n";

static const char ln_cfg[] = "[input]\n"
                             "shape = 4,6\n"
                             "sequence = true\n"
                             "[layernorm]\n"
                             "[dense]\n"
                             "units = 5\n";

static const char ln_vec_cfg[] = "[input]\n"
                                 "shape = 7\n"
                                 "[layernorm]\n"
                                 "eps = 1e-3\n"
                                 "[dense]\n"
                                 "units = 3\n";

static const char gelu_cfg[] = "[input]\n"
                               "shape = 4,6\n"
                               "sequence = true\n"
                               "[gelu]\n"
                               "[dense]\n"
                               "units = 5\n";

static const char attn_cfg[] = "[input]\n"
                               "shape = 5,8\n"
                               "sequence = true\n"
                               "[attention]\n"
                               "heads = 2\n"
                               "dropout = 0.2\n";

static const char attn4_cfg[] = "[input]\n"
                                "shape = 3,8\n"
                                "sequence = true\n"
                                "[attention]\n"
                                "heads = 4\n"
                                "[dense]\n"
                                "units = 3\n";

static const char block_cfg[] = "[input]\n"
                                "shape = 4,8\n"
                                "sequence = true\n"
                                "[transformer]\n"
                                "heads = 2\n"
                                "hidden = 12\n"
                                "dropout = 0.1\n";

static const char block_plain_cfg[] = "[input]\n"
                                      "shape = 5,8\n"
                                      "sequence = true\n"
                                      "[transformer]\n"
                                      "heads = 4\n"
                                      "eps = 1e-4\n";

/* every layer of the file on a sequence input (CPU vs CUDA) */
static const char stack_cfg[] = "[input]\n"
                                "shape = 4,8\n"
                                "sequence = true\n"
                                "[layernorm]\n"
                                "[attention]\n"
                                "heads = 2\n"
                                "dropout = 0.1\n"
                                "[gelu]\n"
                                "[transformer]\n"
                                "heads = 2\n"
                                "hidden = 12\n";

/* ---- helpers ------------------------------------------------------------ */

/* every documented key must be read */
static dv_model *build(dv_backend *be, const char *text, dv_loss loss, int B) {
    return test_model_build(text, be, loss, B, 1);
}

/* The message of a config that must not build. */
static void build_fails(const char *text, const char *want) {
    dv_config cfg;
    char err[DV_ERR_LEN] = "";
    assert_int_equal(dv_config_load_text(&cfg, "t.cfg", text, err), 0);
    dv_model *m = NULL;
    assert_int_equal(dv_model_build(&m, &cfg, cpu, DV_LOSS_MSE, 3, 2, err), -1);
    assert_null(m);
    if (!strstr(err, want)) fail_msg("error '%s' does not say '%s'", err, want);
    dv_config_free(&cfg);
}

/* Fills the input, labels, targets and row ids of B rows from `seed`, on
 * any backend (through to_device). */
static void set_data(dv_model *m, int B, uint64_t seed) {
    dv_backend *be = m->be;
    test_rand_seed(seed);
    size_t ni = (size_t)B * m->in_elems, nl = (size_t)B * m->positions;
    size_t nt = nl * (size_t)m->outputs;
    float *x = test_fbuf(ni), *t = test_fbuf(nt);
    int32_t *lab = calloc(nl, sizeof *lab);
    int64_t *rows = calloc((size_t)B, sizeof *rows);
    assert_non_null(lab);
    assert_non_null(rows);
    if (m->tokens)
        for (size_t i = 0; i < ni; i++)
            ((int32_t *)x)[i] = (int32_t)(test_rand_next() % (uint64_t)m->vocab);
    else
        test_rand_fill(x, ni, -2.0f, 2.0f);
    test_rand_fill(t, nt, -1.0f, 1.0f);
    for (size_t i = 0; i < nl; i++)
        lab[i] = (int32_t)(test_rand_next() % (uint64_t)m->outputs);
    for (int i = 0; i < B; i++)
        rows[i] = 1000 + 7 * i;
    be->to_device(be->ctx, m->input, x, ni * sizeof *x);
    be->to_device(be->ctx, m->targets, t, nt * sizeof *t);
    be->to_device(be->ctx, m->labels, lab, nl * sizeof *lab);
    be->to_device(be->ctx, m->row_id, rows, (size_t)B * sizeof *rows);
    m->step_seed = seed * 31 + 5;
    free(x), free(t), free(lab), free(rows);
}

/* Moves every trainable param by uniform(-a, a), the same on any backend
 * for the same seed: initial weights of 0.02 leave attention nearly
 * uniform and the checks weak. */
static void shake_params(dv_model *m, float a, uint64_t seed) {
    dv_backend *be = m->be;
    float *h = test_dget(be, m->params, m->nparams * sizeof(float));
    test_rand_seed(seed);
    for (size_t i = 0; i < m->nparams; i++)
        h[i] += test_rand_uniform(-a, a);
    be->to_device(be->ctx, m->params, h, m->nparams * sizeof(float));
    free(h);
}

static double loss_of(dv_model *m, int B) {
    dv_backend *be = m->be;
    float s[2];
    be->fill(be->ctx, m->stats, 0, 2);
    dv_model_forward(m, B, 1);
    dv_model_loss(m, B, 1.0f);
    be->to_host(be->ctx, s, m->stats, sizeof s);
    return s[0];
}

/* The model's backward as dv_model_backward runs it, but with dx0 (host,
 * CPU backend) receiving the gradient of the input. */
static void backward_to_input(dv_model *m, int B, float *dx0) {
    int cur = 0;
    for (int i = m->nlayers - 1; i >= 0; i--) {
        dv_layer *l = &m->layers[i];
        const float *x = i ? m->acts[i - 1] : m->input;
        float *dx = i ? m->dbuf[cur ^ 1] : dx0;
        l->ops->backward(l, m, x, m->acts[i], m->dbuf[cur], dx, B);
        cur ^= 1;
    }
}

/* Central differences of the loss over `n` floats at v (host memory)
 * against grad: |fd - an| <= 2e-2 |fd| + 2e-3 max|an| for every element
 * checked (all, or about 150 spread over the tensor). Returns the worst
 * error as a fraction of that bound. */
static double fd_compare(dv_model *m, int B, float *v, const float *grad, size_t n,
                         const char *what) {
    const float h = 1e-2f;
    float gmax = test_max_abs(grad, n);
    if (!(gmax > 0.0f)) fail_msg("%s: the gradient is all zero", what);
    size_t stride = n > 150 ? n / 149 : 1;
    double worst = 0.0;
    for (size_t i = 0; i < n; i += stride) {
        float keep = v[i];
        v[i] = keep + h;
        double lp = loss_of(m, B);
        v[i] = keep - h;
        double lm = loss_of(m, B);
        v[i] = keep;
        double fd = (lp - lm) / (2.0 * h), an = grad[i];
        double e = fabs(fd - an) / (2e-2 * fabs(fd) + 2e-3 * gmax);
        if (e > 1.0)
            fail_msg("%s[%zu of %zu]: analytic %.7g, finite-difference %.7g", what, i, n, an, fd);
        worst = e > worst ? e : worst;
    }
    return worst;
}

/* Every trainable param of every layer (tied views are checked through the
 * param they view), on the CPU. */
static void check_param_grads(dv_model *m, int B, const char *label) {
    m->be->fill(m->be->ctx, m->grads, 0, m->nparams);
    loss_of(m, B);
    dv_model_backward(m, B, NULL, NULL);
    float *g = malloc(m->nparams * sizeof *g);
    assert_non_null(g);
    memcpy(g, m->grads, m->nparams * sizeof *g);
    int checked = 0;
    double worst = 0.0;
    for (int i = 0; i < m->nlayers; i++)
        for (int k = 0; k < m->layers[i].nparam; k++) {
            const dv_param *p = &m->layers[i].param[k];
            if (!p->trainable || p->tie) continue;
            char what[256];
            snprintf(what, sizeof what, "%s: %s.%s", label, m->layers[i].name, p->name);
            worst =
                fmax(worst, fd_compare(m, B, m->params + p->offset, g + p->offset, p->count, what));
            checked++;
        }
    assert_true(checked > 0);
    printf("# %s: %d params, worst error %.3f of the tolerance\n", label, checked, worst);
    free(g);
}

/* The gradient of the model's input (a float sequence), on the CPU. */
static void check_input_grad(dv_model *m, int B, const char *label) {
    size_t n = (size_t)B * m->in_elems;
    float *dx = test_fbuf(n);
    m->be->fill(m->be->ctx, m->grads, 0, m->nparams);
    loss_of(m, B);
    backward_to_input(m, B, dx);
    char what[256];
    snprintf(what, sizeof what, "%s: input", label);
    printf("# %s: worst error %.3f of the tolerance\n", what,
           fd_compare(m, B, m->input, dx, n, what));
    free(dx);
}

static void grad_case(const char *cfg, dv_loss loss, int input_too, const char *label) {
    const int B = 2;
    dv_model *m = build(cpu, cfg, loss, B);
    set_data(m, B, 11);
    shake_params(m, 0.3f, 12);
    check_param_grads(m, B, label);
    if (input_too) check_input_grad(m, B, label);
    dv_model_free(m);
}

/* ---- 1. gradients ----------------------------------------------------------- */

static void test_embedding_grad(void **state) {
    (void)state;
    grad_case(emb_learned_cfg, DV_LOSS_XENT, 0, "embedding learned");
    grad_case(emb_sin_cfg, DV_LOSS_XENT, 0, "embedding sinusoidal");
    grad_case(emb_none_cfg, DV_LOSS_XENT, 0, "embedding none");
}

static void test_layernorm_grad(void **state) {
    (void)state;
    grad_case(ln_cfg, DV_LOSS_MSE, 1, "layernorm (T, C)");
    grad_case(ln_vec_cfg, DV_LOSS_MSE, 1, "layernorm (K)");
}

static void test_gelu_grad(void **state) {
    (void)state;
    grad_case(gelu_cfg, DV_LOSS_MSE, 1, "gelu");
}

static void test_attention_grad(void **state) {
    (void)state;
    grad_case(attn_cfg, DV_LOSS_MSE, 1, "attention");
    grad_case(attn4_cfg, DV_LOSS_XENT, 1, "attention 4 heads");
}

static void test_transformer_grad(void **state) {
    (void)state;
    grad_case(block_cfg, DV_LOSS_MSE, 1, "transformer");
    grad_case(block_plain_cfg, DV_LOSS_MSE, 1, "transformer no dropout");
}

/* The tied table's gradient is the sum of the embedding's and the output
 * layer's: the finite differences move the one shared copy. */
static void test_gpt_tied_grad(void **state) {
    (void)state;
    const int B = 2;
    dv_model *m = build(cpu, gpt_cfg, DV_LOSS_XENT, B);
    const dv_layer *emb = &m->layers[0], *out = &m->layers[m->nlayers - 1];
    assert_ptr_equal(out->param[0].data, emb->param[0].data);
    assert_ptr_equal(out->param[0].grad, emb->param[0].grad);
    set_data(m, B, 21);
    shake_params(m, 0.3f, 22);
    check_param_grads(m, B, "tiny gpt");

    /* both uses contribute: the table's gradient differs from what the
     * output layer alone gives */
    const dv_param *tab = &emb->param[0];
    float *both = test_fbuf(tab->count);
    memcpy(both, tab->grad, tab->count * sizeof *both);
    m->be->fill(m->be->ctx, m->grads, 0, m->nparams);
    loss_of(m, B);
    int cur = 0;
    for (int i = m->nlayers - 1; i >= 1; i--) {
        dv_layer *l = &m->layers[i];
        l->ops->backward(l, m, m->acts[i - 1], m->acts[i], m->dbuf[cur], m->dbuf[cur ^ 1], B);
        cur ^= 1;
    }
    double diff = 0;
    for (size_t i = 0; i < tab->count; i++)
        diff = fmax(diff, fabs((double)both[i] - tab->grad[i]));
    assert_true(diff > 1e-3 * test_max_abs(both, tab->count));
    free(both);
    dv_model_free(m);
}

/* ---- shapes, params, errors ------------------------------------------------ */

static void test_params_and_shapes(void **state) {
    (void)state;
    dv_model *m = build(cpu, gpt_cfg, DV_LOSS_XENT, 2);
    const int V = GPT_V, T = GPT_T, D = GPT_D, Hd = GPT_HID;
    assert_int_equal(m->nlayers, 5);
    assert_int_equal(m->positions, T);
    assert_int_equal(m->outputs, V);
    assert_int_equal(m->layers[0].out_ndim, 2);
    assert_int_equal(m->layers[0].out_shape[0], T);
    assert_int_equal(m->layers[0].out_shape[1], D);
    static const char *const names[12] = {"ln1_gamma",   "ln1_beta",  "qkv_weight", "qkv_bias",
                                          "proj_weight", "proj_bias", "ln2_gamma",  "ln2_beta",
                                          "fc_weight",   "fc_bias",   "fc2_weight", "fc2_bias"};
    const size_t counts[12] = {D, D, 3 * D * D, 3 * D, D * D, D, D, D, Hd * D, Hd, D * Hd, D};
    const dv_layer *blk = &m->layers[1];
    assert_int_equal(blk->nparam, 12);
    size_t per_block = 0;
    for (int k = 0; k < 12; k++) {
        assert_string_equal(blk->param[k].name, names[k]);
        assert_int_equal(blk->param[k].count, counts[k]);
        per_block += counts[k];
    }
    assert_int_equal(blk->param[2].shape[0], 3 * D);
    assert_int_equal(blk->param[8].shape[0], Hd);
    assert_int_equal(blk->param[10].shape[1], Hd);
    /* GPT-2's residual scaling: 0.02 / sqrt(2 * 2 blocks) */
    assert_true(fabsf(blk->param[4].std - 0.01f) < 1e-7f);
    assert_true(fabsf(blk->param[10].std - 0.01f) < 1e-7f);
    assert_true(fabsf(blk->param[2].std - 0.02f) < 1e-7f);
    /* the table (V, D), learned positions (T, D), the blocks, the final
     * layer norm and the output bias; the tied weight adds nothing */
    assert_string_equal(m->layers[0].param[0].name, "weight");
    assert_string_equal(m->layers[0].param[1].name, "position");
    assert_int_equal(m->nparams,
                     (size_t)V * D + (size_t)T * D + 2 * per_block + 2 * (size_t)D + (size_t)V);
    assert_int_equal(m->nbuffers, 0);
    dv_model_free(m);

    /* sinusoidal positions: a (T, D) buffer holding the table */
    m = build(cpu, emb_sin_cfg, DV_LOSS_XENT, 2);
    const dv_param *s = &m->layers[0].param[1];
    assert_string_equal(s->name, "sinusoid");
    assert_false(s->trainable);
    assert_int_equal(m->nbuffers, 5 * 6);
    assert_int_equal(m->nparams, 7 * 6 + 6 * 7 + 7);
    for (int t = 0; t < 5; t++)
        for (int j = 0; j < 6; j++) {
            double a = t / pow(10000.0, (double)(2 * (j / 2)) / 6);
            double want = j % 2 ? cos(a) : sin(a);
            assert_true(fabs(s->data[t * 6 + j] - want) < 1e-6);
        }
    dv_model_free(m);
}

static void test_config_errors(void **state) {
    (void)state;
    build_fails("[input]\nshape = 4,6\nsequence = true\n[embedding]\ndim = 4\n",
                "must be the first layer");
    build_fails("[input]\ntokens = 4\nvocab = 9\n[embedding]\ndim = 4\n[embedding]\ndim = 4\n",
                "must be the first layer");
    build_fails("[input]\ntokens = 4\nvocab = 9\n[embedding]\n", "missing key 'dim'");
    build_fails("[input]\ntokens = 4\nvocab = 9\n[embedding]\ndim = 4\npositions = rope\n",
                "positions");
    build_fails("[input]\nshape = 4,8\nsequence = true\n[attention]\nheads = 3\n",
                "do not split into 3 heads");
    build_fails("[input]\nshape = 4,8\nsequence = true\n[transformer]\nhidden = 8\n",
                "missing key 'heads'");
    build_fails("[input]\nshape = 8\n[attention]\nheads = 2\n", "needs a sequence input");
    build_fails("[input]\nshape = 2,4,4\n[layernorm]\n", "(C, H, W)");
    build_fails("[input]\nshape = 4,8\nsequence = true\n[transformer]\nheads = 2\ndropout = 1\n",
                "dropout");
}

/* ---- 2. causality ----------------------------------------------------------- */

/* Changing position t of every row leaves outputs before t unchanged, bit
 * for bit, and changes position t. */
static void causal_case(const char *cfg, dv_loss loss, const char *label) {
    const int B = 2;
    dv_model *m = build(cpu, cfg, loss, B);
    set_data(m, B, 31);
    shake_params(m, 0.3f, 32);
    const int T = m->in_shape[0];
    const size_t in_row = m->in_elems / (size_t)T; /* per position */
    const size_t out_elems = m->layers[m->nlayers - 1].out_elems, out_row = out_elems / (size_t)T;
    float *y = m->acts[m->nlayers - 1];
    float *base = test_fbuf((size_t)B * out_elems), *x0 = test_fbuf((size_t)B * m->in_elems);
    memcpy(x0, m->input, (size_t)B * m->in_elems * sizeof *x0);
    dv_model_forward(m, B, 0);
    memcpy(base, y, (size_t)B * out_elems * sizeof *base);
    const int ts[3] = {1, T / 2, T - 1};
    for (int c = 0; c < 3; c++) {
        const int t = ts[c];
        memcpy(m->input, x0, (size_t)B * m->in_elems * sizeof *x0);
        for (int b = 0; b < B; b++)
            for (size_t f = 0; f < in_row; f++) {
                size_t i = (size_t)b * m->in_elems + (size_t)t * in_row + f;
                if (m->tokens)
                    ((int32_t *)m->input)[i] = (((int32_t *)x0)[i] + 1) % m->vocab;
                else
                    m->input[i] = x0[i] + 1.0f;
            }
        dv_model_forward(m, B, 0);
        for (int b = 0; b < B; b++) {
            const float *got = y + (size_t)b * out_elems, *want = base + (size_t)b * out_elems;
            for (size_t i = 0; i < (size_t)t * out_row; i++)
                if (got[i] != want[i])
                    fail_msg("%s: changing position %d moved output %zu of row %d (pos %zu)", label,
                             t, i, b, i / out_row);
            int moved = 0;
            for (size_t i = (size_t)t * out_row; i < (size_t)(t + 1) * out_row; i++)
                moved |= got[i] != want[i];
            if (!moved) fail_msg("%s: position %d of row %d ignores its own input", label, t, b);
        }
    }
    free(base), free(x0);
    dv_model_free(m);
}

static void test_causality(void **state) {
    (void)state;
    causal_case(attn_cfg, DV_LOSS_MSE, "attention");
    causal_case(block_cfg, DV_LOSS_MSE, "transformer");
    causal_case(gpt_cfg, DV_LOSS_XENT, "tiny gpt");
}

/* ---- 3. CUDA against the CPU ---------------------------------------------- */

/* |got - want| <= tol (|want| + max|want|) over n floats (host). */
static void expect_close(const float *got, const float *want, size_t n, double tol,
                         const char *what) {
    const double scale = test_max_abs(want, n);
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= tol * (fabs((double)want[i]) + scale)))
            fail_msg("%s[%zu of %zu]: cuda %.9g, cpu %.9g", what, i, n, got[i], want[i]);
}

static void cuda_case(const char *cfg, dv_loss loss, const char *label) {
    const int B = 2;
    dv_model *mc = build(cpu, cfg, loss, B), *mg = build(gpu, cfg, loss, B);
    assert_int_equal(mc->nparams, mg->nparams);
    assert_int_equal(mc->nbuffers, mg->nbuffers);
    char what[256];
    /* the same seed gives the same init, buffers (the sinusoid table) too */
    float *h = test_dget(gpu, mg->params, mc->nparams * sizeof(float));
    snprintf(what, sizeof what, "%s: initial params", label);
    test_expect_bits(h, mc->params, mc->nparams * sizeof(float), what);
    free(h);
    if (mc->nbuffers) {
        h = test_dget(gpu, mg->buffers, mc->nbuffers * sizeof(float));
        snprintf(what, sizeof what, "%s: buffers", label);
        expect_close(h, mc->buffers, mc->nbuffers, 1e-6, what);
        free(h);
    }
    dv_model *ms[2] = {mc, mg};
    for (int k = 0; k < 2; k++) {
        set_data(ms[k], B, 41);
        shake_params(ms[k], 0.3f, 42);
        ms[k]->be->fill(ms[k]->be->ctx, ms[k]->grads, 0, ms[k]->nparams);
    }
    const size_t nout = (size_t)B * mc->layers[mc->nlayers - 1].out_elems;
    /* eval forward (no dropout, the fused residuals), then a training step */
    dv_model_forward(mc, B, 0);
    dv_model_forward(mg, B, 0);
    h = test_dget(gpu, mg->acts[mg->nlayers - 1], nout * sizeof(float));
    snprintf(what, sizeof what, "%s: eval output", label);
    expect_close(h, mc->acts[mc->nlayers - 1], nout, 1e-4, what);
    free(h);
    double lc = loss_of(mc, B), lg = loss_of(mg, B);
    h = test_dget(gpu, mg->acts[mg->nlayers - 1], nout * sizeof(float));
    snprintf(what, sizeof what, "%s: training output", label);
    expect_close(h, mc->acts[mc->nlayers - 1], nout, 1e-4, what);
    free(h);
    if (!(fabs(lc - lg) <= 1e-4 * fabs(lc)))
        fail_msg("%s: loss cuda %.9g, cpu %.9g", label, lg, lc);
    dv_model_backward(mc, B, NULL, NULL);
    dv_model_backward(mg, B, NULL, NULL);
    test_expect_ok(gpu, label);
    h = test_dget(gpu, mg->grads, mc->nparams * sizeof(float));
    for (int i = 0; i < mc->nlayers; i++)
        for (int k = 0; k < mc->layers[i].nparam; k++) {
            const dv_param *p = &mc->layers[i].param[k];
            if (!p->trainable || p->tie) continue;
            snprintf(what, sizeof what, "%s: grad %s.%s", label, mc->layers[i].name, p->name);
            expect_close(h + p->offset, mc->grads + p->offset, p->count, 1e-4, what);
        }
    free(h);
    dv_model_free(mg);
    dv_model_free(mc);
}

static void test_cuda_matches_cpu(void **state) {
    (void)state;
    if (!gpu) skip();
    cuda_case(gpt_cfg, DV_LOSS_XENT, "tiny gpt");
    cuda_case(emb_sin_cfg, DV_LOSS_XENT, "embedding sinusoidal");
    cuda_case(stack_cfg, DV_LOSS_MSE, "sequence stack");
    cuda_case(ln_vec_cfg, DV_LOSS_MSE, "layernorm (K)");
}

/* ---- main ------------------------------------------------------------------- */

static int setup(void **state) {
    (void)state;
    char why[400];
    if (test_backends_open(&cpu, &gpu, why, sizeof why)) return -1;
    if (!gpu) {
        printf("test_layers_seq: no CUDA device (%s); the CUDA comparison is skipped\n", why);
        fflush(stdout);
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_backends_close(&cpu, &gpu);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_and_shapes), cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_embedding_grad),    cmocka_unit_test(test_layernorm_grad),
        cmocka_unit_test(test_gelu_grad),         cmocka_unit_test(test_attention_grad),
        cmocka_unit_test(test_transformer_grad),  cmocka_unit_test(test_gpt_tied_grad),
        cmocka_unit_test(test_causality),         cmocka_unit_test(test_cuda_matches_cpu),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
