/* model.c — a sequential model: its layers from the config, one flat
 * allocation each for parameters, gradients and optimizer state (laid out
 * in reverse layer order, so the gradients of the last layers — ready first
 * in backward — form the first bucket to all-reduce), forward, the loss and
 * backward.
 *
 * Initial parameters come from the config's seed through a counter-based
 * generator, so every rank builds the same model without communicating.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layer-impl.h"

const char *const dv_loss_names[] = {[DV_LOSS_XENT] = "cross_entropy",
                                     [DV_LOSS_MSE] = "mse",
                                     [DV_LOSS_BCE] = "bce",
                                     [DV_LOSS_PERCEPTRON] = "perceptron",
                                     NULL};
_Static_assert(DV_ARRAY_LEN(dv_loss_names) == DV_LOSS_COUNT + 1, "a name for every dv_loss");

static int is_layer_section(const dv_config_section *s) {
    return strcmp(s->type, "data") && strcmp(s->type, "train") && strcmp(s->type, "input") &&
           strcmp(s->type, "gan");
}

float dv_randn(uint64_t seed, uint64_t i) {
    double u1 = dv_rand_uniform(seed, 2 * i) + 1.0 / 16777216.0;
    double u2 = dv_rand_uniform(seed, 2 * i + 1);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

static void init_param(const dv_param *p, uint64_t seed, float *host) {
    switch (p->init) {
    case DV_INIT_ZERO:
        memset(host, 0, p->count * sizeof(float));
        break;
    case DV_INIT_ONE:
        for (size_t i = 0; i < p->count; i++)
            host[i] = 1.0f;
        break;
    case DV_INIT_HE: {
        float sd = sqrtf(2.0f / (float)p->fan_in);
        for (size_t i = 0; i < p->count; i++)
            host[i] = sd * dv_randn(seed, i);
        break;
    }
    case DV_INIT_NORMAL:
        for (size_t i = 0; i < p->count; i++)
            host[i] = p->std * dv_randn(seed, i);
        break;
    case DV_INIT_UNIFORM:
        for (size_t i = 0; i < p->count; i++)
            host[i] = p->std * (2.0f * dv_rand_uniform(seed, i) - 1.0f);
        break;
    case DV_INIT_XAVIER: {
        float lim = sqrtf(6.0f / (float)(p->fan_in + p->fan_out));
        for (size_t i = 0; i < p->count; i++)
            host[i] = lim * (2.0f * dv_rand_uniform(seed, i) - 1.0f);
        break;
    }
    }
}

static dv_status alloc_buffers(dv_model *m, char *err) {
    dv_backend *be = m->be;
    size_t B = (size_t)m->max_batch, maxe = m->in_elems;
    m->acts = calloc((size_t)m->nlayers, sizeof(float *));
    if (!m->acts) return DV_ERROR(err, "out of memory");
    for (int i = 0; i < m->nlayers; i++) {
        size_t e = m->layers[i].out_elems;
        if (e > maxe) maxe = e;
        m->acts[i] = be->alloc(be->ctx, B * e * sizeof(float));
        if (!m->acts[i])
            return DV_ERROR(err, "out of memory for activations of %s", m->layers[i].name);
    }
    size_t np = m->nparams ? m->nparams : 1, nb = m->nbuffers ? m->nbuffers : 1;
    m->params = be->alloc(be->ctx, np * sizeof(float));
    m->grads = be->alloc(be->ctx, np * sizeof(float));
    m->state1 = be->alloc(be->ctx, np * sizeof(float));
    m->state2 = be->alloc(be->ctx, np * sizeof(float));
    m->buffers = be->alloc(be->ctx, nb * sizeof(float));
    m->input = be->alloc(be->ctx, B * m->in_elems * sizeof(float));
    m->dbuf[0] = be->alloc(be->ctx, B * maxe * sizeof(float));
    m->dbuf[1] = be->alloc(be->ctx, B * maxe * sizeof(float));
    size_t P = (size_t)m->positions;
    m->targets = be->alloc(be->ctx, B * P * (size_t)m->outputs * sizeof(float));
    m->labels = be->alloc(be->ctx, B * P * sizeof(int32_t));
    m->row_id = be->alloc(be->ctx, B * sizeof(int64_t));
    m->stats = be->alloc(be->ctx, 2 * sizeof(float));
    if (!m->params || !m->grads || !m->state1 || !m->state2 || !m->buffers || !m->input ||
        !m->dbuf[0] || !m->dbuf[1] || !m->targets || !m->labels || !m->row_id || !m->stats)
        return DV_ERROR(err, "out of memory for a model of %zu parameters", m->nparams);
    return DV_OK;
}

/* [input]: shape = C,H,W | K | H,W (one channel) | T,F with sequence =
 * true; or tokens = T with vocab = V (token ids for an embedding). */
static dv_status read_input(dv_model *m, dv_config *cfg, dv_config_section *in, char *err) {
    static const char *const bools[] = {"false", "true", NULL};
    long tokens, vocab;
    int seq;
    DV_TRY(dv_config_int(cfg, in, "tokens", 0, 1, 1 << 20, &tokens, err));
    DV_TRY(dv_config_int(cfg, in, "vocab", 0, 2, 1 << 24, &vocab, err));
    DV_TRY(dv_config_enum(cfg, in, "sequence", "false", bools, &seq, err));
    if (tokens) {
        if (!vocab)
            return DV_CONFIG_ERROR(err, cfg, in, NULL,
                                   "tokens = %ld needs vocab = V (the vocabulary size; dive train "
                                   "fills it in from a token file)",
                                   tokens);
        if (dv_config_has(in, "shape"))
            return DV_CONFIG_ERROR(err, cfg, in, NULL, "give either shape or tokens, not both");
        m->tokens = 1;
        m->vocab = (int)vocab;
        m->in_ndim = 1;
        m->in_shape[0] = (int)tokens;
        m->in_elems = (size_t)tokens;
        return DV_OK;
    }
    if (vocab) return DV_CONFIG_ERROR(err, cfg, in, NULL, "vocab is for token inputs (tokens = T)");
    DV_TRY(dv_config_ints(cfg, in, "shape", m->in_shape, 3, &m->in_ndim, err));
    m->in_elems = 1;
    for (int i = 0; i < m->in_ndim; i++)
        if (__builtin_mul_overflow(m->in_elems, (size_t)m->in_shape[i], &m->in_elems) ||
            m->in_elems > DV_MAX_SAMPLE_ELEMS)
            return DV_CONFIG_ERROR(err, cfg, in, "shape",
                                   "a sample of more than %d elements (2^31 - 1)",
                                   DV_MAX_SAMPLE_ELEMS);
    if (seq && m->in_ndim != 2)
        return DV_CONFIG_ERROR(err, cfg, in, NULL,
                               "sequence = true needs shape = T,F (steps, features)");
    if (m->in_ndim == 2 && !seq) { /* (H, W) is one channel */
        m->in_shape[2] = m->in_shape[1];
        m->in_shape[1] = m->in_shape[0];
        m->in_shape[0] = 1;
        m->in_ndim = 3;
    }
    return DV_OK;
}

/* Resolves every tied param (dense `tie = LAYER`) to its target, which
 * must have the same shape; tied params take no storage. */
static dv_status resolve_ties(dv_model *m, char *err) {
    for (int i = 0; i < m->nlayers; i++)
        for (int k = 0; k < m->layers[i].nparam; k++) {
            dv_param *p = &m->layers[i].param[k];
            if (!p->tie) continue;
            const dv_param *t = p->tie;
            if (t->count != p->count || t->ndim != p->ndim ||
                memcmp(t->shape, p->shape, sizeof(int) * (size_t)p->ndim))
                return DV_ERROR(err, "%s: cannot tie %s to a parameter of another shape",
                                m->layers[i].name, p->name);
        }
    return DV_OK;
}

/* The layers of cfg's layer sections, each reading the shape the one
 * before puts out. */
static dv_status build_layers(dv_model *m, dv_config *cfg, char *err) {
    int n = 0;
    for (int i = 0; i < cfg->nsec; i++)
        n += is_layer_section(&cfg->sec[i]);
    if (!n) return DV_ERROR(err, "%s: no layer sections after [input]", cfg->path);
    m->layers = calloc((size_t)n, sizeof(dv_layer));
    if (!m->layers) return DV_ERROR(err, "out of memory");
    int in_ndim = m->in_ndim, in_shape[3];
    memcpy(in_shape, m->in_shape, sizeof(in_shape));
    size_t in_elems = m->in_elems;
    for (int i = 0; i < cfg->nsec; i++) {
        dv_config_section *s = &cfg->sec[i];
        if (!is_layer_section(s)) continue;
        dv_layer *l = &m->layers[m->nlayers];
        l->index = m->nlayers++;
        l->in_ndim = in_ndim;
        memcpy(l->in_shape, in_shape, sizeof(in_shape));
        l->in_elems = in_elems;
        DV_TRY(dv_layer_init(l, cfg, s, m, err));
        l->out_elems = 1;
        for (int k = 0; k < l->out_ndim; k++)
            if (l->out_shape[k] < 1 ||
                __builtin_mul_overflow(l->out_elems, (size_t)l->out_shape[k], &l->out_elems) ||
                l->out_elems > DV_MAX_SAMPLE_ELEMS)
                return DV_CONFIG_ERROR(err, cfg, s, NULL,
                                       "puts out more than %d elements (2^31 - 1) a sample",
                                       DV_MAX_SAMPLE_ELEMS);
        in_ndim = l->out_ndim;
        memcpy(in_shape, l->out_shape, sizeof(in_shape));
        in_elems = l->out_elems;
    }
    return DV_OK;
}

/* What the layers together must satisfy for the loss. */
static dv_status check_model(dv_model *m, const dv_config *cfg, dv_loss loss, char *err) {
    dv_layer *last = &m->layers[m->nlayers - 1];
    if (m->tokens && strcmp(m->layers[0].type, "embedding"))
        return DV_ERROR(err, "%s: a token input (tokens = T) must start with an [embedding]",
                        cfg->path);
    DV_TRY(resolve_ties(m, err));
    if ((loss == DV_LOSS_XENT && last->act == DV_ACT_SOFTMAX) ||
        (loss == DV_LOSS_BCE && last->act == DV_ACT_SIGMOID))
        last->act_in_loss = 1;
    int has_perceptron = 0;
    for (int i = 0; i < m->nlayers; i++)
        has_perceptron |= !strcmp(m->layers[i].type, "perceptron");
    if (has_perceptron && (m->nlayers != 1 || loss != DV_LOSS_PERCEPTRON))
        return DV_ERROR(err,
                        "%s: a [perceptron] is a model of its own: it must be the only layer, "
                        "with loss = perceptron in [train]",
                        cfg->path);
    if (loss == DV_LOSS_PERCEPTRON && !has_perceptron)
        return DV_ERROR(err, "%s: loss = perceptron needs a [perceptron] model", cfg->path);
    if (loss == DV_LOSS_XENT && m->outputs < 2)
        return DV_ERROR(err,
                        "%s: loss = cross_entropy needs at least 2 outputs but the last layer "
                        "has %d (use bce for one output)",
                        cfg->path, m->outputs);
    return DV_OK;
}

/* Lays the parameters out in reverse layer order (the last layer's
 * gradients come first), allocates, initialises them from the seed and
 * sets up every layer's scratch. */
static dv_status place_params(dv_model *m, uint64_t seed, char *err) {
    dv_backend *be = m->be;
    for (int i = m->nlayers - 1; i >= 0; i--) {
        dv_layer *l = &m->layers[i];
        for (int k = 0; k < l->nparam; k++) {
            dv_param *p = &l->param[k];
            if (p->tie) continue;
            if (p->trainable) {
                p->offset = m->nparams;
                m->nparams += p->count;
            } else {
                p->offset = m->nbuffers;
                m->nbuffers += p->count;
            }
            if (p->count > DV_MODEL_MAX_FLOATS || m->nparams > DV_MODEL_MAX_FLOATS ||
                m->nbuffers > DV_MODEL_MAX_FLOATS)
                return DV_ERROR(err, "%s: more than 2^40 parameters: too large a model", l->name);
        }
        l->grad_end = m->nparams;
    }
    DV_TRY(alloc_buffers(m, err));
    float *host = malloc(dv_model_max_param_count(m) * sizeof(float));
    if (!host) return DV_ERROR(err, "out of memory");
    dv_status st = DV_OK;
    for (int i = 0; i < m->nlayers && st == DV_OK; i++) {
        dv_layer *l = &m->layers[i];
        for (int k = 0; k < l->nparam; k++) {
            dv_param *p = &l->param[k];
            if (p->tie) {
                p->offset = p->tie->offset;
                p->data = p->tie->data;
                p->grad = p->tie->grad;
                continue;
            }
            p->data = (p->trainable ? m->params : m->buffers) + p->offset;
            p->grad = p->trainable ? m->grads + p->offset : NULL;
            uint64_t pseed = dv_rand_hash(seed, ((uint64_t)i << 8) | (uint64_t)k);
            init_param(p, pseed, host);
            be->to_device(be->ctx, p->data, host, p->count * sizeof(float));
        }
        st = dv_layer_setup(l, m, err);
    }
    free(host);
    if (st == DV_OK && m->work_floats) {
        m->work = be->alloc(be->ctx, m->work_floats * sizeof(float));
        if (!m->work) st = DV_ERROR(err, "out of memory for the convolution workspace");
    }
    return st;
}

static dv_status build(dv_model *m, dv_config *cfg, dv_loss loss, uint64_t seed, char *err) {
    dv_config_section *in = dv_config_find(cfg, "input");
    if (!in)
        return DV_ERROR(err,
                        "%s: no [input] section (it gives the sample shape, e.g. "
                        "shape = 1,28,28)",
                        cfg->path);
    DV_TRY(read_input(m, cfg, in, err));
    DV_TRY(build_layers(m, cfg, err));
    dv_layer *last = &m->layers[m->nlayers - 1];
    /* a sequence output (T, K) is scored per position */
    m->positions = last->out_ndim == 2 ? last->out_shape[0] : 1;
    m->outputs = (int)(last->out_elems / (size_t)m->positions);
    DV_TRY(check_model(m, cfg, loss, err));
    return place_params(m, seed, err);
}

dv_status dv_model_build(dv_model **out, dv_config *cfg, dv_backend *be, dv_loss loss,
                         uint64_t seed, int max_batch, char *err) {
    *out = NULL;
    dv_model *m = calloc(1, sizeof(*m));
    if (!m) return DV_ERROR(err, "out of memory");
    m->be = be;
    m->loss = loss;
    m->seed = seed;
    m->max_batch = max_batch;
    if (build(m, cfg, loss, seed, err) != DV_OK) {
        dv_model_free(m);
        return DV_ERR;
    }
    *out = m;
    return DV_OK;
}

void dv_model_free(dv_model *m) {
    if (!m) return;
    dv_backend *be = m->be;
    for (int i = 0; i < m->nlayers; i++) {
        dv_layer *l = &m->layers[i];
        if (l->ops && l->ops->free)
            l->ops->free(l, m);
        else
            free(l->priv);
        if (m->acts) be->free(be->ctx, m->acts[i]);
    }
    free(m->acts);
    free(m->layers);
    if (m->grads_borrowed) m->grads = NULL;
    float *bufs[] = {m->params,  m->grads,   m->state1,  m->state2, m->buffers, m->input,
                     m->dbuf[0], m->dbuf[1], m->targets, m->work,   m->stats};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        be->free(be->ctx, bufs[i]);
    be->free(be->ctx, m->labels);
    be->free(be->ctx, m->row_id);
    free(m);
}

void dv_model_forward_only(dv_model *m) {
    if (!m->grads_borrowed) m->be->free(m->be->ctx, m->grads);
    m->be->free(m->be->ctx, m->state1);
    m->be->free(m->be->ctx, m->state2);
    m->grads = m->state1 = m->state2 = NULL;
    m->grads_borrowed = 0;
    for (int i = 0; i < m->nlayers; i++) /* no view into freed memory */
        for (int k = 0; k < m->layers[i].nparam; k++)
            m->layers[i].param[k].grad = NULL;
}

void dv_model_use_grads(dv_model *m, float *grads) {
    if (!m->grads_borrowed) m->be->free(m->be->ctx, m->grads);
    m->grads = grads;
    m->grads_borrowed = 1;
    for (int i = 0; i < m->nlayers; i++)
        for (int k = 0; k < m->layers[i].nparam; k++) {
            dv_param *p = &m->layers[i].param[k];
            if (p->trainable) p->grad = grads + (p->tie ? p->tie->offset : p->offset);
        }
}

size_t dv_model_max_param_count(const dv_model *m) {
    size_t maxp = 1;
    for (int i = 0; i < m->nlayers; i++)
        for (int k = 0; k < m->layers[i].nparam; k++)
            if (m->layers[i].param[k].count > maxp) maxp = m->layers[i].param[k].count;
    return maxp;
}

void dv_model_forward(dv_model *m, int B, int training) {
    const float *x = m->input;
    for (int i = 0; i < m->nlayers; i++) {
        dv_layer *l = &m->layers[i];
        l->ops->forward(l, m, x, m->acts[i], B, training);
        x = m->acts[i];
    }
}

void dv_model_loss(dv_model *m, int B, float grad_scale) {
    const dv_backend *be = m->be;
    const float *out = m->acts[m->nlayers - 1];
    int K = m->outputs;
    B *= m->positions; /* a per-position loss scores B*T rows */
    switch (m->loss) {
    case DV_LOSS_XENT:
        be->xent_loss(be->ctx, out, m->labels, B, K, grad_scale, m->dbuf[0], m->stats);
        break;
    case DV_LOSS_BCE:
        be->bce_loss(be->ctx, out, m->targets, B, K, grad_scale, m->dbuf[0], m->stats);
        break;
    case DV_LOSS_MSE:
        be->mse_loss(be->ctx, out, m->targets, B, K, grad_scale, m->dbuf[0], m->stats);
        break;
    case DV_LOSS_PERCEPTRON:
        be->perceptron_loss(be->ctx, out, m->labels, B, K, grad_scale, m->dbuf[0], m->stats);
        break;
    case DV_LOSS_COUNT: /* not a loss: dv_settings_read never gives it */
        break;
    }
}

void dv_model_backward(dv_model *m, int B, void (*on_grads)(void *ctx, size_t grad_end),
                       void *ctx) {
    int cur = 0;
    for (int i = m->nlayers - 1; i >= 0; i--) {
        dv_layer *l = &m->layers[i];
        const float *x = i ? m->acts[i - 1] : m->input;
        float *dx = i ? m->dbuf[cur ^ 1] : m->dinput;
        l->ops->backward(l, m, x, m->acts[i], m->dbuf[cur], dx, B);
        cur ^= 1;
        if (on_grads) on_grads(ctx, l->grad_end);
    }
}

float *dv_model_outputs(dv_model *m, int B) {
    dv_layer *last = &m->layers[m->nlayers - 1];
    float *out = m->acts[m->nlayers - 1];
    if (last->act_in_loss)
        m->be->act_forward(m->be->ctx, last->act, last->act_alpha, out, out,
                           (size_t)B * (size_t)m->positions * (size_t)m->outputs, m->outputs);
    return out;
}

int dv_model_classes(const dv_model *m) {
    return m->outputs == 1 ? 2 : m->outputs;
}

void dv_model_print(const dv_model *m, FILE *f) {
    fprintf(f, "model: input (");
    for (int k = 0; k < m->in_ndim; k++)
        fprintf(f, "%s%d", k ? "," : "", m->in_shape[k]);
    fprintf(f, ")\n");
    for (int i = 0; i < m->nlayers; i++) {
        const dv_layer *l = &m->layers[i];
        size_t np = 0;
        for (int k = 0; k < l->nparam; k++)
            np += l->param[k].trainable && !l->param[k].tie ? l->param[k].count : 0;
        char shape[64] = "";
        for (int k = 0; k < l->out_ndim; k++)
            snprintf(shape + strlen(shape), sizeof(shape) - strlen(shape), "%s%d", k ? "," : "",
                     l->out_shape[k]);
        fprintf(f, "  %-14s -> (%s) %s%s  %zu params\n", l->name, shape,
                l->act == DV_ACT_LINEAR ? "" : dv_act_names[l->act],
                l->act_in_loss ? " (in loss)" : "", np);
    }
    fprintf(f, "  total %zu parameters\n", m->nparams);
}

double dv_model_train_flops(const dv_model *m) {
    double f = 0;
    for (int i = 0; i < m->nlayers; i++) {
        const dv_layer *l = &m->layers[i];
        if (l->ops && l->ops->flops) f += l->ops->flops(l);
    }
    return 3 * f;
}
