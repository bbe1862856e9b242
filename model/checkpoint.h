/* checkpoint.h — a training run's state and the HDF5 checkpoints that
 * hold it (docs/checkpoints.md): every model's parameters under
 * /<root>/model/<layer>/<param>, its optimizer state, the /train
 * attributes of dv_train_state, the config text, the carried streams of
 * stateful layers and a language model's vocabulary, in files h5py reads.
 * A checkpoint is written to a temporary file in the same directory,
 * flushed, fsync'd and renamed over its name, so a crash never leaves a
 * torn one.
 */
#ifndef DV_CHECKPOINT_H
#define DV_CHECKPOINT_H

#include <stdint.h>

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DV_TRAIN_SUMS 8

typedef struct dv_train_state {
    int64_t step;          /* optimizer steps taken */
    int64_t epoch;         /* current epoch (0-based) */
    int64_t step_in_epoch; /* steps of `epoch` already taken */
    int64_t world_size;
    int64_t global_batch; /* [train] batch: a resumed run must keep it */
    int64_t seed;
    double best_val_loss;
    int64_t bad_epochs;
    double loss_sum, correct_sum, seen; /* this epoch's running train metrics */
    int nsums;                          /* more running metrics (a GAN's): sums[0..nsums) */
    double sums[DV_TRAIN_SUMS];
} dv_train_state;

/* Writes an atomic checkpoint: a temporary file in the same directory,
 * flushed and fsync'd, then renamed over `path`. */
int dv_checkpoint_save(const char *path, const dv_model *m, const dv_train_state *ts,
                       const char *config_text, char *err);
/* Loads params (and optimizer state and buffers) into m after validating
 * every layer's shapes; fills ts if not NULL. */
int dv_checkpoint_load(const char *path, dv_model *m, dv_train_state *ts, int with_optimizer,
                       char *err);
/* Several models in one checkpoint, model i under the group roots[i]
 * ("/generator"; "" is the single model's layout). The first model's
 * streams and vocabulary are written, if it has them. */
int dv_checkpoint_save_models(const char *path, int n, dv_model *const *models,
                              const char *const *roots, const dv_train_state *ts,
                              const char *config_text, char *err);
/* dv_checkpoint_load of the model stored under `root`. */
int dv_checkpoint_load_model(const char *path, const char *root, dv_model *m, dv_train_state *ts,
                             int with_optimizer, char *err);
/* 1 if the checkpoint at `path` holds the group or dataset `name`. */
int dv_checkpoint_has(const char *path, const char *name);
/* The config text stored in a checkpoint (malloc'd), or NULL. */
char *dv_checkpoint_config(const char *path, char *err);
/* The carried stream state a checkpoint holds (/streams, rows x cols,
 * malloc'd), or *out = NULL when it holds none. */
int dv_checkpoint_streams(const char *path, float **out, int *rows, int *cols, char *err);

#ifdef __cplusplus
}
#endif
#endif
