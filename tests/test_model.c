/* test_model.c — see test_model.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_model.h"

dv_model *test_model_try(const char *text, dv_backend *be, dv_loss loss, int B, int check_used,
                         char *err) {
    dv_config cfg;
    if (dv_config_load_text(&cfg, "t.cfg", text, err)) return NULL;
    dv_model *m = NULL;
    int rc = dv_model_build(&m, &cfg, be, loss, 3, B, err);
    if (!rc && check_used) rc = dv_config_check_used(&cfg, err);
    dv_config_free(&cfg);
    if (rc) {
        dv_model_free(m);
        return NULL;
    }
    return m;
}

dv_model *test_model_build(const char *text, dv_backend *be, dv_loss loss, int B, int check_used) {
    char err[DV_ERR_LEN];
    dv_model *m = test_model_try(text, be, loss, B, check_used, err);
    if (!m) fail_msg("building\n%s: %s", text, err);
    return m;
}
