/* conv_cuda.cu — convolution and pooling on the GPU: the CUDA versions of the
 * CPU ops in kernels/cpu/ops_cpu.c, with the same contracts (kernels.h).
 *
 * Convolution is im2col + one cuBLAS GEMM per chunk of samples. The
 * workspace holds the columns of a chunk of Bc samples, cols
 * (C*KH*KW, Bc*OH*OW), and a (F, Bc*OH*OW) temporary; Bc is as many samples
 * as fit a fixed budget, so one GEMM covers a whole chunk (wide N keeps
 * cuBLAS busy) and a huge batch costs a bounded workspace. The forward
 * writes the GEMM's (F, Bc*OHW) result back to (Bc, F, OHW) with the bias;
 * the backward lays dy out as (F, Bc*OHW) the same way, so dw and the
 * column gradient are one GEMM each.
 *
 * Nothing here uses atomics: db is a fixed-order block reduction, col2im
 * and the pooling backward are gathers (one thread per input element that
 * sums, in a fixed order, what every window that saw it contributed), so
 * results are the same from run to run. Pooling adds in the CPU's order,
 * so it matches the CPU bit for bit (col2im does too, but its columns come
 * from a GEMM that rounds differently).
 *
 * Assumes: every pointer is device memory; every launch goes on cx->stream
 * and nothing synchronizes; dv_cuda_gemm is row-major (as dv_cpu_gemm) and
 * applies the backend's precision; shapes fit int as kernels.h says (flat
 * indices are size_t).
 */
#include "cuda-impl.h"

/* Floats of workspace a chunk may use: 256 MB. */
#define CONV_BUDGET ((size_t)1 << 26)

/* Round the column buffer up so the temporary after it starts on a 256-byte
 * boundary (cuBLAS's fastest kernels want aligned operands). */
#define CONV_ALIGN 64

/* ---- convolution -------------------------------------------------------- */

/* Samples per chunk, and the layout of the workspace for it. */
typedef struct conv_plan {
    int bc;         /* samples per chunk (the last one may hold fewer) */
    int ckk, ohw;   /* C*KH*KW rows of cols; OH*OW columns per sample */
    size_t cols_n;  /* floats reserved for cols, rounded to CONV_ALIGN */
    size_t total_n; /* whole workspace, floats */
} conv_plan;

static int conv_plan_init(conv_plan *p, const dv_conv2d_geom *g) {
    if (g->B <= 0 || g->C <= 0 || g->F <= 0 || g->OH <= 0 || g->OW <= 0) return -1;
    p->ckk = g->C * g->KH * g->KW;
    p->ohw = g->OH * g->OW;
    size_t per = ((size_t)p->ckk + (size_t)g->F) * (size_t)p->ohw;
    size_t bc = CONV_BUDGET / per;
    if (bc < 1) bc = 1;
    if (bc > (size_t)g->B) bc = (size_t)g->B;
    p->bc = (int)bc;
    size_t n = bc * (size_t)p->ohw;
    p->cols_n = ((size_t)p->ckk * n + CONV_ALIGN - 1) / CONV_ALIGN * CONV_ALIGN;
    p->total_n = p->cols_n + (size_t)g->F * n;
    return 0;
}

/* cols (CKK, nb*OHW) of the nb samples at x (nb, C, H, W); zero where the
 * window reads padding. Column j = b*OHW + oh*OW + ow, row r = (c*KH + kh)*KW
 * + kw, as the CPU's im2col for one sample, samples side by side. */
static __global__ void im2col_kernel(const float *__restrict__ x, float *__restrict__ cols, int C,
                                     int H, int W, int KH, int KW, int stride, int pad, int OW,
                                     int ohw, int ncols, size_t total) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)ncols;
        int j = (int)(i - r * (size_t)ncols);
        int kw = (int)(r % (size_t)KW);
        int kh = (int)((r / (size_t)KW) % (size_t)KH);
        int c = (int)(r / ((size_t)KW * KH));
        int b = j / ohw, pix = j - b * ohw;
        int oh = pix / OW, ow = pix - oh * OW;
        int ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
        float v = 0.0f;
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = x[(((size_t)b * C + c) * H + ih) * W + iw];
        cols[i] = v;
    }
}

/* y (nb, F, OHW) = t (F, nb*OHW) rearranged, + bias (F) if not NULL. One
 * thread per y element, so writes are coalesced and reads mostly are. */
static __global__ void conv_out_kernel(const float *__restrict__ t, const float *__restrict__ bias,
                                       float *__restrict__ y, int F, int ohw, int ncols,
                                       size_t total) {
    const size_t fs = (size_t)F * ohw;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t b = i / fs;
        int rem = (int)(i - b * fs);
        int f = rem / ohw, pix = rem - f * ohw;
        float v = t[(size_t)f * ncols + b * ohw + pix];
        y[i] = bias ? v + bias[f] : v;
    }
}

/* dyT (F, nb*OHW) = dy (nb, F, OHW) rearranged: the inverse of the above. */
static __global__ void conv_dyt_kernel(const float *__restrict__ dy, float *__restrict__ dyt, int F,
                                       int ohw, int ncols, size_t total) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t f = i / (size_t)ncols;
        int j = (int)(i - f * (size_t)ncols);
        int b = j / ohw, pix = j - b * ohw;
        dyt[i] = dy[((size_t)b * F + f) * ohw + pix];
    }
}

/* db (F) += sum over B and OHW of dy (B, F, OHW): one block per channel,
 * each thread a fixed strided subset, then a tree in shared memory, so the
 * sum's order never depends on timing. Needs blockDim.x == DV_CUDA_THREADS. */
static __global__ void conv_db_kernel(const float *__restrict__ dy, float *__restrict__ db, int B,
                                      int F, int ohw) {
    __shared__ float part[DV_CUDA_THREADS];
    const int f = blockIdx.x;
    const size_t n = (size_t)B * ohw;
    float s = 0.0f;
    for (size_t k = threadIdx.x; k < n; k += blockDim.x) {
        size_t b = k / (size_t)ohw;
        int pix = (int)(k - b * (size_t)ohw);
        s += dy[(b * F + f) * ohw + pix];
    }
    part[threadIdx.x] = s;
    __syncthreads();
    for (int h = DV_CUDA_THREADS / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) part[threadIdx.x] += part[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[f] += part[0];
}

/* dx (nb, C, H, W) = the column gradient dcols (CKK, nb*OHW) folded back:
 * each thread owns one dx element and adds the columns that read it, in
 * (kh, kw) order as the CPU's col2im does, so no two threads write one
 * element and no atomics are needed. Overwrites dx. */
static __global__ void col2im_kernel(const float *__restrict__ dcols, float *__restrict__ dx, int C,
                                     int H, int W, int KH, int KW, int stride, int pad, int OH,
                                     int OW, int ncols, size_t total) {
    const int ohw = OH * OW;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t plane = i / ((size_t)H * W); /* b*C + c */
        int rem = (int)(i - plane * ((size_t)H * W));
        int ih = rem / W, iw = rem - ih * W;
        int b = (int)(plane / (size_t)C), c = (int)(plane - (size_t)b * C);
        float acc = 0.0f;
        for (int kh = 0; kh < KH; kh++) {
            int th = ih + pad - kh; /* = oh * stride */
            if (th < 0 || th % stride) continue;
            int oh = th / stride;
            if (oh >= OH) continue;
            for (int kw = 0; kw < KW; kw++) {
                int tw = iw + pad - kw;
                if (tw < 0 || tw % stride) continue;
                int ow = tw / stride;
                if (ow >= OW) continue;
                size_t row = ((size_t)c * KH + kh) * KW + kw;
                acc += dcols[row * ncols + (size_t)b * ohw + (size_t)oh * OW + ow];
            }
        }
        dx[i] = acc;
    }
}

extern "C" size_t dv_cuda_conv2d_workspace(void *ctx, const dv_conv2d_geom *g) {
    (void)ctx;
    conv_plan p;
    return conv_plan_init(&p, g) ? 0 : p.total_n;
}

extern "C" void dv_cuda_conv2d_forward(void *ctx, const dv_conv2d_geom *g, const float *x,
                                       const float *w, const float *b, float *y, float *work) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    conv_plan p;
    if (conv_plan_init(&p, g)) return;
    const size_t xs = (size_t)g->C * g->H * g->W, ys = (size_t)g->F * p.ohw;
    float *cols = work, *t = work + p.cols_n;
    for (int b0 = 0; b0 < g->B; b0 += p.bc) {
        const int nb = g->B - b0 < p.bc ? g->B - b0 : p.bc;
        const int ncols = nb * p.ohw;
        size_t n = (size_t)p.ckk * ncols;
        im2col_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
            x + (size_t)b0 * xs, cols, g->C, g->H, g->W, g->KH, g->KW, g->stride, g->pad, g->OW,
            p.ohw, ncols, n);
        DV_CUDA_LAUNCHED(cx, "im2col_kernel");
        /* t (F, ncols) = w (F, CKK) cols (CKK, ncols) */
        dv_cuda_gemm(cx, 0, 0, g->F, ncols, p.ckk, 1.0f, w, cols, 0.0f, t);
        n = (size_t)nb * ys;
        conv_out_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
            t, b, y + (size_t)b0 * ys, g->F, p.ohw, ncols, n);
        DV_CUDA_LAUNCHED(cx, "conv_out_kernel");
    }
}

extern "C" void dv_cuda_conv2d_backward(void *ctx, const dv_conv2d_geom *g, const float *x,
                                        const float *w, const float *dy, float *dx, float *dw,
                                        float *db, float *work) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    conv_plan p;
    if (conv_plan_init(&p, g)) return;
    const size_t xs = (size_t)g->C * g->H * g->W, ys = (size_t)g->F * p.ohw;
    if (db) {
        /* from dy itself: the same sum whatever the chunking */
        conv_db_kernel<<<g->F, DV_CUDA_THREADS, 0, cx->stream>>>(dy, db, g->B, g->F, p.ohw);
        DV_CUDA_LAUNCHED(cx, "conv_db_kernel");
    }
    if (!dw && !dx) return;
    float *cols = work, *dyt = work + p.cols_n;
    for (int b0 = 0; b0 < g->B; b0 += p.bc) {
        const int nb = g->B - b0 < p.bc ? g->B - b0 : p.bc;
        const int ncols = nb * p.ohw;
        size_t n = (size_t)g->F * ncols;
        conv_dyt_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
            dy + (size_t)b0 * ys, dyt, g->F, p.ohw, ncols, n);
        DV_CUDA_LAUNCHED(cx, "conv_dyt_kernel");
        if (dw) {
            n = (size_t)p.ckk * ncols;
            im2col_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
                x + (size_t)b0 * xs, cols, g->C, g->H, g->W, g->KH, g->KW, g->stride, g->pad, g->OW,
                p.ohw, ncols, n);
            DV_CUDA_LAUNCHED(cx, "im2col_kernel");
            /* dw (F, CKK) += dyT (F, ncols) cols^T (ncols, CKK) */
            dv_cuda_gemm(cx, 0, 1, g->F, p.ckk, ncols, 1.0f, dyt, cols, 1.0f, dw);
        }
        if (dx) {
            /* dcols (CKK, ncols) = w^T (CKK, F) dyT (F, ncols), into cols:
             * stream order puts it after the dw GEMM has read them */
            dv_cuda_gemm(cx, 1, 0, p.ckk, ncols, g->F, 1.0f, w, dyt, 0.0f, cols);
            n = (size_t)nb * xs;
            col2im_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
                cols, dx + (size_t)b0 * xs, g->C, g->H, g->W, g->KH, g->KW, g->stride, g->pad,
                g->OH, g->OW, ncols, n);
            DV_CUDA_LAUNCHED(cx, "col2im_kernel");
        }
    }
}

/* ---- pooling ------------------------------------------------------------ */

/* One thread per output; the same loop as the CPU's, so the same winner:
 * the window is clipped to the image (padding never wins), the first
 * element is taken whatever it is, and a later one only when strictly
 * better, so ties (and NaNs) go to the first in row-major window order. A
 * window of padding only gives y = 0, arg = -1. Avg sums in the same order
 * and divides by the full window. */
static __global__ void pool_fwd_kernel(int mode, const float *__restrict__ x, float *__restrict__ y,
                                       int32_t *__restrict__ arg, int H, int W, int KH, int KW,
                                       int stride, int pad, int OH, int OW, size_t total) {
    const int ohw = OH * OW;
    const float inv = 1.0f / (float)(KH * KW);
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        size_t pl = o / (size_t)ohw;
        int pix = (int)(o - pl * (size_t)ohw);
        int oh = pix / OW, ow = pix - oh * OW;
        int h0 = oh * stride - pad, h1 = h0 + KH;
        int w0 = ow * stride - pad, w1 = w0 + KW;
        h0 = h0 < 0 ? 0 : h0;
        h1 = h1 > H ? H : h1;
        w0 = w0 < 0 ? 0 : w0;
        w1 = w1 > W ? W : w1;
        const size_t base = pl * (size_t)H * W;
        const float *xp = x + base;
        if (mode == DV_POOL_AVG) {
            float sum = 0.0f;
            for (int ih = h0; ih < h1; ih++)
                for (int iw = w0; iw < w1; iw++)
                    sum += xp[ih * W + iw];
            y[o] = sum * inv;
            continue;
        }
        const int is_max = mode == DV_POOL_MAX;
        float best = 0.0f;
        int32_t bi = -1;
        for (int ih = h0; ih < h1; ih++)
            for (int iw = w0; iw < w1; iw++) {
                float v = xp[ih * W + iw];
                if (bi < 0 || (is_max ? v > best : v < best)) {
                    best = v;
                    bi = (int32_t)(base + (size_t)ih * W + iw);
                }
            }
        y[o] = best;
        arg[o] = bi;
    }
}

/* One thread per dx element: the windows that contain (ih, iw) are the
 * oh with oh*stride - pad <= ih < oh*stride - pad + KH (and the same for
 * ow); visiting them in (oh, ow) order adds in the order the CPU's scatter
 * does. Max/min take dy only where that window's winner is this element.
 * Overwrites dx. */
static __global__ void pool_bwd_kernel(int mode, const float *__restrict__ dy,
                                       float *__restrict__ dx, const int32_t *__restrict__ arg,
                                       int H, int W, int KH, int KW, int stride, int pad, int OH,
                                       int OW, size_t total) {
    const int hw = H * W;
    const float inv = 1.0f / (float)(KH * KW);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t pl = i / (size_t)hw;
        int rem = (int)(i - pl * (size_t)hw);
        int ih = rem / W, iw = rem - ih * W;
        int th = ih + pad - KH + 1, tw = iw + pad - KW + 1;
        int oh0 = th <= 0 ? 0 : (th + stride - 1) / stride;
        int ow0 = tw <= 0 ? 0 : (tw + stride - 1) / stride;
        int oh1 = (ih + pad) / stride, ow1 = (iw + pad) / stride; /* inclusive */
        oh1 = oh1 > OH - 1 ? OH - 1 : oh1;
        ow1 = ow1 > OW - 1 ? OW - 1 : ow1;
        const size_t ob = pl * (size_t)OH * OW;
        float acc = 0.0f;
        for (int oh = oh0; oh <= oh1; oh++)
            for (int ow = ow0; ow <= ow1; ow++) {
                size_t o = ob + (size_t)oh * OW + ow;
                if (mode == DV_POOL_AVG)
                    acc += __fmul_rn(dy[o], inv); /* no FMA: the CPU rounds dy*inv first */
                else if (arg[o] >= 0 && (size_t)arg[o] == i)
                    acc += dy[o];
            }
        dx[i] = acc;
    }
}

extern "C" void dv_cuda_pool2d_forward(void *ctx, dv_pool mode, const dv_conv2d_geom *g,
                                       const float *x, float *y, int32_t *arg) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    const size_t n = (size_t)g->B * g->C * g->OH * g->OW;
    if (n == 0 || g->OH <= 0 || g->OW <= 0) return;
    pool_fwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
        (int)mode, x, y, arg, g->H, g->W, g->KH, g->KW, g->stride, g->pad, g->OH, g->OW, n);
    DV_CUDA_LAUNCHED(cx, "pool_fwd_kernel");
}

extern "C" void dv_cuda_pool2d_backward(void *ctx, dv_pool mode, const dv_conv2d_geom *g,
                                        const float *dy, float *dx, const int32_t *arg) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    const size_t n = (size_t)g->B * g->C * g->H * g->W;
    if (n == 0 || g->OH <= 0 || g->OW <= 0) return;
    pool_bwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
        (int)mode, dy, dx, arg, g->H, g->W, g->KH, g->KW, g->stride, g->pad, g->OH, g->OW, n);
    DV_CUDA_LAUNCHED(cx, "pool_bwd_kernel");
}
