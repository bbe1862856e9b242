/* run.h — running a model, what the `dive` subcommands call: training a
 * classifier or a GAN over MPI ranks, evaluating and predicting with a
 * checkpoint, and drawing a GAN's samples. Each runs on every rank of c,
 * and every error a user can cause ends in one message (printed by one
 * rank) and DV_ERR on every rank.
 */
#ifndef DV_RUN_H
#define DV_RUN_H

#include "comm.h"
#include "config.h"
#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Agree across ranks: if any rank's st is DV_ERR, the lowest failing rank
 * prints its err and every rank returns DV_ERR; else DV_OK. Collective. */
dv_status dv_agree(dv_comm *c, dv_status st, const char *err);

/* How `dive train` starts (docs/checkpoints.md, "Resume"). */
typedef struct dv_train_opts {
    const char *resume; /* NULL: a new run; "auto": the newest checkpoint of
                           run_dir that verifies (a new run if it holds none);
                           else a checkpoint's path */
    int force;          /* --resume-force: resume a run whose optimizer, loss or
                           data changed, with a warning */
    int overwrite;      /* --overwrite: a new run deletes an earlier run's
                           checkpoints and metrics.csv in run_dir */
} dv_train_opts;

/* dive train of a single model (classifier, regressor, language model) or
 * of a GAN ([gan] section): a new run, or a resumed one, as o says.
 * DV_OK when it ran to its end or was stopped by a signal: then
 * *stop_signal is that signal and a checkpoint of the step is written. */
dv_status dv_train_run(dv_comm *c, dv_config *cfg, const dv_train_opts *o, int *stop_signal);
dv_status dv_gan_run(dv_comm *c, dv_config *cfg, const dv_train_opts *o, int *stop_signal);
/* dive eval: the checkpoint's loss and accuracy on the val split (or the
 * group `split`), as text or one JSON object. */
dv_status dv_eval_run(dv_comm *c, dv_config *cfg, const char *ckpt, const char *split, int json);
/* dive predict: outputs for every sample of an inputs dataset to out (HDF5
 * or CSV); with score, the classifier's verdict on the set. */
dv_status dv_predict_run(dv_comm *c, dv_config *cfg, const char *ckpt, const char *in_file,
                         const char *split, const char *x_path, const char *out, int score);
/* `count` samples of a GAN checkpoint's generator from the noise of `seed`
 * as a PNG grid at `out` (dive sample CKPT -o grid.png); be is borrowed. */
dv_status dv_gan_sample(const char *ckpt, const char *config_text, const char *out, long count,
                        long seed, dv_backend *be, char *err);

#ifdef __cplusplus
}
#endif
#endif
