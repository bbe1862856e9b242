/* layer_dense.c — [dense] and [perceptron]: y (B, U) = x (B, K) W^T (U, K)
 * + b, then the activation. On a sequence (T, K) a dense layer maps every
 * position: y (B*T, U) from x (B*T, K). `tie = NAME` makes the weight the
 * (V, D) table of an earlier [embedding] (weight tying). A [perceptron] is
 * a dense layer with zero initial weights and no activation, trained by
 * the perceptron loss (docs/perceptron.md).
 *
 * Backward turns dy into the pre-activation gradient where it lies (the
 * model owns dy and no longer needs it).
 */
#include <string.h>

#include "layer-impl.h"

static int dense_rows(const dv_layer *l) {
    return l->in_ndim == 2 ? l->in_shape[0] : 1;
}

static void dense_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    (void)training;
    const dv_backend *be = m->be;
    int T = dense_rows(l), U = (int)l->out_elems / T, K = (int)l->in_elems / T;
    be->gemm(be->ctx, 0, 1, B * T, U, K, 1.0f, x, l->param[0].data, 0.0f, y);
    be->bias_forward(be->ctx, y, l->param[1].data, B * T, U, 1);
    dv_layer_act_forward(l, m, y, B);
}

static void dense_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                           const float *dy_in, float *dx, int B) {
    const dv_backend *be = m->be;
    float *dy = (float *)dy_in;
    int T = dense_rows(l), U = (int)l->out_elems / T, K = (int)l->in_elems / T;
    dv_layer_act_backward(l, m, y, dy, B);
    be->gemm(be->ctx, 1, 0, U, K, B * T, 1.0f, dy, x, 1.0f, l->param[0].grad);
    be->bias_backward(be->ctx, dy, l->param[1].grad, B * T, U, 1);
    if (dx) be->gemm(be->ctx, 0, 0, B * T, K, U, 1.0f, dy, l->param[0].data, 0.0f, dx);
}

/* y = x W^T: 2 K U per row, T rows. */
static double dense_flops(const dv_layer *l) {
    return 2.0 * (double)l->in_elems * (double)l->out_elems / dense_rows(l);
}

static const dv_layer_ops dense_ops = {
    .forward = dense_forward, .backward = dense_backward, .flops = dense_flops};

/* `tie = NAME`: the weight is the (V, D) table of an earlier embedding
 * NAME, so units = V and the input has D features. */
static dv_status dense_tie(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m,
                           const char *name, long *units, char *err) {
    for (int i = 0; i < l->index; i++) {
        const dv_layer *e = &m->layers[i];
        if (strcmp(e->name, name)) continue;
        if (strcmp(e->type, "embedding"))
            return DV_CONFIG_ERROR(err, cfg, s, "tie",
                                   "'%s' is a [%s]; only an [embedding] can be tied", name,
                                   e->type);
        const dv_param *t = &e->param[0];
        int K = (int)(l->in_elems / (size_t)dense_rows(l));
        if (*units && *units != t->shape[0])
            return DV_CONFIG_ERROR(err, cfg, s, "tie", "units = %ld but %s has %d rows", *units,
                                   name, t->shape[0]);
        if (K != t->shape[1])
            return DV_CONFIG_ERROR(err, cfg, s, "tie", "the input has %d features but %s has %d", K,
                                   name, t->shape[1]);
        *units = t->shape[0];
        return DV_OK;
    }
    return DV_CONFIG_ERROR(err, cfg, s, "tie", "no earlier layer is named '%s'", name);
}

dv_status dv_layer_dense_init(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m,
                              char *err) {
    const int perceptron = !strcmp(l->type, "perceptron");
    long units = 0;
    const char *ustr, *tie = NULL;
    DV_TRY(dv_config_str(cfg, s, "units", NULL, &ustr, err));
    if (!perceptron) DV_TRY(dv_config_str(cfg, s, "tie", NULL, &tie, err));
    if (ustr && !strcmp(ustr, "vocab")) {
        if (!m->tokens) return DV_CONFIG_ERROR(err, cfg, s, "units", "needs a token input");
        units = m->vocab;
    } else {
        DV_TRY(dv_config_int(cfg, s, "units", perceptron ? 1 : 0, 1, 1 << 24, &units, err));
    }
    if (tie) DV_TRY(dense_tie(l, cfg, s, m, tie, &units, err));
    if (!units) return DV_CONFIG_ERROR(err, cfg, s, NULL, "missing key 'units'");
    if (!perceptron) DV_TRY(dv_layer_read_act(l, cfg, s, err));
    int T = dense_rows(l), K = (int)(l->in_elems / (size_t)T);
    l->out_ndim = l->in_ndim == 2 ? 2 : 1;
    l->out_shape[0] = l->in_ndim == 2 ? T : (int)units;
    l->out_shape[1] = (int)units;
    int wshape[2] = {(int)units, K}, bshape[1] = {(int)units};
    dv_init wi = perceptron                                               ? DV_INIT_ZERO
                 : (l->act == DV_ACT_RELU || l->act == DV_ACT_LEAKY_RELU) ? DV_INIT_HE
                                                                          : DV_INIT_XAVIER;
    dv_param *w = dv_layer_add_param(l, "weight", 1, wi, 2, wshape);
    w->fan_in = K;
    w->fan_out = (int)units;
    if (tie)
        for (int i = 0; i < l->index; i++)
            if (!strcmp(m->layers[i].name, tie)) w->tie = &m->layers[i].param[0];
    dv_layer_add_param(l, "bias", 1, DV_INIT_ZERO, 1, bshape);
    l->ops = &dense_ops;
    return DV_OK;
}
