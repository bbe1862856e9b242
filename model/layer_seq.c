/* layer_seq.c — the Transformer-side layers: [embedding], [layernorm],
 * [gelu], [attention] and [transformer], built only from backend ops on
 * device pointers, so the same code runs on the CPU and on CUDA.
 *
 * Keys (each layer reads only its own):
 *   [embedding]   dim = D (required); positions = learned | sinusoidal | none
 *                 (default learned); dropout = rate on the output (default 0).
 *                 Needs a token input ([input] tokens = T, vocab = V) and must
 *                 be the first layer. Params: weight (V, D) normal(0, 0.02);
 *                 learned: position (T, D) normal(0, 0.02); sinusoidal: the
 *                 non-trainable buffer sinusoid (T, D), the sin/cos table of
 *                 Vaswani et al. (column 2i: sin(t / 10000^(2i/D)), column
 *                 2i+1: cos of the same), written in setup and checkpointed
 *                 with the model's buffers. Output (T, D) = weight[id] + pos[t].
 *   [layernorm]   eps (default 1e-5); over the last dim of a (T, C) or (K)
 *                 input. Params gamma (C) ones, beta (C) zeros.
 *   [gelu]        no keys; GELU (tanh approximation) on any shape.
 *   [attention]   heads (required, divides C), dropout (on the output
 *                 projection, default 0): multi-head causal self-attention on
 *                 (T, C). Params qkv_weight (3C, C), qkv_bias (3C),
 *                 proj_weight (C, C), proj_bias (C); weights normal(0, 0.02),
 *                 biases zeros. Rows [0, C) of qkv_weight make q, [C, 2C) k,
 *                 [2C, 3C) v; head h owns features [h*Dh, (h+1)*Dh).
 *   [transformer] heads (required), hidden (default 4C), dropout (residual
 *                 dropout after the attention projection and after the MLP,
 *                 default 0), eps (default 1e-5): one pre-norm GPT block,
 *                 x1 = x + Attn(LN1(x)), y = x1 + fc2(GELU(fc(LN2(x1)))).
 *                 Params ln1_gamma, ln1_beta (C), qkv_weight (3C, C),
 *                 qkv_bias (3C), proj_weight (C, C), proj_bias (C),
 *                 ln2_gamma, ln2_beta (C), fc_weight (hidden, C),
 *                 fc_bias (hidden), fc2_weight (C, hidden), fc2_bias (C);
 *                 as GPT-2, proj_weight and fc2_weight start with std
 *                 0.02 / sqrt(2 * number of [transformer] sections).
 *
 * Attention: q, k, v come from three GEMMs on the (B*T, C) input into a
 * (3, B, T, C) block, one transpose splits all three into heads
 * (3, B, H, T, Dh), and the backend's fused attention (attention_forward,
 * flash style) gives the heads' outputs and each row's log-sum-exp (B*H, T)
 * without ever holding a (T, T) matrix: per head, memory is O(T). Backward
 * (attention_backward) recomputes the probabilities from q, k and the
 * log-sum-exp. The temporaries of forward and backward live in the model's
 * shared workspace m->work (layers run one at a time), so only what
 * backward reads is kept per layer: q, k, v, the log-sum-exp, the merged
 * heads, and for a block also LN1(x), x1, LN2(x1), the MLP's hidden
 * pre- and post-GELU values, the layer-norm statistics and dropout masks.
 * A block's residual adds are fused with what follows them
 * (residual_layernorm_forward: x1 and LN2(x1) in one pass, then y = x1 +
 * MLP), the projections' biases folded in; backward adds the layer norms'
 * gradients into the residual gradient (residual_layernorm_backward).
 *
 * Contracts (layer-impl.h, model.h): parameter gradients accumulate, dx is overwritten
 * (NULL: not needed), dy may be overwritten; backward follows a training
 * forward of the same B rows.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layer-impl.h"

typedef enum pos_kind { POS_LEARNED = 0, POS_SINUSOIDAL, POS_NONE, POS_COUNT } pos_kind;

/* One causal self-attention: shared by [attention] and [transformer]. */
typedef struct attn {
    int T, C, H, Dh;
    const dv_param *p; /* qkv_weight, qkv_bias, proj_weight, proj_bias, in a row */
    float *qkv;        /* (3, B, H, T, Dh): q, k, v split into heads */
    float *lse;        /* (B*H, T): each row's log-sum-exp, from forward */
    float *merged;     /* (B, T, C): the heads' outputs, the projection's input */
} attn;

#define SEQ_MAX_DEV 16

typedef struct seq_priv {
    int T, C;   /* positions per sample and features per position */
    int hidden; /* transformer MLP width */
    int V;      /* embedding rows */
    pos_kind pos;
    float eps, rate;
    attn at;
    /* scratch kept from forward for backward, (max_batch, ...) */
    float *mean1, *rstd1, *mean2, *rstd2; /* (B*T) */
    float *ln1, *x1, *ln2;                /* (B, T, C) */
    float *fc, *act;                      /* (B, T, hidden): before and after GELU */
    float *mask1, *mask2;                 /* (B, T, C) dropout masks */
    float *dev[SEQ_MAX_DEV];              /* every device allocation above */
    int ndev;
} seq_priv;

static float *dev_alloc(seq_priv *p, dv_model *m, size_t floats) {
    if (p->ndev == SEQ_MAX_DEV) return NULL;
    float *d = m->be->alloc(m->be->ctx, (floats ? floats : 1) * sizeof(float));
    if (d) p->dev[p->ndev++] = d;
    return d;
}

static void seq_free(dv_layer *l, dv_model *m) {
    seq_priv *p = l->priv;
    if (p)
        for (int i = 0; i < p->ndev; i++)
            m->be->free(m->be->ctx, p->dev[i]);
    dv_layer_free_priv(l, m);
}

static void need_work(dv_model *m, size_t floats) {
    if (floats > m->work_floats) m->work_floats = floats;
}

/* The seed of dropout `which` of layer l this step: the [dropout] layer's
 * fold of step and layer index, folded again with `which` so the two
 * dropouts of a block draw different masks. It is a function of host
 * values only, so every backend and every rank draws the same masks. */
static uint64_t drop_seed(const dv_layer *l, const dv_model *m, uint64_t which) {
    uint64_t s = dv_rand_hash(m->step_seed, (uint64_t)l->index);
    return which ? dv_rand_hash(s, which) : s;
}

/* ---- attention ------------------------------------------------------------ */

/* Floats of m->work that attn_forward / attn_backward use at B rows: six
 * (B, T, C) slots, then the fused attention's own workspace. */
static size_t attn_work(const attn *a, const dv_backend *be, int B) {
    size_t n = (size_t)B * a->T * a->C;
    return 6 * n + be->attention_workspace(be->ctx, B * a->H, a->T, a->Dh);
}

/* The attention's buffers; refuses a head size the backend's fused
 * attention does not take (attention_workspace says SIZE_MAX), so it is
 * named when the model is built, not at the first step. */
static dv_status attn_setup(attn *a, seq_priv *p, dv_model *m, const dv_layer *l, char *err) {
    const dv_backend *be = m->be;
    if (be->attention_workspace(be->ctx, 1, a->T, a->Dh) == SIZE_MAX)
        return DV_ERROR(err,
                        "%s: head size %d (width / heads) is larger than the %s backend's "
                        "attention takes (use more heads)",
                        l->name, a->Dh, be->name);
    size_t B = (size_t)m->max_batch, n = B * a->T * a->C;
    a->qkv = dev_alloc(p, m, 3 * n);
    a->lse = dev_alloc(p, m, B * a->H * a->T);
    a->merged = dev_alloc(p, m, n);
    if (!a->qkv || !a->lse || !a->merged) return DV_ERROR(err, "out of memory for %s", l->name);
    return DV_OK;
}

/* out (B, T, C) = Attn(x (B, T, C)), overwritten; without proj_bias
 * (add_bias 0) when the caller adds it in its residual add. work:
 * attn_work floats. */
static void attn_forward(const attn *a, dv_model *m, int B, const float *x, float *out,
                         int add_bias, float *work) {
    const dv_backend *be = m->be;
    const int T = a->T, C = a->C, H = a->H, Dh = a->Dh, N = B * T, BH = B * H;
    const size_t n = (size_t)N * C, cc = (size_t)C * C;
    const float *w = a->p[0].data, *b = a->p[1].data;
    float *lin = work; /* (3, B, T, C) */
    for (int j = 0; j < 3; j++) {
        be->gemm(be->ctx, 0, 1, N, C, C, 1.0f, x, w + j * cc, 0.0f, lin + j * n);
        be->bias_forward(be->ctx, lin + j * n, b + (size_t)j * C, N, C, 1);
    }
    be->transpose(be->ctx, 3 * B, T, H, Dh, lin, a->qkv);
    const float *q = a->qkv, *k = a->qkv + n, *v = a->qkv + 2 * n;
    float *heads = work; /* (B, H, T, Dh); lin is done with */
    be->attention_forward(be->ctx, BH, T, Dh, 1.0f / sqrtf((float)Dh), q, k, v, heads, a->lse,
                          work + 6 * n);
    be->transpose(be->ctx, B, H, T, Dh, heads, a->merged);
    be->gemm(be->ctx, 0, 1, N, C, C, 1.0f, a->merged, a->p[2].data, 0.0f, out);
    if (add_bias) be->bias_forward(be->ctx, out, a->p[3].data, N, C, 1);
}

/* From dout (B, T, C) (read only): the four params' grads +=, dx (B, T, C)
 * overwritten unless NULL. x is the forward's input. */
static void attn_backward(const attn *a, dv_model *m, int B, const float *x, const float *dout,
                          float *dx, float *work) {
    const dv_backend *be = m->be;
    const int T = a->T, C = a->C, H = a->H, Dh = a->Dh, N = B * T, BH = B * H;
    const size_t n = (size_t)N * C, cc = (size_t)C * C;
    const float *q = a->qkv, *k = a->qkv + n, *v = a->qkv + 2 * n;
    const float *w = a->p[0].data;
    float *dw = a->p[0].grad, *db = a->p[1].grad;
    float *dqkv = work;         /* (3, B, H, T, Dh) */
    float *dlin = work + 3 * n; /* (3, B, T, C) */
    /* before dlin is written: the gradient of the merged heads, of the
     * heads, and the heads' outputs again, in head layout */
    float *dmerged = dlin, *dheads = dlin + n, *heads = dlin + 2 * n;

    be->gemm(be->ctx, 1, 0, C, C, N, 1.0f, dout, a->merged, 1.0f, a->p[2].grad);
    be->bias_backward(be->ctx, dout, a->p[3].grad, N, C, 1);
    be->gemm(be->ctx, 0, 0, N, C, C, 1.0f, dout, a->p[2].data, 0.0f, dmerged);
    be->transpose(be->ctx, B, T, H, Dh, dmerged, dheads);
    be->transpose(be->ctx, B, T, H, Dh, a->merged, heads);
    be->attention_backward(be->ctx, BH, T, Dh, 1.0f / sqrtf((float)Dh), q, k, v, heads, a->lse,
                           dheads, dqkv, dqkv + n, dqkv + 2 * n, work + 6 * n);
    be->transpose(be->ctx, 3 * B, H, T, Dh, dqkv, dlin);
    for (int j = 0; j < 3; j++) {
        be->gemm(be->ctx, 1, 0, C, C, N, 1.0f, dlin + j * n, x, 1.0f, dw + j * cc);
        be->bias_backward(be->ctx, dlin + j * n, db + (size_t)j * C, N, C, 1);
    }
    if (dx)
        for (int j = 0; j < 3; j++)
            be->gemm(be->ctx, 0, 0, N, C, C, 1.0f, dlin + j * n, w + j * cc, j ? 1.0f : 0.0f, dx);
}

/* ---- forward / backward of each layer ------------------------------------- */

static void emb_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    const dv_backend *be = m->be;
    seq_priv *p = l->priv;
    const int T = p->T, D = p->C;
    be->embedding_forward(be->ctx, (const int32_t *)x, B * T, D, l->param[0].data, y);
    if (p->pos != POS_NONE) be->bias_forward(be->ctx, y, l->param[1].data, B, T * D, 1);
    if (training && p->rate > 0.0f)
        be->dropout_forward(be->ctx, p->rate, drop_seed(l, m, 0), m->row_id, B, T * D, y, y,
                            p->mask1);
}

static void emb_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                         const float *dy_in, float *dx, int B) {
    (void)y;
    (void)dx; /* token ids have no gradient */
    const dv_backend *be = m->be;
    seq_priv *p = l->priv;
    const int T = p->T, D = p->C;
    float *dy = (float *)dy_in;
    if (p->rate > 0.0f) be->dropout_backward(be->ctx, p->mask1, dy, dy, (size_t)B * T * D);
    be->embedding_backward(be->ctx, (const int32_t *)x, B * T, D, p->V, dy, l->param[0].grad);
    if (p->pos == POS_LEARNED) be->bias_backward(be->ctx, dy, l->param[1].grad, B, T * D, 1);
}

static void ln_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    (void)training;
    seq_priv *p = l->priv;
    m->be->layernorm_forward(m->be->ctx, B * p->T, p->C, p->eps, x, l->param[0].data,
                             l->param[1].data, y, p->mean1, p->rstd1);
}

static void ln_backward(dv_layer *l, dv_model *m, const float *x, const float *y, const float *dy,
                        float *dx, int B) {
    (void)y;
    seq_priv *p = l->priv;
    m->be->layernorm_backward(m->be->ctx, B * p->T, p->C, x, l->param[0].data, p->mean1, p->rstd1,
                              dy, dx, l->param[0].grad, l->param[1].grad);
}

static void gelu_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    (void)training;
    m->be->gelu_forward(m->be->ctx, x, y, (size_t)B * l->out_elems);
}

static void gelu_backward(dv_layer *l, dv_model *m, const float *x, const float *y, const float *dy,
                          float *dx, int B) {
    (void)y;
    if (dx) m->be->gelu_backward(m->be->ctx, x, dy, dx, (size_t)B * l->out_elems);
}

static void attn_layer_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B,
                               int training) {
    seq_priv *p = l->priv;
    attn_forward(&p->at, m, B, x, y, 1, m->work);
    if (training && p->rate > 0.0f)
        m->be->dropout_forward(m->be->ctx, p->rate, drop_seed(l, m, 0), m->row_id, B,
                               (int)l->out_elems, y, y, p->mask1);
}

static void attn_layer_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                                const float *dy_in, float *dx, int B) {
    (void)y;
    seq_priv *p = l->priv;
    float *dy = (float *)dy_in;
    if (p->rate > 0.0f)
        m->be->dropout_backward(m->be->ctx, p->mask1, dy, dy, (size_t)B * l->out_elems);
    attn_backward(&p->at, m, B, x, dy, dx, m->work);
}

/* Params of a block, in the order they are declared. */
enum {
    TB_LN1_G = 0,
    TB_LN1_B,
    TB_QKV_W,
    TB_QKV_B,
    TB_PROJ_W,
    TB_PROJ_B,
    TB_LN2_G,
    TB_LN2_B,
    TB_FC_W,
    TB_FC_B,
    TB_FC2_W,
    TB_FC2_B,
    TB_NPARAM
};

/* Workspace of a block: two (B, T, C) slots, then either the attention's
 * temporaries or the MLP's (B, T, hidden) gradient. */
static size_t block_work(const seq_priv *p, const dv_backend *be, int B) {
    size_t n = (size_t)B * p->T * p->C, h = (size_t)B * p->T * p->hidden;
    size_t a = attn_work(&p->at, be, B);
    return 2 * n + (a > h ? a : h);
}

static void block_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    const dv_backend *be = m->be;
    seq_priv *p = l->priv;
    const dv_param *w = l->param;
    const int N = B * p->T, C = p->C, Hd = p->hidden;
    const size_t n = (size_t)N * C;
    const int drop = training && p->rate > 0.0f;
    float *r1 = m->work, *r3 = m->work + 2 * n;

    be->layernorm_forward(be->ctx, N, C, p->eps, x, w[TB_LN1_G].data, w[TB_LN1_B].data, p->ln1,
                          p->mean1, p->rstd1);
    /* x1 = x + Attn(LN1(x)) and LN2(x1) in one pass: the attention (in r1,
     * free until the MLP) without its output bias, which the fused op adds;
     * with dropout the bias goes in before the mask. */
    attn_forward(&p->at, m, B, p->ln1, r1, drop, r3);
    if (drop)
        be->dropout_forward(be->ctx, p->rate, drop_seed(l, m, 1), m->row_id, B, p->T * C, r1, r1,
                            p->mask1);
    be->residual_layernorm_forward(be->ctx, N, C, p->eps, x, r1, drop ? NULL : w[TB_PROJ_B].data,
                                   w[TB_LN2_G].data, w[TB_LN2_B].data, p->x1, p->ln2, p->mean2,
                                   p->rstd2);
    be->gemm(be->ctx, 0, 1, N, Hd, C, 1.0f, p->ln2, w[TB_FC_W].data, 0.0f, p->fc);
    be->bias_forward(be->ctx, p->fc, w[TB_FC_B].data, N, Hd, 1);
    be->gelu_forward(be->ctx, p->fc, p->act, (size_t)N * Hd);
    /* y = x1 + MLP: the fc2 GEMM into y, then the residual and the bias
     * (before the mask with dropout) in one pass, in place */
    be->gemm(be->ctx, 0, 1, N, C, Hd, 1.0f, p->act, w[TB_FC2_W].data, 0.0f, y);
    if (drop) {
        be->bias_forward(be->ctx, y, w[TB_FC2_B].data, N, C, 1);
        be->dropout_forward(be->ctx, p->rate, drop_seed(l, m, 2), m->row_id, B, p->T * C, y, y,
                            p->mask2);
    }
    be->residual_layernorm_forward(be->ctx, N, C, p->eps, p->x1, y, drop ? NULL : w[TB_FC2_B].data,
                                   NULL, NULL, y, NULL, NULL, NULL);
}

static void block_backward(dv_layer *l, dv_model *m, const float *x, const float *y,
                           const float *dy_in, float *dx, int B) {
    (void)y;
    const dv_backend *be = m->be;
    seq_priv *p = l->priv;
    const dv_param *w = l->param;
    const int N = B * p->T, C = p->C, Hd = p->hidden;
    const size_t n = (size_t)N * C;
    float *dy = (float *)dy_in;
    float *r1 = m->work, *r2 = m->work + n, *r3 = m->work + 2 * n;

    /* MLP branch: dy is the gradient of y and, through the residual, of x1 */
    const float *df = dy;
    if (p->rate > 0.0f) {
        be->dropout_backward(be->ctx, p->mask2, dy, r1, n);
        df = r1;
    }
    be->gemm(be->ctx, 1, 0, C, Hd, N, 1.0f, df, p->act, 1.0f, w[TB_FC2_W].grad);
    be->bias_backward(be->ctx, df, w[TB_FC2_B].grad, N, C, 1);
    float *dh = r3; /* (B, T, hidden) */
    be->gemm(be->ctx, 0, 0, N, Hd, C, 1.0f, df, w[TB_FC2_W].data, 0.0f, dh);
    be->gelu_backward(be->ctx, p->fc, dh, dh, (size_t)N * Hd);
    be->gemm(be->ctx, 1, 0, Hd, C, N, 1.0f, dh, p->ln2, 1.0f, w[TB_FC_W].grad);
    be->bias_backward(be->ctx, dh, w[TB_FC_B].grad, N, Hd, 1);
    be->gemm(be->ctx, 0, 0, N, C, Hd, 1.0f, dh, w[TB_FC_W].data, 0.0f, r1);
    /* dy += LN2's backward: dy now holds dx1 */
    be->residual_layernorm_backward(be->ctx, N, C, p->x1, w[TB_LN2_G].data, p->mean2, p->rstd2, r1,
                                    dy, dy, w[TB_LN2_G].grad, w[TB_LN2_B].grad);

    /* attention branch */
    const float *dattn = dy;
    if (p->rate > 0.0f) {
        be->dropout_backward(be->ctx, p->mask1, dy, r1, n);
        dattn = r1;
    }
    attn_backward(&p->at, m, B, p->ln1, dattn, r2, r3);
    /* dx = dx1 + LN1's backward */
    be->residual_layernorm_backward(be->ctx, N, C, x, w[TB_LN1_G].data, p->mean1, p->rstd1, r2, dy,
                                    dx, w[TB_LN1_G].grad, w[TB_LN1_B].grad);
}

/* ---- setup: scratch once the param views and max_batch are known --------- */

static dv_status emb_setup(dv_layer *l, dv_model *m, char *err) {
    seq_priv *p = l->priv;
    const int T = p->T, D = p->C;
    if (p->rate > 0.0f && !(p->mask1 = dev_alloc(p, m, (size_t)m->max_batch * T * D)))
        return DV_ERROR(err, "out of memory for %s", l->name);
    if (p->pos != POS_SINUSOIDAL) return DV_OK;
    float *host = malloc((size_t)T * D * sizeof(float));
    if (!host) return DV_ERROR(err, "out of memory");
    for (int t = 0; t < T; t++)
        for (int j = 0; j < D; j++) {
            double a = t / pow(10000.0, (double)(j - j % 2) / D);
            host[(size_t)t * D + j] = (float)(j % 2 ? cos(a) : sin(a));
        }
    m->be->to_device(m->be->ctx, l->param[1].data, host, (size_t)T * D * sizeof(float));
    free(host);
    return DV_OK;
}

static dv_status ln_setup(dv_layer *l, dv_model *m, char *err) {
    seq_priv *p = l->priv;
    size_t rows = (size_t)m->max_batch * p->T;
    p->mean1 = dev_alloc(p, m, rows);
    p->rstd1 = dev_alloc(p, m, rows);
    if (!p->mean1 || !p->rstd1) return DV_ERROR(err, "out of memory for %s", l->name);
    return DV_OK;
}

static dv_status attn_layer_setup(dv_layer *l, dv_model *m, char *err) {
    seq_priv *p = l->priv;
    size_t n = (size_t)m->max_batch * p->T * p->C;
    DV_TRY(attn_setup(&p->at, p, m, l, err));
    if (p->rate > 0.0f && !(p->mask1 = dev_alloc(p, m, n)))
        return DV_ERROR(err, "out of memory for %s", l->name);
    need_work(m, attn_work(&p->at, m->be, m->max_batch));
    return DV_OK;
}

static dv_status block_setup(dv_layer *l, dv_model *m, char *err) {
    seq_priv *p = l->priv;
    size_t rows = (size_t)m->max_batch * p->T, n = rows * p->C, h = rows * p->hidden;
    DV_TRY(attn_setup(&p->at, p, m, l, err));
    p->mean1 = dev_alloc(p, m, rows);
    p->rstd1 = dev_alloc(p, m, rows);
    p->mean2 = dev_alloc(p, m, rows);
    p->rstd2 = dev_alloc(p, m, rows);
    p->ln1 = dev_alloc(p, m, n);
    p->x1 = dev_alloc(p, m, n);
    p->ln2 = dev_alloc(p, m, n);
    p->fc = dev_alloc(p, m, h);
    p->act = dev_alloc(p, m, h);
    if (!p->mean1 || !p->rstd1 || !p->mean2 || !p->rstd2 || !p->ln1 || !p->x1 || !p->ln2 ||
        !p->fc || !p->act)
        return DV_ERROR(err, "out of memory for %s", l->name);
    if (p->rate > 0.0f) {
        p->mask1 = dev_alloc(p, m, n);
        p->mask2 = dev_alloc(p, m, n);
        if (!p->mask1 || !p->mask2) return DV_ERROR(err, "out of memory for %s", l->name);
    }
    need_work(m, block_work(p, m->be, m->max_batch));
    return DV_OK;
}

static const dv_layer_ops emb_ops = {
    .forward = emb_forward, .backward = emb_backward, .free = seq_free, .setup = emb_setup};
static const dv_layer_ops ln_ops = {
    .forward = ln_forward, .backward = ln_backward, .free = seq_free, .setup = ln_setup};
static const dv_layer_ops gelu_ops = {
    .forward = gelu_forward, .backward = gelu_backward, .free = seq_free, .setup = NULL};
/* FLOPs of one sample (docs/gpu.md, "Throughput and MFU"): the q, k, v
 * and output projections, 2 T C 4C, and the causal half of Q K^T and P V:
 * position t attends to t + 1 keys, T (T + 1) / 2 pairs, each 2 Dh per
 * head and product, so 2 C T (T + 1) for both. Softmax and the biases are
 * element-wise and not counted. */
static double attn_flops(const attn *a) {
    const double T = a->T, C = a->C;
    return 8.0 * T * C * C + 2.0 * C * T * (T + 1);
}

static double attn_layer_flops(const dv_layer *l) {
    const seq_priv *p = l->priv;
    return attn_flops(&p->at);
}

/* The attention and the MLP's two GEMMs, 2 T C hidden each. */
static double block_flops(const dv_layer *l) {
    const seq_priv *p = l->priv;
    return attn_flops(&p->at) + 4.0 * p->T * (double)p->C * p->hidden;
}

static const dv_layer_ops attn_ops = {.forward = attn_layer_forward,
                                      .backward = attn_layer_backward,
                                      .free = seq_free,
                                      .setup = attn_layer_setup,
                                      .flops = attn_layer_flops};
static const dv_layer_ops block_ops = {.forward = block_forward,
                                       .backward = block_backward,
                                       .free = seq_free,
                                       .setup = block_setup,
                                       .flops = block_flops};

/* ---- construction ---------------------------------------------------------- */

static dv_param *add_normal(dv_layer *l, const char *name, int ndim, const int *shape, float std) {
    dv_param *w = dv_layer_add_param(l, name, 1, DV_INIT_NORMAL, ndim, shape);
    w->std = std;
    return w;
}

static dv_status need_sequence(dv_layer *l, dv_config *cfg, dv_config_section *s, char *err) {
    if (l->in_ndim == 2) return DV_OK;
    return DV_CONFIG_ERROR(err, cfg, s, NULL,
                           "needs a sequence input (T, C) but gets %zu features in %d dims (set "
                           "[input] shape = T,C with sequence = true, or start with an "
                           "[embedding])",
                           l->in_elems, l->in_ndim);
}

/* heads (required, divides C) and the attention's four params. */
static dv_status attn_init(dv_layer *l, dv_config *cfg, dv_config_section *s, seq_priv *p,
                           float proj_std, char *err) {
    long heads;
    DV_TRY(dv_config_int(cfg, s, "heads", 0, 1, 1 << 16, &heads, err));
    if (!heads) return DV_CONFIG_ERROR(err, cfg, s, NULL, "missing key 'heads'");
    const int C = p->C;
    if (C % heads)
        return DV_CONFIG_ERROR(err, cfg, s, "heads", "%d features do not split into %ld heads", C,
                               heads);
    attn *a = &p->at;
    a->T = p->T;
    a->C = C;
    a->H = (int)heads;
    a->Dh = C / (int)heads;
    int wqkv[2] = {3 * C, C}, bqkv[1] = {3 * C}, wp[2] = {C, C}, bp[1] = {C};
    a->p = add_normal(l, "qkv_weight", 2, wqkv, 0.02f);
    dv_layer_add_param(l, "qkv_bias", 1, DV_INIT_ZERO, 1, bqkv);
    add_normal(l, "proj_weight", 2, wp, proj_std);
    dv_layer_add_param(l, "proj_bias", 1, DV_INIT_ZERO, 1, bp);
    return DV_OK;
}

static dv_status read_rate(dv_config *cfg, dv_config_section *s, seq_priv *p, char *err) {
    double rate;
    DV_TRY(dv_config_float(cfg, s, "dropout", 0, 0, 0.99, &rate, err));
    p->rate = (float)rate;
    return DV_OK;
}

static dv_status read_eps(dv_config *cfg, dv_config_section *s, seq_priv *p, char *err) {
    double eps;
    DV_TRY(dv_config_float(cfg, s, "eps", 1e-5, 1e-12, 1, &eps, err));
    p->eps = (float)eps;
    return DV_OK;
}

static dv_status emb_init(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m,
                          seq_priv *p, char *err) {
    static const char *const pos_names[] = {
        [POS_LEARNED] = "learned", [POS_SINUSOIDAL] = "sinusoidal", [POS_NONE] = "none", NULL};
    _Static_assert(DV_ARRAY_LEN(pos_names) == POS_COUNT + 1, "a name for every pos_kind");
    if (!m->tokens || l->index != 0)
        return DV_CONFIG_ERROR(err, cfg, s, NULL,
                               "an [embedding] reads token ids, so it must be the first layer of "
                               "a model with a token input ([input] tokens = T, vocab = V)");
    long dim;
    int pos;
    DV_TRY(dv_config_int(cfg, s, "dim", 0, 1, 1 << 20, &dim, err));
    DV_TRY(dv_config_enum(cfg, s, "positions", "learned", pos_names, &pos, err));
    DV_TRY(read_rate(cfg, s, p, err));
    if (!dim) return DV_CONFIG_ERROR(err, cfg, s, NULL, "missing key 'dim'");
    p->T = l->in_shape[0];
    p->C = (int)dim;
    p->V = m->vocab;
    p->pos = (pos_kind)pos;
    l->out_ndim = 2;
    l->out_shape[0] = p->T;
    l->out_shape[1] = p->C;
    int wshape[2] = {p->V, p->C}, pshape[2] = {p->T, p->C};
    add_normal(l, "weight", 2, wshape, 0.02f);
    if (p->pos == POS_LEARNED) add_normal(l, "position", 2, pshape, 0.02f);
    if (p->pos == POS_SINUSOIDAL) dv_layer_add_param(l, "sinusoid", 0, DV_INIT_ZERO, 2, pshape);
    l->ops = &emb_ops;
    return DV_OK;
}

static dv_status block_init(dv_layer *l, dv_config *cfg, dv_config_section *s, seq_priv *p,
                            char *err) {
    long hidden;
    DV_TRY(dv_config_int(cfg, s, "hidden", 4L * p->C, 1, 1 << 24, &hidden, err));
    DV_TRY(read_rate(cfg, s, p, err));
    DV_TRY(read_eps(cfg, s, p, err));
    p->hidden = (int)hidden;
    int blocks = 0;
    for (int i = 0; i < cfg->nsec; i++)
        blocks += !strcmp(cfg->sec[i].type, "transformer");
    const float res_std = 0.02f / sqrtf(2.0f * (float)(blocks ? blocks : 1));
    const int C = p->C;
    int c1[1] = {C}, wfc[2] = {p->hidden, C}, bfc[1] = {p->hidden}, wfc2[2] = {C, p->hidden};
    dv_layer_add_param(l, "ln1_gamma", 1, DV_INIT_ONE, 1, c1);
    dv_layer_add_param(l, "ln1_beta", 1, DV_INIT_ZERO, 1, c1);
    DV_TRY(attn_init(l, cfg, s, p, res_std, err));
    dv_layer_add_param(l, "ln2_gamma", 1, DV_INIT_ONE, 1, c1);
    dv_layer_add_param(l, "ln2_beta", 1, DV_INIT_ZERO, 1, c1);
    add_normal(l, "fc_weight", 2, wfc, 0.02f);
    dv_layer_add_param(l, "fc_bias", 1, DV_INIT_ZERO, 1, bfc);
    add_normal(l, "fc2_weight", 2, wfc2, res_std);
    dv_layer_add_param(l, "fc2_bias", 1, DV_INIT_ZERO, 1, c1);
    l->ops = &block_ops;
    return DV_OK;
}

dv_status dv_layer_seq_init(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m,
                            char *err) {
    seq_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    l->priv = p;
    l->out_ndim = l->in_ndim;
    memcpy(l->out_shape, l->in_shape, sizeof(l->out_shape));
    /* a (T, C) sequence, or T = 1 row of a (K) vector */
    p->T = l->in_ndim == 2 ? l->in_shape[0] : 1;
    p->C = l->in_shape[l->in_ndim - 1];
    const char *t = l->type;
    if (!strcmp(t, "embedding")) return emb_init(l, cfg, s, m, p, err);
    if (!strcmp(t, "gelu")) {
        l->ops = &gelu_ops;
        return DV_OK;
    }
    if (!strcmp(t, "layernorm")) {
        if (l->in_ndim > 2)
            return DV_CONFIG_ERROR(err, cfg, s, NULL,
                                   "normalizes the last dim of a (T, C) or (K) input, not a "
                                   "(C, H, W) image (put a [flatten] before it)");
        DV_TRY(read_eps(cfg, s, p, err));
        int c1[1] = {p->C};
        dv_layer_add_param(l, "gamma", 1, DV_INIT_ONE, 1, c1);
        dv_layer_add_param(l, "beta", 1, DV_INIT_ZERO, 1, c1);
        l->ops = &ln_ops;
        return DV_OK;
    }
    DV_TRY(need_sequence(l, cfg, s, err));
    if (!strcmp(t, "attention")) {
        DV_TRY(read_rate(cfg, s, p, err));
        DV_TRY(attn_init(l, cfg, s, p, 0.02f, err));
        l->ops = &attn_ops;
        return DV_OK;
    }
    return block_init(l, cfg, s, p, err);
}
