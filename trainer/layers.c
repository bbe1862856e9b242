/* layers.c — every layer type a config can name, as a table of functions
 * over the backend's ops. A layer reads its keys, infers its output shape
 * from its input shape, declares its parameters (the model lays them out in
 * its flat buffers), and then runs forward and backward on B rows.
 *
 * A layer may overwrite the incoming gradient dy (the model owns it and no
 * longer needs it); dense and conv2d apply their activation in place, so
 * their backward turns dy into the pre-activation gradient where it lies.
 */
#include <stdlib.h>
#include <string.h>

#include "trainer-impl.h"

static const char *const act_names[] = {"linear", "relu",    "leaky_relu", "sigmoid",
                                        "tanh",   "softmax", NULL};

dv_param *dv_layer_add_param(dv_layer *l, const char *name, int trainable, dv_init init, int ndim,
                             const int *shape) {
    dv_param *p = &l->param[l->nparam++];
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->trainable = trainable;
    p->init = init;
    p->ndim = ndim;
    p->count = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->count *= (size_t)shape[i];
    }
    return p;
}

int dv_layer_read_act(dv_layer *l, dv_config *cfg, dv_cfg_section *s, char *err) {
    int a;
    double alpha;
    if (dv_cfg_enum(cfg, s, "activation", "linear", act_names, &a, err) ||
        dv_cfg_float(cfg, s, "alpha", 0.01, 0, 1, &alpha, err))
        return -1;
    l->act = (dv_act)a;
    l->act_alpha = (float)alpha;
    return 0;
}

static int act_cols(const dv_layer *l) {
    /* softmax runs over the features of a dense output, or over channels
     * of a conv output only when it is 1x1; keep it to the last dim */
    return l->out_ndim == 1 ? l->out_shape[0] : l->out_shape[l->out_ndim - 1];
}

static void apply_act(dv_layer *l, dv_model *m, float *y, int B) {
    if (l->act == DV_ACT_LINEAR || l->act_in_loss) return;
    m->be->act_forward(m->be->ctx, l->act, l->act_alpha, y, y, (size_t)B * l->out_elems,
                       act_cols(l));
}

static void undo_act(dv_layer *l, dv_model *m, const float *y, float *dy, int B) {
    if (l->act == DV_ACT_LINEAR || l->act_in_loss) return;
    m->be->act_backward(m->be->ctx, l->act, l->act_alpha, y, dy, dy, (size_t)B * l->out_elems,
                        act_cols(l));
}

/* ---- dense / perceptron: y (B, U) = x (B, K) W^T (U, K) + b ------------
 * On a sequence (T, K) it maps every position: y (B*T, U) from x (B*T, K). */

static int dense_rows(const dv_layer *l) {
    return l->in_ndim == 2 ? l->in_shape[0] : 1;
}

static void dense_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    (void)training;
    const dv_backend *be = m->be;
    int T = dense_rows(l), U = (int)l->out_elems / T, K = (int)l->in_elems / T;
    be->gemm(be->ctx, 0, 1, B * T, U, K, 1.0f, x, l->param[0].data, 0.0f, y);
    be->bias_forward(be->ctx, y, l->param[1].data, B * T, U, 1);
    apply_act(l, m, y, B);
}

static void dense_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                           const float *dy_in, float *dx, int B) {
    const dv_backend *be = m->be;
    float *dy = (float *)dy_in;
    int T = dense_rows(l), U = (int)l->out_elems / T, K = (int)l->in_elems / T;
    undo_act(l, m, y, dy, B);
    be->gemm(be->ctx, 1, 0, U, K, B * T, 1.0f, dy, x, 1.0f, l->param[0].grad);
    be->bias_backward(be->ctx, dy, l->param[1].grad, B * T, U, 1);
    if (dx) be->gemm(be->ctx, 0, 0, B * T, K, U, 1.0f, dy, l->param[0].data, 0.0f, dx);
}

static const dv_layer_ops dense_ops = {
    .forward = dense_forward, .backward = dense_backward, .free = NULL, .setup = NULL};

/* `tie = NAME`: the weight is the (V, D) table of an earlier embedding
 * NAME (weight tying), so units = V and the input has D features. */
static int dense_tie(dv_layer *l, dv_config *cfg, dv_cfg_section *s, const dv_model *m,
                     const char *name, long *units, char *err) {
    char where[1200];
    dv_cfg_where(cfg, s, "tie", where, sizeof(where));
    for (int i = 0; i < l->index; i++) {
        const dv_layer *e = &m->layers[i];
        if (strcmp(e->name, name)) continue;
        if (strcmp(e->type, "embedding"))
            return DV_ERROR(err, "%s: '%s' is a [%s]; only an [embedding] can be tied", where, name,
                            e->type);
        const dv_param *t = &e->param[0];
        int K = (int)(l->in_elems / (size_t)dense_rows(l));
        if (*units && *units != t->shape[0])
            return DV_ERROR(err, "%s: units = %ld but %s has %d rows", where, *units, name,
                            t->shape[0]);
        if (K != t->shape[1])
            return DV_ERROR(err, "%s: the input has %d features but %s has %d", where, K, name,
                            t->shape[1]);
        *units = t->shape[0];
        return 0;
    }
    return DV_ERROR(err, "%s: no earlier layer is named '%s'", where, name);
}

static int dense_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, const dv_model *m,
                      int perceptron, char *err) {
    long units = 0;
    const char *ustr, *tie = NULL;
    if (dv_cfg_str(cfg, s, "units", NULL, &ustr, err)) return -1;
    if (!perceptron && dv_cfg_str(cfg, s, "tie", NULL, &tie, err)) return -1;
    if (ustr && !strcmp(ustr, "vocab")) {
        char where[1200];
        dv_cfg_where(cfg, s, "units", where, sizeof(where));
        if (!m->tokens) return DV_ERROR(err, "%s: units = vocab needs a token input", where);
        units = m->vocab;
    } else if (dv_cfg_int(cfg, s, "units", perceptron ? 1 : 0, 1, 1 << 24, &units, err))
        return -1;
    if (tie && dense_tie(l, cfg, s, m, tie, &units, err)) return -1;
    if (!units) return dv_cfg_missing(cfg, s, "units", err);
    if (!perceptron && dv_layer_read_act(l, cfg, s, err)) return -1;
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
    return 0;
}

/* ---- conv2d: (C, H, W) -> (F, OH, OW) ---------------------------------- */

typedef struct conv_priv {
    dv_conv2d_geom g;
} conv_priv;

static void conv_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    (void)training;
    conv_priv *p = l->priv;
    dv_conv2d_geom g = p->g;
    g.B = B;
    m->be->conv2d_forward(m->be->ctx, &g, x, l->param[0].data, l->param[1].data, y, m->work);
    apply_act(l, m, y, B);
}

static void conv_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                          const float *dy_in, float *dx, int B) {
    conv_priv *p = l->priv;
    dv_conv2d_geom g = p->g;
    g.B = B;
    float *dy = (float *)dy_in;
    undo_act(l, m, y, dy, B);
    m->be->conv2d_backward(m->be->ctx, &g, x, l->param[0].data, dy, dx, l->param[0].grad,
                           l->param[1].grad, m->work);
}

void dv_layer_free_priv(dv_layer *l, dv_model *m) {
    (void)m;
    free(l->priv);
    l->priv = NULL;
}

static const dv_layer_ops conv_ops = {
    .forward = conv_forward, .backward = conv_backward, .free = dv_layer_free_priv, .setup = NULL};

static int need_chw(dv_layer *l, dv_config *cfg, dv_cfg_section *s, char *err) {
    if (l->in_ndim == 3) return 0;
    char where[1200];
    dv_cfg_where(cfg, s, NULL, where, sizeof(where));
    return DV_ERROR(err,
                    "%s: needs an input of shape C,H,W but gets %zu features (set [input] "
                    "shape = C,H,W)",
                    where, l->in_elems);
}

static int read_window(dv_layer *l, dv_config *cfg, dv_cfg_section *s, dv_conv2d_geom *g,
                       long def_size, char *err) {
    long size, stride, pad;
    if (dv_cfg_int(cfg, s, "size", def_size, 1, 4096, &size, err)) return -1;
    if (!size) return dv_cfg_missing(cfg, s, "size", err);
    if (dv_cfg_int(cfg, s, "stride", def_size ? size : 1, 1, 4096, &stride, err) ||
        dv_cfg_int(cfg, s, "pad", 0, 0, 4096, &pad, err))
        return -1;
    g->C = l->in_shape[0];
    g->H = l->in_shape[1];
    g->W = l->in_shape[2];
    g->KH = g->KW = (int)size;
    g->stride = (int)stride;
    g->pad = (int)pad;
    g->B = 1;
    if (dv_conv2d_geom_init(g) || pad >= size) {
        char where[1200];
        dv_cfg_where(cfg, s, NULL, where, sizeof(where));
        return DV_ERROR(err,
                        "%s: a %ldx%ld window with stride %ld and pad %ld does not fit the "
                        "input %dx%dx%d (pad must be < size)",
                        where, size, size, stride, pad, g->C, g->H, g->W);
    }
    return 0;
}

static int conv_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, char *err) {
    if (need_chw(l, cfg, s, err)) return -1;
    conv_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    l->priv = p;
    l->ops = &conv_ops;
    long filters;
    if (dv_cfg_int(cfg, s, "filters", 0, 0, 1 << 20, &filters, err) ||
        read_window(l, cfg, s, &p->g, 0, err) || dv_layer_read_act(l, cfg, s, err))
        return -1;
    if (!filters) return dv_cfg_missing(cfg, s, "filters", err);
    p->g.F = (int)filters;
    l->out_ndim = 3;
    l->out_shape[0] = p->g.F;
    l->out_shape[1] = p->g.OH;
    l->out_shape[2] = p->g.OW;
    int wshape[4] = {p->g.F, p->g.C, p->g.KH, p->g.KW}, bshape[1] = {p->g.F};
    dv_init wi =
        (l->act == DV_ACT_RELU || l->act == DV_ACT_LEAKY_RELU) ? DV_INIT_HE : DV_INIT_XAVIER;
    dv_param *w = dv_layer_add_param(l, "weight", 1, wi, 4, wshape);
    w->fan_in = p->g.C * p->g.KH * p->g.KW;
    w->fan_out = p->g.F * p->g.KH * p->g.KW;
    dv_layer_add_param(l, "bias", 1, DV_INIT_ZERO, 1, bshape);
    return 0;
}

/* ---- pooling ------------------------------------------------------------ */

typedef struct pool_priv {
    dv_conv2d_geom g;
    dv_pool mode;
    int32_t *arg; /* (max_batch, out_elems), device */
} pool_priv;

static void pool_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    (void)training;
    pool_priv *p = l->priv;
    dv_conv2d_geom g = p->g;
    g.B = B;
    m->be->pool2d_forward(m->be->ctx, p->mode, &g, x, y, p->arg);
}

static void pool_backward(dv_layer *l, dv_model *m, const float *x, const float *y, const float *dy,
                          float *dx, int B) {
    (void)x;
    (void)y;
    pool_priv *p = l->priv;
    if (!dx) return;
    dv_conv2d_geom g = p->g;
    g.B = B;
    m->be->pool2d_backward(m->be->ctx, p->mode, &g, dy, dx, p->arg);
}

static void pool_free(dv_layer *l, dv_model *m) {
    pool_priv *p = l->priv;
    if (p) m->be->free(m->be->ctx, p->arg);
    dv_layer_free_priv(l, m);
}

static const dv_layer_ops pool_ops = {
    .forward = pool_forward, .backward = pool_backward, .free = pool_free, .setup = NULL};

static int pool_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, dv_pool mode, char *err) {
    if (need_chw(l, cfg, s, err)) return -1;
    pool_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    l->priv = p;
    l->ops = &pool_ops;
    p->mode = mode;
    if (read_window(l, cfg, s, &p->g, 2, err)) return -1;
    p->g.F = p->g.C;
    l->out_ndim = 3;
    l->out_shape[0] = p->g.C;
    l->out_shape[1] = p->g.OH;
    l->out_shape[2] = p->g.OW;
    return 0;
}

/* ---- flatten, activation ------------------------------------------------ */

static void copy_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    (void)training;
    m->be->copy(m->be->ctx, y, x, (size_t)B * l->out_elems * sizeof(float));
    apply_act(l, m, y, B);
}

static void copy_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                          const float *dy_in, float *dx, int B) {
    (void)x;
    if (!dx) return;
    float *dy = (float *)dy_in;
    undo_act(l, m, y, dy, B);
    m->be->copy(m->be->ctx, dx, dy, (size_t)B * l->in_elems * sizeof(float));
}

static const dv_layer_ops copy_ops = {
    .forward = copy_forward, .backward = copy_backward, .free = NULL, .setup = NULL};

/* ---- upsample (nearest) --------------------------------------------------- */

typedef struct upsample_priv {
    int scale;
} upsample_priv;

static void upsample_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B,
                             int training) {
    (void)training;
    const upsample_priv *p = l->priv;
    m->be->upsample_forward(m->be->ctx, B * l->in_shape[0], l->in_shape[1], l->in_shape[2],
                            p->scale, x, y);
}

static void upsample_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                              const float *dy, float *dx, int B) {
    (void)x;
    (void)y;
    const upsample_priv *p = l->priv;
    if (dx)
        m->be->upsample_backward(m->be->ctx, B * l->in_shape[0], l->in_shape[1], l->in_shape[2],
                                 p->scale, dy, dx);
}

static const dv_layer_ops upsample_ops = {
    .forward = upsample_forward, .backward = upsample_backward, .free = NULL, .setup = NULL};

static int upsample_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, char *err) {
    if (need_chw(l, cfg, s, err)) return -1;
    long scale;
    if (dv_cfg_int(cfg, s, "scale", 2, 2, 64, &scale, err)) return -1;
    if ((long)l->in_shape[1] * scale > (1L << 20) || (long)l->in_shape[2] * scale > (1L << 20)) {
        char where[1200];
        dv_cfg_where(cfg, s, "scale", where, sizeof(where));
        return DV_ERROR(err, "%s = %ld: the output (%ld x %ld) is too large", where, scale,
                        (long)l->in_shape[1] * scale, (long)l->in_shape[2] * scale);
    }
    upsample_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    p->scale = (int)scale;
    l->priv = p;
    l->ops = &upsample_ops;
    l->out_ndim = 3;
    l->out_shape[0] = l->in_shape[0];
    l->out_shape[1] = l->in_shape[1] * p->scale;
    l->out_shape[2] = l->in_shape[2] * p->scale;
    return 0;
}

/* ---- dropout ------------------------------------------------------------ */

typedef struct dropout_priv {
    float rate;
    float *mask; /* (max_batch, elems) */
} dropout_priv;

static void dropout_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B,
                            int training) {
    dropout_priv *p = l->priv;
    if (!training || p->rate == 0.0f) {
        m->be->copy(m->be->ctx, y, x, (size_t)B * l->out_elems * sizeof(float));
        return;
    }
    uint64_t seed = dv_rand_hash(m->step_seed, (uint64_t)l->index);
    m->be->dropout_forward(m->be->ctx, p->rate, seed, m->row_id, B, (int)l->out_elems, x, y,
                           p->mask);
}

static void dropout_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                             const float *dy, float *dx, int B) {
    (void)x;
    (void)y;
    dropout_priv *p = l->priv;
    if (!dx) return;
    if (p->rate == 0.0f) {
        m->be->copy(m->be->ctx, dx, dy, (size_t)B * l->out_elems * sizeof(float));
        return;
    }
    m->be->dropout_backward(m->be->ctx, p->mask, dy, dx, (size_t)B * l->out_elems);
}

static void dropout_free(dv_layer *l, dv_model *m) {
    dropout_priv *p = l->priv;
    if (p) m->be->free(m->be->ctx, p->mask);
    dv_layer_free_priv(l, m);
}

static const dv_layer_ops dropout_ops = {
    .forward = dropout_forward, .backward = dropout_backward, .free = dropout_free, .setup = NULL};

/* ---- batch norm ---------------------------------------------------------- */

typedef struct bn_priv {
    float eps, momentum;
    int C, S;
    float *save_mean, *save_invstd; /* (C) */
} bn_priv;

static void bn_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    bn_priv *p = l->priv;
    m->be->batchnorm_forward(m->be->ctx, training, B, p->C, p->S, p->eps, p->momentum, x,
                             l->param[0].data, l->param[1].data, l->param[2].data, l->param[3].data,
                             p->save_mean, p->save_invstd, y);
}

static void bn_backward(dv_layer *l, dv_model *m, const float *x, const float *y, const float *dy,
                        float *dx, int B) {
    (void)y;
    bn_priv *p = l->priv;
    float *scratch = dx;
    if (!scratch) scratch = m->dbuf[0] == dy ? m->dbuf[1] : m->dbuf[0];
    m->be->batchnorm_backward(m->be->ctx, B, p->C, p->S, x, l->param[0].data, p->save_mean,
                              p->save_invstd, dy, scratch, l->param[0].grad, l->param[1].grad);
}

static void bn_free(dv_layer *l, dv_model *m) {
    bn_priv *p = l->priv;
    if (p) {
        m->be->free(m->be->ctx, p->save_mean);
        m->be->free(m->be->ctx, p->save_invstd);
    }
    dv_layer_free_priv(l, m);
}

static const dv_layer_ops bn_ops = {
    .forward = bn_forward, .backward = bn_backward, .free = bn_free, .setup = NULL};

static int bn_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, char *err) {
    bn_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    l->priv = p;
    l->ops = &bn_ops;
    double eps, mom;
    if (dv_cfg_float(cfg, s, "eps", 1e-5, 1e-12, 1, &eps, err) ||
        dv_cfg_float(cfg, s, "momentum", 0.1, 0, 1, &mom, err))
        return -1;
    p->eps = (float)eps;
    p->momentum = (float)mom;
    p->C = l->in_shape[0];
    p->S = (int)(l->in_elems / (size_t)p->C);
    l->out_ndim = l->in_ndim;
    memcpy(l->out_shape, l->in_shape, sizeof(l->out_shape));
    int shape[1] = {p->C};
    dv_layer_add_param(l, "gamma", 1, DV_INIT_ONE, 1, shape);
    dv_layer_add_param(l, "beta", 1, DV_INIT_ZERO, 1, shape);
    dv_layer_add_param(l, "running_mean", 0, DV_INIT_ZERO, 1, shape);
    dv_layer_add_param(l, "running_var", 0, DV_INIT_ONE, 1, shape);
    return 0;
}

/* ---- construction -------------------------------------------------------- */

int dv_layer_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, const dv_model *m, char *err) {
    snprintf(l->type, sizeof(l->type), "%s", s->type);
    snprintf(l->name, sizeof(l->name), "%s", s->name);
    const char *t = s->type;
    if (!strcmp(t, "dense")) return dense_init(l, cfg, s, m, 0, err);
    if (!strcmp(t, "perceptron")) return dense_init(l, cfg, s, m, 1, err);
    if (!strcmp(t, "conv2d")) return conv_init(l, cfg, s, err);
    if (!strcmp(t, "maxpool")) return pool_init(l, cfg, s, DV_POOL_MAX, err);
    if (!strcmp(t, "minpool")) return pool_init(l, cfg, s, DV_POOL_MIN, err);
    if (!strcmp(t, "avgpool")) return pool_init(l, cfg, s, DV_POOL_AVG, err);
    if (!strcmp(t, "batchnorm")) return bn_init(l, cfg, s, err);
    if (!strcmp(t, "rnn") || !strcmp(t, "lstm") || !strcmp(t, "gru"))
        return dv_layer_rnn_init(l, cfg, s, m, err);
    if (!strcmp(t, "embedding") || !strcmp(t, "layernorm") || !strcmp(t, "gelu") ||
        !strcmp(t, "attention") || !strcmp(t, "transformer"))
        return dv_layer_seq_init(l, cfg, s, m, err);
    l->out_ndim = l->in_ndim;
    memcpy(l->out_shape, l->in_shape, sizeof(l->out_shape));
    if (!strcmp(t, "flatten")) {
        l->out_ndim = 1;
        l->out_shape[0] = (int)l->in_elems;
        l->ops = &copy_ops;
        return 0;
    }
    if (!strcmp(t, "reshape")) { /* the same values, another shape: (C, H, W), (T, F) or (K) */
        int shape[3], n;
        if (dv_cfg_ints(cfg, s, "shape", shape, 3, &n, err)) return -1;
        size_t e = 1;
        for (int i = 0; i < n; i++)
            e *= (size_t)shape[i];
        if (e != l->in_elems) {
            char where[1200];
            dv_cfg_where(cfg, s, "shape", where, sizeof(where));
            return DV_ERROR(err, "%s: holds %zu values, but its input has %zu", where, e,
                            l->in_elems);
        }
        l->out_ndim = n;
        memcpy(l->out_shape, shape, sizeof(shape));
        l->ops = &copy_ops;
        return 0;
    }
    if (!strcmp(t, "upsample")) return upsample_init(l, cfg, s, err);
    if (!strcmp(t, "activation")) {
        l->ops = &copy_ops;
        if (dv_layer_read_act(l, cfg, s, err)) return -1;
        if (l->act == DV_ACT_LINEAR) {
            char where[1200];
            dv_cfg_where(cfg, s, NULL, where, sizeof(where));
            return DV_ERROR(err,
                            "%s: needs 'activation = relu | leaky_relu | sigmoid | tanh | "
                            "softmax'",
                            where);
        }
        return 0;
    }
    if (!strcmp(t, "dropout")) {
        dropout_priv *p = calloc(1, sizeof(*p));
        if (!p) return DV_ERROR(err, "out of memory");
        l->priv = p;
        l->ops = &dropout_ops;
        double rate;
        if (dv_cfg_float(cfg, s, "rate", 0.5, 0, 0.99, &rate, err)) return -1;
        p->rate = (float)rate;
        return 0;
    }
    char where[1200];
    dv_cfg_where(cfg, s, NULL, where, sizeof(where));
    return DV_ERROR(err,
                    "%s: unknown section [%s] (layers: dense conv2d maxpool minpool avgpool "
                    "flatten reshape upsample dropout batchnorm activation perceptron embedding "
                    "rnn lstm gru "
                    "layernorm gelu attention transformer)",
                    where, t);
}

int dv_layer_setup(dv_layer *l, dv_model *m, char *err) {
    size_t rows = (size_t)m->max_batch;
    if (l->ops->setup) return l->ops->setup(l, m, err);
    if (l->ops == &pool_ops) {
        pool_priv *p = l->priv;
        p->arg = m->be->alloc(m->be->ctx, rows * l->out_elems * sizeof(int32_t));
        if (!p->arg) return DV_ERROR(err, "out of memory for %s", l->name);
    } else if (l->ops == &dropout_ops) {
        dropout_priv *p = l->priv;
        p->mask = m->be->alloc(m->be->ctx, rows * l->out_elems * sizeof(float));
        if (!p->mask) return DV_ERROR(err, "out of memory for %s", l->name);
    } else if (l->ops == &bn_ops) {
        bn_priv *p = l->priv;
        p->save_mean = m->be->alloc(m->be->ctx, (size_t)p->C * sizeof(float));
        p->save_invstd = m->be->alloc(m->be->ctx, (size_t)p->C * sizeof(float));
        if (!p->save_mean || !p->save_invstd) return DV_ERROR(err, "out of memory for %s", l->name);
    } else if (l->ops == &conv_ops) {
        conv_priv *p = l->priv;
        dv_conv2d_geom g = p->g;
        g.B = m->max_batch;
        size_t w = m->be->conv2d_workspace(m->be->ctx, &g);
        if (w > m->work_floats) m->work_floats = w;
    }
    return 0;
}
