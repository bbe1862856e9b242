/* eval.c — `dive eval`: a checkpoint's loss and accuracy on the config's
 * val split (or --split GROUP), every sample counted once over any number
 * of ranks.
 */
#include <stdio.h>
#include <string.h>

#include "classifier-impl.h"
#include "run.h"

dv_status dv_eval_run(dv_comm *c, dv_config *cfg, const char *ckpt, const char *split, int json) {
    char err[DV_ERR_LEN];
    if (dv_config_find(cfg, "gan"))
        return dv_agree(c,
                        DV_ERROR(err,
                                 "%s: a GAN config: dive eval scores classifiers; look at a "
                                 "GAN's samples with dive sample CHECKPOINT -o grid.png",
                                 cfg->path),
                        err);
    if (split) { /* --split GROUP replaces the config's val split */
        char kv[600];
        dv_config_unset(cfg, "data", "val_x");
        dv_config_unset(cfg, "data", "val_y");
        snprintf(kv, sizeof(kv), "data.val=%s", split);
        DV_TRY(dv_agree(c, dv_config_set(cfg, kv, err), err));
    }
    dv_classifier R, *r = &R;
    dv_status rc = dv_classifier_setup(r, c, cfg, 0);
    if (!rc) {
        rc = r->vl ? DV_OK
                   : DV_ERROR(r->err,
                              "%s: no split to evaluate: set [data] val or pass --split GROUP",
                              cfg->path);
        if (!rc) rc = dv_checkpoint_load(ckpt, r->m, NULL, 0, r->err);
        rc = dv_agree(c, rc, r->err);
    }
    double loss, acc, n;
    if (!rc) rc = dv_classifier_evaluate(r, r->vl, &loss, &acc, &n);
    if (!rc && r->rank == 0) {
        if (json)
            printf("{\"loss\": %.6f, \"accuracy\": %.6f, \"samples\": %.0f}\n", loss, acc, n);
        else
            printf("%s on %s %s: loss %.4f  accuracy %.4f  (%.0f samples)\n", ckpt, r->st.file,
                   r->st.val_x, loss, acc, n);
    }
    dv_classifier_free(r);
    return rc;
}
