/* layer.c — what the layer files share (layer-impl.h): declaring a
 * parameter, reading and applying an activation, freeing a layer's own
 * settings, and the check for an image input.
 */
#include <stdlib.h>
#include <string.h>

#include "layer-impl.h"

const char *const dv_act_names[] = {[DV_ACT_LINEAR] = "linear",
                                    [DV_ACT_RELU] = "relu",
                                    [DV_ACT_LEAKY_RELU] = "leaky_relu",
                                    [DV_ACT_SIGMOID] = "sigmoid",
                                    [DV_ACT_TANH] = "tanh",
                                    [DV_ACT_SOFTMAX] = "softmax",
                                    NULL};
_Static_assert(DV_ARRAY_LEN(dv_act_names) == DV_ACT_COUNT + 1, "a name for every dv_act");

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

dv_status dv_layer_read_act(dv_layer *l, dv_config *cfg, dv_config_section *s, char *err) {
    int a;
    double alpha;
    DV_TRY(dv_config_enum(cfg, s, "activation", "linear", dv_act_names, &a, err));
    DV_TRY(dv_config_float(cfg, s, "alpha", 0.01, 0, 1, &alpha, err));
    l->act = (dv_act)a;
    l->act_alpha = (float)alpha;
    return DV_OK;
}

static int act_cols(const dv_layer *l) {
    /* softmax runs over the features of a dense output, or over channels
     * of a conv output only when it is 1x1; keep it to the last dim */
    return l->out_ndim == 1 ? l->out_shape[0] : l->out_shape[l->out_ndim - 1];
}

void dv_layer_act_forward(dv_layer *l, dv_model *m, float *y, int B) {
    if (l->act == DV_ACT_LINEAR || l->act_in_loss) return;
    m->be->act_forward(m->be->ctx, l->act, l->act_alpha, y, y, (size_t)B * l->out_elems,
                       act_cols(l));
}

void dv_layer_act_backward(dv_layer *l, dv_model *m, const float *y, float *dy, int B) {
    if (l->act == DV_ACT_LINEAR || l->act_in_loss) return;
    m->be->act_backward(m->be->ctx, l->act, l->act_alpha, y, dy, dy, (size_t)B * l->out_elems,
                        act_cols(l));
}

void dv_layer_free_priv(dv_layer *l, dv_model *m) {
    (void)m;
    free(l->priv);
    l->priv = NULL;
}

dv_status dv_layer_need_image(const dv_layer *l, const dv_config *cfg, const dv_config_section *s,
                              char *err) {
    if (l->in_ndim == 3) return DV_OK;
    return DV_CONFIG_ERROR(err, cfg, s, NULL,
                           "needs an input of shape C,H,W but gets %zu features (set [input] "
                           "shape = C,H,W)",
                           l->in_elems);
}
