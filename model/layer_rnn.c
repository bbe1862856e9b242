/* layer_rnn.c — the recurrent layers [rnn], [lstm] and [gru]: a stack of
 * `layers` recurrent layers of `units` hidden units over a sequence input
 * (T, F), written with the backend's ops only (GEMMs, the cell ops,
 * transposes), so the same code runs on the CPU and on CUDA.
 *
 * Keys:
 *   units    = H          hidden units (required)
 *   layers   = 1..4       stacked layers; layer k > 0 reads the hidden
 *                         sequence of layer k - 1 (default 1)
 *   return   = all|last   all: the top layer's h at every step, (T, H);
 *                         last: its final h only, (H) (default all)
 *   stateful = false|true truncated BPTT across consecutive training
 *                         batches: a training forward with m->carry = 1
 *                         starts every stacked layer from the final h (and
 *                         c) the previous training forward left for the same
 *                         row, detached (no gradient flows into it); carry =
 *                         0 starts from zeros. Eval forwards start from zeros
 *                         and leave the carried state alone (default false)
 *
 * Cells (PyTorch's equations and layouts, so weights carry over):
 *   rnn:  h_t = tanh(x_t W_ih^T + h_{t-1} W_hh^T + b)
 *   lstm: gates i, f, g, o as in lstm_cell_forward
 *   gru:  r, z, n as in gru_cell_forward (b_hh sits inside r * (...), so
 *         it has two biases)
 * Params of stacked layer k (F_0 = F, F_k = H above), G = 1, 4, 3 gates:
 *   weight_ih_k (G*H, F_k), weight_hh_k (G*H, H), then bias_k (G*H) for
 *   rnn and lstm (PyTorch's b_ih + b_hh in one), or bias_ih_k (3H) and
 *   bias_hh_k (3H) for gru; all uniform(-1/sqrt(H), 1/sqrt(H)).
 *
 * Algorithm: x (B, T, F) is transposed to time-major (T, B, F), so every
 * step is a contiguous (B, .) block and the input projections of all steps
 * are one GEMM of T*B rows; each step then adds h_{t-1} W_hh^T with a GEMM
 * of B rows and runs the cell. Backward walks the steps in reverse with one
 * B-row GEMM per step for the gradient into h_{t-1}; the weight gradients
 * of all steps are one GEMM each at the end, from the saved h's and gate
 * gradients. Everything backward needs lives in scratch sized for
 * m->max_batch at setup; backward reads what the last forward saved, so it
 * must follow the training forward it differentiates.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layer-impl.h"

#define RNN_MAX_LAYERS 4

typedef enum cell_kind { CELL_RNN = 0, CELL_LSTM, CELL_GRU } cell_kind;

typedef struct rnn_priv {
    cell_kind cell;
    int G;          /* gate blocks per unit: 1, 4, 3 */
    int T, F, H, L; /* steps, input features, units, stacked layers */
    int last;       /* return = last */
    int stateful;
    int warm; /* the last forward started from the carried state */
    /* per stacked layer, time-major: slot 0 is the initial state and slot
     * t + 1 holds step t, (T + 1, B, H) each */
    float *hs[RNN_MAX_LAYERS];
    float *cs[RNN_MAX_LAYERS];    /* lstm */
    float *gates[RNN_MAX_LAYERS]; /* lstm: activated gates (T, B, 4H) */
    float *save[RNN_MAX_LAYERS];  /* gru: r, z, n, gh_n (T, B, 4H) */
    /* shared by the stacked layers, one at a time */
    float *xt;                /* the input, time-major (T, B, F) */
    float *work1;             /* gru: gi, then dgi; lstm: dgates (T, B, G*H) */
    float *work2;             /* gru: gh, then dgh (T, B, 3H) */
    float *dseq[2];           /* gradients w.r.t. a layer's output / input sequence,
                                 ping-pong (T, B, max(F, H)) */
    float *dstep;             /* lstm: the running dc; gru: dh_prev (B, H) */
    float *packed;            /* W_hh packed for the T steps (gemm_pack) */
    float *state_h, *state_c; /* carried state (L, max_batch, H), stateful */
} rnn_priv;

/* The params of stacked layer k. */
typedef struct cell_params {
    const dv_param *w_ih, *w_hh, *b, *b_hh; /* b_hh: gru only */
} cell_params;

static cell_params params_of(const dv_layer *l, const rnn_priv *p, int k) {
    int per = p->cell == CELL_GRU ? 4 : 3;
    const dv_param *q = &l->param[k * per];
    cell_params c = {&q[0], &q[1], &q[2], p->cell == CELL_GRU ? &q[3] : NULL};
    return c;
}

/* ---- forward ------------------------------------------------------------ */

/* Runs stacked layer k over xin (T, B, Fk) into p->hs[k]; slot 0 already
 * holds the initial state when p->warm. */
static void layer_forward(dv_layer *l, dv_model *m, int k, const float *xin, int Fk, int B) {
    rnn_priv *p = l->priv;
    const dv_backend *be = m->be;
    void *ctx = be->ctx;
    const int T = p->T, H = p->H, GH = p->G * H;
    const size_t bh = (size_t)B * H, bg = (size_t)B * GH;
    cell_params w = params_of(l, p, k);
    float *hs = p->hs[k];

    /* the input projections of every step at once */
    float *proj = p->cell == CELL_RNN ? hs + bh : p->cell == CELL_LSTM ? p->gates[k] : p->work1;
    be->gemm(ctx, 0, 1, T * B, GH, Fk, 1.0f, xin, w.w_ih->data, 0.0f, proj);
    be->bias_forward(ctx, proj, w.b->data, T * B, GH, 1);
    if (p->cell == CELL_GRU) { /* gh = b_hh for now; each step adds h_{t-1} W_hh^T */
        be->fill(ctx, p->work2, 0.0f, (size_t)T * bg);
        be->bias_forward(ctx, p->work2, w.b_hh->data, T * B, GH, 1);
    }

    /* W_hh is packed once and multiplied T times (gemm_packed) */
    if (T > 1 || p->warm) be->gemm_pack(ctx, 1, H, GH, w.w_hh->data, p->packed);
    for (int t = 0; t < T; t++) {
        const int has_prev = t > 0 || p->warm;
        const float *h_prev = has_prev ? hs + (size_t)t * bh : NULL;
        float *h = hs + (size_t)(t + 1) * bh;
        switch (p->cell) {
        case CELL_RNN:
            if (h_prev) be->gemm_packed(ctx, B, H, H, 1.0f, h_prev, p->packed, 1.0f, h);
            be->act_forward(ctx, DV_ACT_TANH, 0.0f, h, h, bh, H);
            break;
        case CELL_LSTM: {
            float *g = p->gates[k] + (size_t)t * bg;
            const float *c_prev = has_prev ? p->cs[k] + (size_t)t * bh : NULL;
            if (h_prev) be->gemm_packed(ctx, B, GH, H, 1.0f, h_prev, p->packed, 1.0f, g);
            be->lstm_cell_forward(ctx, B, H, g, c_prev, p->cs[k] + (size_t)(t + 1) * bh, h);
            break;
        }
        case CELL_GRU: {
            float *gh = p->work2 + (size_t)t * bg;
            if (h_prev) be->gemm_packed(ctx, B, GH, H, 1.0f, h_prev, p->packed, 1.0f, gh);
            be->gru_cell_forward(ctx, B, H, p->work1 + (size_t)t * bg, gh, h_prev, h,
                                 p->save[k] + (size_t)t * (size_t)B * 4 * H);
            break;
        }
        }
    }
}

static void rnn_forward(dv_layer *l, dv_model *m, const float *x, float *y, int B, int training) {
    rnn_priv *p = l->priv;
    const dv_backend *be = m->be;
    void *ctx = be->ctx;
    const int T = p->T, H = p->H;
    const size_t bh = (size_t)B * H, state = (size_t)m->max_batch * H;
    const int stateful = p->stateful && training;
    p->warm = stateful && m->carry;

    be->transpose(ctx, 1, B, T, p->F, x, p->xt);
    for (int k = 0; k < p->L; k++) {
        if (p->warm) {
            be->copy(ctx, p->hs[k], p->state_h + k * state, bh * sizeof(float));
            if (p->cell == CELL_LSTM)
                be->copy(ctx, p->cs[k], p->state_c + k * state, bh * sizeof(float));
        }
        const float *xin = k ? p->hs[k - 1] + bh : p->xt;
        layer_forward(l, m, k, xin, k ? H : p->F, B);
        if (stateful) {
            be->copy(ctx, p->state_h + k * state, p->hs[k] + (size_t)T * bh, bh * sizeof(float));
            if (p->cell == CELL_LSTM)
                be->copy(ctx, p->state_c + k * state, p->cs[k] + (size_t)T * bh,
                         bh * sizeof(float));
        }
    }
    const float *top = p->hs[p->L - 1];
    if (p->last)
        be->copy(ctx, y, top + (size_t)T * bh, bh * sizeof(float));
    else
        be->transpose(ctx, 1, T, B, H, top + bh, y);
}

/* ---- backward ----------------------------------------------------------- */

/* From dh (T, B, H), the gradient w.r.t. stacked layer k's outputs (every
 * step's h, not yet through the recurrence), accumulates the layer's param
 * grads and, if dxin is not NULL, writes the gradient w.r.t. its input
 * sequence xin (T, B, Fk). dh is used as scratch. */
static void layer_backward(dv_layer *l, dv_model *m, int k, const float *xin, int Fk, float *dh,
                           float *dxin, int B) {
    rnn_priv *p = l->priv;
    const dv_backend *be = m->be;
    void *ctx = be->ctx;
    const int T = p->T, H = p->H, GH = p->G * H;
    const size_t bh = (size_t)B * H, bg = (size_t)B * GH;
    cell_params w = params_of(l, p, k);
    const float *hs = p->hs[k];
    /* pre-activation gradients of every step: rnn in place of dh */
    float *dg = p->cell == CELL_RNN ? dh : p->work1;
    float *dgh = p->cell == CELL_GRU ? p->work2 : dg; /* the part that met W_hh */

    if (T > 1) be->gemm_pack(ctx, 0, GH, H, w.w_hh->data, p->packed);
    for (int t = T - 1; t >= 0; t--) {
        const int has_prev = t > 0 || p->warm;
        float *dh_t = dh + (size_t)t * bh;
        float *dh_prev = t > 0 ? dh_t - bh : NULL; /* the initial state is detached */
        switch (p->cell) {
        case CELL_RNN:
            be->act_backward(ctx, DV_ACT_TANH, 0.0f, hs + (size_t)(t + 1) * bh, dh_t, dh_t, bh, H);
            break;
        case CELL_LSTM: {
            const float *c_prev = has_prev ? p->cs[k] + (size_t)t * bh : NULL;
            be->lstm_cell_backward(
                ctx, B, H, p->gates[k] + (size_t)t * bg, c_prev, p->cs[k] + (size_t)(t + 1) * bh,
                dh_t, t < T - 1 ? p->dstep : NULL, dg + (size_t)t * bg, dh_prev ? p->dstep : NULL);
            break;
        }
        case CELL_GRU:
            be->gru_cell_backward(ctx, B, H, p->save[k] + (size_t)t * (size_t)B * 4 * H,
                                  has_prev ? hs + (size_t)t * bh : NULL, dh_t, dg + (size_t)t * bg,
                                  dgh + (size_t)t * bg, dh_prev ? p->dstep : NULL);
            if (dh_prev) be->axpy(ctx, 1.0f, p->dstep, dh_prev, bh);
            break;
        }
        if (dh_prev)
            be->gemm_packed(ctx, B, H, GH, 1.0f, dgh + (size_t)t * bg, p->packed, 1.0f, dh_prev);
    }

    /* every step's weight gradients at once; a cold start's step 0 saw
     * h_{-1} = 0, so it adds nothing to dW_hh */
    const int t0 = p->warm ? 0 : 1;
    if (T > t0)
        be->gemm(ctx, 1, 0, GH, H, (T - t0) * B, 1.0f, dgh + (size_t)t0 * bg, hs + (size_t)t0 * bh,
                 1.0f, w.w_hh->grad);
    be->gemm(ctx, 1, 0, GH, Fk, T * B, 1.0f, dg, xin, 1.0f, w.w_ih->grad);
    be->bias_backward(ctx, dg, w.b->grad, T * B, GH, 1);
    if (w.b_hh) be->bias_backward(ctx, dgh, w.b_hh->grad, T * B, GH, 1);
    if (dxin) be->gemm(ctx, 0, 0, T * B, Fk, GH, 1.0f, dg, w.w_ih->data, 0.0f, dxin);
}

static void rnn_backward(dv_layer *l, dv_model *m, const float *x, const float *y, const float *dy,
                         float *dx, int B) {
    (void)x;
    (void)y;
    rnn_priv *p = l->priv;
    const dv_backend *be = m->be;
    void *ctx = be->ctx;
    const int T = p->T, H = p->H;
    const size_t bh = (size_t)B * H;
    float *dh = p->dseq[0], *dnext = p->dseq[1];

    if (p->last) {
        be->fill(ctx, dh, 0.0f, (size_t)T * bh);
        be->copy(ctx, dh + (size_t)(T - 1) * bh, dy, bh * sizeof(float));
    } else {
        be->transpose(ctx, 1, B, T, H, dy, dh);
    }
    for (int k = p->L - 1; k >= 0; k--) {
        const float *xin = k ? p->hs[k - 1] + bh : p->xt;
        layer_backward(l, m, k, xin, k ? H : p->F, dh, k || dx ? dnext : NULL, B);
        float *t = dh;
        dh = dnext;
        dnext = t;
    }
    if (dx) be->transpose(ctx, 1, T, B, p->F, dh, dx);
}

/* ---- set-up ------------------------------------------------------------- */

static void rnn_free(dv_layer *l, dv_model *m) {
    rnn_priv *p = l->priv;
    if (!p) return;
    const dv_backend *be = m->be;
    for (int k = 0; k < RNN_MAX_LAYERS; k++) {
        be->free(be->ctx, p->hs[k]);
        be->free(be->ctx, p->cs[k]);
        be->free(be->ctx, p->gates[k]);
        be->free(be->ctx, p->save[k]);
    }
    float *shared[] = {p->xt,    p->work1,   p->work2,   p->dseq[0], p->dseq[1],
                       p->dstep, p->state_h, p->state_c, p->packed};
    for (size_t i = 0; i < sizeof(shared) / sizeof(shared[0]); i++)
        be->free(be->ctx, shared[i]);
    dv_layer_free_priv(l, m);
}

static float *scratch(dv_model *m, size_t n, int *bad) {
    float *q = m->be->alloc(m->be->ctx, (n ? n : 1) * sizeof(float));
    if (!q) *bad = 1;
    return q;
}

static dv_status rnn_setup(dv_layer *l, dv_model *m, char *err) {
    rnn_priv *p = l->priv;
    const size_t B = (size_t)m->max_batch, T = (size_t)p->T, H = (size_t)p->H;
    const size_t tb = T * B, maxf = (size_t)(p->F > p->H ? p->F : p->H);
    int bad = 0;
    for (int k = 0; k < p->L; k++) {
        p->hs[k] = scratch(m, (T + 1) * B * H, &bad);
        if (p->cell == CELL_LSTM) {
            p->cs[k] = scratch(m, (T + 1) * B * H, &bad);
            p->gates[k] = scratch(m, tb * 4 * H, &bad);
        }
        if (p->cell == CELL_GRU) p->save[k] = scratch(m, tb * 4 * H, &bad);
    }
    p->xt = scratch(m, tb * (size_t)p->F, &bad);
    if (p->cell != CELL_RNN) {
        p->work1 = scratch(m, tb * (size_t)p->G * H, &bad);
        p->dstep = scratch(m, B * H, &bad);
    }
    if (p->cell == CELL_GRU) p->work2 = scratch(m, tb * 3 * H, &bad);
    const int GH = p->G * p->H;
    size_t pf = m->be->gemm_pack_size(m->be->ctx, p->H, GH);
    size_t pb = m->be->gemm_pack_size(m->be->ctx, GH, p->H);
    p->packed = scratch(m, pf > pb ? pf : pb, &bad);
    p->dseq[0] = scratch(m, tb * maxf, &bad);
    p->dseq[1] = scratch(m, tb * maxf, &bad);
    if (p->stateful) {
        p->state_h = scratch(m, (size_t)p->L * B * H, &bad);
        if (p->cell == CELL_LSTM) p->state_c = scratch(m, (size_t)p->L * B * H, &bad);
    }
    if (bad) return DV_ERROR(err, "out of memory for the scratch of %s", l->name);
    return DV_OK;
}

/* A stream's carried state: for each stacked layer k, h_k (H) and, for an
 * LSTM, c_k (H). Only stateful layers carry any. */
static size_t rnn_state_floats(const dv_layer *l) {
    const rnn_priv *p = l->priv;
    return p->stateful ? (size_t)p->L * p->H * (p->cell == CELL_LSTM ? 2 : 1) : 0;
}

static int rnn_state_io(dv_layer *l, dv_model *m, int B, float *host, int save) {
    rnn_priv *p = l->priv;
    if (!p->stateful) return 0;
    const dv_backend *be = m->be;
    const size_t H = (size_t)p->H, per = rnn_state_floats(l), state = (size_t)m->max_batch * H;
    float *tmp = malloc((size_t)B * H * sizeof(float));
    if (!tmp) return -1;
    for (int k = 0; k < p->L; k++)
        for (int w = 0; w < (p->cell == CELL_LSTM ? 2 : 1); w++) {
            float *dev = (w ? p->state_c : p->state_h) + k * state;
            const size_t col = ((size_t)k * (p->cell == CELL_LSTM ? 2 : 1) + w) * H;
            if (save) be->to_host(be->ctx, tmp, dev, (size_t)B * H * sizeof(float));
            for (int b = 0; b < B; b++)
                for (size_t j = 0; j < H; j++) {
                    float *h = host + (size_t)b * per + col + j;
                    if (save)
                        *h = tmp[(size_t)b * H + j];
                    else
                        tmp[(size_t)b * H + j] = *h;
                }
            if (!save) be->to_device(be->ctx, dev, tmp, (size_t)B * H * sizeof(float));
        }
    free(tmp);
    return 0;
}

/* Per stacked layer k and step: x_t W_ih^T and h W_hh^T, 2 (F_k + H) G H. */
static double rnn_flops(const dv_layer *l) {
    const rnn_priv *p = l->priv;
    double f = 0;
    for (int k = 0; k < p->L; k++)
        f += 2.0 * p->T * (double)((k ? p->H : p->F) + p->H) * p->G * p->H;
    return f;
}

static const dv_layer_ops rnn_ops = {.flops = rnn_flops,
                                     .forward = rnn_forward,
                                     .backward = rnn_backward,
                                     .free = rnn_free,
                                     .setup = rnn_setup,
                                     .state_floats = rnn_state_floats,
                                     .state_io = rnn_state_io};

dv_status dv_layer_rnn_init(dv_layer *l, dv_config *cfg, dv_config_section *s, const dv_model *m,
                            char *err) {
    (void)m;
    static const char *const returns[] = {"all", "last", NULL};
    static const char *const bools[] = {"false", "true", NULL};
    if (l->in_ndim != 2)
        return DV_CONFIG_ERROR(err, cfg, s, NULL,
                               "needs a sequence input (T, F) but gets %zu features per sample: "
                               "set sequence = true in [input] or put it after an [embedding]",
                               l->in_elems);
    rnn_priv *p = calloc(1, sizeof(*p));
    if (!p) return DV_ERROR(err, "out of memory");
    l->priv = p;
    l->ops = &rnn_ops;
    p->cell = !strcmp(l->type, "lstm") ? CELL_LSTM : !strcmp(l->type, "gru") ? CELL_GRU : CELL_RNN;
    p->G = p->cell == CELL_LSTM ? 4 : p->cell == CELL_GRU ? 3 : 1;
    p->T = l->in_shape[0];
    p->F = l->in_shape[1];

    long units, layers;
    int ret, stateful;
    DV_TRY(dv_config_int(cfg, s, "units", 0, 1, 1 << 20, &units, err));
    DV_TRY(dv_config_int(cfg, s, "layers", 1, 1, RNN_MAX_LAYERS, &layers, err));
    DV_TRY(dv_config_enum(cfg, s, "return", "all", returns, &ret, err));
    DV_TRY(dv_config_enum(cfg, s, "stateful", "false", bools, &stateful, err));
    if (!units) return DV_CONFIG_ERROR(err, cfg, s, NULL, "missing key 'units'");
    p->H = (int)units;
    p->L = (int)layers;
    p->last = ret == 1;
    p->stateful = stateful;
    l->stateful = stateful; /* the trainer feeds it streams (DV_ORDER_STREAMS) */

    if (p->last) {
        l->out_ndim = 1;
        l->out_shape[0] = p->H;
    } else {
        l->out_ndim = 2;
        l->out_shape[0] = p->T;
        l->out_shape[1] = p->H;
    }
    const int GH = p->G * p->H;
    const float std = 1.0f / sqrtf((float)p->H);
    for (int k = 0; k < p->L; k++) {
        const int Fk = k ? p->H : p->F;
        char name[DV_NAME_LEN];
        int wih[2] = {GH, Fk}, whh[2] = {GH, p->H}, b[1] = {GH};
        snprintf(name, sizeof(name), "weight_ih_%d", k);
        dv_param *q = dv_layer_add_param(l, name, 1, DV_INIT_UNIFORM, 2, wih);
        q->std = std;
        q->fan_in = Fk;
        q->fan_out = GH;
        snprintf(name, sizeof(name), "weight_hh_%d", k);
        q = dv_layer_add_param(l, name, 1, DV_INIT_UNIFORM, 2, whh);
        q->std = std;
        q->fan_in = p->H;
        q->fan_out = GH;
        static const char *const gru_biases[2] = {"bias_ih", "bias_hh"};
        for (int j = 0; j < (p->cell == CELL_GRU ? 2 : 1); j++) {
            snprintf(name, sizeof(name), "%s_%d", p->cell == CELL_GRU ? gru_biases[j] : "bias", k);
            q = dv_layer_add_param(l, name, 1, DV_INIT_UNIFORM, 1, b);
            q->std = std;
        }
    }
    return DV_OK;
}
