/* layers_seq.c — placeholder while the layers are written. */
#include "trainer-impl.h"

int dv_layer_seq_init(dv_layer *l, dv_config *cfg, dv_cfg_section *s, const dv_model *m,
                      char *err) {
    (void)cfg;
    (void)s;
    (void)m;
    return dv_fail(err, "[%s] is not built yet", l->type);
}
