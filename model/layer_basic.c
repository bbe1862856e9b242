/* layer_basic.c — the layers that move or scale values without weights of
 * their own, and batch norm: [flatten] and [reshape] (the same values in
 * another shape), [activation] (one activation on its own), [dropout]
 * (inverted, masks drawn from the step's seed and each row's global id, so
 * 1 rank and N ranks drop the same elements), and [batchnorm] (statistics
 * over the batch and every position of a channel).
 */
#include <stdlib.h>
#include <string.h>

#include "layer-impl.h"

/* ---- flatten, reshape, activation: a copy, then the activation ---------- */

static void copy_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    (void)training;
    m->be->copy(m->be->ctx, y, x, (size_t)B * l->out_elems * sizeof(float));
    dv_layer_act_forward(l, m, y, B);
}

static void copy_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                          const float *dy_in, float *dx, int B) {
    (void)x;
    if (!dx) return;
    float *dy = (float *)dy_in;
    dv_layer_act_backward(l, m, y, dy, B);
    m->be->copy(m->be->ctx, dx, dy, (size_t)B * l->in_elems * sizeof(float));
}

static const dv_layer_ops copy_ops = {.forward = copy_forward, .backward = copy_backward};

/* [flatten]: (K) of every input; [reshape] shape = C,H,W | T,F | K of the
 * same number of values. */
dv_status dv_layer_reshape_init(dv_layer *l, dv_config *cfg, dv_config_section *s,
                                const dv_model *m, char *err) {
    (void)m;
    l->ops = &copy_ops;
    if (!strcmp(l->type, "flatten")) {
        l->out_ndim = 1;
        l->out_shape[0] = (int)l->in_elems;
        return DV_OK;
    }
    int shape[3], n;
    DV_TRY(dv_config_ints(cfg, s, "shape", shape, 3, &n, err));
    size_t e = 1;
    for (int i = 0; i < n; i++)
        e *= (size_t)shape[i];
    if (e != l->in_elems)
        return DV_CONFIG_ERROR(err, cfg, s, "shape", "holds %zu values, but its input has %zu", e,
                               l->in_elems);
    l->out_ndim = n;
    memcpy(l->out_shape, shape, sizeof(shape));
    return DV_OK;
}

dv_status dv_layer_activation_init(dv_layer *l, dv_config *cfg, dv_config_section *s,
                                   const dv_model *m, char *err) {
    (void)m;
    l->ops = &copy_ops;
    l->out_ndim = l->in_ndim;
    memcpy(l->out_shape, l->in_shape, sizeof(l->out_shape));
    DV_TRY(dv_layer_read_act(l, cfg, s, err));
    if (l->act == DV_ACT_LINEAR)
        return DV_CONFIG_ERROR(err, cfg, s, NULL,
                               "needs 'activation = relu | leaky_relu | sigmoid | tanh | "
                               "softmax'");
    return DV_OK;
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

static dv_status dropout_setup(dv_layer *l, dv_model *m, char *err) {
    dropout_priv *p = l->priv;
    p->mask = m->be->alloc(m->be->ctx, (size_t)m->max_batch * l->out_elems * sizeof(float));
    return p->mask ? DV_OK : DV_ERROR(err, "out of memory for %s", l->name);
}

static void dropout_free(dv_layer *l, dv_model *m) {
    dropout_priv *p = l->priv;
    if (p) m->be->free(m->be->ctx, p->mask);
    dv_layer_free_priv(l, m);
}

static const dv_layer_ops dropout_ops = {.forward = dropout_forward,
                                         .backward = dropout_backward,
                                         .free = dropout_free,
                                         .setup = dropout_setup};

dv_status dv_layer_dropout_init(dv_layer *l, dv_config *cfg, dv_config_section *s,
                                const dv_model *m, char *err) {
    (void)m;
    l->out_ndim = l->in_ndim;
    memcpy(l->out_shape, l->in_shape, sizeof(l->out_shape));
    dropout_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    l->priv = p;
    l->ops = &dropout_ops;
    double rate;
    DV_TRY(dv_config_float(cfg, s, "rate", 0.5, 0, 0.99, &rate, err));
    p->rate = (float)rate;
    return DV_OK;
}

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

static dv_status bn_setup(dv_layer *l, dv_model *m, char *err) {
    bn_priv *p = l->priv;
    p->save_mean = m->be->alloc(m->be->ctx, (size_t)p->C * sizeof(float));
    p->save_invstd = m->be->alloc(m->be->ctx, (size_t)p->C * sizeof(float));
    return p->save_mean && p->save_invstd ? DV_OK : DV_ERROR(err, "out of memory for %s", l->name);
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
    .forward = bn_forward, .backward = bn_backward, .free = bn_free, .setup = bn_setup};

dv_status dv_layer_batchnorm_init(dv_layer *l, dv_config *cfg, dv_config_section *s,
                                  const dv_model *m, char *err) {
    (void)m;
    bn_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    l->priv = p;
    l->ops = &bn_ops;
    double eps, mom;
    DV_TRY(dv_config_float(cfg, s, "eps", 1e-5, 1e-12, 1, &eps, err));
    DV_TRY(dv_config_float(cfg, s, "momentum", 0.1, 0, 1, &mom, err));
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
    return DV_OK;
}
