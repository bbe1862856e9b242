/* ops_cpu.c — the CPU backend's layer ops, forward and backward: bias,
 * activations, convolution, pooling, upsampling, dropout, batch norm, the
 * losses, the optimizer step, sumsq and axpy (GEMM is gemm_packed_cpu.c's,
 * memory, fill and scale core_cpu.c's, the sequence ops seq_cpu.c's and
 * rnn_cpu.c's). These loops are also the reference the CUDA ops are tested
 * against, so they favour plain, obviously-correct code; the hot ones are
 * written so GCC vectorizes them (restrict pointers, no branches in inner
 * loops, several partial sums in reductions) and carry DV_HOT (see
 * cpu-impl.h).
 *
 * Assumptions: every pointer is host memory; sizes fit in int where the
 * interface says int; ops never allocate (conv2d gets its column buffer from
 * the caller) and are single-threaded apart from OpenBLAS. An activation,
 * pooling mode or optimizer kind outside its enum computes nothing: the op
 * records it in the ctx (DV_BAD_ENUM) for check.
 */
#include "cpu-impl.h"
#include "kernels-impl.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#ifdef DV_HAVE_X86_SIMD
#include <immintrin.h>
#endif

/* ---- small helpers ------------------------------------------------------ */

/* Sum with 16 partial sums: vectorizes without -ffast-math, and is more
 * accurate than one running float sum. */
static inline float sum_f(const float *restrict x, size_t n) {
    float acc[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            acc[j] += x[i + j];
    float s = 0.0f;
    for (; i < n; i++)
        s += x[i];
    for (int j = 0; j < 16; j++)
        s += acc[j];
    return s;
}

static inline float dot_f(const float *restrict x, const float *restrict y, size_t n) {
    float acc[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            acc[j] += x[i + j] * y[i + j];
    float s = 0.0f;
    for (; i < n; i++)
        s += x[i] * y[i];
    for (int j = 0; j < 16; j++)
        s += acc[j];
    return s;
}

/* First index of the largest value (NaN never wins). */
static int argmax_f(const float *x, int n) {
    int best = 0;
    for (int k = 1; k < n; k++)
        if (x[k] > x[best]) best = k;
    return best;
}

DV_HOT void dv_cpu_axpy(void *ctx, float a, const float *restrict x, float *restrict y, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

/* Double partial sums of float squares: a 3M-parameter gradient keeps its
 * norm to ~1e-12 relative, and the conversion still vectorizes. */
DV_HOT double dv_cpu_sumsq(void *ctx, const float *restrict x, size_t n) {
    (void)ctx;
    double acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += (double)x[i + j] * (double)x[i + j];
    double s = 0.0;
    for (; i < n; i++)
        s += (double)x[i] * (double)x[i];
    for (int j = 0; j < 8; j++)
        s += acc[j];
    return s;
}

uint64_t dv_cpu_fingerprint(void *ctx, const float *restrict x, size_t n) {
    (void)ctx;
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], sizeof bits);
        h += dv_fingerprint_term(bits, i);
    }
    return h;
}

/* ---- bias ------------------------------------------------------------- */

DV_HOT void dv_cpu_bias_forward(void *ctx, float *restrict y, const float *restrict bias, int B,
                                int C, int S) {
    (void)ctx;
    for (int b = 0; b < B; b++) {
        float *yb = y + (size_t)b * C * S;
        if (S == 1) {
            for (int c = 0; c < C; c++)
                yb[c] += bias[c];
        } else {
            for (int c = 0; c < C; c++) {
                float v = bias[c];
                float *r = yb + (size_t)c * S;
                for (int s = 0; s < S; s++)
                    r[s] += v;
            }
        }
    }
}

DV_HOT void dv_cpu_bias_backward(void *ctx, const float *restrict dy, float *restrict dbias, int B,
                                 int C, int S) {
    (void)ctx;
    for (int b = 0; b < B; b++) {
        const float *d = dy + (size_t)b * C * S;
        if (S == 1) {
            for (int c = 0; c < C; c++)
                dbias[c] += d[c];
        } else {
            for (int c = 0; c < C; c++)
                dbias[c] += sum_f(d + (size_t)c * S, (size_t)S);
        }
    }
}

/* ---- activations ------------------------------------------------------ */

/* y may alias x, so no restrict here; the loops are still simple enough. */
static void softmax_rows(const float *x, float *y, size_t rows, int cols) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float m = xr[0];
        for (int k = 1; k < cols; k++)
            m = xr[k] > m ? xr[k] : m;
        float s = 0.0f;
        for (int k = 0; k < cols; k++) {
            yr[k] = expf(xr[k] - m);
            s += yr[k];
        }
        float inv = 1.0f / s;
        for (int k = 0; k < cols; k++)
            yr[k] *= inv;
    }
}

DV_HOT void dv_cpu_act_forward(void *ctx, dv_act act, float alpha, const float *x, float *y,
                               size_t n, int cols) {
    dv_cpu_ctx *cx = ctx;
    if (DV_BAD_ENUM(cx->err, dv_act, act, DV_ACT_COUNT)) return;
    switch (act) {
    case DV_ACT_LINEAR:
        if (x != y) memmove(y, x, n * sizeof *y);
        break;
    case DV_ACT_RELU:
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case DV_ACT_LEAKY_RELU:
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : alpha * x[i];
        break;
    case DV_ACT_SIGMOID:
        for (size_t i = 0; i < n; i++)
            y[i] = dv_fast_sigmoidf(x[i]);
        break;
    case DV_ACT_TANH:
        for (size_t i = 0; i < n; i++)
            y[i] = dv_fast_tanhf(x[i]);
        break;
    case DV_ACT_SOFTMAX:
        if (cols > 0) softmax_rows(x, y, n / (size_t)cols, cols);
        break;
    case DV_ACT_COUNT: /* refused above */
        break;
    }
}

DV_HOT void dv_cpu_act_backward(void *ctx, dv_act act, float alpha, const float *y, const float *dy,
                                float *dx, size_t n, int cols) {
    dv_cpu_ctx *cx = ctx;
    if (DV_BAD_ENUM(cx->err, dv_act, act, DV_ACT_COUNT)) return;
    switch (act) {
    case DV_ACT_LINEAR:
        if (dx != dy) memmove(dx, dy, n * sizeof *dx);
        break;
    case DV_ACT_RELU:
        for (size_t i = 0; i < n; i++)
            dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
        break;
    case DV_ACT_LEAKY_RELU: /* y > 0 exactly where x > 0, for alpha >= 0 */
        for (size_t i = 0; i < n; i++)
            dx[i] = y[i] > 0.0f ? dy[i] : alpha * dy[i];
        break;
    case DV_ACT_SIGMOID:
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * y[i] * (1.0f - y[i]);
        break;
    case DV_ACT_TANH:
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * (1.0f - y[i] * y[i]);
        break;
    case DV_ACT_SOFTMAX:
        if (cols <= 0) break;
        for (size_t r = 0; r < n / (size_t)cols; r++) {
            const float *yr = y + r * cols, *dr = dy + r * cols;
            float *xr = dx + r * cols;
            float s = dot_f(dr, yr, (size_t)cols); /* read before dx overwrites dy */
            for (int k = 0; k < cols; k++)
                xr[k] = yr[k] * (dr[k] - s);
        }
        break;
    case DV_ACT_COUNT: /* refused above */
        break;
    }
}

/* ---- convolution ------------------------------------------------------ */

/* The outputs ow whose input column ow*stride - pad + k lies in [0, W):
 * [*lo, *hi). */
static void valid_range(int W, int OW, int stride, int pad, int k, int *lo, int *hi) {
    int first = pad - k; /* smallest ow*stride that lands inside */
    int l = first <= 0 ? 0 : (first + stride - 1) / stride;
    int last = W - 1 + pad - k; /* largest ow*stride that lands inside */
    int h = last < 0 ? 0 : last / stride + 1;
    if (h > OW) h = OW;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* Stride 1 with OW == W (a "same" convolution, the common case): a whole
 * (c, kh, kw) row of col is the input plane shifted by a constant offset,
 * off = (kh - pad) * W + (kw - pad), except in the columns whose input lies
 * in the padding, where the shift wraps into a neighbouring image row. So
 * one long copy (or add) replaces OH short ones, and only those columns are
 * fixed up. */
static int conv_is_shift(const dv_conv2d_geom *g) {
    return g->stride == 1 && g->OW == g->W;
}

/* For a shift row: the span [*a, *b) of col indices to copy, which covers
 * every real row (ih in [0, H)) and never reads outside the plane. */
static void shift_span(const dv_conv2d_geom *g, int kh, int kw, int *a, int *b, int *off) {
    const int W = g->W, OW = g->OW, p = g->pad;
    int oh0 = p - kh, oh1 = g->H + p - kh; /* rows with ih in [0, H) */
    oh0 = oh0 < 0 ? 0 : oh0;
    oh1 = oh1 > g->OH ? g->OH : oh1;
    int o = (kh - p) * W + (kw - p);
    int lo = oh0 * OW, hi = oh1 * OW;
    if (lo < -o) lo = -o;
    if (hi > g->H * W - o) hi = g->H * W - o;
    if (hi < lo) hi = lo;
    *a = lo;
    *b = hi;
    *off = o;
}

/* x (C, H, W) of one sample -> col (C*KH*KW, OH*OW). */
DV_HOT static void im2col(const dv_conv2d_geom *g, const float *restrict x, float *restrict col) {
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW, s = g->stride, p = g->pad;
    const int S = OH * OW, shift = conv_is_shift(g);
    for (int c = 0; c < g->C; c++) {
        const float *xc = x + (size_t)c * H * W;
        for (int kh = 0; kh < g->KH; kh++) {
            for (int kw = 0; kw < g->KW; kw++) {
                float *row = col + ((size_t)(c * g->KH + kh) * g->KW + kw) * S;
                int lo, hi;
                valid_range(W, OW, s, p, kw, &lo, &hi);
                if (shift) {
                    int a, b, off;
                    shift_span(g, kh, kw, &a, &b, &off);
                    for (int k = 0; k < a; k++)
                        row[k] = 0.0f;
                    for (int k = a; k < b; k++)
                        row[k] = xc[k + off];
                    for (int k = b; k < S; k++)
                        row[k] = 0.0f;
                    if (lo > 0 || hi < OW) /* clear the columns that wrapped */
                        for (int oh = 0; oh < OH; oh++) {
                            float *r = row + (size_t)oh * OW;
                            for (int ow = 0; ow < lo; ow++)
                                r[ow] = 0.0f;
                            for (int ow = hi; ow < OW; ow++)
                                r[ow] = 0.0f;
                        }
                    continue;
                }
                for (int oh = 0; oh < OH; oh++) {
                    float *r = row + (size_t)oh * OW;
                    int ih = oh * s - p + kh;
                    if (ih < 0 || ih >= H || lo >= hi) {
                        for (int ow = 0; ow < OW; ow++)
                            r[ow] = 0.0f;
                        continue;
                    }
                    const float *src = xc + (size_t)ih * W - p + kw;
                    for (int ow = 0; ow < lo; ow++)
                        r[ow] = 0.0f;
                    if (s == 1) {
                        for (int ow = lo; ow < hi; ow++)
                            r[ow] = src[ow];
                    } else {
                        for (int ow = lo; ow < hi; ow++)
                            r[ow] = src[ow * s];
                    }
                    for (int ow = hi; ow < OW; ow++)
                        r[ow] = 0.0f;
                }
            }
        }
    }
}

/* col (C*KH*KW, OH*OW) -> dx (C, H, W) of one sample, adding; the caller
 * zeroes dx. col is scratch: the shift path zeroes its padding columns so
 * that one long add can run over them harmlessly. */
DV_HOT static void col2im(const dv_conv2d_geom *g, float *restrict col, float *restrict dx) {
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW, s = g->stride, p = g->pad;
    const int S = OH * OW, shift = conv_is_shift(g);
    for (int c = 0; c < g->C; c++) {
        float *dc = dx + (size_t)c * H * W;
        for (int kh = 0; kh < g->KH; kh++) {
            for (int kw = 0; kw < g->KW; kw++) {
                float *row = col + ((size_t)(c * g->KH + kh) * g->KW + kw) * S;
                int lo, hi;
                valid_range(W, OW, s, p, kw, &lo, &hi);
                if (shift) {
                    int a, b, off;
                    shift_span(g, kh, kw, &a, &b, &off);
                    if (lo > 0 || hi < OW)
                        for (int oh = 0; oh < OH; oh++) {
                            float *r = row + (size_t)oh * OW;
                            for (int ow = 0; ow < lo; ow++)
                                r[ow] = 0.0f;
                            for (int ow = hi; ow < OW; ow++)
                                r[ow] = 0.0f;
                        }
                    for (int k = a; k < b; k++)
                        dc[k + off] += row[k];
                    continue;
                }
                for (int oh = 0; oh < OH; oh++) {
                    int ih = oh * s - p + kh;
                    if (ih < 0 || ih >= H) continue;
                    const float *r = row + (size_t)oh * OW;
                    float *dst = dc + (size_t)ih * W - p + kw;
                    if (s == 1) {
                        for (int ow = lo; ow < hi; ow++)
                            dst[ow] += r[ow];
                    } else {
                        for (int ow = lo; ow < hi; ow++)
                            dst[ow * s] += r[ow];
                    }
                }
            }
        }
    }
}

/* ---- Winograd F(m x m, 5 x 5) for stride-1 5x5 convolutions ------------ */

/* A 5x5 stride-1 convolution with enough channels runs as Winograd
 * F(WG_M x WG_M, 5 x 5) (Lavin & Gray): each WG_A x WG_A input tile is
 * transformed (V = B^T d B), the filters too (U = G g G^T), the WG_A^2
 * element-wise products summed over channels become WG_A^2 GEMMs
 * (tiles x Cin) x (Cin x Cout), and each product tile goes back through
 * A^T M A to WG_M x WG_M outputs. F(4x4, 5x5) does 64 multiplies per 16
 * outputs instead of 400 (the transforms cost a little on top). The same
 * routine computes dx as the "full" convolution of dy with the flipped,
 * transposed filters, and dw comes from the same tiles (wg_conv_dw).
 * Points 0, +-1, +-2, +-1/2 and infinity. The transforms scale terms by up
 * to ~10 before they cancel, so results differ from the column path by
 * ~1e-5 of the output's scale (not 1e-6); everything runs in a fixed
 * order, so they are the same run to run. */
#define WG_R  5
#define WG_M  4
#define WG_A  (WG_M + WG_R - 1)
#define WG_A2 (WG_A * WG_A)
#define WG_L  16 /* channels per vector */
/* samples per GEMM batch (bounded workspace) */
#define WG_GROUP 4

typedef struct wg_mats {
    float AT[WG_M][WG_A], G[WG_A][WG_R], BT[WG_A][WG_A];
} wg_mats;

/* Toom-Cook with the points above: for finite points p_j,
 * A^T[i][j] = p_j^i, G[j][k] = p_j^k / prod_{l != j} (p_j - p_l),
 * B^T[j][.] = the coefficients of prod_{l != j} (x - p_l); the point at
 * infinity adds A^T[m-1][last] = 1, G[last][r-1] = 1 and B^T[last][.] = the
 * coefficients of prod_l (x - p_l). Written out as constants (exact
 * hexadecimal floats of those values computed in double, rounded once). */
static const wg_mats WG = {
    .AT = {{0x1p+0, 0x1p+0, 0x1p+0, 0x1p+0, 0x1p+0, 0x1p+0, 0x1p+0, 0},
           {0, 0x1p+0, -0x1p+0, 0x1p+1, -0x1p+1, 0x1p-1, -0x1p-1, 0},
           {0, 0x1p+0, 0x1p+0, 0x1p+2, 0x1p+2, 0x1p-2, 0x1p-2, 0},
           {0, 0x1p+0, -0x1p+0, 0x1p+3, -0x1p+3, 0x1p-3, -0x1p-3, 0x1p+0}},
    .G = {{-0x1p+0, 0, 0, 0, 0},
          {-0x1.c71c72p-3, -0x1.c71c72p-3, -0x1.c71c72p-3, -0x1.c71c72p-3, -0x1.c71c72p-3},
          {-0x1.c71c72p-3, 0x1.c71c72p-3, -0x1.c71c72p-3, 0x1.c71c72p-3, -0x1.c71c72p-3},
          {0x1.6c16c2p-7, 0x1.6c16c2p-6, 0x1.6c16c2p-5, 0x1.6c16c2p-4, 0x1.6c16c2p-3},
          {0x1.6c16c2p-7, -0x1.6c16c2p-6, 0x1.6c16c2p-5, -0x1.6c16c2p-4, 0x1.6c16c2p-3},
          {0x1.6c16c2p-1, 0x1.6c16c2p-2, 0x1.6c16c2p-3, 0x1.6c16c2p-4, 0x1.6c16c2p-5},
          {0x1.6c16c2p-1, -0x1.6c16c2p-2, 0x1.6c16c2p-3, -0x1.6c16c2p-4, 0x1.6c16c2p-5},
          {0, 0, 0, 0, 0x1p+0}},
    .BT = {{-0x1p+0, 0, 0x1.5p+2, 0, -0x1.5p+2, 0, 0x1p+0, 0},
           {0, 0x1p+0, 0x1p+0, -0x1.1p+2, -0x1.1p+2, 0x1p+0, 0x1p+0, 0},
           {0, -0x1p+0, 0x1p+0, 0x1.1p+2, -0x1.1p+2, -0x1p+0, 0x1p+0, 0},
           {0, 0x1p-1, 0x1p-2, -0x1.4p+1, -0x1.4p+0, 0x1p+1, 0x1p+0, 0},
           {0, -0x1p-1, 0x1p-2, 0x1.4p+1, -0x1.4p+0, -0x1p+1, 0x1p+0, 0},
           {0, 0x1p+1, 0x1p+2, -0x1.4p+1, -0x1.4p+2, 0x1p-1, 0x1p+0, 0},
           {0, -0x1p+1, 0x1p+2, 0x1.4p+1, -0x1.4p+2, -0x1p-1, 0x1p+0, 0},
           {0, -0x1p+0, 0, 0x1.5p+2, 0, -0x1.5p+2, 0, 0x1p+0}},
};

/* Worth it (and valid): 5x5, stride 1, and enough channels both ways that
 * the transforms are cheap next to the GEMMs. */
static int conv_is_winograd(const dv_conv2d_geom *g) {
    return g->KH == WG_R && g->KW == WG_R && g->stride == 1 && g->pad <= WG_R - 1 && g->C >= 8 &&
           g->F >= 8;
}

/* Sizes for an output (OH, OW). Channels are padded to whole vectors
 * (WG_L lanes): the transforms run on WG_L channels at once, so the tiles
 * are stored channel-last and every load and store is one whole vector. */
typedef struct wg_plan {
    int Cin, Cout, H, W, pad, OH, OW;
    int Cinp, Coutp; /* rounded up to WG_L */
    int TH, TW, T;   /* tiles per plane */
    int PH, PW;      /* zero-padded input plane */
    int group;       /* samples per batch of GEMMs */
} wg_plan;

static void wg_plan_init(wg_plan *p, int B, int Cin, int Cout, int H, int W, int pad, int OH,
                         int OW) {
    p->Cin = Cin, p->Cout = Cout, p->H = H, p->W = W, p->pad = pad, p->OH = OH, p->OW = OW;
    p->Cinp = (Cin + WG_L - 1) / WG_L * WG_L, p->Coutp = (Cout + WG_L - 1) / WG_L * WG_L;
    p->TH = (OH + WG_M - 1) / WG_M, p->TW = (OW + WG_M - 1) / WG_M, p->T = p->TH * p->TW;
    p->PH = p->TH * WG_M + WG_R - 1, p->PW = p->TW * WG_M + WG_R - 1;
    p->group = B < WG_GROUP ? B : WG_GROUP;
    if (p->group < 1) p->group = 1;
}

/* Floats: U (or dw's sums S), V, M (or dw's Q), one padded input sample,
 * a padded bias, one sample's dy tiles (dw); +16 for alignment. */
static size_t wg_work(const wg_plan *p) {
    size_t N = (size_t)p->group * p->T;
    return (size_t)WG_A2 * p->Cinp * p->Coutp + (size_t)WG_A2 * N * (p->Cinp + p->Coutp) +
           (size_t)p->PH * p->PW * p->Cinp + p->Coutp + (size_t)p->T * WG_M * WG_M * p->Coutp + 16;
}

/* WG_L lanes (channels): GCC's vector extension, lowered to whatever the
 * clone's ISA has (one zmm on AVX-512). */
typedef float wg_vec __attribute__((vector_size(WG_L * sizeof(float))));

/* v = the WG_L floats at p (a macro: a function returning the vector would
 * change the ABI between the clones) */
#define WG_LOAD(v, p) memcpy(&(v), (p), sizeof(wg_vec))

/* U[a] (Cinp, Coutp) = (G g G^T)[a] for the filter g of (o, i): w[o][i] as
 * is (flip = 0, w is (Cout, Cin, 5, 5)), or w[i][o] rotated 180 degrees
 * (flip = 1, w is (Cin, Cout, 5, 5)): the dx convolution. Padding: 0. */
DV_HOT static void wg_filters(const wg_plan *p, const float *restrict w, int flip,
                              float *restrict U) {
    const size_t IO = (size_t)p->Cinp * p->Coutp;
    memset(U, 0, WG_A2 * IO * sizeof *U);
    for (int o = 0; o < p->Cout; o++)
        for (int i = 0; i < p->Cin; i++) {
            float g[WG_R][WG_R], t[WG_A][WG_R];
            const float *src = flip ? w + ((size_t)i * p->Cout + o) * WG_R * WG_R
                                    : w + ((size_t)o * p->Cin + i) * WG_R * WG_R;
            for (int a = 0; a < WG_R; a++)
                for (int b = 0; b < WG_R; b++)
                    g[a][b] =
                        flip ? src[(WG_R - 1 - a) * WG_R + (WG_R - 1 - b)] : src[a * WG_R + b];
            for (int a = 0; a < WG_A; a++)
                for (int b = 0; b < WG_R; b++) {
                    float s = 0.0f;
                    for (int k = 0; k < WG_R; k++)
                        s += WG.G[a][k] * g[k][b];
                    t[a][b] = s;
                }
            float *dst = U + (size_t)i * p->Coutp + o;
            for (int a = 0; a < WG_A; a++)
                for (int b = 0; b < WG_A; b++) {
                    float s = 0.0f;
                    for (int k = 0; k < WG_R; k++)
                        s += t[a][k] * WG.G[b][k];
                    dst[(size_t)(a * WG_A + b) * IO] = s;
                }
        }
}

/* The tile transforms of the input and of dy, WG_L channels at a time:
 * out = L t L^T, with t a K x K tile of channel vectors (element (k, j) at
 * tile + (k * rs + j) * Cp) and L a WG_A x K matrix read as
 * L[a][k] = m[a * sa + k * sk] (B^T for inputs; A, i.e. A^T read
 * transposed, for dy). Element (a, b) of the result goes to
 * dst + (a * WG_A + b) * ld. Always inlined with constant matrices, so the
 * loops unroll and the zero coefficients drop out at compile time. */
static inline __attribute__((always_inline)) void wg_sandwich(const float *m, int sa, int sk, int K,
                                                              const float *restrict tile, size_t rs,
                                                              size_t Cp, float *restrict dst,
                                                              size_t ld) {
    wg_vec u[WG_A][WG_A];
    for (int a = 0; a < WG_A; a++)
        for (int j = 0; j < K; j++)
            u[a][j] = (wg_vec){0};
    for (int k = 0; k < K; k++)
        for (int j = 0; j < K; j++) {
            wg_vec d;
            WG_LOAD(d, tile + ((size_t)k * rs + j) * Cp);
            for (int a = 0; a < WG_A; a++) {
                float c = m[a * sa + k * sk];
                if (c != 0.0f) u[a][j] += c * d;
            }
        }
    for (int a = 0; a < WG_A; a++)
        for (int b = 0; b < WG_A; b++) {
            wg_vec v = {0};
            for (int j = 0; j < K; j++) {
                float c = m[b * sa + j * sk];
                if (c != 0.0f) v += c * u[a][j];
            }
            memcpy(dst + (size_t)(a * WG_A + b) * ld, &v, sizeof v);
        }
}

/* One sample x (Cin, H, W) -> V[a] rows col0 .. col0 + T - 1, each row
 * Cinp channels; ldv = the stride between the WG_A2 matrices. P is scratch
 * for the zero-padded, channel-last sample. */
DV_HOT static void wg_input(const wg_plan *p, const float *restrict x, float *restrict P,
                            float *restrict V, size_t ldv) {
    const int PW = p->PW, Cp = p->Cinp;
    memset(P, 0, (size_t)p->PH * PW * Cp * sizeof *P);
    for (int c = 0; c < p->Cin; c++)
        for (int h = 0; h < p->H; h++) {
            const float *src = x + ((size_t)c * p->H + h) * p->W;
            float *dst = P + ((size_t)(h + p->pad) * PW + p->pad) * Cp + c;
            for (int w = 0; w < p->W; w++)
                dst[(size_t)w * Cp] = src[w];
        }
    for (int t = 0; t < p->T; t++) {
        const float *tile = P + ((size_t)(t / p->TW) * WG_M * PW + (t % p->TW) * WG_M) * Cp;
        for (int c0 = 0; c0 < Cp; c0 += WG_L)
            wg_sandwich(&WG.BT[0][0], WG_A, 1, WG_A, tile + c0, PW, Cp, V + (size_t)t * Cp + c0,
                        ldv);
    }
}

/* Products M[a] rows col0 .. col0 + T - 1 (Coutp channels each) -> one
 * sample y (Cout, OH, OW), + bias (Coutp, padded). */
DV_HOT static void wg_output(const wg_plan *p, const float *restrict M, size_t ldm,
                             const float *restrict bias, float *restrict y) {
    const int OH = p->OH, OW = p->OW, Cp = p->Coutp;
    for (int t = 0; t < p->T; t++) {
        const int oh0 = (t / p->TW) * WG_M, ow0 = (t % p->TW) * WG_M;
        const int ni = OH - oh0 < WG_M ? OH - oh0 : WG_M, nj = OW - ow0 < WG_M ? OW - ow0 : WG_M;
        for (int o0 = 0; o0 < Cp; o0 += WG_L) {
            wg_vec u[WG_M][WG_A];
            float out[WG_M][WG_M][WG_L] __attribute__((aligned(64)));
            const float *src = M + (size_t)t * Cp + o0;
            /* u = A^T M */
            for (int i = 0; i < WG_M; i++)
                for (int b = 0; b < WG_A; b++)
                    u[i][b] = (wg_vec){0};
            for (int a = 0; a < WG_A; a++)
                for (int b = 0; b < WG_A; b++) {
                    wg_vec mv;
                    WG_LOAD(mv, src + (size_t)(a * WG_A + b) * ldm);
                    for (int i = 0; i < WG_M; i++) {
                        float c = WG.AT[i][a];
                        if (c != 0.0f) u[i][b] += c * mv;
                    }
                }
            /* out = u A + bias */
            wg_vec bv;
            WG_LOAD(bv, bias + o0);
            for (int i = 0; i < WG_M; i++)
                for (int j = 0; j < WG_M; j++) {
                    wg_vec s = bv;
                    for (int k = 0; k < WG_A; k++) {
                        float c = WG.AT[j][k];
                        if (c != 0.0f) s += c * u[i][k];
                    }
                    memcpy(out[i][j], &s, sizeof s);
                }
            const int nl = p->Cout - o0 < WG_L ? p->Cout - o0 : WG_L;
            for (int l = 0; l < nl; l++) {
                float *yo = y + ((size_t)(o0 + l) * OH + oh0) * OW + ow0;
                for (int i = 0; i < ni; i++)
                    for (int j = 0; j < nj; j++)
                        yo[(size_t)i * OW + j] = out[i][j][l];
            }
        }
    }
}

/* y (B, Cout, OH, OW) = conv(x (B, Cin, H, W), filters) + bias, stride 1. */
static void wg_conv(const wg_plan *p, int B, const float *x, const float *w, int flip,
                    const float *bias, float *y, float *work) {
    const int Ci = p->Cinp, Co = p->Coutp;
    const size_t xs = (size_t)p->Cin * p->H * p->W, ys = (size_t)p->Cout * p->OH * p->OW;
    const size_t Nmax = (size_t)p->group * p->T;
    /* 64-byte aligned pieces: every size below is a multiple of WG_L */
    float *U = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    float *V = U + (size_t)WG_A2 * Ci * Co;
    float *M = V + (size_t)WG_A2 * Nmax * Ci;
    float *P = M + (size_t)WG_A2 * Nmax * Co;
    float *bp = P + (size_t)p->PH * p->PW * Ci;
    for (int o = 0; o < Co; o++)
        bp[o] = bias && o < p->Cout ? bias[o] : 0.0f;
    wg_filters(p, w, flip, U);
    for (int n0 = 0; n0 < B; n0 += p->group) {
        const int gb = B - n0 < p->group ? B - n0 : p->group;
        const size_t N = (size_t)gb * p->T;
        /* V[a] is (N, Ci), M[a] is (N, Co) */
        for (int n = 0; n < gb; n++)
            wg_input(p, x + (n0 + n) * xs, P, V + (size_t)n * p->T * Ci, N * Ci);
        for (int a = 0; a < WG_A2; a++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, Co, Ci, 1.0f,
                        V + (size_t)a * N * Ci, Ci, U + (size_t)a * Ci * Co, Co, 0.0f,
                        M + (size_t)a * N * Co, Co);
        for (int n = 0; n < gb; n++)
            wg_output(p, M + (size_t)n * p->T * Co, N * Co, bp, y + (n0 + n) * ys);
    }
}

/* One sample's output gradient dy (Cout, OH, OW) -> Q[a] rows col0 ..
 * col0 + T - 1 (Coutp channels each): Q = A dy A^T per tile, the outputs
 * past OH, OW read as 0. D is scratch for the channel-last tiles. */
DV_HOT static void wg_dyin(const wg_plan *p, const float *restrict dy, float *restrict D,
                           float *restrict Q, size_t ldq) {
    const int OH = p->OH, OW = p->OW, Cp = p->Coutp, DW = p->TW * WG_M;
    memset(D, 0, (size_t)p->TH * WG_M * DW * Cp * sizeof *D);
    for (int o = 0; o < p->Cout; o++)
        for (int h = 0; h < OH; h++) {
            const float *src = dy + ((size_t)o * OH + h) * OW;
            float *dst = D + (size_t)h * DW * Cp + o;
            for (int w = 0; w < OW; w++)
                dst[(size_t)w * Cp] = src[w];
        }
    for (int t = 0; t < p->T; t++) {
        const float *tile = D + ((size_t)(t / p->TW) * WG_M * DW + (t % p->TW) * WG_M) * Cp;
        for (int o0 = 0; o0 < Cp; o0 += WG_L)
            wg_sandwich(&WG.AT[0][0], 1, WG_A, WG_M, tile + o0, DW, Cp, Q + (size_t)t * Cp + o0,
                        ldq);
    }
}

/* dw (Cout, Cin, 5, 5) += the filter gradient of the forward plan p: per
 * tile, dL/dU = (A dy A^T) (.) (B^T d B), so S[a] (Cinp, Coutp) = sum over
 * tiles of V[a]^T Q[a] (GEMMs with K = tiles), then dw = G^T S G. */
static void wg_conv_dw(const wg_plan *p, int B, const float *x, const float *dy, float *dw,
                       float *work) {
    const int Ci = p->Cinp, Co = p->Coutp;
    const size_t xs = (size_t)p->Cin * p->H * p->W, ys = (size_t)p->Cout * p->OH * p->OW;
    const size_t Nmax = (size_t)p->group * p->T;
    float *S = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    float *V = S + (size_t)WG_A2 * Ci * Co;
    float *Q = V + (size_t)WG_A2 * Nmax * Ci;
    float *P = Q + (size_t)WG_A2 * Nmax * Co;
    float *D = P + (size_t)p->PH * p->PW * Ci + Co;
    for (int n0 = 0; n0 < B; n0 += p->group) {
        const int gb = B - n0 < p->group ? B - n0 : p->group;
        const size_t N = (size_t)gb * p->T;
        for (int n = 0; n < gb; n++) {
            wg_input(p, x + (n0 + n) * xs, P, V + (size_t)n * p->T * Ci, N * Ci);
            wg_dyin(p, dy + (n0 + n) * ys, D, Q + (size_t)n * p->T * Co, N * Co);
        }
        for (int a = 0; a < WG_A2; a++)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Ci, Co, (int)N, 1.0f,
                        V + (size_t)a * N * Ci, Ci, Q + (size_t)a * N * Co, Co,
                        n0 == 0 ? 0.0f : 1.0f, S + (size_t)a * Ci * Co, Co);
    }
    const size_t IO = (size_t)Ci * Co;
    for (int o = 0; o < p->Cout; o++)
        for (int i = 0; i < p->Cin; i++) {
            float s[WG_A][WG_A], t[WG_R][WG_A];
            for (int a = 0; a < WG_A; a++)
                for (int b = 0; b < WG_A; b++)
                    s[a][b] = S[(size_t)(a * WG_A + b) * IO + (size_t)i * Co + o];
            for (int k = 0; k < WG_R; k++)
                for (int b = 0; b < WG_A; b++) {
                    float v = 0.0f;
                    for (int a = 0; a < WG_A; a++)
                        v += WG.G[a][k] * s[a][b];
                    t[k][b] = v;
                }
            float *dst = dw + ((size_t)o * p->Cin + i) * WG_R * WG_R;
            for (int k = 0; k < WG_R; k++)
                for (int l = 0; l < WG_R; l++) {
                    float v = 0.0f;
                    for (int b = 0; b < WG_A; b++)
                        v += t[k][b] * WG.G[b][l];
                    dst[k * WG_R + l] += v;
                }
        }
}

/* The forward's plan, and the dx plan: dy (F planes, OH x OW) convolved
 * with pad 4 - pad back to (C, H, W). */
static void wg_plan_fwd(wg_plan *p, const dv_conv2d_geom *g) {
    wg_plan_init(p, g->B, g->C, g->F, g->H, g->W, g->pad, g->OH, g->OW);
}
static void wg_plan_dx(wg_plan *p, const dv_conv2d_geom *g) {
    wg_plan_init(p, g->B, g->F, g->C, g->OH, g->OW, WG_R - 1 - g->pad, g->H, g->W);
}

/* A 1x1, stride-1, unpadded convolution is a plain GEMM on x itself. */
static int conv_is_pointwise(const dv_conv2d_geom *g) {
    return g->KH == 1 && g->KW == 1 && g->stride == 1 && g->pad == 0;
}

/* One sample's column buffer: (C*KH*KW, OH*OW) floats. The backward reuses
 * it for the gradient of the columns once dw has consumed it. The Winograd
 * path needs the larger of its forward and dx plans (a few MB for the
 * CNN's second layer: the tiles of WG_GROUP samples). */
size_t dv_cpu_conv2d_workspace(void *ctx, const dv_conv2d_geom *g) {
    (void)ctx;
    if (conv_is_pointwise(g)) return 0;
    size_t n = (size_t)g->C * g->KH * g->KW * g->OH * g->OW;
    if (conv_is_winograd(g)) {
        wg_plan p;
        wg_plan_fwd(&p, g);
        if (wg_work(&p) > n) n = wg_work(&p);
        wg_plan_dx(&p, g);
        if (wg_work(&p) > n) n = wg_work(&p);
    }
    return n;
}

void dv_cpu_conv2d_forward(void *ctx, const dv_conv2d_geom *g, const float *x, const float *w,
                           const float *b, float *y, float *work) {
    (void)ctx;
    const int CK = g->C * g->KH * g->KW, S = g->OH * g->OW;
    const size_t xs = (size_t)g->C * g->H * g->W, ys = (size_t)g->F * S;
    const int pointwise = conv_is_pointwise(g);
    if (conv_is_winograd(g)) {
        wg_plan p;
        wg_plan_fwd(&p, g);
        wg_conv(&p, g->B, x, w, 0, b, y, work);
        return;
    }
    for (int n = 0; n < g->B; n++) {
        const float *col = x + n * xs;
        if (!pointwise) {
            im2col(g, x + n * xs, work);
            col = work;
        }
        /* y_n (F, S) = w (F, CK) col (CK, S) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->F, S, CK, 1.0f, w, CK, col, S,
                    0.0f, y + n * ys, S);
        /* while y_n is still in cache */
        if (b) dv_cpu_bias_forward(ctx, y + n * ys, b, 1, g->F, S);
    }
}

static void conv2d_backward_cols(const dv_conv2d_geom *g, const float *x, const float *w,
                                 const float *dy, float *dx, float *dw, float *work);

void dv_cpu_conv2d_backward(void *ctx, const dv_conv2d_geom *g, const float *x, const float *w,
                            const float *dy, float *dx, float *dw, float *db, float *work) {
    const int S = g->OH * g->OW;
    if (db) dv_cpu_bias_backward(ctx, dy, db, g->B, g->F, S);
    if (conv_is_winograd(g)) {
        /* dw from the forward's tiles, then dx as the full convolution of
         * dy with the flipped filters; they share the workspace in turn */
        wg_plan p;
        if (dw) {
            wg_plan_fwd(&p, g);
            wg_conv_dw(&p, g->B, x, dy, dw, work);
        }
        if (dx) {
            wg_plan_dx(&p, g);
            wg_conv(&p, g->B, dy, w, 1, NULL, dx, work);
        }
        return;
    }
    conv2d_backward_cols(g, x, w, dy, dx, dw, work);
}

/* The column path of the backward: dw (if not NULL) and dx (if not NULL),
 * one sample at a time. */
static void conv2d_backward_cols(const dv_conv2d_geom *g, const float *x, const float *w,
                                 const float *dy, float *dx, float *dw, float *work) {
    const int CK = g->C * g->KH * g->KW, S = g->OH * g->OW;
    const size_t xs = (size_t)g->C * g->H * g->W, ys = (size_t)g->F * S;
    const int pointwise = conv_is_pointwise(g);
    for (int n = 0; n < g->B; n++) {
        const float *dyn = dy + n * ys;
        if (dw) {
            const float *col = x + n * xs;
            if (!pointwise) {
                im2col(g, x + n * xs, work);
                col = work;
            }
            /* dw (F, CK) += dy_n (F, S) col^T (S, CK) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->F, CK, S, 1.0f, dyn, S, col, S,
                        1.0f, dw, CK);
        }
        if (dx) {
            float *dxn = dx + n * xs;
            /* dcol (CK, S) = w^T (CK, F) dy_n (F, S) */
            if (pointwise) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CK, S, g->F, 1.0f, w, CK, dyn,
                            S, 0.0f, dxn, S);
            } else {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CK, S, g->F, 1.0f, w, CK, dyn,
                            S, 0.0f, work, S);
                memset(dxn, 0, xs * sizeof *dxn);
                col2im(g, work, dxn);
            }
        }
    }
}

/* ---- pooling ---------------------------------------------------------- */

/* arg holds the flat offset of the winner in the whole input x (B, C, H, W),
 * i.e. ((b*C + c)*H + ih)*W + iw, or -1 when the window covers padding only.
 * Padding never wins: a window is judged over its real elements alone, and
 * the first of equal values (in row-major window order) wins. */

/* The common 2x2/2 unpadded window: four candidates, no bounds, and selects
 * instead of branches (random data would mispredict half of them). is_max is
 * a constant at each call, so each direction gets its own loop. */
static inline __attribute__((always_inline)) void pool2x2(int is_max, const dv_conv2d_geom *g,
                                                          const float *restrict x,
                                                          float *restrict y,
                                                          int32_t *restrict arg) {
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const size_t planes = (size_t)g->B * g->C;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        float *yp = y + pl * OH * OW;
        int32_t *ap = arg + pl * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            const float *r0 = xp + (size_t)(2 * oh) * W, *r1 = r0 + W;
            const int32_t o0 = (int32_t)(pl * H * W) + 2 * oh * W;
            for (int ow = 0; ow < OW; ow++) {
                float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
                int32_t o = o0 + 2 * ow;
                /* index updates as arithmetic on the comparison, so no
                 * compiler turns them back into branches */
                int32_t t = is_max ? b > a : b < a;
                float v = t ? b : a;
                int32_t i = o + t;
                t = is_max ? c > v : c < v;
                v = t ? c : v;
                i += t * (o + W - i);
                t = is_max ? d > v : d < v;
                v = t ? d : v;
                i += t * (o + W + 1 - i);
                yp[oh * OW + ow] = v;
                ap[oh * OW + ow] = i;
            }
        }
    }
}

DV_HOT static void pool2x2_max(const dv_conv2d_geom *g, const float *restrict x, float *restrict y,
                               int32_t *restrict arg) {
    pool2x2(1, g, x, y, arg);
}

DV_HOT static void pool2x2_min(const dv_conv2d_geom *g, const float *restrict x, float *restrict y,
                               int32_t *restrict arg) {
    pool2x2(0, g, x, y, arg);
}

static void pool_extreme(int is_max, const dv_conv2d_geom *g, const float *restrict x,
                         float *restrict y, int32_t *restrict arg) {
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW, s = g->stride, p = g->pad;
    const size_t planes = (size_t)g->B * g->C;
    if (g->KH == 2 && g->KW == 2 && s == 2 && p == 0) {
        if (is_max)
            pool2x2_max(g, x, y, arg);
        else
            pool2x2_min(g, x, y, arg);
        return;
    }
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        for (int oh = 0; oh < OH; oh++) {
            int h0 = oh * s - p, h1 = h0 + g->KH;
            h0 = h0 < 0 ? 0 : h0;
            h1 = h1 > H ? H : h1;
            for (int ow = 0; ow < OW; ow++) {
                int w0 = ow * s - p, w1 = w0 + g->KW;
                w0 = w0 < 0 ? 0 : w0;
                w1 = w1 > W ? W : w1;
                float best = 0.0f;
                int32_t bi = -1;
                for (int ih = h0; ih < h1; ih++) {
                    for (int iw = w0; iw < w1; iw++) {
                        float v = xp[ih * W + iw];
                        if (bi < 0 || (is_max ? v > best : v < best)) {
                            best = v;
                            bi = (int32_t)(pl * H * W) + ih * W + iw;
                        }
                    }
                }
                size_t o = (pl * OH + oh) * OW + ow;
                y[o] = best;
                arg[o] = bi;
            }
        }
    }
}

DV_HOT static void pool_avg_forward(const dv_conv2d_geom *g, const float *restrict x,
                                    float *restrict y) {
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW, s = g->stride, p = g->pad;
    const float inv = 1.0f / (float)(g->KH * g->KW);
    const size_t planes = (size_t)g->B * g->C;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        for (int oh = 0; oh < OH; oh++) {
            int h0 = oh * s - p, h1 = h0 + g->KH;
            h0 = h0 < 0 ? 0 : h0;
            h1 = h1 > H ? H : h1;
            for (int ow = 0; ow < OW; ow++) {
                int w0 = ow * s - p, w1 = w0 + g->KW;
                w0 = w0 < 0 ? 0 : w0;
                w1 = w1 > W ? W : w1;
                float sum = 0.0f;
                for (int ih = h0; ih < h1; ih++)
                    for (int iw = w0; iw < w1; iw++)
                        sum += xp[ih * W + iw];
                y[(pl * OH + oh) * OW + ow] = sum * inv;
            }
        }
    }
}

void dv_cpu_pool2d_forward(void *ctx, dv_pool mode, const dv_conv2d_geom *g, const float *x,
                           float *y, int32_t *arg) {
    dv_cpu_ctx *cx = ctx;
    if (DV_BAD_ENUM(cx->err, dv_pool, mode, DV_POOL_COUNT)) return;
    if (mode == DV_POOL_AVG)
        pool_avg_forward(g, x, y);
    else
        pool_extreme(mode == DV_POOL_MAX, g, x, y, arg);
}

void dv_cpu_pool2d_backward(void *ctx, dv_pool mode, const dv_conv2d_geom *g, const float *dy,
                            float *dx, const int32_t *arg) {
    dv_cpu_ctx *cx = ctx;
    if (DV_BAD_ENUM(cx->err, dv_pool, mode, DV_POOL_COUNT)) return;
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW, s = g->stride, p = g->pad;
    const size_t planes = (size_t)g->B * g->C, ny = planes * OH * OW;
    memset(dx, 0, planes * H * W * sizeof *dx);
    if (mode != DV_POOL_AVG) {
        /* += because windows that overlap may pick the same input. */
        for (size_t i = 0; i < ny; i++)
            if (arg[i] >= 0) dx[arg[i]] += dy[i];
        return;
    }
    const float inv = 1.0f / (float)(g->KH * g->KW);
    for (size_t pl = 0; pl < planes; pl++) {
        float *dp = dx + pl * H * W;
        for (int oh = 0; oh < OH; oh++) {
            int h0 = oh * s - p, h1 = h0 + g->KH;
            h0 = h0 < 0 ? 0 : h0;
            h1 = h1 > H ? H : h1;
            for (int ow = 0; ow < OW; ow++) {
                int w0 = ow * s - p, w1 = w0 + g->KW;
                w0 = w0 < 0 ? 0 : w0;
                w1 = w1 > W ? W : w1;
                float v = dy[(pl * OH + oh) * OW + ow] * inv;
                for (int ih = h0; ih < h1; ih++)
                    for (int iw = w0; iw < w1; iw++)
                        dp[ih * W + iw] += v;
            }
        }
    }
}

/* ---- upsampling ------------------------------------------------------- */

void dv_cpu_upsample_forward(void *ctx, int n, int H, int W, int s, const float *x, float *y) {
    (void)ctx;
    const int OW = W * s;
    for (size_t p = 0; p < (size_t)n * H; p++) { /* (plane, input row) */
        const float *xr = x + p * W;
        float *yr = y + p * s * OW;
        for (int j = 0; j < OW; j++)
            yr[j] = xr[j / s];
        for (int r = 1; r < s; r++)
            memcpy(yr + (size_t)r * OW, yr, (size_t)OW * sizeof(float));
    }
}

void dv_cpu_upsample_backward(void *ctx, int n, int H, int W, int s, const float *dy, float *dx) {
    (void)ctx;
    const int OW = W * s;
    for (size_t p = 0; p < (size_t)n * H; p++) {
        const float *dr = dy + p * s * OW;
        float *out = dx + p * W;
        for (int j = 0; j < W; j++) {
            float acc = 0.0f;
            for (int r = 0; r < s; r++)
                for (int c = 0; c < s; c++)
                    acc += dr[(size_t)r * OW + (size_t)j * s + c];
            out[j] = acc;
        }
    }
}

/* ---- dropout ---------------------------------------------------------- */

DV_HOT void dv_cpu_dropout_forward(void *ctx, float rate, uint64_t seed, const int64_t *row_id,
                                   int rows, int cols, const float *x, float *y, float *mask) {
    (void)ctx;
    /* rate >= 1 drops everything (and must not divide by zero). */
    const float keep = rate < 1.0f ? 1.0f / (1.0f - rate) : 0.0f;
    for (int i = 0; i < rows; i++) {
        uint64_t base = (uint64_t)(row_id ? row_id[i] : i) * (uint64_t)cols;
        float *m = mask + (size_t)i * cols;
        for (int j = 0; j < cols; j++)
            m[j] = dv_rand_uniform_inl(seed, base + (uint64_t)j) < rate ? 0.0f : keep;
        const float *xi = x + (size_t)i * cols;
        float *yi = y + (size_t)i * cols;
        for (int j = 0; j < cols; j++)
            yi[j] = xi[j] * m[j];
    }
}

DV_HOT void dv_cpu_dropout_backward(void *ctx, const float *restrict mask, const float *dy,
                                    float *dx, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        dx[i] = dy[i] * mask[i];
}

/* ---- batch norm ------------------------------------------------------- */

void dv_cpu_batchnorm_forward(void *ctx, int training, int B, int C, int S, float eps,
                              float momentum, const float *x, const float *gamma, const float *beta,
                              float *running_mean, float *running_var, float *save_mean,
                              float *save_invstd, float *y) {
    (void)ctx;
    const size_t cs = (size_t)C * S, N = (size_t)B * S;
    for (int c = 0; c < C; c++) {
        float mean, invstd;
        if (training) {
            /* Two passes in double: the mean first, then the centred sum of
             * squares, so a large mean costs no precision. */
            double sum = 0.0, ss = 0.0;
            for (int b = 0; b < B; b++)
                sum += sum_f(x + b * cs + (size_t)c * S, (size_t)S);
            double m = N ? sum / (double)N : 0.0;
            for (int b = 0; b < B; b++) {
                const float *xr = x + b * cs + (size_t)c * S;
                for (int s = 0; s < S; s++) {
                    double d = xr[s] - m;
                    ss += d * d;
                }
            }
            double var = N ? ss / (double)N : 0.0;
            mean = (float)m;
            invstd = (float)(1.0 / sqrt(var + eps));
            if (save_mean) save_mean[c] = mean;
            if (save_invstd) save_invstd[c] = invstd;
            if (running_mean)
                running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * mean;
            if (running_var) {
                double unbiased = N > 1 ? ss / (double)(N - 1) : var;
                running_var[c] = (1.0f - momentum) * running_var[c] + momentum * (float)unbiased;
            }
        } else {
            mean = running_mean[c];
            invstd = 1.0f / sqrtf(running_var[c] + eps);
        }
        const float a = (gamma ? gamma[c] : 1.0f) * invstd;
        const float k = (beta ? beta[c] : 0.0f) - a * mean;
        for (int b = 0; b < B; b++) {
            const float *xr = x + b * cs + (size_t)c * S;
            float *yr = y + b * cs + (size_t)c * S;
            for (int s = 0; s < S; s++)
                yr[s] = a * xr[s] + k;
        }
    }
}

void dv_cpu_batchnorm_backward(void *ctx, int B, int C, int S, const float *x, const float *gamma,
                               const float *save_mean, const float *save_invstd, const float *dy,
                               float *dx, float *dgamma, float *dbeta) {
    (void)ctx;
    const size_t cs = (size_t)C * S, N = (size_t)B * S;
    for (int c = 0; c < C; c++) {
        const float mean = save_mean[c], invstd = save_invstd[c];
        double sdy = 0.0, sdyx = 0.0; /* sum dy, sum dy * xhat */
        for (int b = 0; b < B; b++) {
            const float *xr = x + b * cs + (size_t)c * S, *dr = dy + b * cs + (size_t)c * S;
            float a = 0.0f, t = 0.0f;
            for (int s = 0; s < S; s++) {
                a += dr[s];
                t += dr[s] * (xr[s] - mean);
            }
            sdy += a;
            sdyx += t;
        }
        sdyx *= invstd;
        if (dbeta) dbeta[c] += (float)sdy;
        if (dgamma) dgamma[c] += (float)sdyx;
        if (!dx) continue;
        /* dx = gamma*invstd/N * (N*dy - sum(dy) - xhat * sum(dy*xhat)) */
        const float g = (gamma ? gamma[c] : 1.0f) * invstd;
        const float mdy = N ? (float)(sdy / (double)N) : 0.0f;
        const float mdyx = N ? (float)(sdyx / (double)N) : 0.0f;
        for (int b = 0; b < B; b++) {
            const float *xr = x + b * cs + (size_t)c * S, *dr = dy + b * cs + (size_t)c * S;
            float *out = dx + b * cs + (size_t)c * S;
            for (int s = 0; s < S; s++)
                out[s] = g * (dr[s] - mdy - (xr[s] - mean) * invstd * mdyx);
        }
    }
}

/* ---- losses ----------------------------------------------------------- */

/* A label outside [0, K) marks the row as ignored: no loss, no gradient,
 * never counted correct (e.g. padding positions in a token stream). */
void dv_cpu_xent_loss(void *ctx, const float *logits, const int32_t *labels, int B, int K,
                      float grad_scale, float *dlogits, float *stats) {
    (void)ctx;
    double loss = 0.0, correct = 0.0;
    for (int i = 0; i < B; i++) {
        const float *z = logits + (size_t)i * K;
        float *d = dlogits + (size_t)i * K;
        int y = labels[i];
        if (y < 0 || y >= K) {
            memset(d, 0, (size_t)K * sizeof *d);
            continue;
        }
        int am = argmax_f(z, K);
        float m = z[am], s = 0.0f;
        for (int k = 0; k < K; k++) {
            d[k] = expf(z[k] - m);
            s += d[k];
        }
        /* loss = logsumexp(z) - z[y] = log(s) + m - z[y] */
        loss += (double)logf(s) + (double)m - (double)z[y];
        correct += am == y;
        float inv = grad_scale / s;
        for (int k = 0; k < K; k++)
            d[k] *= inv;
        d[y] -= grad_scale;
    }
    stats[0] += (float)loss;
    stats[1] += (float)correct;
}

/* Per-sample loss is the mean over the K outputs (as for mse), so
 * grad_scale = 1/B gives PyTorch's BCEWithLogitsLoss(reduction='mean'). */
void dv_cpu_bce_loss(void *ctx, const float *logits, const float *targets, int B, int K,
                     float grad_scale, float *dlogits, float *stats) {
    (void)ctx;
    double loss = 0.0, correct = 0.0;
    const float gs = K > 0 ? grad_scale / (float)K : 0.0f;
    for (int i = 0; i < B; i++) {
        const float *z = logits + (size_t)i * K, *t = targets + (size_t)i * K;
        float *d = dlogits + (size_t)i * K;
        double l = 0.0;
        int agree = 1;
        for (int k = 0; k < K; k++) {
            float zk = z[k], e = expf(-fabsf(zk));
            /* max(z,0) - z t + log(1 + exp(-|z|)): no overflow for any z */
            l += (double)(fmaxf(zk, 0.0f) - zk * t[k] + log1pf(e));
            /* sigmoid from e = exp(-|z|), stable on both sides */
            float sig = zk >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            d[k] = (sig - t[k]) * gs;
            agree &= (zk > 0.0f) == (t[k] >= 0.5f);
        }
        loss += K > 0 ? l / K : 0.0;
        correct += agree;
    }
    stats[0] += (float)loss;
    stats[1] += (float)correct;
}

void dv_cpu_mse_loss(void *ctx, const float *pred, const float *targets, int B, int K,
                     float grad_scale, float *dpred, float *stats) {
    (void)ctx;
    double loss = 0.0, correct = 0.0;
    const float gs = K > 0 ? 2.0f * grad_scale / (float)K : 0.0f;
    for (int i = 0; i < B; i++) {
        const float *p = pred + (size_t)i * K, *t = targets + (size_t)i * K;
        float *d = dpred + (size_t)i * K;
        double l = 0.0;
        for (int k = 0; k < K; k++) {
            float e = p[k] - t[k];
            l += (double)e * e;
            d[k] = e * gs;
        }
        loss += K > 0 ? l / K : 0.0;
        if (K == 1)
            correct += fabsf(p[0] - t[0]) < 0.5f;
        else if (K > 1)
            correct += argmax_f(p, K) == argmax_f(t, K);
    }
    stats[0] += (float)loss;
    stats[1] += (float)correct;
}

void dv_cpu_perceptron_loss(void *ctx, const float *scores, const int32_t *labels, int B, int K,
                            float grad_scale, float *dscores, float *stats) {
    (void)ctx;
    double mistakes = 0.0, correct = 0.0;
    memset(dscores, 0, (size_t)B * K * sizeof *dscores);
    for (int i = 0; i < B; i++) {
        const float *z = scores + (size_t)i * K;
        float *d = dscores + (size_t)i * K;
        int y = labels[i];
        if (K == 1) {
            int pred = z[0] > 0.0f, target = y != 0;
            d[0] = (float)(pred - target) * grad_scale;
            mistakes += pred != target;
            correct += pred == target;
        } else {
            int pred = argmax_f(z, K);
            if (pred == y) {
                correct += 1;
            } else {
                mistakes += 1;
                d[pred] = grad_scale;
                if (y >= 0 && y < K) d[y] = -grad_scale;
            }
        }
    }
    stats[0] += (float)mistakes;
    stats[1] += (float)correct;
}

/* ---- optimizers ------------------------------------------------------- */

DV_HOT static void sgd_step(float lr, float wd, float *restrict p, const float *restrict g,
                            size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] -= lr * (g[i] + wd * p[i]);
}

DV_HOT static void momentum_step(float lr, float wd, float mu, int nesterov, float *restrict p,
                                 const float *restrict g, float *restrict v, size_t n) {
    if (nesterov) {
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] + wd * p[i];
            float vi = mu * v[i] + gi;
            v[i] = vi;
            p[i] -= lr * (gi + mu * vi);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            float vi = mu * v[i] + g[i] + wd * p[i];
            v[i] = vi;
            p[i] -= lr * vi;
        }
    }
}

/* One pass: p, m, v are read and written once each. decay is the
 * multiplier applied to p first (AdamW), wd the L2 term folded into g (Adam).
 * The vector bodies below compute the same expression lane by lane; each
 * returns how many leading elements it did, and this loop does the rest. */
typedef struct adam_k {
    float step_size, inv_sqrt_bc2, b1, b2, eps, wd, decay;
} adam_k;

static void adam_scalar(const adam_k *k, float *restrict p, const float *restrict g,
                        float *restrict m, float *restrict v, size_t i0, size_t n) {
    const float c1 = 1.0f - k->b1, c2 = 1.0f - k->b2;
    for (size_t i = i0; i < n; i++) {
        float pi = p[i] * k->decay;
        float gi = g[i] + k->wd * pi;
        float mi = k->b1 * m[i] + c1 * gi;
        float vi = k->b2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - k->step_size * (mi / (sqrtf(vi) * k->inv_sqrt_bc2 + k->eps));
    }
}

#ifdef DV_HAVE_X86_SIMD
__attribute__((target("avx512f"))) static size_t adam_avx512(const adam_k *k, float *restrict p,
                                                             const float *restrict g,
                                                             float *restrict m, float *restrict v,
                                                             size_t n) {
    const __m512 step = _mm512_set1_ps(k->step_size), ibc2 = _mm512_set1_ps(k->inv_sqrt_bc2);
    const __m512 b1 = _mm512_set1_ps(k->b1), b2 = _mm512_set1_ps(k->b2);
    const __m512 c1 = _mm512_set1_ps(1.0f - k->b1), c2 = _mm512_set1_ps(1.0f - k->b2);
    const __m512 eps = _mm512_set1_ps(k->eps), wd = _mm512_set1_ps(k->wd);
    const __m512 decay = _mm512_set1_ps(k->decay);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 pi = _mm512_mul_ps(_mm512_loadu_ps(p + i), decay);
        __m512 gi = _mm512_add_ps(_mm512_loadu_ps(g + i), _mm512_mul_ps(wd, pi));
        __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(c1, gi));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(v + i)),
                                  _mm512_mul_ps(_mm512_mul_ps(c2, gi), gi));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        __m512 den = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(vi), ibc2), eps);
        pi = _mm512_sub_ps(pi, _mm512_mul_ps(step, _mm512_div_ps(mi, den)));
        _mm512_storeu_ps(p + i, pi);
    }
    return i;
}

__attribute__((target("avx2"))) static size_t adam_avx2(const adam_k *k, float *restrict p,
                                                        const float *restrict g, float *restrict m,
                                                        float *restrict v, size_t n) {
    const __m256 step = _mm256_set1_ps(k->step_size), ibc2 = _mm256_set1_ps(k->inv_sqrt_bc2);
    const __m256 b1 = _mm256_set1_ps(k->b1), b2 = _mm256_set1_ps(k->b2);
    const __m256 c1 = _mm256_set1_ps(1.0f - k->b1), c2 = _mm256_set1_ps(1.0f - k->b2);
    const __m256 eps = _mm256_set1_ps(k->eps), wd = _mm256_set1_ps(k->wd);
    const __m256 decay = _mm256_set1_ps(k->decay);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
        __m256 gi = _mm256_add_ps(_mm256_loadu_ps(g + i), _mm256_mul_ps(wd, pi));
        __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(c1, gi));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)),
                                  _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        __m256 den = _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(vi), ibc2), eps);
        pi = _mm256_sub_ps(pi, _mm256_mul_ps(step, _mm256_div_ps(mi, den)));
        _mm256_storeu_ps(p + i, pi);
    }
    return i;
}
#endif

static void adam_step(const adam_k *k, float *p, const float *g, float *m, float *v, size_t n) {
    size_t done = 0;
#ifdef DV_HAVE_X86_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        done = adam_avx512(k, p, g, m, v, n);
    else if (__builtin_cpu_supports("avx2"))
        done = adam_avx2(k, p, g, m, v, n);
#endif
    adam_scalar(k, p, g, m, v, done, n);
}

void dv_cpu_opt_step(void *ctx, const dv_opt_params *o, float *params, const float *grads,
                     float *state1, float *state2, size_t n) {
    dv_cpu_ctx *cx = ctx;
    if (DV_BAD_ENUM(cx->err, dv_opt, o->kind, DV_OPT_COUNT)) return;
    switch (o->kind) {
    case DV_OPT_SGD:
        sgd_step(o->lr, o->weight_decay, params, grads, n);
        break;
    case DV_OPT_MOMENTUM:
    case DV_OPT_NESTEROV:
        momentum_step(o->lr, o->weight_decay, o->momentum, o->kind == DV_OPT_NESTEROV, params,
                      grads, state1, n);
        break;
    case DV_OPT_ADAM:
    case DV_OPT_ADAMW: {
        double t = o->step > 0 ? (double)o->step : 1.0;
        double bc1 = 1.0 - pow(o->beta1, t), bc2 = 1.0 - pow(o->beta2, t);
        int decoupled = o->kind == DV_OPT_ADAMW;
        adam_k k = {.step_size = (float)(o->lr / bc1),
                    .inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2)),
                    .b1 = o->beta1,
                    .b2 = o->beta2,
                    .eps = o->eps,
                    .wd = decoupled ? 0.0f : o->weight_decay,
                    .decay = decoupled ? 1.0f - o->lr * o->weight_decay : 1.0f};
        adam_step(&k, params, grads, state1, state2, n);
        break;
    }
    case DV_OPT_COUNT: /* refused above */
        break;
    }
}
