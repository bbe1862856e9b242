/* layers.c — the registry of layer types (layer_types.def): which init
 * function builds the layer a config section names, and the message for a
 * section that names none.
 */
#include <string.h>

#include "layer-impl.h"

static const struct {
    const char *type;
    dv_layer_init_fn init;
} types[] = {
#define DV_LAYER_TYPE(type, init) {type, init},
#include "layer_types.def"
#undef DV_LAYER_TYPE
};

dv_status dv_layer_init(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m,
                        char *err) {
    snprintf(l->type, sizeof(l->type), "%s", s->type);
    snprintf(l->name, sizeof(l->name), "%s", s->name);
    for (size_t i = 0; i < DV_ARRAY_LEN(types); i++)
        if (!strcmp(s->type, types[i].type)) return types[i].init(l, cfg, s, m, err);
    char list[512] = "";
    for (size_t i = 0; i < DV_ARRAY_LEN(types); i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? " " : "",
                 types[i].type);
    return DV_CONFIG_ERROR(err, cfg, s, NULL, "unknown section [%s] (layers: %s)", s->type, list);
}

dv_status dv_layer_setup(dv_layer *l, dv_model *m, char *err) {
    return l->ops->setup ? l->ops->setup(l, m, err) : DV_OK;
}
