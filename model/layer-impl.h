/* layer-impl.h — private to model/: what the layer files share. Each layer
 * type is built by an init function listed in layer_types.def; the helpers
 * below declare parameters, read an activation and apply it, and free a
 * layer's settings.
 *
 * An init function gets the layer with its type, name, index and input
 * shape set, and must set out_ndim / out_shape and ops, and declare its
 * parameters (the model lays them out in its flat buffers afterwards). It
 * may read earlier layers of m (weight tying) but not change them.
 */
#ifndef DV_LAYER_IMPL_H
#define DV_LAYER_IMPL_H

#include "model.h"

typedef dv_status (*dv_layer_init_fn)(dv_layer *l, dv_config *cfg, dv_config_section *s,
                                      const dv_model *m, char *err);

#define DV_LAYER_TYPE(type, init)                                                                  \
    dv_status init(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m, char *err);
#include "layer_types.def"
#undef DV_LAYER_TYPE

/* Builds layer l from section s (layers.c): the type's init function, or an
 * error naming the section and listing the types. */
dv_status dv_layer_init(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m,
                        char *err);
/* Creates the layer's scratch (its ops->setup) once the param views exist
 * and m->max_batch is known. */
dv_status dv_layer_setup(dv_layer *l, dv_model *m, char *err);

/* Declares a parameter of l (the model lays it out); returns it. */
dv_param *dv_layer_add_param(dv_layer *l, const char *name, int trainable, dv_init init, int ndim,
                             const int *shape);
/* Reads `activation` and `alpha` of s into l->act / l->act_alpha. */
dv_status dv_layer_read_act(dv_layer *l, dv_config *cfg, dv_config_section *s, char *err);
/* l's activation on its output y (B rows), in place; nothing for linear or
 * when the loss applies it. */
void dv_layer_act_forward(dv_layer *l, dv_model *m, float *y, int B);
/* The gradient dy (B rows) through l's activation, in place, from its
 * output y. */
void dv_layer_act_backward(dv_layer *l, dv_model *m, const float *y, float *dy, int B);
/* free(l->priv): the `free` of a layer whose settings hold no device
 * memory. */
void dv_layer_free_priv(dv_layer *l, dv_model *m);
/* The layer needs an image input (C, H, W); an error naming s otherwise. */
dv_status dv_layer_need_image(const dv_layer *l, const dv_config *cfg, const dv_config_section *s,
                              char *err);

#endif
