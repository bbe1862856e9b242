/* classifier.c — a classifier's session (classifier-impl.h): everything
 * training and evaluation do before their first step, the upload of a
 * batch, evaluation over a split, and the clean-up.
 *
 * Errors every rank sees (config, data, checkpoints) are agreed on with one
 * collective and end every rank with one message.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "classifier-impl.h"

/* Token models read windows of T tokens of GROUP/tokens, and score every
 * position: the last layer must put out (T, vocab). */
static dv_status open_token_split(dv_classifier *r, const char *dataset, dv_split **out,
                                  char *err) {
    const dv_model *m = r->m;
    if (m->loss != DV_LOSS_XENT)
        return DV_ERROR(err, "%s: a token model learns the next token: use loss = cross_entropy",
                        r->cfg->path);
    if (m->positions != m->in_shape[0])
        return DV_ERROR(err,
                        "%s: a token model scores every position: the last layer must put out "
                        "(%d, vocab), not %d value(s) per sample",
                        r->cfg->path, m->in_shape[0], m->outputs * m->positions);
    DV_TRY(dv_split_open_tokens(out, r->st.file, dataset, m->in_shape[0], err));
    return dv_split_check(*out, m->in_elems, m->outputs, err);
}

static dv_status open_split(dv_classifier *r, const char *x, const char *y, dv_split **out,
                            char *err) {
    if (r->tokens)
        return open_token_split(r, x == r->st.train_x ? r->st.train_tokens : r->st.val_tokens, out,
                                err);
    DV_TRY(dv_split_open(out, r->st.file, x, y, err));
    const dv_split_info *info = dv_split_info_get(*out);
    DV_TRY(dv_split_check(*out, r->m->in_elems, r->m->outputs, err));
    if ((r->st.loss == DV_LOSS_XENT || r->st.loss == DV_LOSS_PERCEPTRON) &&
        info->y_kind != DV_TARGET_LABELS)
        return DV_ERROR(err,
                        "%s: %s holds float targets, but loss = %s needs integer class "
                        "labels",
                        r->st.file, y, dv_loss_names[r->st.loss]);
    return DV_OK;
}

static dv_status make_loader(dv_classifier *r, dv_split *s, int eval, dv_loader **out, char *err) {
    int streams = 0;
    for (int i = 0; i < r->m->nlayers; i++)
        streams |= r->m->layers[i].stateful;
    return dv_run_loader_create(s, &r->st, r->comm, eval ? r->eval_batch : r->local_batch, eval,
                                streams, r->be, out, err);
}

/* Float targets from labels (mse / bce on a labelled split): the value for
 * one output, one-hot for several. */
static const float *one_hot(dv_classifier *r, const dv_batch *b) {
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

/* One upload, which on a GPU overlaps the compute still queued from the
 * step before. */
void dv_classifier_load(dv_classifier *r, const dv_batch *b) {
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

void dv_classifier_free(dv_classifier *r) {
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
static dv_status token_vocab(dv_classifier *r, dv_config_section *in, char *err) {
    DV_TRY(dv_vocab_read(&r->vocab, r->st.file, NULL, err));
    if (dv_config_has(in, "vocab")) return DV_OK;
    char kv[64];
    snprintf(kv, sizeof(kv), "input.vocab=%lld", (long long)r->vocab.size);
    return dv_config_set(r->cfg, kv, err);
}

/* The settings, the backend and the model. */
static dv_status setup_model(dv_classifier *r, dv_comm *c, dv_config *cfg, char *err) {
    DV_TRY(dv_backend_open(c, &r->st, &r->be, err));
    dv_config_section *in = dv_config_find(cfg, "input");
    r->tokens = in && dv_config_has(in, "tokens");
    if (r->tokens) DV_TRY(token_vocab(r, in, err));
    DV_TRY(dv_model_build(&r->m, cfg, r->be, r->st.loss, (uint64_t)r->st.seed, r->eval_batch, err));
    if (r->tokens) r->m->vocab_map = &r->vocab;
    return dv_config_check_used(cfg, err);
}

/* The splits, their loaders and the host buffers. */
static dv_status setup_data(dv_classifier *r, dv_config *cfg, int need_train, char *err) {
    if (need_train) DV_TRY(open_split(r, r->st.train_x, r->st.train_y, &r->train, err));
    if (r->st.has_val) DV_TRY(open_split(r, r->st.val_x, r->st.val_y, &r->val, err));
    if (need_train && dv_split_info_get(r->train)->n < r->st.batch)
        return DV_ERROR(err, "%s: %s has %lld %s, fewer than one global batch of %ld", r->st.file,
                        r->tokens ? r->st.train_tokens : r->st.train_x,
                        (long long)dv_split_info_get(r->train)->n,
                        r->tokens ? "windows" : "samples", r->st.batch);
    if (need_train) DV_TRY(make_loader(r, r->train, 0, &r->tl, err));
    if (r->val) DV_TRY(make_loader(r, r->val, 1, &r->vl, err));
    r->host_targets = malloc((size_t)r->eval_batch * (size_t)r->m->outputs * sizeof(float));
    r->config_text = dv_config_text(cfg);
    if (!r->host_targets || !r->config_text) return DV_ERROR(err, "out of memory");
    return DV_OK;
}

/* The gradient path: sharded on the CPU where the node's shared memory
 * serves, buckets of bucket_mb, the device all-reduce on a GPU. */
static dv_status setup_gradients(dv_classifier *r, dv_comm *c, dv_config *cfg, int need_train,
                                 char *err) {
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
    DV_TRY(dv_ring_init(&r->ring, r->be, r->m->stats, 2, err));
    if (!need_train) return DV_OK;
    size_t most = r->m->nparams > r->m->nbuffers ? r->m->nparams : r->m->nbuffers;
    return dv_device_comm_open(c, &r->st, r->be, cfg, most, &r->device_comm, err);
}

dv_status dv_classifier_setup(dv_classifier *r, dv_comm *c, dv_config *cfg, int need_train) {
    memset(r, 0, sizeof(*r));
    r->comm = c;
    r->cfg = cfg;
    r->world = dv_comm_size(c);
    r->rank = dv_comm_rank(c);
    char *err = r->err;
    dv_status rc = dv_settings_read(cfg, &r->st, err);
    if (!rc && r->st.batch % r->world)
        rc = DV_ERROR(err,
                      "%s: [train] batch = %ld does not divide across %d ranks (each rank "
                      "takes batch / ranks samples); use a multiple of %d",
                      cfg->path, r->st.batch, r->world, r->world);
    DV_TRY(dv_agree(c, rc, err));
    r->local_batch = (int)(r->st.batch / r->world);
    r->eval_batch = dv_settings_eval_batch(&r->st, cfg, r->local_batch);
    if (r->st.comm_timeout >= 0) dv_comm_set_timeout(c, r->st.comm_timeout);
    DV_TRY(dv_agree(c, setup_model(r, c, cfg, err), err));
    DV_TRY(dv_backend_agree(c, &r->st, r->be, err));
    DV_TRY(dv_agree(c, setup_data(r, cfg, need_train, err), err));
    return dv_agree(c, setup_gradients(r, c, cfg, need_train, err), err);
}

dv_status dv_classifier_evaluate(dv_classifier *r, dv_loader *l, double *loss, double *acc,
                                 double *count) {
    dv_model *m = r->m;
    const dv_backend *be = r->be;
    double sums[3] = {0, 0, 0};
    dv_status rc = dv_loader_start(l, 0, 0, r->err);
    while (!rc) {
        dv_batch b;
        rc = dv_loader_next(l, &b, r->err);
        if (rc || !b.count) break;
        dv_classifier_load(r, &b);
        be->fill(be->ctx, m->stats, 0.0f, 2);
        dv_model_forward(m, b.count, 0);
        dv_model_loss(m, b.count, 0.0f);
        float st[2];
        be->to_host(be->ctx, st, m->stats, sizeof(st));
        sums[0] += st[0];
        sums[1] += st[1];
        sums[2] += (double)b.count * m->positions;
    }
    if (!rc) rc = r->be->check(r->be->ctx, r->err);
    DV_TRY(dv_agree(r->comm, rc, r->err));
    if (dv_comm_allreduce_double(r->comm, sums, 3, DV_REDUCE_SUM, r->err))
        dv_comm_abort(r->comm, 1, r->err);
    *count = sums[2];
    *loss = sums[2] > 0 ? sums[0] / sums[2] : NAN;
    *acc = sums[2] > 0 ? sums[1] / sums[2] : NAN;
    return DV_OK;
}
