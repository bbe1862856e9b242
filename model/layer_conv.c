/* layer_conv.c — the image layers on (C, H, W) inputs: [conv2d] (weights
 * (F, C, KH, KW), bias (F), then the activation), [maxpool] / [minpool] /
 * [avgpool] (the winners' positions kept for backward), and [upsample]
 * (nearest neighbour by an integer factor).
 *
 * A convolution's workspace is the model's shared one (m->work): setup
 * asks the backend how much the largest batch needs.
 */
#include <stdlib.h>
#include <string.h>

#include "layer-impl.h"

/* Reads size, stride and pad of a window over the image input into g. */
static dv_status read_window(dv_layer *l, dv_config *cfg, dv_config_section *s, dv_conv2d_geom *g,
                             long def_size, char *err) {
    long size, stride, pad;
    DV_TRY(dv_config_int(cfg, s, "size", def_size, 1, 4096, &size, err));
    if (!size) return DV_CONFIG_ERROR(err, cfg, s, NULL, "missing key 'size'");
    DV_TRY(dv_config_int(cfg, s, "stride", def_size ? size : 1, 1, 4096, &stride, err));
    DV_TRY(dv_config_int(cfg, s, "pad", 0, 0, 4096, &pad, err));
    g->C = l->in_shape[0];
    g->H = l->in_shape[1];
    g->W = l->in_shape[2];
    g->KH = g->KW = (int)size;
    g->stride = (int)stride;
    g->pad = (int)pad;
    g->B = 1;
    if (dv_conv2d_geom_init(g) || pad >= size)
        return DV_CONFIG_ERROR(err, cfg, s, NULL,
                               "a %ldx%ld window with stride %ld and pad %ld does not fit the "
                               "input %dx%dx%d (pad must be < size)",
                               size, size, stride, pad, g->C, g->H, g->W);
    return DV_OK;
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
    dv_layer_act_forward(l, m, y, B);
}

static void conv_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                          const float *dy_in, float *dx, int B) {
    conv_priv *p = l->priv;
    dv_conv2d_geom g = p->g;
    g.B = B;
    float *dy = (float *)dy_in;
    dv_layer_act_backward(l, m, y, dy, B);
    m->be->conv2d_backward(m->be->ctx, &g, x, l->param[0].data, dy, dx, l->param[0].grad,
                           l->param[1].grad, m->work);
}

/* The shared workspace must hold this layer's at the largest batch. */
static dv_status conv_setup(dv_layer *l, dv_model *m, char *err) {
    (void)err;
    conv_priv *p = l->priv;
    dv_conv2d_geom g = p->g;
    g.B = m->max_batch;
    size_t w = m->be->conv2d_workspace(m->be->ctx, &g);
    if (w > m->work_floats) m->work_floats = w;
    return DV_OK;
}

/* 2 C KH KW per output value (F OH OW of them). */
static double conv_flops(const dv_layer *l) {
    const conv_priv *p = l->priv;
    const dv_conv2d_geom *g = &p->g;
    return 2.0 * g->F * g->OH * g->OW * (double)g->C * g->KH * g->KW;
}

static const dv_layer_ops conv_ops = {.forward = conv_forward,
                                      .backward = conv_backward,
                                      .free = dv_layer_free_priv,
                                      .setup = conv_setup,
                                      .flops = conv_flops};

dv_status dv_layer_conv2d_init(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m,
                               char *err) {
    (void)m;
    DV_TRY(dv_layer_need_image(l, cfg, s, err));
    conv_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    l->priv = p;
    l->ops = &conv_ops;
    long filters;
    DV_TRY(dv_config_int(cfg, s, "filters", 0, 0, 1 << 20, &filters, err));
    DV_TRY(read_window(l, cfg, s, &p->g, 0, err));
    DV_TRY(dv_layer_read_act(l, cfg, s, err));
    if (!filters) return DV_CONFIG_ERROR(err, cfg, s, NULL, "missing key 'filters'");
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
    return DV_OK;
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

static dv_status pool_setup(dv_layer *l, dv_model *m, char *err) {
    pool_priv *p = l->priv;
    p->arg = m->be->alloc(m->be->ctx, (size_t)m->max_batch * l->out_elems * sizeof(int32_t));
    return p->arg ? DV_OK : DV_ERROR(err, "out of memory for %s", l->name);
}

static void pool_free(dv_layer *l, dv_model *m) {
    pool_priv *p = l->priv;
    if (p) m->be->free(m->be->ctx, p->arg);
    dv_layer_free_priv(l, m);
}

static const dv_layer_ops pool_ops = {
    .forward = pool_forward, .backward = pool_backward, .free = pool_free, .setup = pool_setup};

dv_status dv_layer_pool_init(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m,
                             char *err) {
    (void)m;
    DV_TRY(dv_layer_need_image(l, cfg, s, err));
    pool_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    l->priv = p;
    l->ops = &pool_ops;
    p->mode = !strcmp(l->type, "maxpool")   ? DV_POOL_MAX
              : !strcmp(l->type, "minpool") ? DV_POOL_MIN
                                            : DV_POOL_AVG;
    DV_TRY(read_window(l, cfg, s, &p->g, 2, err));
    p->g.F = p->g.C;
    l->out_ndim = 3;
    l->out_shape[0] = p->g.C;
    l->out_shape[1] = p->g.OH;
    l->out_shape[2] = p->g.OW;
    return DV_OK;
}

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
    .forward = upsample_forward, .backward = upsample_backward, .free = dv_layer_free_priv};

dv_status dv_layer_upsample_init(dv_layer *l, dv_config *cfg, dv_config_section *s,
                                 const dv_model *m, char *err) {
    (void)m;
    DV_TRY(dv_layer_need_image(l, cfg, s, err));
    long scale;
    DV_TRY(dv_config_int(cfg, s, "scale", 2, 2, 64, &scale, err));
    if ((long)l->in_shape[1] * scale > (1L << 20) || (long)l->in_shape[2] * scale > (1L << 20))
        return DV_CONFIG_ERROR(err, cfg, s, "scale", "the output (%ld x %ld) is too large",
                               (long)l->in_shape[1] * scale, (long)l->in_shape[2] * scale);
    upsample_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    p->scale = (int)scale;
    l->priv = p;
    l->ops = &upsample_ops;
    l->out_ndim = 3;
    l->out_shape[0] = l->in_shape[0];
    l->out_shape[1] = l->in_shape[1] * p->scale;
    l->out_shape[2] = l->in_shape[2] * p->scale;
    return DV_OK;
}
