/* settings.h — a run's [data] and [train] sections (docs/config.md), read
 * once into one plain struct with their defaults and ranges, and the
 * learning-rate schedule they describe. Per-rank settings that may differ
 * between ranks: threads and progress; every other one must be the same on
 * every rank.
 */
#ifndef DV_SETTINGS_H
#define DV_SETTINGS_H

#include <stdint.h>

#include "comm.h"
#include "config.h"
#include "kernels.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dv_sched {
    DV_SCHED_CONSTANT = 0,
    DV_SCHED_STEP,
    DV_SCHED_COSINE,
    DV_SCHED_COUNT
} dv_sched;

/* [train] backend: a GPU when one is visible, or the one named. */
typedef enum dv_backend_kind {
    DV_BACKEND_AUTO = 0,
    DV_BACKEND_CPU,
    DV_BACKEND_CUDA,
    DV_BACKEND_COUNT
} dv_backend_kind;

/* [train] progress: a live line on a terminal, or plain lines. */
typedef enum dv_progress {
    DV_PROGRESS_AUTO = 0,
    DV_PROGRESS_LIVE,
    DV_PROGRESS_LINES,
    DV_PROGRESS_COUNT
} dv_progress;

/* The config names of these enums, indexed by them, NULL-terminated. */
extern const char *const dv_opt_names[DV_OPT_COUNT + 1];
extern const char *const dv_sched_names[DV_SCHED_COUNT + 1];
extern const char *const dv_backend_kind_names[DV_BACKEND_COUNT + 1];
extern const char *const dv_progress_names[DV_PROGRESS_COUNT + 1];
extern const char *const dv_precision_names[DV_PRECISION_COUNT + 1];
extern const char *const dv_comm_device_mode_names[DV_COMM_DEVICE_COUNT + 1];

/* The longest [train] run_dir: the run directory's file names (of up to
 * 1200 bytes with the directory) must never be cut. */
#define DV_RUN_DIR_MAX 1000

typedef struct dv_settings {
    /* [data] */
    const char *file;
    char train_x[256], train_y[256], val_x[256], val_y[256];
    char train_tokens[256], val_tokens[256]; /* token models: GROUP/tokens */
    int has_val;
    double x_scale, x_shift;
    long memory_mb;
    long prefetch;
    /* [train] */
    long epochs, batch, seed, patience, keep, checkpoint_every, log_every, threads, max_steps;
    long check_every;    /* steps between the replicas' divergence checks; 0: none */
    long eval_batch;     /* rows a rank evaluates at once; 0: auto (dv_settings_eval_batch) */
    double comm_timeout; /* the watchdog's seconds (0: forever); -1: DIVE_COMM_TIMEOUT's */
    long warmup_steps, lr_step_epochs;
    double lr, lr_min, lr_gamma, momentum, beta1, beta2, eps, weight_decay, clip_norm, bucket_mb;
    double peak_tflops; /* per device, for MFU; 0: the backend's, if it knows */
    dv_opt optimizer;
    dv_loss loss;
    dv_sched schedule;
    const char *run_dir;
    dv_backend_kind backend;
    dv_progress progress;
    dv_precision precision;   /* the CUDA GEMMs' */
    dv_comm_device_mode comm; /* how device gradients travel */
} dv_settings;

/* Reads [data] and [train] of cfg into st (file:line messages). */
dv_status dv_settings_read(dv_config *cfg, dv_settings *st, char *err);
/* The optimizer keys of section s (optimizer, lr, momentum, beta1, beta2,
 * eps, weight_decay, clip_norm) over the values already in st: [train]'s,
 * or a GAN model's own [generator.train] on top of [train]. */
dv_status dv_settings_read_optimizer(dv_config *cfg, dv_config_section *s, dv_settings *st,
                                     char *err);
/* The rows a rank's model holds and evaluates at once: [train] eval_batch,
 * or by default 256 (a token model: the training rows, since each row is T
 * positions), never fewer than the training rows local_batch. */
int dv_settings_eval_batch(const dv_settings *st, const dv_config *cfg, int local_batch);
/* The optimizer step's hyper-parameters at learning rate lr, for the
 * 1-based step count `step`. */
dv_opt_params dv_settings_opt_params(const dv_settings *st, double lr, long step);
/* The learning rate of optimizer step `step` (0-based): linear warm-up, then
 * the schedule (step decay every lr_step_epochs, or cosine to lr_min over
 * the run). */
double dv_lr_at(const dv_settings *st, int64_t step, int64_t steps_per_epoch);

#ifdef __cplusplus
}
#endif
#endif
