/* classifier-impl.h — private to run/: a classifier's session, shared by
 * training (train.c) and evaluation (eval.c): the settings, the backend,
 * the model, the splits with their loaders, and what training keeps
 * between steps (gradient buckets in flight, the sharded optimizer, the
 * metrics ring). "Classifier" covers every single-model run: regression
 * (mse, bce) and language models too.
 */
#ifndef DV_CLASSIFIER_IMPL_H
#define DV_CLASSIFIER_IMPL_H

#include "run-impl.h"

#define DV_MAX_BUCKETS 256

typedef struct dv_classifier {
    dv_comm *comm;
    dv_config *cfg;
    dv_settings st;
    dv_backend *be;
    dv_model *m;
    dv_split *train, *val;
    dv_loader *tl, *vl;
    int tokens;     /* a token model on a token file: per-position loss */
    dv_vocab vocab; /* the token file's vocabulary (tokens only) */
    int world, rank, local_batch, eval_batch;
    char *config_text;
    float *host_targets; /* (max_batch, outputs) */
    /* sharded optimizer (ZeRO stage 1): this rank updates params[lo, hi) */
    int sharded;
    size_t shard_lo, shard_hi;
    /* gradient buckets in flight */
    size_t bucket_floats, bucket_start;
    dv_comm_request *reqs[DV_MAX_BUCKETS];
    int nreq;
    dv_ring ring;        /* the steps' (loss, correct) */
    int device_comm;     /* gradients are averaged on the device (CUDA) */
    int streams_resumed; /* the stateful layers' state came from the checkpoint */
    int64_t steps;       /* per epoch */
    double lr;           /* of the last step taken */
    int live;            /* rank 0's progress is one live line */
    FILE *metrics;       /* rank 0: metrics.csv */
    double flops;        /* training FLOPs per sample (dv_model_train_flops) */
    double peak;         /* peak FLOP/s per device; 0: unknown (no MFU) */
    char err[DV_ERR_LEN];
    int comm_failed;
} dv_classifier;

/* Everything before the first step: settings, backend, model, splits and
 * loaders (the training split only with need_train). Agreed. */
dv_status dv_classifier_setup(dv_classifier *r, dv_comm *c, dv_config *cfg, int need_train);
void dv_classifier_free(dv_classifier *r);
/* Moves a host batch into the model's device buffers. */
void dv_classifier_load(dv_classifier *r, const dv_batch *b);
/* Loss and accuracy over every sample of the loader's split, each counted
 * once across ranks. Agreed. */
dv_status dv_classifier_evaluate(dv_classifier *r, dv_loader *l, double *loss, double *acc,
                                 double *count);

#endif
