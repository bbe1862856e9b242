/* checkpoint.h — a training run's state and the HDF5 checkpoints that
 * hold it (docs/checkpoints.md): every model's parameters under
 * /<root>/model/<layer>/<param>, its optimizer state, the /train
 * attributes of dv_train_state (with what identifies the run: optimizer,
 * loss, data set), the config text, the carried streams of stateful
 * layers and a language model's vocabulary, in files h5py reads.
 * A checkpoint is written to a new temporary file in the same directory,
 * flushed, fsync'd and renamed over its name, so a crash never leaves a
 * torn one. Everything in it carries a checksum (dv_h5_create_checked)
 * that every read verifies; a load also refuses values that are not
 * finite and /train attributes out of range, naming the dataset or the
 * attribute.
 */
#ifndef DV_CHECKPOINT_H
#define DV_CHECKPOINT_H

#include <stdint.h>

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DV_TRAIN_SUMS 8

/* The format of the checkpoints this Dive writes (/train attribute
 * `format`): 2 = checksums on everything, and the run's identity. Older
 * checkpoints have no such attribute (0). */
#define DV_CHECKPOINT_FORMAT 2

/* What a checkpoint records of the run that wrote it, so that a resume can
 * tell a changed run (run/ fills and compares it). Strings; all "" in a
 * checkpoint of an older Dive, which recorded none of it. */
typedef struct dv_run_ident {
    char optimizer[96];   /* "adam"; a GAN's "generator adam, discriminator sgd" */
    char loss[64];        /* "cross_entropy"; a GAN's "gan" */
    char data_file[512];  /* [data] file, as the config names it */
    char data_train[512]; /* the training datasets in it ("/train/x /train/y") */
    char data_shape[128]; /* "1200 samples of (4), 1 target each" */
    char data_hash[32];   /* 16 hex digits: a hash of a sample of the rows */
} dv_run_ident;

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
    int format;         /* read: the checkpoint's format (0: an older Dive's) */
    dv_run_ident ident; /* the run that wrote it */
} dv_train_state;

/* Checks ts as read from the checkpoint at `path`: step, epoch and
 * step_in_epoch >= 0 and consistent (every finished epoch took a step:
 * epoch <= step - step_in_epoch), world_size and global_batch >= 1,
 * bad_epochs in [0, epoch], the running metrics finite (seen >= 0), the
 * best loss not NaN. The message names the attribute and its value. */
dv_status dv_train_state_check(const dv_train_state *ts, const char *path, char *err);

/* What dv_checkpoint_verify found. */
typedef struct dv_checkpoint_report {
    int datasets;    /* datasets read whole */
    int checksummed; /* of them, those HDF5 verified against a checksum */
    double values;   /* numbers read (all finite) */
    dv_train_state ts;
} dv_checkpoint_report;
/* Reads every dataset of the checkpoint at `path` whole (HDF5 verifies each
 * checksum on the way), checks that every float dataset (weights,
 * optimizer state, carried streams) is finite and that the /train
 * attributes are in range (dv_train_state_check). It needs no model: any
 * Dive checkpoint, a GAN's too. DV_ERR with the first fault, naming the
 * file and the dataset or attribute; rep may be NULL. */
dv_status dv_checkpoint_verify(const char *path, dv_checkpoint_report *rep, char *err);

/* Writes an atomic checkpoint: a temporary file in the same directory,
 * flushed and fsync'd, then renamed over `path`. */
int dv_checkpoint_save(const char *path, const dv_model *m, const dv_train_state *ts,
                       const char *config_text, char *err);
/* Loads params (and optimizer state and buffers) into m after validating
 * every layer's shapes; fills ts if not NULL (dv_train_state_check'd).
 * Fails, naming the dataset, on data that does not match its checksum and
 * on values that are not finite. */
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
 * malloc'd, finite), or *out = NULL when it holds none. */
int dv_checkpoint_streams(const char *path, float **out, int *rows, int *cols, char *err);

#ifdef __cplusplus
}
#endif
#endif
