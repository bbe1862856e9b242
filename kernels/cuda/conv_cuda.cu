/* conv_cuda.cu — convolution and pooling on the GPU: the CUDA versions of the
 * CPU ops in kernels/cpu/ops_cpu.c, with the same contracts (ops.def).
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
 * Nothing here uses atomics: db is a fixed-order two-stage reduction, col2im
 * and the pooling backward are gathers (one thread per input element that
 * sums, in a fixed order, what every window that saw it contributed), so
 * results are the same from run to run. Pooling adds in the CPU's order,
 * so it matches the CPU bit for bit (col2im does too, but its columns come
 * from a GEMM that rounds differently).
 *
 * Assumes: every pointer is device memory; every launch goes on cx->stream
 * and nothing synchronizes; dv_cuda_gemm is row-major (as dv_cpu_gemm) and
 * applies the backend's precision; shapes fit int as ops.def says (flat
 * indices are size_t). A pooling mode outside dv_pool launches nothing:
 * the op records it (DV_BAD_ENUM) for check.
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
 * + kw, as the CPU's im2col for one sample, samples side by side. A thread
 * owns a column and walks a run of rows (blockIdx.y picks the run): its
 * divisions are done once, each row costs a load and a store, and a warp
 * stores 32 consecutive floats of a row. */
static __global__ void im2col_kernel(const float *__restrict__ x, float *__restrict__ cols, int C,
                                     int H, int W, int KH, int KW, int stride, int pad, int OW,
                                     int ohw, int ncols) {
    const int ckk = C * KH * KW;
    const int per = (ckk + (int)gridDim.y - 1) / (int)gridDim.y;
    const int r0 = (int)blockIdx.y * per, r1 = r0 + per < ckk ? r0 + per : ckk;
    if (r0 >= r1) return;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < ncols; j += gridDim.x * blockDim.x) {
        const int b = j / ohw, pix = j - b * ohw;
        const int oh = pix / OW, ow = pix - oh * OW;
        const int h0 = oh * stride - pad, w0 = ow * stride - pad;
        int kw = r0 % KW, kh = (r0 / KW) % KH, c = r0 / (KW * KH);
        const float *xb = x + (size_t)b * C * H * W;
        float *out = cols + (size_t)r0 * ncols + j;
        for (int r = r0; r < r1; r++) {
            const int ih = h0 + kh, iw = w0 + kw;
            float v = 0.0f;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = xb[((size_t)c * H + ih) * W + iw];
            *out = v;
            out += ncols;
            if (++kw == KW) {
                kw = 0;
                if (++kh == KH) {
                    kh = 0;
                    c++;
                }
            }
        }
    }
}

/* The launch of im2col_kernel for ncols columns: enough blocks of columns,
 * times runs of rows, to fill the GPU a few times over. */
static void im2col_launch(dv_cuda_ctx *cx, const float *x, float *cols, const dv_conv2d_geom *g,
                          int ohw, int ncols) {
    const int ckk = g->C * g->KH * g->KW;
    const unsigned bx = (unsigned)((ncols + DV_CUDA_THREADS - 1) / DV_CUDA_THREADS);
    const unsigned want = (unsigned)(cx->num_sms > 0 ? cx->num_sms : 80) * 8;
    unsigned by = bx >= want ? 1u : (want + bx - 1) / bx;
    if (by > (unsigned)ckk) by = (unsigned)ckk;
    if (by > 65535u) by = 65535u;
    im2col_kernel<<<dim3(bx, by), DV_CUDA_THREADS, 0, cx->stream>>>(
        x, cols, g->C, g->H, g->W, g->KH, g->KW, g->stride, g->pad, g->OW, ohw, ncols);
    DV_CUDA_LAUNCHED(cx, "im2col_kernel");
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

/* db (F) += sum over B and OHW of dy (B, F, OHW), in two fixed-order
 * stages so the sum never depends on timing: block (f, p) adds channel f
 * over its share of the samples, [B*p/P, B*(p+1)/P), each thread a fixed
 * strided subset and then a tree in shared memory, into part (F, P); then
 * one thread per channel adds its P partials in order. Needs blockDim.x ==
 * DV_CUDA_THREADS. */
static __global__ void conv_db_part_kernel(const float *__restrict__ dy, float *__restrict__ part,
                                           int B, int F, int ohw) {
    __shared__ float sh[DV_CUDA_THREADS];
    const int f = blockIdx.x, p = blockIdx.y, P = gridDim.y;
    const int b0 = (int)((long long)B * p / P), b1 = (int)((long long)B * (p + 1) / P);
    const long long n = (long long)(b1 - b0) * ohw;
    float s = 0.0f;
    for (long long k = threadIdx.x; k < n; k += blockDim.x) {
        const int db = (int)(k / ohw), pix = (int)(k - (long long)db * ohw);
        s += dy[((size_t)(b0 + db) * F + f) * ohw + pix];
    }
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int h = DV_CUDA_THREADS / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) sh[threadIdx.x] += sh[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[(size_t)f * P + p] = sh[0];
}

static __global__ void conv_db_sum_kernel(const float *__restrict__ part, float *__restrict__ db,
                                          int F, int P) {
    for (int f = blockIdx.x * blockDim.x + threadIdx.x; f < F; f += gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int p = 0; p < P; p++)
            s += part[(size_t)f * P + p];
        db[f] += s;
    }
}

/* dx (nb, C, H, W) = the column gradient dcols (CKK, nb*OHW) folded back:
 * each thread owns one dx element and adds the columns that read it, in
 * (kh, kw) order as the CPU's col2im does, so no two threads write one
 * element and no atomics are needed; blockIdx.y walks the (b, c) planes.
 * Overwrites dx. */
static __global__ void col2im_kernel(const float *__restrict__ dcols, float *__restrict__ dx, int C,
                                     int H, int W, int KH, int KW, int stride, int pad, int OH,
                                     int OW, int ncols, int planes) {
    const int ohw = OH * OW, hw = H * W;
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) { /* b*C + c */
        const int b = plane / C, c = plane - b * C;
        const float *src = dcols + (size_t)b * ohw;
        float *dst = dx + (size_t)plane * hw;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hw; i += gridDim.x * blockDim.x) {
            const int ih = i / W, iw = i - ih * W;
            float acc = 0.0f;
            for (int kh = 0; kh < KH; kh++) {
                const int th = ih + pad - kh; /* = oh * stride */
                if (th < 0 || th % stride) continue;
                const int oh = th / stride;
                if (oh >= OH) continue;
                for (int kw = 0; kw < KW; kw++) {
                    const int tw = iw + pad - kw;
                    if (tw < 0 || tw % stride) continue;
                    const int ow = tw / stride;
                    if (ow >= OW) continue;
                    const size_t row = ((size_t)c * KH + kh) * KW + kw;
                    acc += src[row * ncols + oh * OW + ow];
                }
            }
            dst[i] = acc;
        }
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
        im2col_launch(cx, x + (size_t)b0 * xs, cols, g, p.ohw, ncols);
        /* t (F, ncols) = w (F, CKK) cols (CKK, ncols) */
        dv_cuda_gemm(cx, 0, 0, g->F, ncols, p.ckk, 1.0f, w, cols, 0.0f, t);
        size_t n = (size_t)nb * ys;
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
        /* from dy itself: the same sum whatever the chunking. P partials
         * per channel, enough blocks to fill the GPU; they sit at the
         * start of the workspace (F*P <= F*bc <= its temporary part) until
         * conv_db_sum_kernel has read them. */
        const int want = 4 * (cx->num_sms > 0 ? cx->num_sms : 80);
        int P = (want + g->F - 1) / g->F;
        if (P > p.bc) P = p.bc;
        if (P > 65535) P = 65535;
        conv_db_part_kernel<<<dim3((unsigned)g->F, (unsigned)P), DV_CUDA_THREADS, 0, cx->stream>>>(
            dy, work, g->B, g->F, p.ohw);
        DV_CUDA_LAUNCHED(cx, "conv_db_part_kernel");
        conv_db_sum_kernel<<<(unsigned)((g->F + DV_CUDA_THREADS - 1) / DV_CUDA_THREADS),
                             DV_CUDA_THREADS, 0, cx->stream>>>(work, db, g->F, P);
        DV_CUDA_LAUNCHED(cx, "conv_db_sum_kernel");
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
            im2col_launch(cx, x + (size_t)b0 * xs, cols, g, p.ohw, ncols);
            /* dw (F, CKK) += dyT (F, ncols) cols^T (ncols, CKK) */
            dv_cuda_gemm(cx, 0, 1, g->F, p.ckk, ncols, 1.0f, dyt, cols, 1.0f, dw);
        }
        if (dx) {
            /* dcols (CKK, ncols) = w^T (CKK, F) dyT (F, ncols), into cols:
             * stream order puts it after the dw GEMM has read them */
            dv_cuda_gemm(cx, 1, 0, p.ckk, ncols, g->F, 1.0f, w, dyt, 0.0f, cols);
            const int planes = nb * g->C, hw = g->H * g->W;
            const unsigned bx = (unsigned)((hw + DV_CUDA_THREADS - 1) / DV_CUDA_THREADS);
            col2im_kernel<<<dim3(bx, planes < 65535 ? (unsigned)planes : 65535u), DV_CUDA_THREADS,
                            0, cx->stream>>>(cols, dx + (size_t)b0 * xs, g->C, g->H, g->W, g->KH,
                                             g->KW, g->stride, g->pad, g->OH, g->OW, ncols, planes);
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
    if (DV_BAD_ENUM(cx->err, dv_pool, mode, DV_POOL_COUNT)) return;
    const size_t n = (size_t)g->B * g->C * g->OH * g->OW;
    if (n == 0 || g->OH <= 0 || g->OW <= 0) return;
    pool_fwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
        (int)mode, x, y, arg, g->H, g->W, g->KH, g->KW, g->stride, g->pad, g->OH, g->OW, n);
    DV_CUDA_LAUNCHED(cx, "pool_fwd_kernel");
}

extern "C" void dv_cuda_pool2d_backward(void *ctx, dv_pool mode, const dv_conv2d_geom *g,
                                        const float *dy, float *dx, const int32_t *arg) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (DV_BAD_ENUM(cx->err, dv_pool, mode, DV_POOL_COUNT)) return;
    const size_t n = (size_t)g->B * g->C * g->H * g->W;
    if (n == 0 || g->OH <= 0 || g->OW <= 0) return;
    pool_bwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
        (int)mode, dy, dx, arg, g->H, g->W, g->KH, g->KW, g->stride, g->pad, g->OH, g->OW, n);
    DV_CUDA_LAUNCHED(cx, "pool_bwd_kernel");
}

/* ---- upsampling ------------------------------------------------------------ */

/* One thread per output (forward) or per input element (backward, the s*s
 * sum in the CPU's row-major order, so the same bits). */
static __global__ void upsample_fwd_kernel(const float *__restrict__ x, float *__restrict__ y,
                                           int H, int W, int s, size_t total) {
    const int OH = H * s, OW = W * s;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const size_t pl = o / ((size_t)OH * OW);
        const int pix = (int)(o - pl * (size_t)OH * OW), i = pix / OW, j = pix - i * OW;
        y[o] = x[(pl * H + i / s) * W + j / s];
    }
}

static __global__ void upsample_bwd_kernel(const float *__restrict__ dy, float *__restrict__ dx,
                                           int W, int s, size_t total) {
    const int OW = W * s;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t row = e / W; /* plane * H + i */
        const int j = (int)(e - row * W);
        const float *dr = dy + row * s * OW;
        float acc = 0.0f;
        for (int r = 0; r < s; r++)
            for (int c = 0; c < s; c++)
                acc += dr[(size_t)r * OW + (size_t)j * s + c];
        dx[e] = acc;
    }
}

extern "C" void dv_cuda_upsample_forward(void *ctx, int n, int H, int W, int s, const float *x,
                                         float *y) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    const size_t total = (size_t)n * H * W * s * s;
    if (!total) return;
    upsample_fwd_kernel<<<dv_cuda_blocks(cx, total), DV_CUDA_THREADS, 0, cx->stream>>>(x, y, H, W,
                                                                                       s, total);
    DV_CUDA_LAUNCHED(cx, "upsample_fwd_kernel");
}

extern "C" void dv_cuda_upsample_backward(void *ctx, int n, int H, int W, int s, const float *dy,
                                          float *dx) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    const size_t total = (size_t)n * H * W;
    if (!total) return;
    upsample_bwd_kernel<<<dv_cuda_blocks(cx, total), DV_CUDA_THREADS, 0, cx->stream>>>(dy, dx, W, s,
                                                                                       total);
    DV_CUDA_LAUNCHED(cx, "upsample_bwd_kernel");
}
