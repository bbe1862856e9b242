/* train.c — the train / eval / predict loops over MPI ranks.
 *
 * One step: the loader hands this rank its G/W rows of the global batch;
 * forward, loss (scaled by 1/(G/W), so the average over ranks is the global
 * mean), backward with bucketed all-reduces started as soon as a bucket of
 * gradients is complete, wait, clip, one optimizer step on the flat buffer.
 * Every rank takes the same step, so the replicas never drift apart.
 *
 * Errors every rank sees (config, data, checkpoints) are agreed on with one
 * collective and end every rank with one message; an error only one rank
 * sees in the middle of training (an I/O error) aborts the job.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer-impl.h"

#define MAX_REQS 256

typedef struct run {
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
    dv_comm_request *reqs[MAX_REQS];
    int nreq;
    dv_ring ring;        /* the steps' (loss, correct) */
    int device_comm;     /* gradients are averaged on the device (CUDA) */
    int streams_resumed; /* the stateful layers' state came from the checkpoint */
    int64_t steps;       /* per epoch */
    double lr;           /* of the last step taken */
    int live;            /* rank 0's progress is one live line */
    FILE *metrics;       /* rank 0: metrics.csv */
    char err[DV_ERR_LEN];
    int comm_failed;
} run;

/* ---- setup ---------------------------------------------------------------- */

/* Token models read windows of T tokens of GROUP/tokens, and score every
 * position: the last layer must put out (T, vocab). */
static int open_token_split(run *r, const char *dataset, dv_split **out, char *err) {
    const dv_model *m = r->m;
    if (m->loss != DV_LOSS_XENT)
        return DV_ERROR(err, "%s: a token model learns the next token: use loss = cross_entropy",
                        r->cfg->path);
    if (m->positions != m->in_shape[0])
        return DV_ERROR(err,
                        "%s: a token model scores every position: the last layer must put out "
                        "(%d, vocab), not %d value(s) per sample",
                        r->cfg->path, m->in_shape[0], m->outputs * m->positions);
    if (dv_split_open_tokens(out, r->st.file, dataset, m->in_shape[0], err)) return -1;
    return dv_split_check(*out, m->in_elems, m->outputs, err) ? -1 : 0;
}

static int open_split(run *r, const char *x, const char *y, dv_split **out, char *err) {
    if (r->tokens)
        return open_token_split(r, x == r->st.train_x ? r->st.train_tokens : r->st.val_tokens, out,
                                err);
    if (dv_split_open(out, r->st.file, x, y, err)) return -1;
    const dv_split_info *info = dv_split_info_get(*out);
    if (dv_split_check(*out, r->m->in_elems, r->m->outputs, err)) return -1;
    if ((r->st.loss == DV_LOSS_XENT || r->st.loss == DV_LOSS_PERCEPTRON) &&
        info->y_kind != DV_TARGET_LABELS)
        return DV_ERROR(err,
                        "%s: %s holds float targets, but loss = %s needs integer class "
                        "labels",
                        r->st.file, y, r->st.loss == DV_LOSS_XENT ? "cross_entropy" : "perceptron");
    return 0;
}

static int make_loader(run *r, dv_split *s, int eval, dv_loader **out, char *err) {
    int streams = 0;
    for (int i = 0; i < r->m->nlayers; i++)
        streams |= r->m->layers[i].stateful;
    return dv_make_loader(s, &r->st, r->comm, eval ? r->eval_batch : r->local_batch, eval, streams,
                          r->be, out, err);
}

/* Float targets from labels (mse / bce on a labelled split): the value for
 * one output, one-hot for several. */
static const float *one_hot(run *r, const dv_batch *b) {
    size_t B = (size_t)b->count, K = (size_t)r->m->outputs;
    float *t = r->host_targets;
    if (K == 1)
        for (size_t i = 0; i < B; i++)
            t[i] = (float)b->labels[i];
    else {
        memset(t, 0, B * K * sizeof(float));
        for (size_t i = 0; i < B; i++)
            t[i * K + (size_t)b->labels[i]] = 1.0f;
    }
    return t;
}

/* Moves a host batch into the model's device buffers: one upload, which on
 * a GPU overlaps the compute still queued from the step before. */
static void load_batch(run *r, const dv_batch *b) {
    dv_model *m = r->m;
    const dv_backend *be = r->be;
    size_t B = (size_t)b->count, K = (size_t)m->outputs;
    void *dst[3] = {m->input};
    const void *src[3] = {b->x};
    size_t bytes[3] = {B * m->in_elems * sizeof(float)};
    int n = 1;
    if (b->global_pos) {
        dst[n] = m->row_id;
        src[n] = b->global_pos;
        bytes[n++] = B * sizeof(int64_t);
    }
    if (m->loss == DV_LOSS_XENT || m->loss == DV_LOSS_PERCEPTRON) {
        dst[n] = m->labels;
        src[n] = b->labels;
        bytes[n++] = B * (size_t)m->positions * sizeof(int32_t);
    } else {
        dst[n] = m->targets;
        src[n] = b->targets ? b->targets : one_hot(r, b);
        bytes[n++] = B * K * sizeof(float);
    }
    be->upload(be->ctx, n, dst, src, bytes);
}

static void run_free(run *r) {
    dv_loader_free(r->tl);
    dv_loader_free(r->vl);
    dv_split_free(r->train);
    dv_split_free(r->val);
    dv_model_free(r->m);
    dv_vocab_free(&r->vocab);
    if (r->be) {
        dv_ring_free(&r->ring);
        dv_backend_free(r->be);
    }
    free(r->config_text);
    free(r->host_targets);
}

/* A token model takes its vocabulary from the token file's /vocab: its
 * size becomes [input] vocab unless the config sets it (stored with the
 * config in every checkpoint), and checkpoints carry the code points. */
static int token_vocab(run *r, dv_cfg_section *in, char *err) {
    if (dv_vocab_read(&r->vocab, r->st.file, NULL, err)) return -1;
    if (dv_config_has(in, "vocab")) return 0;
    char kv[64];
    snprintf(kv, sizeof(kv), "input.vocab=%lld", (long long)r->vocab.size);
    return dv_config_set(r->cfg, kv, err);
}

/* Everything before the first step; collective. mode: 0 train, 1 eval. */
static int run_setup(run *r, dv_comm *c, dv_config *cfg, int need_train) {
    memset(r, 0, sizeof(*r));
    r->comm = c;
    r->cfg = cfg;
    r->world = dv_comm_size(c);
    r->rank = dv_comm_rank(c);
    char *err = r->err;
    if (dv_config_find(cfg, "gan"))
        return dv_agree(c,
                        DV_ERROR(err,
                                 "%s: a GAN config: dive eval scores classifiers; look at a "
                                 "GAN's samples with dive sample CHECKPOINT -o grid.png",
                                 cfg->path),
                        err)
                   ? -1
                   : 0;
    int rc = dv_settings_read(cfg, &r->st, err);
    if (!rc && r->st.batch % r->world)
        rc = DV_ERROR(err,
                      "%s: [train] batch = %ld does not divide across %d ranks (each rank "
                      "takes batch / ranks samples); use a multiple of %d",
                      cfg->path, r->st.batch, r->world, r->world);
    if (dv_agree(c, rc, err)) return -1;
    r->local_batch = (int)(r->st.batch / r->world);
    r->eval_batch = r->local_batch > 256 ? r->local_batch : 256;
    rc = dv_backend_open(c, &r->st, &r->be, err);
    dv_cfg_section *in = dv_config_find(cfg, "input");
    r->tokens = in && dv_config_has(in, "tokens");
    if (!rc && r->tokens) rc = token_vocab(r, in, err);
    if (!rc)
        rc =
            dv_model_build(&r->m, cfg, r->be, r->st.loss, (uint64_t)r->st.seed, r->eval_batch, err);
    if (!rc && r->tokens) r->m->vocab_map = &r->vocab;
    if (!rc) rc = dv_config_check_used(cfg, err);
    if (dv_agree(c, rc, err)) return -1;
    if (dv_backend_agree(c, &r->st, r->be, err)) return -1;
    if (need_train) rc = open_split(r, r->st.train_x, r->st.train_y, &r->train, err);
    if (!rc && r->st.has_val) rc = open_split(r, r->st.val_x, r->st.val_y, &r->val, err);
    if (!rc && need_train && dv_split_info_get(r->train)->n < r->st.batch)
        rc = DV_ERROR(err, "%s: %s has %lld %s, fewer than one global batch of %ld", r->st.file,
                      r->tokens ? r->st.train_tokens : r->st.train_x,
                      (long long)dv_split_info_get(r->train)->n, r->tokens ? "windows" : "samples",
                      r->st.batch);
    if (!rc && need_train) rc = make_loader(r, r->train, 0, &r->tl, err);
    if (!rc && r->val) rc = make_loader(r, r->val, 1, &r->vl, err);
    if (!rc) {
        r->host_targets = malloc((size_t)r->eval_batch * (size_t)r->m->outputs * sizeof(float));
        r->config_text = dv_config_text(cfg);
        if (!r->host_targets || !r->config_text) rc = DV_ERROR(err, "out of memory");
    }
    if (dv_agree(c, rc, err)) return -1;
    /* the sharded update works on host memory: the CPU backend's path */
    dv_comm_shard(c, r->m->nparams, &r->shard_lo, &r->shard_hi);
    r->sharded = !r->be->stream && r->shard_hi - r->shard_lo < r->m->nparams;
    if (r->sharded) {
        /* host gradients the node's peers can read in place: no copy into
         * shared memory before the reduce-scatter */
        float *g = dv_comm_shared_buffer(c, r->m->nparams, err);
        if (g) dv_model_use_grads(r->m, g);
    }
    r->bucket_floats = (size_t)(r->st.bucket_mb * 1048576.0 / sizeof(float));
    if (r->bucket_floats < 1) r->bucket_floats = 1;
    if (dv_ring_init(&r->ring, r->be, r->m->stats, 2)) rc = DV_ERROR(err, "out of device memory");
    if (!rc && need_train && r->be->stream) {
        /* gradients live on the GPU: NCCL, or MPI through host memory */
        int ndev = dv_backend_cuda_device_count();
        size_t most = r->m->nparams > r->m->nbuffers ? r->m->nparams : r->m->nbuffers;
        rc = dv_comm_device_init(c, dv_comm_select_device(c, ndev), ndev,
                                 (dv_comm_device_mode)r->st.comm, most, err);
        r->device_comm = !rc;
    } else if (!rc && r->st.comm == DV_COMM_DEVICE_NCCL && need_train) {
        rc = DV_ERROR(err, "%s: [train] comm = nccl needs the CUDA backend (this run uses %s)",
                      cfg->path, r->be->name);
    }
    return dv_agree(c, rc, err) ? -1 : 0;
}

/* ---- device work and the metrics ring ----------------------------------- */

/* Adds the ring's per-step (loss, correct) pairs to ts in step order, so the
 * sums are the same whether they were read every step or in a batch. */
static void stats_flush(void *ctx, dv_train_state *ts) {
    run *r = ctx;
    if (!r->ring.used) return;
    float h[2 * DV_RING_STEPS];
    int64_t step0;
    dv_device_sync(r->comm, r->be, r->device_comm, 0);
    const int n = dv_ring_read(&r->ring, h, &step0);
    for (int i = 0; i < n; i++) {
        if (!isfinite(h[2 * i])) {
            char msg[256];
            snprintf(msg, sizeof(msg), "the loss became %f at step %lld; lower lr or set clip_norm",
                     h[2 * i], (long long)(step0 + i + 1));
            dv_comm_abort(r->comm, 1, msg);
        }
        ts->loss_sum += h[2 * i];
        ts->correct_sum += h[2 * i + 1];
    }
}

/* Keeps the step's (loss, correct) from m->stats; reads them when the ring
 * is full (every step on the CPU). `ts->step` is the step just taken,
 * 0-based. */
static void stats_push(run *r, dv_train_state *ts) {
    if (dv_ring_push(&r->ring, ts->step)) stats_flush(r, ts);
}

/* ---- evaluation --------------------------------------------------------- */

/* Loss and accuracy over every sample of the loader's split, each counted
 * once across ranks. Collective. */
static int evaluate(run *r, dv_loader *l, double *loss, double *acc, double *count) {
    dv_model *m = r->m;
    const dv_backend *be = r->be;
    double sums[3] = {0, 0, 0};
    int rc = dv_loader_start(l, 0, 0, r->err);
    while (!rc) {
        dv_batch b;
        rc = dv_loader_next(l, &b, r->err);
        if (rc || !b.count) break;
        load_batch(r, &b);
        be->fill(be->ctx, m->stats, 0.0f, 2);
        dv_model_forward(m, b.count, 0);
        dv_model_loss(m, b.count, 0.0f);
        float st[2];
        be->to_host(be->ctx, st, m->stats, sizeof(st));
        sums[0] += st[0];
        sums[1] += st[1];
        sums[2] += (double)b.count * m->positions;
    }
    if (!rc && r->be->check(r->be->ctx, r->err)) rc = -1;
    if (dv_agree(r->comm, rc, r->err)) return -1;
    if (dv_comm_allreduce_double(r->comm, sums, 3, DV_REDUCE_SUM, r->err)) {
        dv_comm_abort(r->comm, 1, r->err);
    }
    *count = sums[2];
    *loss = sums[2] > 0 ? sums[0] / sums[2] : NAN;
    *acc = sums[2] > 0 ? sums[1] / sums[2] : NAN;
    return 0;
}

/* ---- training ------------------------------------------------------------- */

static void on_grads(void *ctx, size_t grad_end) {
    run *r = ctx;
    if (r->world == 1 || r->comm_failed || r->sharded) return;
    size_t n = grad_end - r->bucket_start;
    if (n && (n >= r->bucket_floats || grad_end == r->m->nparams) && r->nreq < MAX_REQS) {
        /* on a GPU the bucket's average is queued behind the backward so
         * far and runs beside the rest of it */
        if (dv_comm_allreduce_start(r->comm, r->m->grads + r->bucket_start, n, r->be->stream,
                                    &r->reqs[r->nreq], r->err))
            r->comm_failed = 1;
        else
            r->nreq++;
        r->bucket_start = grad_end;
    } else if (r->nreq) {
        dv_comm_progress(r->comm);
    }
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

static void train_step(run *r, const dv_batch *b, double lr, int64_t step) {
    dv_model *m = r->m;
    const dv_backend *be = r->be;
    load_batch(r, b);
    m->step_seed = dv_rand_hash((uint64_t)r->st.seed ^ 0x5eedd0d0ULL, (uint64_t)step);
    be->fill(be->ctx, m->grads, 0.0f, m->nparams);
    dv_model_forward(m, b->count, 1);
    dv_model_loss(m, b->count, 1.0f / ((float)r->local_batch * (float)m->positions));
    r->bucket_start = 0;
    r->nreq = 0;
    dv_model_backward(m, b->count, on_grads, r);
    dv_opt_params op = {.kind = r->st.optimizer,
                        .lr = (float)lr,
                        .momentum = (float)r->st.momentum,
                        .beta1 = (float)r->st.beta1,
                        .beta2 = (float)r->st.beta2,
                        .eps = (float)r->st.eps,
                        .weight_decay = (float)r->st.weight_decay,
                        .step = (long)step + 1};
    if (r->sharded) {
        /* reduce-scatter, update this rank's shard, all-gather the params:
         * the same arithmetic as the full update, done once per element */
        size_t lo = r->shard_lo, n = r->shard_hi - r->shard_lo;
        if (dv_comm_reduce_scatter_avg(r->comm, m->grads, m->nparams, r->err))
            dv_comm_abort(r->comm, 1, r->err);
        if (r->st.clip_norm > 0) {
            double ss = be->sumsq(be->ctx, m->grads + lo, n);
            if (dv_comm_allreduce_double(r->comm, &ss, 1, DV_REDUCE_SUM, r->err))
                dv_comm_abort(r->comm, 1, r->err);
            double norm = sqrt(ss);
            if (isfinite(norm) && norm > r->st.clip_norm)
                be->scale(be->ctx, m->grads + lo, (float)(r->st.clip_norm / norm), n);
        }
        be->opt_step(be->ctx, &op, m->params + lo, m->grads + lo, m->state1 + lo, m->state2 + lo,
                     n);
        if (dv_comm_allgather(r->comm, m->params, m->nparams, r->err))
            dv_comm_abort(r->comm, 1, r->err);
        return;
    }
    for (int i = 0; i < r->nreq; i++)
        if (dv_comm_wait(r->comm, r->reqs[i], r->err)) r->comm_failed = 1;
    if (r->comm_failed) dv_comm_abort(r->comm, 1, r->err);
    if (r->st.clip_norm > 0) {
        /* the norm is read on the host: wait for the all-reduces here, where
         * a dead rank is caught by comm's timeout, not inside sumsq's sync */
        dv_device_sync(r->comm, r->be, r->device_comm, 0);
        dv_clip_grad_norm(be, m->grads, m->nparams, r->st.clip_norm);
    }
    be->opt_step(be->ctx, &op, m->params, m->grads, m->state1, m->state2, m->nparams);
    dv_device_sync(r->comm, r->be, r->device_comm,
                   1); /* the host runs at most one step ahead of the GPU */
}

/* ---- stateful streams across checkpoints -------------------------------- */

/* Floats of carried state per stream (batch row) over the stateful layers. */
static size_t stream_cols(const dv_model *m) {
    size_t n = 0;
    for (int i = 0; i < m->nlayers; i++) {
        const dv_layer *l = &m->layers[i];
        if (l->stateful && l->ops->state_floats) n += l->ops->state_floats(l);
    }
    return n;
}

/* This rank's streams between the stateful layers and `table` (global
 * batch, cols): local row k of rank r is stream r + k*W (the streams order
 * of the sampler), each layer's floats at its column offset. save: layers
 * -> table rows; else table rows -> layers. -1: out of memory. */
static int streams_io(run *r, float *table, int save) {
    const size_t cols = stream_cols(r->m);
    const int B = r->local_batch;
    size_t off = 0;
    for (int i = 0; i < r->m->nlayers; i++) {
        dv_layer *l = &r->m->layers[i];
        if (!l->stateful || !l->ops->state_floats) continue;
        const size_t per = l->ops->state_floats(l);
        float *rows = malloc((size_t)B * per * sizeof(float));
        if (!rows || (save && l->ops->state_io(l, r->m, B, rows, 1))) {
            free(rows);
            return -1;
        }
        for (int k = 0; k < B; k++) {
            float *t = table + ((size_t)r->rank + (size_t)k * r->world) * cols + off;
            float *w = rows + (size_t)k * per;
            memcpy(save ? t : w, save ? w : t, per * sizeof(float));
        }
        int rc = save ? 0 : l->ops->state_io(l, r->m, B, rows, 0);
        free(rows);
        if (rc) return -1;
        off += per;
    }
    return 0;
}

/* Every stream's carried state, (global batch, cols), on every rank: each
 * rank fills its rows of a zeroed table and a sum over ranks (exact: the
 * others add zeros) completes it. Collective; NULL when no layer is
 * stateful. */
static float *streams_gather(run *r) {
    const size_t n = (size_t)r->st.batch * stream_cols(r->m);
    if (!n) return NULL;
    float *table = calloc(n, sizeof(float));
    double *sum = malloc(n * sizeof(double));
    if (!table || !sum || streams_io(r, table, 1))
        dv_comm_abort(r->comm, 1, "out of memory for the carried state");
    for (size_t i = 0; i < n; i++)
        sum[i] = table[i];
    if (dv_comm_allreduce_double(r->comm, sum, (int)n, DV_REDUCE_SUM, r->err))
        dv_comm_abort(r->comm, 1, r->err);
    for (size_t i = 0; i < n; i++)
        table[i] = (float)sum[i];
    free(sum);
    return table;
}

/* Rank 0 writes the checkpoint once — as ckpt-<step>.h5 (as last.h5 when
 * keep = 0) — and makes last.h5 and, for a new best, best.h5 hard links to
 * it; every rank learns whether it worked. Collective. */
static int save(void *ctx, const dv_train_state *ts, int best) {
    run *r = ctx;
    int rc = 0;
    /* with a sharded optimizer each rank holds only its shard's moments */
    if (r->sharded && (dv_comm_allgather(r->comm, r->m->state1, r->m->nparams, r->err) ||
                       dv_comm_allgather(r->comm, r->m->state2, r->m->nparams, r->err)))
        dv_comm_abort(r->comm, 1, r->err);
    float *streams = streams_gather(r);
    r->m->stream_state = streams;
    r->m->stream_rows = (int)r->st.batch;
    r->m->stream_cols = (int)stream_cols(r->m);
    if (r->rank == 0) {
        char path[1200];
        dv_checkpoint_path(r->st.run_dir, r->st.keep, ts->step, path, sizeof(path));
        rc = dv_checkpoint_save(path, r->m, ts, r->config_text, r->err);
        if (!rc) rc = dv_checkpoint_publish(r->st.run_dir, path, r->st.keep, best, r->err);
    }
    r->m->stream_state = NULL;
    free(streams);
    return dv_agree(r->comm, rc, r->err) ? -1 : 0;
}

/* ---- the loop's callbacks (dv_loop) ---------------------------------------- */

static void loop_step(void *ctx, const dv_batch *b, dv_train_state *ts, int64_t s, int64_t first) {
    run *r = ctx;
    dv_model *m = r->m;
    r->lr = dv_lr_at(&r->st, ts->step, r->steps);
    r->be->fill(r->be->ctx, m->stats, 0.0f, 2);
    /* stateful layers: streams restart each epoch, and go on from the
     * checkpoint's state on the first step of a resumed one */
    m->carry = s > first || (s == first && first > 0 && r->streams_resumed);
    train_step(r, b, r->lr, ts->step);
    stats_push(r, ts);
    ts->seen += (double)b->count * m->positions;
}

/* The epoch's running train metrics summed over ranks (a checkpoint
 * written mid-epoch stores the global sums); at an epoch's end batch
 * norm's running statistics are averaged too. */
static void loop_global(void *ctx, const dv_train_state *ts, dv_train_state *out, int at_end) {
    run *r = ctx;
    *out = *ts;
    double s[3] = {ts->loss_sum, ts->correct_sum, ts->seen};
    if (dv_comm_allreduce_double(r->comm, s, 3, DV_REDUCE_SUM, r->err))
        dv_comm_abort(r->comm, 1, r->err);
    out->loss_sum = s[0];
    out->correct_sum = s[1];
    out->seen = s[2];
    if (at_end) dv_average_on_device(r->comm, r->be, r->device_comm, r->m->buffers, r->m->nbuffers);
}

static const char *unit(const run *r) {
    return r->tokens ? "tokens" : "samples"; /* token models count tokens: rate * T */
}

static void loop_progress(void *ctx, const dv_train_state *ts, int64_t epoch, int64_t step,
                          int64_t steps, double rate, double eta) {
    const run *r = ctx;
    int mins = (int)(eta / 60), secs = (int)eta % 60;
    printf("%sepoch %lld/%ld  step %lld/%lld  loss %.4f  %.0f %s/s  ETA %d:%02d%s",
           r->live ? "\r" : "", (long long)epoch + 1, r->st.epochs, (long long)step,
           (long long)steps, ts->loss_sum / ts->seen, rate * r->m->positions, unit(r), mins, secs,
           r->live ? "   " : "\n");
    fflush(stdout);
}

static void loop_stopped(void *ctx, const dv_train_state *g, double rate) {
    const run *r = ctx;
    if (r->rank == 0)
        printf("loss %.4f acc %.4f | train %.0f %s/s\n", g->loss_sum / g->seen,
               g->correct_sum / g->seen, rate * r->m->positions, unit(r));
}

static int loop_epoch_end(void *ctx, dv_train_state *ts, const dv_train_state *g, int64_t epoch,
                          double rate, double t0) {
    run *r = ctx;
    double vloss = NAN, vacc = NAN, vn = 0;
    if (r->vl && evaluate(r, r->vl, &vloss, &vacc, &vn)) return -1;
    ts->epoch = epoch + 1;
    ts->step_in_epoch = 0;
    ts->loss_sum = ts->correct_sum = ts->seen = 0;
    const double tloss = g->loss_sum / g->seen, tacc = g->correct_sum / g->seen;
    double monitor = r->vl ? vloss : tloss;
    int improved = monitor < ts->best_val_loss;
    if (improved) {
        ts->best_val_loss = monitor;
        ts->bad_epochs = 0;
    } else {
        ts->bad_epochs++;
    }
    const int positions = r->m->positions;
    double secs = dv_now() - t0;
    if (r->rank == 0) {
        printf("epoch %lld/%ld | loss %.4f", (long long)epoch + 1, r->st.epochs, tloss);
        if (r->tokens) printf(" ppl %.2f", exp(tloss));
        printf(" acc %.4f", tacc);
        if (r->vl) printf(" | val loss %.4f", vloss);
        if (r->vl && r->tokens) printf(" ppl %.2f", exp(vloss));
        if (r->vl) printf(" acc %.4f", vacc);
        printf(" | train %.0f %s/s | %.1f s%s\n", rate * positions, unit(r), secs,
               improved && r->vl ? " | best" : "");
        fflush(stdout);
        if (r->metrics) {
            fprintf(r->metrics, "%lld,%lld,%g,%.6f,%.6f,%.6f,%.6f,%.1f,%.3f", (long long)epoch + 1,
                    (long long)ts->step, r->lr, tloss, tacc, vloss, vacc, rate, secs);
            if (r->tokens)
                fprintf(r->metrics, ",%.1f,%.4f,%.4f", rate * positions, exp(tloss), exp(vloss));
            fprintf(r->metrics, "\n");
            fflush(r->metrics);
        }
    }
    if (!r->st.patience || ts->bad_epochs < r->st.patience) return improved ? DV_LOOP_BEST : 0;
    if (r->rank == 0)
        printf("early stopping: no improvement of the %s loss for %lld epochs; best %.4f is in "
               "%s/best.h5\n",
               r->vl ? "val" : "train", (long long)ts->bad_epochs, ts->best_val_loss,
               r->st.run_dir);
    return (improved ? DV_LOOP_BEST : 0) | DV_LOOP_STOP;
}

int dv_train_run(dv_comm *c, dv_config *cfg, const char *resume) {
    if (dv_config_find(cfg, "gan")) return dv_gan_run(c, cfg, resume);
    run R, *r = &R;
    if (run_setup(r, c, cfg, 1)) {
        run_free(r);
        return 1;
    }
    dv_model *m = r->m;
    const dv_backend *be = r->be;
    dv_train_state ts = {.world_size = r->world,
                         .global_batch = r->st.batch,
                         .seed = r->st.seed,
                         .best_val_loss = INFINITY};
    char ckpt[1200];
    int rc = dv_run_begin(c, &r->st, resume, ckpt, sizeof(ckpt), r->err);
    if (!rc && ckpt[0]) {
        rc = dv_checkpoint_load(ckpt, m, &ts, 1, r->err);
        if (!rc) rc = dv_resume_state(c, ckpt, &r->st, &ts, r->err);
        /* stateful layers: the streams go on from the saved state (the
         * rows are re-sharded when the number of ranks changed) */
        const size_t cols = stream_cols(m);
        if (!rc && cols) {
            float *table = NULL;
            int rows = 0, tc = 0;
            rc = dv_checkpoint_streams(ckpt, &table, &rows, &tc, r->err);
            if (!rc && table && rows == (int)r->st.batch && (size_t)tc == cols) {
                rc = streams_io(r, table, 0)
                         ? DV_ERROR(r->err, "out of memory for the carried state")
                         : 0;
                r->streams_resumed = !rc;
            } else if (!rc && r->rank == 0) {
                printf("%s: no carried state for these stateful layers: the streams "
                       "restart from zeros\n",
                       ckpt);
            }
            free(table);
        }
    }
    if (dv_agree(c, rc, r->err)) {
        run_free(r);
        return 1;
    }
    dv_replicas_check(c, m);
    int64_t steps = dv_loader_steps(r->tl);
    FILE *metrics = NULL;
    if (r->rank == 0) {
        dv_model_print(m, stdout);
        if (r->tokens)
            printf("data: %s %s: %lld windows of %d tokens (vocab %d); ", r->st.file,
                   r->st.train_tokens, (long long)dv_split_info_get(r->train)->n, m->in_shape[0],
                   m->vocab);
        else
            printf("data: %s %s: %lld samples; ", r->st.file, r->st.train_x,
                   (long long)dv_split_info_get(r->train)->n);
        printf("%d rank%s x %d = global batch %ld; %lld steps/epoch; "
               "%s; backend %s",
               r->world, r->world > 1 ? "s" : "", r->local_batch, r->st.batch, (long long)steps,
               dv_loader_in_memory(r->tl) ? "in memory" : "streaming", be->name);
        if (be->stream) {
            static const char *const prec[] = {"fp32", "tf32", "bf16"};
            printf(" (%s GEMMs), gradients %s", prec[r->st.precision],
                   dv_comm_device_path(c) ? dv_comm_device_path(c) : "?");
        }
        printf("\n");
        char path[1200];
        snprintf(path, sizeof(path), "%s/metrics.csv", r->st.run_dir);
        int fresh = access(path, F_OK) != 0 || !ckpt[0];
        metrics = fopen(path, fresh ? "w" : "a");
        if (metrics && fresh) {
            fprintf(metrics,
                    "epoch,step,lr,train_loss,train_acc,val_loss,val_acc,"
                    "samples_per_s,epoch_time_s%s\n",
                    r->tokens ? ",tokens_per_s,train_ppl,val_ppl" : "");
            fflush(metrics);
        }
        fflush(stdout);
    }
    r->live = dv_progress_live(&r->st, c);
    r->steps = steps;
    r->lr = r->st.lr;
    r->metrics = metrics;
    dv_loop loop = {.comm = c,
                    .st = &r->st,
                    .loader = r->tl,
                    .live = r->live,
                    .ctx = r,
                    .step = loop_step,
                    .flush = stats_flush,
                    .global = loop_global,
                    .progress = loop_progress,
                    .stopped = loop_stopped,
                    .epoch_end = loop_epoch_end,
                    .save = save};
    rc = dv_loop_run(&loop, &ts);
    if (rc != 1) dv_run_done(c, &r->st, ts.step, "");
    if (metrics) fclose(metrics);
    run_free(r);
    return rc;
}

/* ---- eval and predict ------------------------------------------------------ */

int dv_eval_run(dv_comm *c, dv_config *cfg, const char *ckpt, const char *split, int json) {
    if (split) { /* --split GROUP replaces the config's val split */
        char kv[600], err[DV_ERR_LEN];
        dv_config_unset(cfg, "data", "val_x");
        dv_config_unset(cfg, "data", "val_y");
        snprintf(kv, sizeof(kv), "data.val=%s", split);
        if (dv_config_set(cfg, kv, err)) return dv_agree(c, -1, err);
    }
    run R, *r = &R;
    if (run_setup(r, c, cfg, 0)) {
        run_free(r);
        return 1;
    }
    int rc = r->vl ? 0
                   : DV_ERROR(r->err,
                              "%s: no split to evaluate: set [data] val or pass "
                              "--split GROUP",
                              cfg->path);
    if (!rc) rc = dv_checkpoint_load(ckpt, r->m, NULL, 0, r->err);
    if (dv_agree(c, rc, r->err)) {
        run_free(r);
        return 1;
    }
    double loss, acc, n;
    if (evaluate(r, r->vl, &loss, &acc, &n)) {
        run_free(r);
        return 1;
    }
    if (r->rank == 0) {
        if (json)
            printf("{\"loss\": %.6f, \"accuracy\": %.6f, \"samples\": %.0f}\n", loss, acc, n);
        else
            printf("%s on %s %s: loss %.4f  accuracy %.4f  (%.0f samples)\n", ckpt, r->st.file,
                   r->st.val_x, loss, acc, n);
    }
    run_free(r);
    return 0;
}
