/* settings.c — the [data] and [train] sections of a config, read into one
 * plain struct with defaults, ranges and file:line messages. Every key is
 * documented in docs/config.md. */
#include <stdio.h>
#include <string.h>

#include "trainer-impl.h"

static int split_paths(const dv_config *cfg, dv_cfg_section *s, const char *name,
                       const char *def_group, char *x, char *y, char *tok, int *present,
                       char *err) {
    char kx[DV_NAME_LEN], ky[DV_NAME_LEN];
    snprintf(kx, sizeof(kx), "%s_x", name);
    snprintf(ky, sizeof(ky), "%s_y", name);
    const char *group, *px, *py;
    if (dv_cfg_str(cfg, s, name, def_group, &group, err) ||
        dv_cfg_str(cfg, s, kx, NULL, &px, err) || dv_cfg_str(cfg, s, ky, NULL, &py, err))
        return -1;
    if (!group && (px || py) && !(px && py)) {
        char where[1200];
        dv_cfg_where(cfg, s, px ? kx : ky, where, sizeof(where));
        return DV_ERROR(err, "%s: %s needs %s too (or set %s = GROUP)", where, px ? kx : ky,
                        px ? ky : kx, name);
    }
    *present = group || (px && py);
    if (!*present) return 0;
    snprintf(tok, 256, "%s/tokens", group && strcmp(group, "/") ? group : "");
    if (px)
        snprintf(x, 256, "%s", px);
    else
        snprintf(x, 256, "%s/x", strcmp(group, "/") ? group : "");
    if (py)
        snprintf(y, 256, "%s", py);
    else
        snprintf(y, 256, "%s/y", strcmp(group, "/") ? group : "");
    return 0;
}

int dv_settings_read(dv_config *cfg, dv_settings *st, char *err) {
    memset(st, 0, sizeof(*st));
    dv_cfg_section *d = dv_config_find(cfg, "data");
    dv_cfg_section *t = dv_config_find(cfg, "train");
    if (!d) return DV_ERROR(err, "%s: no [data] section (it names the HDF5 file)", cfg->path);
    if (dv_cfg_str(cfg, d, "file", NULL, &st->file, err)) return -1;
    if (!st->file) return DV_ERROR(err, "%s:%d: [data] has no 'file' key", cfg->path, d->line);
    int has_train;
    if (split_paths(cfg, d, "train", "/train", st->train_x, st->train_y, st->train_tokens,
                    &has_train, err) ||
        split_paths(cfg, d, "val", NULL, st->val_x, st->val_y, st->val_tokens, &st->has_val, err))
        return -1;
    if (dv_cfg_float(cfg, d, "x_scale", 1.0, -1e30, 1e30, &st->x_scale, err) ||
        dv_cfg_float(cfg, d, "x_shift", 0.0, -1e30, 1e30, &st->x_shift, err) ||
        dv_cfg_int(cfg, d, "memory_mb", 4096, 0, 1L << 40, &st->memory_mb, err) ||
        dv_cfg_int(cfg, d, "prefetch", 1, 0, 1, &st->prefetch, err))
        return -1;

    static const char *const losses[] = {"cross_entropy", "mse", "bce", "perceptron", NULL};
    static const char *const scheds[] = {"constant", "step", "cosine", NULL};
    static const char *const progress[] = {"auto", "live", "lines", NULL};
    static const char *const precisions[] = {"fp32", "tf32", "bf16", NULL};
    static const char *const comms[] = {"auto", "nccl", "mpi", NULL};
    int loss, sched;
    /* the optimizer's defaults, read over by [train] */
    st->optimizer = DV_OPT_ADAM;
    st->lr = 1e-3;
    st->momentum = 0.9;
    st->beta1 = 0.9;
    st->beta2 = 0.999;
    st->eps = 1e-8;
    if (dv_settings_read_optimizer(cfg, t, st, err) ||
        dv_cfg_int(cfg, t, "epochs", 1, 1, 1000000, &st->epochs, err) ||
        dv_cfg_int(cfg, t, "batch", 64, 1, 1 << 24, &st->batch, err) ||
        dv_cfg_int(cfg, t, "seed", 42, 0, 1L << 62, &st->seed, err) ||
        dv_cfg_enum(cfg, t, "loss", "cross_entropy", losses, &loss, err) ||
        dv_cfg_str(cfg, t, "run_dir", "runs/default", &st->run_dir, err) ||
        dv_cfg_int(cfg, t, "patience", 0, 0, 1000000, &st->patience, err) ||
        dv_cfg_int(cfg, t, "keep", 3, 0, 1000000, &st->keep, err) ||
        dv_cfg_int(cfg, t, "checkpoint_every", 0, 0, 1L << 40, &st->checkpoint_every, err) ||
        dv_cfg_int(cfg, t, "log_every", 0, 0, 1L << 40, &st->log_every, err) ||
        dv_cfg_int(cfg, t, "threads", 0, 0, 4096, &st->threads, err) ||
        dv_cfg_int(cfg, t, "max_steps", 0, 0, 1L << 50, &st->max_steps, err) ||
        dv_cfg_enum(cfg, t, "lr_schedule", "constant", scheds, &sched, err) ||
        dv_cfg_int(cfg, t, "warmup_steps", 0, 0, 1L << 40, &st->warmup_steps, err) ||
        dv_cfg_int(cfg, t, "lr_step_epochs", 1, 1, 1000000, &st->lr_step_epochs, err) ||
        dv_cfg_float(cfg, t, "lr_gamma", 0.1, 0, 1, &st->lr_gamma, err) ||
        dv_cfg_float(cfg, t, "lr_min", 0, 0, 1e6, &st->lr_min, err) ||
        dv_cfg_float(cfg, t, "bucket_mb", 4, 0.001, 1e6, &st->bucket_mb, err) ||
        dv_cfg_str(cfg, t, "backend", "auto", &st->backend, err) ||
        dv_cfg_enum(cfg, t, "progress", "auto", progress, &st->progress, err) ||
        dv_cfg_enum(cfg, t, "precision", "fp32", precisions, &st->precision, err) ||
        dv_cfg_enum(cfg, t, "comm", "auto", comms, &st->comm, err))
        return -1;
    st->loss = (dv_loss)loss;
    st->schedule = (dv_sched)sched;
    if (strcmp(st->backend, "auto") && strcmp(st->backend, "cpu") && strcmp(st->backend, "cuda")) {
        char where[1200];
        dv_cfg_where(cfg, t, "backend", where, sizeof(where));
        return DV_ERROR(err, "%s = %s: expected auto | cpu | cuda", where, st->backend);
    }
    return 0;
}

int dv_settings_read_optimizer(dv_config *cfg, dv_cfg_section *s, dv_settings *st, char *err) {
    static const char *const opts[] = {"sgd", "momentum", "nesterov", "adam", "adamw", NULL};
    int opt;
    if (dv_cfg_enum(cfg, s, "optimizer", opts[st->optimizer], opts, &opt, err) ||
        dv_cfg_float(cfg, s, "lr", st->lr, 0, 1e6, &st->lr, err) ||
        dv_cfg_float(cfg, s, "momentum", st->momentum, 0, 1, &st->momentum, err) ||
        dv_cfg_float(cfg, s, "beta1", st->beta1, 0, 0.999999, &st->beta1, err) ||
        dv_cfg_float(cfg, s, "beta2", st->beta2, 0, 0.99999999, &st->beta2, err) ||
        dv_cfg_float(cfg, s, "eps", st->eps, 0, 1, &st->eps, err) ||
        dv_cfg_float(cfg, s, "weight_decay", st->weight_decay, 0, 1e3, &st->weight_decay, err) ||
        dv_cfg_float(cfg, s, "clip_norm", st->clip_norm, 0, 1e30, &st->clip_norm, err))
        return -1;
    st->optimizer = (dv_opt)opt;
    return 0;
}
