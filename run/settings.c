/* settings.c — the [data] and [train] sections of a config, read into one
 * plain struct with defaults, ranges and file:line messages, and the
 * learning-rate schedule. Every key is documented in docs/config.md. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "settings.h"

const char *const dv_opt_names[] = {
    [DV_OPT_SGD] = "sgd",   [DV_OPT_MOMENTUM] = "momentum", [DV_OPT_NESTEROV] = "nesterov",
    [DV_OPT_ADAM] = "adam", [DV_OPT_ADAMW] = "adamw",       NULL};
_Static_assert(DV_ARRAY_LEN(dv_opt_names) == DV_OPT_COUNT + 1, "a name for every dv_opt");

const char *const dv_sched_names[] = {
    [DV_SCHED_CONSTANT] = "constant", [DV_SCHED_STEP] = "step", [DV_SCHED_COSINE] = "cosine", NULL};
_Static_assert(DV_ARRAY_LEN(dv_sched_names) == DV_SCHED_COUNT + 1, "a name for every dv_sched");

const char *const dv_backend_kind_names[] = {
    [DV_BACKEND_AUTO] = "auto", [DV_BACKEND_CPU] = "cpu", [DV_BACKEND_CUDA] = "cuda", NULL};
_Static_assert(DV_ARRAY_LEN(dv_backend_kind_names) == DV_BACKEND_COUNT + 1,
               "a name for every dv_backend_kind");

const char *const dv_progress_names[] = {
    [DV_PROGRESS_AUTO] = "auto", [DV_PROGRESS_LIVE] = "live", [DV_PROGRESS_LINES] = "lines", NULL};
_Static_assert(DV_ARRAY_LEN(dv_progress_names) == DV_PROGRESS_COUNT + 1,
               "a name for every dv_progress");

const char *const dv_precision_names[] = {
    [DV_PRECISION_FP32] = "fp32", [DV_PRECISION_TF32] = "tf32", [DV_PRECISION_BF16] = "bf16", NULL};
_Static_assert(DV_ARRAY_LEN(dv_precision_names) == DV_PRECISION_COUNT + 1,
               "a name for every dv_precision");

const char *const dv_comm_device_mode_names[] = {[DV_COMM_DEVICE_AUTO] = "auto",
                                                 [DV_COMM_DEVICE_NCCL] = "nccl",
                                                 [DV_COMM_DEVICE_MPI] = "mpi",
                                                 NULL};
_Static_assert(DV_ARRAY_LEN(dv_comm_device_mode_names) == DV_COMM_DEVICE_COUNT + 1,
               "a name for every dv_comm_device_mode");

/* [data] <name> = GROUP, or <name>_x and <name>_y naming the datasets. */
static dv_status split_paths(const dv_config *cfg, dv_config_section *s, const char *name,
                             const char *def_group, char *x, char *y, char *tok, int *present,
                             char *err) {
    char kx[DV_NAME_LEN], ky[DV_NAME_LEN];
    snprintf(kx, sizeof(kx), "%s_x", name);
    snprintf(ky, sizeof(ky), "%s_y", name);
    const char *group, *px, *py;
    DV_TRY(dv_config_str(cfg, s, name, def_group, &group, err));
    DV_TRY(dv_config_str(cfg, s, kx, NULL, &px, err));
    DV_TRY(dv_config_str(cfg, s, ky, NULL, &py, err));
    if (!group && (px || py) && !(px && py))
        return DV_CONFIG_ERROR(err, cfg, s, px ? kx : ky, "needs %s too (or set %s = GROUP)",
                               px ? ky : kx, name);
    *present = group || (px && py);
    if (!*present) return DV_OK;
    /* dataset paths are kept in 256 bytes, GROUP with "/tokens" after it */
    if (group && strlen(group) + sizeof "/tokens" > 256)
        return DV_CONFIG_ERROR(err, cfg, s, name, "a group path has at most 248 characters");
    if ((px && strlen(px) >= 256) || (py && strlen(py) >= 256))
        return DV_CONFIG_ERROR(err, cfg, s, px && strlen(px) >= 256 ? kx : ky,
                               "a dataset path has at most 255 characters");
    snprintf(tok, 256, "%s/tokens", group && strcmp(group, "/") ? group : "");
    if (px)
        snprintf(x, 256, "%s", px);
    else
        snprintf(x, 256, "%s/x", strcmp(group, "/") ? group : "");
    if (py)
        snprintf(y, 256, "%s", py);
    else
        snprintf(y, 256, "%s/y", strcmp(group, "/") ? group : "");
    return DV_OK;
}

static dv_status read_data(dv_config *cfg, dv_settings *st, char *err) {
    dv_config_section *d = dv_config_find(cfg, "data");
    if (!d) return DV_ERROR(err, "%s: no [data] section (it names the HDF5 file)", cfg->path);
    DV_TRY(dv_config_str(cfg, d, "file", NULL, &st->file, err));
    if (!st->file) return DV_CONFIG_ERROR(err, cfg, d, NULL, "has no 'file' key");
    int has_train;
    DV_TRY(split_paths(cfg, d, "train", "/train", st->train_x, st->train_y, st->train_tokens,
                       &has_train, err));
    DV_TRY(
        split_paths(cfg, d, "val", NULL, st->val_x, st->val_y, st->val_tokens, &st->has_val, err));
    DV_TRY(dv_config_float(cfg, d, "x_scale", 1.0, -1e30, 1e30, &st->x_scale, err));
    DV_TRY(dv_config_float(cfg, d, "x_shift", 0.0, -1e30, 1e30, &st->x_shift, err));
    DV_TRY(dv_config_int(cfg, d, "memory_mb", 4096, 0, 1L << 40, &st->memory_mb, err));
    return dv_config_int(cfg, d, "prefetch", 1, 0, 1, &st->prefetch, err);
}

/* An enum-valued key of [train] into *out. */
#define READ_ENUM(key, def, names, out)                                                            \
    do {                                                                                           \
        int v_;                                                                                    \
        DV_TRY(dv_config_enum(cfg, t, (key), (def), (names), &v_, err));                           \
        *(out) = v_;                                                                               \
    } while (0)

dv_status dv_settings_read(dv_config *cfg, dv_settings *st, char *err) {
    memset(st, 0, sizeof(*st));
    DV_TRY(read_data(cfg, st, err));
    dv_config_section *t = dv_config_find(cfg, "train");
    /* the optimizer's defaults, read over by [train] */
    st->optimizer = DV_OPT_ADAM;
    st->lr = 1e-3;
    st->momentum = 0.9;
    st->beta1 = 0.9;
    st->beta2 = 0.999;
    st->eps = 1e-8;
    DV_TRY(dv_settings_read_optimizer(cfg, t, st, err));
    DV_TRY(dv_config_int(cfg, t, "epochs", 1, 1, 1000000, &st->epochs, err));
    DV_TRY(dv_config_int(cfg, t, "batch", 64, 1, 1 << 24, &st->batch, err));
    DV_TRY(dv_config_int(cfg, t, "seed", 42, 0, 1L << 62, &st->seed, err));
    READ_ENUM("loss", "cross_entropy", dv_loss_names, &st->loss);
    DV_TRY(dv_config_str(cfg, t, "run_dir", "runs/default", &st->run_dir, err));
    if (strlen(st->run_dir) > DV_RUN_DIR_MAX)
        return DV_CONFIG_ERROR(err, cfg, t, "run_dir", "a path of %zu characters; at most %d",
                               strlen(st->run_dir), DV_RUN_DIR_MAX);
    DV_TRY(dv_config_int(cfg, t, "patience", 0, 0, 1000000, &st->patience, err));
    DV_TRY(dv_config_int(cfg, t, "keep", 3, 0, 1000000, &st->keep, err));
    DV_TRY(dv_config_int(cfg, t, "checkpoint_every", 0, 0, 1L << 40, &st->checkpoint_every, err));
    DV_TRY(dv_config_int(cfg, t, "log_every", 0, 0, 1L << 40, &st->log_every, err));
    DV_TRY(dv_config_int(cfg, t, "check_every", 200, 0, 1L << 40, &st->check_every, err));
    DV_TRY(dv_config_int(cfg, t, "eval_batch", 0, 0, 1 << 24, &st->eval_batch, err));
    DV_TRY(dv_config_float(cfg, t, "comm_timeout", -1, 0, 1e9, &st->comm_timeout, err));
    DV_TRY(dv_config_int(cfg, t, "threads", 0, 0, 4096, &st->threads, err));
    DV_TRY(dv_config_int(cfg, t, "max_steps", 0, 0, 1L << 50, &st->max_steps, err));
    READ_ENUM("lr_schedule", "constant", dv_sched_names, &st->schedule);
    DV_TRY(dv_config_int(cfg, t, "warmup_steps", 0, 0, 1L << 40, &st->warmup_steps, err));
    DV_TRY(dv_config_int(cfg, t, "lr_step_epochs", 1, 1, 1000000, &st->lr_step_epochs, err));
    DV_TRY(dv_config_float(cfg, t, "lr_gamma", 0.1, 0, 1, &st->lr_gamma, err));
    DV_TRY(dv_config_float(cfg, t, "lr_min", 0, 0, 1e6, &st->lr_min, err));
    DV_TRY(dv_config_float(cfg, t, "bucket_mb", 4, 0.001, 1e6, &st->bucket_mb, err));
    DV_TRY(dv_config_float(cfg, t, "peak_tflops", 0, 0, 1e9, &st->peak_tflops, err));
    READ_ENUM("backend", "auto", dv_backend_kind_names, &st->backend);
    READ_ENUM("progress", "auto", dv_progress_names, &st->progress);
    READ_ENUM("precision", "fp32", dv_precision_names, &st->precision);
    READ_ENUM("comm", "auto", dv_comm_device_mode_names, &st->comm);
    return DV_OK;
}

int dv_settings_eval_batch(const dv_settings *st, const dv_config *cfg, int local_batch) {
    long want = st->eval_batch;
    if (!want) {
        /* a token model's rows are T positions each: no more than training */
        const dv_config_section *in = NULL;
        for (int i = 0; i < cfg->nsec && !in; i++)
            if (!strcmp(cfg->sec[i].name, "input")) in = &cfg->sec[i];
        want = in && dv_config_has(in, "tokens") ? local_batch : 256;
    }
    return want > local_batch ? (int)want : local_batch;
}

dv_status dv_settings_read_optimizer(dv_config *cfg, dv_config_section *t, dv_settings *st,
                                     char *err) {
    READ_ENUM("optimizer", dv_opt_names[st->optimizer], dv_opt_names, &st->optimizer);
    DV_TRY(dv_config_float(cfg, t, "lr", st->lr, 0, 1e6, &st->lr, err));
    DV_TRY(dv_config_float(cfg, t, "momentum", st->momentum, 0, 1, &st->momentum, err));
    DV_TRY(dv_config_float(cfg, t, "beta1", st->beta1, 0, 0.999999, &st->beta1, err));
    DV_TRY(dv_config_float(cfg, t, "beta2", st->beta2, 0, 0.99999999, &st->beta2, err));
    DV_TRY(dv_config_float(cfg, t, "eps", st->eps, 0, 1, &st->eps, err));
    DV_TRY(
        dv_config_float(cfg, t, "weight_decay", st->weight_decay, 0, 1e3, &st->weight_decay, err));
    return dv_config_float(cfg, t, "clip_norm", st->clip_norm, 0, 1e30, &st->clip_norm, err);
}

dv_opt_params dv_settings_opt_params(const dv_settings *st, double lr, long step) {
    dv_opt_params op = {.kind = st->optimizer,
                        .lr = (float)lr,
                        .momentum = (float)st->momentum,
                        .beta1 = (float)st->beta1,
                        .beta2 = (float)st->beta2,
                        .eps = (float)st->eps,
                        .weight_decay = (float)st->weight_decay,
                        .step = step};
    return op;
}

double dv_lr_at(const dv_settings *st, int64_t step, int64_t steps_per_epoch) {
    double lr = st->lr;
    if (st->warmup_steps && step < st->warmup_steps)
        return lr * (double)(step + 1) / (double)st->warmup_steps;
    if (st->schedule == DV_SCHED_STEP) {
        int64_t epoch = step / steps_per_epoch;
        lr *= pow(st->lr_gamma, (double)(epoch / st->lr_step_epochs));
    } else if (st->schedule == DV_SCHED_COSINE) {
        int64_t total = st->epochs * steps_per_epoch;
        if (st->max_steps && st->max_steps < total) total = st->max_steps;
        double t = (double)(step - st->warmup_steps) / (double)(total - st->warmup_steps);
        if (t > 1) t = 1;
        if (t < 0) t = 0;
        lr = st->lr_min + 0.5 * (st->lr - st->lr_min) * (1.0 + cos(M_PI * t));
    }
    return lr;
}
