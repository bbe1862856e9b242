/* rnn_cuda.cu — the CUDA versions of the recurrent cells of
 * kernels/cpu/rnn_cpu.c (one LSTM or GRU time step, forward and backward),
 * with the same contracts (ops.def); the formulas are derived in rnn_cpu.c.
 *
 * One thread per unit (b, j) of the (B, H) state, in a grid-stride loop;
 * a thread reads its unit's gates before it writes anything, as the CPU
 * loop does. Products and sums go through __fmul_rn/__fadd_rn/__fsub_rn in
 * the CPU's order, so nvcc cannot fuse them into FMAs the CPU (ISO C, no
 * contraction) does not do: the only differences left are those of the
 * device's expf/tanhf.
 *
 * Assumes: every pointer is device memory; launches go on cx->stream and
 * nothing synchronizes.
 */
#include "cuda-impl.h"

#include <math.h>

static __device__ __forceinline__ float sigmoid_d(float x) {
    return 1.0f / (1.0f + expf(-x));
}

static __device__ __forceinline__ float mul(float a, float b) {
    return __fmul_rn(a, b);
}

static __device__ __forceinline__ float add(float a, float b) {
    return __fadd_rn(a, b);
}

static __device__ __forceinline__ float sub(float a, float b) {
    return __fsub_rn(a, b);
}

/* ---- LSTM: rows of gates are [i | f | g | o] ---------------------------- */

static __global__ void lstm_fwd_kernel(int H, size_t n, float *gates, const float *c_prev, float *c,
                                       float *h) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t u = (size_t)blockIdx.x * blockDim.x + threadIdx.x; u < n; u += step) {
        const size_t b = u / (size_t)H, j = u - b * (size_t)H;
        float *gr = gates + b * 4 * (size_t)H;
        const float ig = sigmoid_d(gr[j]);
        const float fg = sigmoid_d(gr[H + j]);
        const float gg = tanhf(gr[2 * H + j]);
        const float og = sigmoid_d(gr[3 * H + j]);
        const float cp = c_prev ? c_prev[u] : 0.0f;
        const float cn = add(mul(fg, cp), mul(ig, gg));
        gr[j] = ig;
        gr[H + j] = fg;
        gr[2 * H + j] = gg;
        gr[3 * H + j] = og;
        c[u] = cn;
        h[u] = mul(og, tanhf(cn));
    }
}

static __global__ void lstm_bwd_kernel(int H, size_t n, const float *gates, const float *c_prev,
                                       const float *c, const float *dh, const float *dc,
                                       float *dgates, float *dc_prev) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t u = (size_t)blockIdx.x * blockDim.x + threadIdx.x; u < n; u += step) {
        const size_t b = u / (size_t)H, j = u - b * (size_t)H;
        const float *gr = gates + b * 4 * (size_t)H;
        float *dr = dgates + b * 4 * (size_t)H;
        const float ig = gr[j], fg = gr[H + j], gg = gr[2 * H + j], og = gr[3 * H + j];
        const float cp = c_prev ? c_prev[u] : 0.0f;
        const float t = tanhf(c[u]);
        const float dhv = dh[u];
        const float dct = add(dc ? dc[u] : 0.0f, mul(mul(dhv, og), sub(1.0f, mul(t, t))));
        const float d_o = mul(dhv, t);
        const float d_i = mul(dct, gg);
        const float d_f = mul(dct, cp);
        const float d_g = mul(dct, ig);
        if (dc_prev) dc_prev[u] = mul(dct, fg);
        dr[j] = mul(mul(d_i, ig), sub(1.0f, ig));
        dr[H + j] = mul(mul(d_f, fg), sub(1.0f, fg));
        dr[2 * H + j] = mul(d_g, sub(1.0f, mul(gg, gg)));
        dr[3 * H + j] = mul(mul(d_o, og), sub(1.0f, og));
    }
}

/* ---- GRU: rows of gi, gh are [r | z | n], of save [r | z | n | gh_n] ---- */

static __global__ void gru_fwd_kernel(int H, size_t n, const float *gi, const float *gh,
                                      const float *h_prev, float *h, float *save) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t u = (size_t)blockIdx.x * blockDim.x + threadIdx.x; u < n; u += step) {
        const size_t b = u / (size_t)H, j = u - b * (size_t)H;
        const float *xi = gi + b * 3 * (size_t)H, *xh = gh + b * 3 * (size_t)H;
        float *sr = save + b * 4 * (size_t)H;
        const float r = sigmoid_d(add(xi[j], xh[j]));
        const float z = sigmoid_d(add(xi[H + j], xh[H + j]));
        const float ghn = xh[2 * H + j];
        const float nn = tanhf(add(xi[2 * H + j], mul(r, ghn)));
        const float hp = h_prev ? h_prev[u] : 0.0f;
        sr[j] = r;
        sr[H + j] = z;
        sr[2 * H + j] = nn;
        sr[3 * H + j] = ghn;
        h[u] = add(mul(sub(1.0f, z), nn), mul(z, hp));
    }
}

static __global__ void gru_bwd_kernel(int H, size_t n, const float *save, const float *h_prev,
                                      const float *dh, float *dgi, float *dgh, float *dh_prev) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t u = (size_t)blockIdx.x * blockDim.x + threadIdx.x; u < n; u += step) {
        const size_t b = u / (size_t)H, j = u - b * (size_t)H;
        const float *sr = save + b * 4 * (size_t)H;
        float *di = dgi + b * 3 * (size_t)H, *dg = dgh + b * 3 * (size_t)H;
        const float r = sr[j], z = sr[H + j], nn = sr[2 * H + j], ghn = sr[3 * H + j];
        const float hp = h_prev ? h_prev[u] : 0.0f;
        const float dhv = dh[u];
        const float dn = mul(dhv, sub(1.0f, z));
        const float dz = mul(dhv, sub(hp, nn));
        const float dan = mul(dn, sub(1.0f, mul(nn, nn)));
        const float dr = mul(dan, ghn);
        const float daz = mul(mul(dz, z), sub(1.0f, z));
        const float dar = mul(mul(dr, r), sub(1.0f, r));
        if (dh_prev) dh_prev[u] = mul(dhv, z);
        di[j] = dar;
        di[H + j] = daz;
        di[2 * H + j] = dan;
        dg[j] = dar;
        dg[H + j] = daz;
        dg[2 * H + j] = mul(dan, r);
    }
}

/* ---- the table's entries ------------------------------------------------ */

void dv_cuda_lstm_cell_forward(void *ctx, int B, int H, float *gates, const float *c_prev, float *c,
                               float *h) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || H <= 0) return;
    const size_t n = (size_t)B * H;
    lstm_fwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(H, n, gates, c_prev,
                                                                               c, h);
    DV_CUDA_LAUNCHED(cx, "lstm_fwd_kernel");
}

void dv_cuda_lstm_cell_backward(void *ctx, int B, int H, const float *gates, const float *c_prev,
                                const float *c, const float *dh, const float *dc, float *dgates,
                                float *dc_prev) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || H <= 0) return;
    const size_t n = (size_t)B * H;
    lstm_bwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
        H, n, gates, c_prev, c, dh, dc, dgates, dc_prev);
    DV_CUDA_LAUNCHED(cx, "lstm_bwd_kernel");
}

void dv_cuda_gru_cell_forward(void *ctx, int B, int H, const float *gi, const float *gh,
                              const float *h_prev, float *h, float *save) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || H <= 0) return;
    const size_t n = (size_t)B * H;
    gru_fwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(H, n, gi, gh, h_prev,
                                                                              h, save);
    DV_CUDA_LAUNCHED(cx, "gru_fwd_kernel");
}

void dv_cuda_gru_cell_backward(void *ctx, int B, int H, const float *save, const float *h_prev,
                               const float *dh, float *dgi, float *dgh, float *dh_prev) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || H <= 0) return;
    const size_t n = (size_t)B * H;
    gru_bwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
        H, n, save, h_prev, dh, dgi, dgh, dh_prev);
    DV_CUDA_LAUNCHED(cx, "gru_bwd_kernel");
}
