/* ops_cuda.cu — the CUDA versions of the elementwise, activation, dropout,
 * batch-norm, loss, optimizer and reduction ops of kernels/cpu/ops_cpu.c,
 * with the same contracts (ops.def).
 *
 * Nothing here uses float atomics, so results are the same from run to run:
 *  - per-channel sums (bias backward, batch norm) split each channel's B*S
 *    elements into G chunks, G a function of the shape only; block (c, g)
 *    sums its chunk in a fixed order (thread strides, then a shuffle and
 *    shared-memory tree) into scratch, and the next kernel adds the G
 *    partials of a channel in order;
 *  - losses give one warp per row, write each row's loss and "correct" to
 *    scratch, and one block adds those in a fixed tree order into stats;
 *  - sumsq uses a grid that depends on n only, so every GPU (and so every
 *    rank) gets the same bits for the same gradient.
 * Sums the CPU keeps in double (batch-norm statistics, loss totals, sumsq)
 * are double here too.
 *
 * The optimizer, axpy and a few others use __fmul_rn/__fadd_rn: they stop nvcc from
 * fusing a*b + c into an FMA, which the CPU build (ISO C, so no
 * contraction) never does, so those results match the CPU bit for bit.
 *
 * Assumes: every pointer is device memory; every launch goes on cx->stream
 * and nothing synchronizes except sumsq, which must return a host value;
 * blocks have DV_CUDA_THREADS threads (a multiple of 32) unless noted. An
 * activation or optimizer kind outside its enum launches nothing: the op
 * records it (DV_BAD_ENUM) for check, so the kernels see known values only.
 */
#include "cuda-impl.h"

#include <math.h>
#include <string.h>

#define FULL_MASK 0xffffffffu

/* ---- small device helpers ---------------------------------------------- */

/* Almost every tensor has fewer than 2^32 elements, and a 32-bit division
 * is several times cheaper than a 64-bit one on the GPU. */
static __device__ __forceinline__ size_t udiv(size_t a, size_t b) {
    if (((a | b) >> 32) == 0) return (size_t)((unsigned)a / (unsigned)b);
    return a / b;
}

static __device__ __forceinline__ size_t umod(size_t a, size_t b) {
    return a - udiv(a, b) * b;
}

/* Butterfly (xor) reductions: every lane ends with the same bits, since
 * each step adds the same two values (a + b == b + a exactly). All 32 lanes
 * must be active. */
static __device__ __forceinline__ float warp_sum_f(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max_f(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

/* Sum over a 1-D block, returned to every thread. Every thread of the
 * block must call it (it synchronizes); blockDim.x a multiple of 32. The
 * last __syncthreads lets a second call reuse the shared slots. */
static __device__ double block_sum_d(double v) {
    __shared__ double sh[33];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum_d(v);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0;
        v = warp_sum_d(v);
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    v = sh[32];
    __syncthreads();
    return v;
}

/* argmax_f of ops_cpu.c over x (n >= 1) by one warp, returned to every
 * lane: the first index of the largest value, NaN never wins, and (as on
 * the CPU, where nothing compares greater than a NaN x[0]) a NaN x[0] gives
 * 0. Each lane keeps its first best (strict >); lanes then pick by value,
 * then by the lower index, which is a fixed total order, so the result
 * does not depend on the pairing. */
static __device__ int warp_argmax(const float *x, int n) {
    const int lane = threadIdx.x & 31;
    float bv = 0.0f;
    int bi = -1;
    for (int k = lane; k < n; k += 32) {
        float v = x[k];
        if (!isnan(v) && (bi < 0 || v > bv)) {
            bv = v;
            bi = k;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, bv, o);
        int oi = __shfl_xor_sync(FULL_MASK, bi, o);
        if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
            bv = ov;
            bi = oi;
        }
    }
    if (bi < 0 || isnan(x[0])) bi = 0;
    return bi;
}

/* Rows handled one warp per row, warps striding over the rows: a row
 * index is the same for the 32 lanes of a warp, so shuffles inside see all
 * lanes. */
static __device__ __forceinline__ size_t warp_first(void) {
    return ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
}

static __device__ __forceinline__ size_t warp_count(void) {
    return ((size_t)gridDim.x * blockDim.x) >> 5;
}

/* Blocks of DV_CUDA_THREADS threads (8 warps) for one warp per row. */
static unsigned warp_grid(const dv_cuda_ctx *cx, size_t rows) {
    return dv_cuda_blocks(cx, rows * 32);
}

/* ---- per-channel walks over (B, C, S) ---------------------------------- */

/* Channel c of x (B, C, S) holds N = B*S elements, k = b*S + s. A grid of
 * (C, G) blocks gives block (c, g) the k in [g*chunk, (g+1)*chunk), chunk
 * = ceil(N / G), and thread t takes k0 + t, k0 + t + T, ...; (b, s) is
 * stepped along without a division per element. */
typedef struct chan_walk {
    size_t k, end; /* current k; end of this block's range */
    size_t b;
    int s;
    int db, ds; /* T / S and T % S: the step of (b, s) */
} chan_walk;

/* Chunks per channel: ~4096 elements a block, at most 64 partials to add.
 * It depends on N only, so the sum order is the same on every GPU. */
#define CHAN_ELEMS_PER_BLOCK 4096
#define CHAN_MAX_SPLIT       64

static int chan_split(size_t N) {
    size_t g = (N + CHAN_ELEMS_PER_BLOCK - 1) / CHAN_ELEMS_PER_BLOCK;
    if (g > CHAN_MAX_SPLIT) g = CHAN_MAX_SPLIT;
    return g < 1 ? 1 : (int)g;
}

static __device__ void chan_walk_init(chan_walk *w, size_t N, int S) {
    const size_t chunk = (N + gridDim.y - 1) / gridDim.y;
    const size_t k0 = (size_t)blockIdx.y * chunk;
    w->end = k0 + chunk < N ? k0 + chunk : N;
    w->k = k0 + threadIdx.x;
    w->b = 0;
    w->s = w->db = w->ds = 0;
    if (w->k >= w->end) return; /* also keeps S == 0 away from the divisions */
    w->b = udiv(w->k, (size_t)S);
    w->s = (int)(w->k - w->b * (size_t)S);
    w->db = (int)(blockDim.x / (unsigned)S);
    w->ds = (int)(blockDim.x % (unsigned)S);
}

static __device__ __forceinline__ void chan_walk_next(chan_walk *w, int S) {
    w->k += blockDim.x;
    w->b += (size_t)w->db;
    w->s += w->ds;
    if (w->s >= S) { /* s + ds < 2S, so one carry is enough */
        w->s -= S;
        w->b++;
    }
}

/* Offset of the walk's element in x (B, C, S). */
static __device__ __forceinline__ size_t chan_off(const chan_walk *w, int C, int S, int c) {
    return (w->b * (size_t)C + (size_t)c) * (size_t)S + (size_t)w->s;
}

/* Sum of channel c's G partials, in order; every thread may call it and
 * gets the same bits. */
static __device__ double chan_total(const double *part, int c, int G) {
    double t = 0.0;
    for (int g = 0; g < G; g++)
        t += part[(size_t)c * G + g];
    return t;
}

/* part[c*G + g] = sum of block (c, g)'s chunk of x (B, C, S). */
static __global__ void chan_sum_kernel(const float *__restrict__ x, int B, int C, int S,
                                       double *__restrict__ part) {
    const int c = blockIdx.x;
    const size_t N = (size_t)B * S;
    double acc = 0.0;
    chan_walk w;
    for (chan_walk_init(&w, N, S); w.k < w.end; chan_walk_next(&w, S))
        acc += (double)x[chan_off(&w, C, S, c)];
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) part[(size_t)c * gridDim.y + blockIdx.y] = acc;
}

/* ---- bias --------------------------------------------------------------- */

static __global__ void bias_fwd_kernel(float *y, const float *__restrict__ bias, int C, int S,
                                       size_t n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        y[i] += bias[umod(udiv(i, (size_t)S), (size_t)C)];
}

/* Dense (S == 1): dy (B, C) is read row by row so a warp's loads are
 * contiguous; a (32, BIAS_ROWS) block owns 32 columns, thread (x, y) sums
 * rows y, y + BIAS_ROWS, ..., and row y == 0 adds the BIAS_ROWS partials
 * in order. */
#define BIAS_ROWS 8

static __global__ void bias_bwd_dense_kernel(const float *__restrict__ dy,
                                             float *__restrict__ dbias, int B, int C) {
    __shared__ double sh[BIAS_ROWS][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    double acc = 0.0;
    if (c < C)
        for (int b = threadIdx.y; b < B; b += BIAS_ROWS)
            acc += (double)dy[(size_t)b * C + c];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        double t = 0.0;
        for (int j = 0; j < BIAS_ROWS; j++)
            t += sh[j][threadIdx.x];
        dbias[c] += (float)t;
    }
}

/* dst[c] += channel c's total of the G partials; one thread per channel. */
static __global__ void chan_add_kernel(const double *__restrict__ part, int C, int G,
                                       float *__restrict__ dst) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) dst[c] += (float)chan_total(part, c, G);
}

void dv_cuda_bias_forward(void *ctx, float *y, const float *bias, int B, int C, int S) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    const size_t n = (size_t)B * C * S;
    if (B <= 0 || C <= 0 || S <= 0) return;
    bias_fwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(y, bias, C, S, n);
    DV_CUDA_LAUNCHED(cx, "bias_fwd_kernel");
}

void dv_cuda_bias_backward(void *ctx, const float *dy, float *dbias, int B, int C, int S) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || C <= 0 || S <= 0) return;
    if (S == 1) {
        const dim3 block(32, BIAS_ROWS);
        bias_bwd_dense_kernel<<<(unsigned)((C + 31) / 32), block, 0, cx->stream>>>(dy, dbias, B, C);
        DV_CUDA_LAUNCHED(cx, "bias_bwd_dense_kernel");
        return;
    }
    const int G = chan_split((size_t)B * S);
    double *part = (double *)dv_cuda_scratch(cx, (size_t)C * G * sizeof(double));
    if (!part) return;
    chan_sum_kernel<<<dim3((unsigned)C, (unsigned)G), DV_CUDA_THREADS, 0, cx->stream>>>(dy, B, C, S,
                                                                                        part);
    if (DV_CUDA_LAUNCHED(cx, "chan_sum_kernel")) return;
    chan_add_kernel<<<(unsigned)((C + DV_CUDA_THREADS - 1) / DV_CUDA_THREADS), DV_CUDA_THREADS, 0,
                      cx->stream>>>(part, C, G, dbias);
    DV_CUDA_LAUNCHED(cx, "chan_add_kernel");
}

/* ---- activations -------------------------------------------------------- */

/* x and y may be the same buffer: each element is read before it is
 * written, by the same thread, so no __restrict__. */
static __global__ void act_fwd_kernel(int act, float alpha, const float *x, float *y, size_t n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const float v = x[i];
        float r;
        switch (act) {
        case DV_ACT_RELU:
            r = v > 0.0f ? v : 0.0f;
            break;
        case DV_ACT_LEAKY_RELU:
            r = v > 0.0f ? v : alpha * v;
            break;
        case DV_ACT_SIGMOID:
            r = 1.0f / (1.0f + expf(-v));
            break;
        case DV_ACT_TANH:
            r = tanhf(v);
            break;
        default:
            r = v;
            break;
        }
        y[i] = r;
    }
}

/* From the forward's output y, as the CPU. dx may be dy. */
static __global__ void act_bwd_kernel(int act, float alpha, const float *y, const float *dy,
                                      float *dx, size_t n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const float yi = y[i], d = dy[i];
        float r;
        switch (act) {
        case DV_ACT_RELU:
            r = yi > 0.0f ? d : 0.0f;
            break;
        case DV_ACT_LEAKY_RELU: /* y > 0 exactly where x > 0, for alpha >= 0 */
            r = yi > 0.0f ? d : alpha * d;
            break;
        case DV_ACT_SIGMOID:
            r = d * yi * (1.0f - yi);
            break;
        case DV_ACT_TANH: /* unfused, as the CPU: 1 - y*y rounded twice */
            r = d * __fsub_rn(1.0f, __fmul_rn(yi, yi));
            break;
        default:
            r = d;
            break;
        }
        dx[i] = r;
    }
}

/* Softmax over rows of x (rows, cols), one warp per row. In place works:
 * every lane has read its x[k] for the max before the shuffles let any lane
 * go on to write y, and later passes touch only the lane's own k. */
static __global__ void softmax_fwd_kernel(const float *x, float *y, size_t rows, int cols) {
    const int lane = threadIdx.x & 31;
    for (size_t r = warp_first(); r < rows; r += warp_count()) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float m = -INFINITY;
        for (int k = lane; k < cols; k += 32)
            m = fmaxf(m, xr[k]);
        m = warp_max_f(m);
        float s = 0.0f;
        for (int k = lane; k < cols; k += 32) {
            const float e = expf(xr[k] - m);
            yr[k] = e;
            s += e;
        }
        s = warp_sum_f(s);
        const float inv = 1.0f / s;
        for (int k = lane; k < cols; k += 32)
            yr[k] *= inv;
    }
}

/* dx = y * (dy - dot(dy, y)) per row; dx may be dy (the dot is complete
 * before any lane writes). */
static __global__ void softmax_bwd_kernel(const float *y, const float *dy, float *dx, size_t rows,
                                          int cols) {
    const int lane = threadIdx.x & 31;
    for (size_t r = warp_first(); r < rows; r += warp_count()) {
        const float *yr = y + r * cols, *dr = dy + r * cols;
        float *xr = dx + r * cols;
        float s = 0.0f;
        for (int k = lane; k < cols; k += 32)
            s += dr[k] * yr[k];
        s = warp_sum_f(s);
        for (int k = lane; k < cols; k += 32)
            xr[k] = yr[k] * (dr[k] - s);
    }
}

void dv_cuda_act_forward(void *ctx, dv_act act, float alpha, const float *x, float *y, size_t n,
                         int cols) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (DV_BAD_ENUM(cx->err, dv_act, act, DV_ACT_COUNT)) return;
    if (n == 0) return;
    if (act == DV_ACT_LINEAR) {
        if (x != y)
            DV_CUDA_CHECK(
                cx, cudaMemcpyAsync(y, x, n * sizeof *y, cudaMemcpyDeviceToDevice, cx->stream));
        return;
    }
    if (act == DV_ACT_SOFTMAX) {
        if (cols <= 0) return;
        const size_t rows = n / (size_t)cols;
        if (rows == 0) return;
        softmax_fwd_kernel<<<warp_grid(cx, rows), DV_CUDA_THREADS, 0, cx->stream>>>(x, y, rows,
                                                                                    cols);
        DV_CUDA_LAUNCHED(cx, "softmax_fwd_kernel");
        return;
    }
    act_fwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>((int)act, alpha, x, y,
                                                                              n);
    DV_CUDA_LAUNCHED(cx, "act_fwd_kernel");
}

void dv_cuda_act_backward(void *ctx, dv_act act, float alpha, const float *y, const float *dy,
                          float *dx, size_t n, int cols) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (DV_BAD_ENUM(cx->err, dv_act, act, DV_ACT_COUNT)) return;
    if (n == 0) return;
    if (act == DV_ACT_LINEAR) {
        if (dx != dy)
            DV_CUDA_CHECK(
                cx, cudaMemcpyAsync(dx, dy, n * sizeof *dx, cudaMemcpyDeviceToDevice, cx->stream));
        return;
    }
    if (act == DV_ACT_SOFTMAX) {
        if (cols <= 0) return;
        const size_t rows = n / (size_t)cols;
        if (rows == 0) return;
        softmax_bwd_kernel<<<warp_grid(cx, rows), DV_CUDA_THREADS, 0, cx->stream>>>(y, dy, dx, rows,
                                                                                    cols);
        DV_CUDA_LAUNCHED(cx, "softmax_bwd_kernel");
        return;
    }
    act_bwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>((int)act, alpha, y,
                                                                              dy, dx, n);
    DV_CUDA_LAUNCHED(cx, "act_bwd_kernel");
}

/* ---- dropout ------------------------------------------------------------ */

/* y may be x. The counter is the CPU's: row id times cols plus column. */
static __global__ void dropout_fwd_kernel(float rate, float keep, uint64_t seed,
                                          const int64_t *__restrict__ row_id, int cols, size_t n,
                                          const float *x, float *y, float *__restrict__ mask) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const size_t r = udiv(i, (size_t)cols), j = i - r * (size_t)cols;
        const uint64_t id = row_id ? (uint64_t)row_id[r] : (uint64_t)r;
        const float m =
            dv_cuda_rand_uniform(seed, id * (uint64_t)cols + (uint64_t)j) < rate ? 0.0f : keep;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

static __global__ void mul_kernel(const float *__restrict__ mask, const float *dy, float *dx,
                                  size_t n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        dx[i] = dy[i] * mask[i];
}

void dv_cuda_dropout_forward(void *ctx, float rate, uint64_t seed, const int64_t *row_id, int rows,
                             int cols, const float *x, float *y, float *mask) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (rows <= 0 || cols <= 0) return;
    const size_t n = (size_t)rows * cols;
    /* As the CPU: rate >= 1 drops everything (and must not divide by zero). */
    const float keep = rate < 1.0f ? 1.0f / (1.0f - rate) : 0.0f;
    dropout_fwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(
        rate, keep, seed, row_id, cols, n, x, y, mask);
    DV_CUDA_LAUNCHED(cx, "dropout_fwd_kernel");
}

void dv_cuda_dropout_backward(void *ctx, const float *mask, const float *dy, float *dx, size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (n == 0) return;
    mul_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(mask, dy, dx, n);
    DV_CUDA_LAUNCHED(cx, "mul_kernel");
}

/* ---- batch norm --------------------------------------------------------- */

/* The CPU's two passes in double: part_ss[c*G + g] = sum over block
 * (c, g)'s chunk of (x - mean)^2, the mean from chan_sum_kernel's
 * partials (every block adds them in the same order, so all agree). */
static __global__ void bn_sqdev_kernel(const float *__restrict__ x, int B, int C, int S,
                                       const double *__restrict__ part_sum,
                                       double *__restrict__ part_ss) {
    const int c = blockIdx.x, G = gridDim.y;
    const size_t N = (size_t)B * S;
    const double m = N ? chan_total(part_sum, c, G) / (double)N : 0.0;
    double acc = 0.0;
    chan_walk w;
    for (chan_walk_init(&w, N, S); w.k < w.end; chan_walk_next(&w, S)) {
        const double d = x[chan_off(&w, C, S, c)] - m;
        acc += d * d;
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) part_ss[(size_t)c * G + blockIdx.y] = acc;
}

/* y = a*x + k per channel. Training: the statistics come from the
 * partials, and block (c, 0) alone saves them and updates the running ones
 * (which training never reads). Eval: the running statistics. Unfused as
 * the CPU, so the same statistics give the CPU's bits (eval always does).
 * y may be x (each element is read, then written, by one thread). */
static __global__ void bn_apply_kernel(int training, int B, int C, int S, float eps, float momentum,
                                       const float *x, const float *__restrict__ gamma,
                                       const float *__restrict__ beta, const double *part_sum,
                                       const double *part_ss, float *running_mean,
                                       float *running_var, float *__restrict__ save_mean,
                                       float *__restrict__ save_invstd, float *y) {
    const int c = blockIdx.x, G = gridDim.y;
    const size_t N = (size_t)B * S;
    float mean, invstd;
    if (training) {
        const double m = N ? chan_total(part_sum, c, G) / (double)N : 0.0;
        const double ss = chan_total(part_ss, c, G);
        const double var = N ? ss / (double)N : 0.0;
        mean = (float)m;
        invstd = (float)(1.0 / sqrt(var + eps));
        if (blockIdx.y == 0 && threadIdx.x == 0) {
            if (save_mean) save_mean[c] = mean;
            if (save_invstd) save_invstd[c] = invstd;
            if (running_mean)
                running_mean[c] = __fadd_rn(__fmul_rn(1.0f - momentum, running_mean[c]),
                                            __fmul_rn(momentum, mean));
            if (running_var) {
                const double unbiased = N > 1 ? ss / (double)(N - 1) : var;
                running_var[c] = __fadd_rn(__fmul_rn(1.0f - momentum, running_var[c]),
                                           __fmul_rn(momentum, (float)unbiased));
            }
        }
    } else {
        mean = running_mean[c];
        invstd = 1.0f / sqrtf(running_var[c] + eps);
    }
    const float a = (gamma ? gamma[c] : 1.0f) * invstd;
    const float k = __fsub_rn(beta ? beta[c] : 0.0f, __fmul_rn(a, mean));
    chan_walk w;
    for (chan_walk_init(&w, N, S); w.k < w.end; chan_walk_next(&w, S)) {
        const size_t i = chan_off(&w, C, S, c);
        y[i] = __fadd_rn(__fmul_rn(a, x[i]), k);
    }
}

/* Partials of sum dy and sum dy * (x - mean) (the CPU's float product,
 * added in double). */
static __global__ void bn_bwd_sum_kernel(const float *__restrict__ x, const float *__restrict__ dy,
                                         const float *__restrict__ save_mean, int B, int C, int S,
                                         double *__restrict__ part_dy,
                                         double *__restrict__ part_dyx) {
    const int c = blockIdx.x, G = gridDim.y;
    const size_t N = (size_t)B * S;
    const float mean = save_mean[c];
    double a = 0.0, t = 0.0;
    chan_walk w;
    for (chan_walk_init(&w, N, S); w.k < w.end; chan_walk_next(&w, S)) {
        const size_t i = chan_off(&w, C, S, c);
        const float d = dy[i];
        a += (double)d;
        t += (double)(d * (x[i] - mean));
    }
    a = block_sum_d(a);
    t = block_sum_d(t);
    if (threadIdx.x == 0) {
        part_dy[(size_t)c * G + blockIdx.y] = a;
        part_dyx[(size_t)c * G + blockIdx.y] = t;
    }
}

/* Block (c, 0) adds into dgamma/dbeta; every block writes its chunk of
 * dx = gamma*invstd * (dy - mean(dy) - xhat * mean(dy*xhat)). dx may be
 * dy: the sums were finished by the previous kernel. */
static __global__ void
bn_bwd_apply_kernel(const float *__restrict__ x, const float *__restrict__ gamma,
                    const float *__restrict__ save_mean, const float *__restrict__ save_invstd,
                    const float *dy, float *dx, float *__restrict__ dgamma,
                    float *__restrict__ dbeta, int B, int C, int S,
                    const double *__restrict__ part_dy, const double *__restrict__ part_dyx) {
    const int c = blockIdx.x, G = gridDim.y;
    const size_t N = (size_t)B * S;
    const float mean = save_mean[c], invstd = save_invstd[c];
    const double sdy = chan_total(part_dy, c, G);
    const double sdyx = chan_total(part_dyx, c, G) * invstd;
    if (blockIdx.y == 0 && threadIdx.x == 0) {
        if (dbeta) dbeta[c] += (float)sdy;
        if (dgamma) dgamma[c] += (float)sdyx;
    }
    if (!dx) return;
    const float g = (gamma ? gamma[c] : 1.0f) * invstd;
    const float mdy = N ? (float)(sdy / (double)N) : 0.0f;
    const float mdyx = N ? (float)(sdyx / (double)N) : 0.0f;
    chan_walk w;
    for (chan_walk_init(&w, N, S); w.k < w.end; chan_walk_next(&w, S)) {
        const size_t i = chan_off(&w, C, S, c);
        dx[i] = g * (dy[i] - mdy - (x[i] - mean) * invstd * mdyx);
    }
}

void dv_cuda_batchnorm_forward(void *ctx, int training, int B, int C, int S, float eps,
                               float momentum, const float *x, const float *gamma,
                               const float *beta, float *running_mean, float *running_var,
                               float *save_mean, float *save_invstd, float *y) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (C <= 0 || B < 0 || S < 0) return;
    /* An empty batch still saves and updates statistics, as the CPU does;
     * the kernels then sum nothing, so the launches stay valid. */
    const size_t N = (size_t)B * S;
    const int G = chan_split(N);
    const dim3 grid((unsigned)C, (unsigned)G);
    double *part_sum = NULL, *part_ss = NULL;
    if (training) {
        part_sum = (double *)dv_cuda_scratch(cx, 2 * (size_t)C * G * sizeof(double));
        if (!part_sum) return;
        part_ss = part_sum + (size_t)C * G;
        chan_sum_kernel<<<grid, DV_CUDA_THREADS, 0, cx->stream>>>(x, B, C, S, part_sum);
        if (DV_CUDA_LAUNCHED(cx, "chan_sum_kernel")) return;
        bn_sqdev_kernel<<<grid, DV_CUDA_THREADS, 0, cx->stream>>>(x, B, C, S, part_sum, part_ss);
        if (DV_CUDA_LAUNCHED(cx, "bn_sqdev_kernel")) return;
    }
    bn_apply_kernel<<<grid, DV_CUDA_THREADS, 0, cx->stream>>>(
        training, B, C, S, eps, momentum, x, gamma, beta, part_sum, part_ss, running_mean,
        running_var, save_mean, save_invstd, y);
    DV_CUDA_LAUNCHED(cx, "bn_apply_kernel");
}

void dv_cuda_batchnorm_backward(void *ctx, int B, int C, int S, const float *x, const float *gamma,
                                const float *save_mean, const float *save_invstd, const float *dy,
                                float *dx, float *dgamma, float *dbeta) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || C <= 0 || S <= 0) return; /* the CPU adds nothing either */
    const size_t N = (size_t)B * S;
    const int G = chan_split(N);
    const dim3 grid((unsigned)C, (unsigned)G);
    double *part_dy = (double *)dv_cuda_scratch(cx, 2 * (size_t)C * G * sizeof(double));
    if (!part_dy) return;
    double *part_dyx = part_dy + (size_t)C * G;
    bn_bwd_sum_kernel<<<grid, DV_CUDA_THREADS, 0, cx->stream>>>(x, dy, save_mean, B, C, S, part_dy,
                                                                part_dyx);
    if (DV_CUDA_LAUNCHED(cx, "bn_bwd_sum_kernel")) return;
    bn_bwd_apply_kernel<<<grid, DV_CUDA_THREADS, 0, cx->stream>>>(
        x, gamma, save_mean, save_invstd, dy, dx, dgamma, dbeta, B, C, S, part_dy, part_dyx);
    DV_CUDA_LAUNCHED(cx, "bn_bwd_apply_kernel");
}

/* ---- losses ------------------------------------------------------------- */

/* Each loss kernel writes row i's loss to rl[i] and its "correct" (0 or 1)
 * to rc[i], both double as the CPU's running totals; loss_sum_kernel then
 * adds them in a fixed order into stats. */

static __global__ void xent_kernel(const float *__restrict__ logits,
                                   const int32_t *__restrict__ labels, int B, int K,
                                   float grad_scale, float *__restrict__ dlogits,
                                   double *__restrict__ rl, double *__restrict__ rc) {
    const int lane = threadIdx.x & 31;
    for (size_t i = warp_first(); i < (size_t)B; i += warp_count()) {
        const float *z = logits + i * K;
        float *d = dlogits + i * K;
        const int y = labels[i];
        if (y < 0 || y >= K) { /* ignored row: warp-uniform branch */
            for (int k = lane; k < K; k += 32)
                d[k] = 0.0f;
            if (lane == 0) rl[i] = rc[i] = 0.0;
            continue;
        }
        const int am = warp_argmax(z, K);
        const float m = z[am];
        float s = 0.0f;
        for (int k = lane; k < K; k += 32)
            s += expf(z[k] - m);
        s = warp_sum_f(s);
        const float inv = grad_scale / s;
        for (int k = lane; k < K; k += 32) {
            float e = expf(z[k] - m) * inv; /* the same bits as the sum's */
            if (k == y) e -= grad_scale;
            d[k] = e;
        }
        if (lane == 0) {
            /* loss = logsumexp(z) - z[y] = log(s) + m - z[y] */
            rl[i] = (double)logf(s) + (double)m - (double)z[y];
            rc[i] = am == y;
        }
    }
}

/* gs = grad_scale / K, from the host as the CPU computes it. */
static __global__ void bce_kernel(const float *__restrict__ logits,
                                  const float *__restrict__ targets, int B, int K, float gs,
                                  float *__restrict__ dlogits, double *__restrict__ rl,
                                  double *__restrict__ rc) {
    const int lane = threadIdx.x & 31;
    for (size_t i = warp_first(); i < (size_t)B; i += warp_count()) {
        const float *z = logits + i * K, *t = targets + i * K;
        float *d = dlogits + i * K;
        double l = 0.0;
        int agree = 1;
        for (int k = lane; k < K; k += 32) {
            const float zk = z[k], tk = t[k], e = expf(-fabsf(zk));
            /* max(z,0) - z t + log(1 + exp(-|z|)): no overflow for any z */
            l += (double)(fmaxf(zk, 0.0f) - zk * tk + log1pf(e));
            /* sigmoid from e = exp(-|z|), stable on both sides */
            const float sig = zk >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            d[k] = (sig - tk) * gs;
            agree &= (zk > 0.0f) == (tk >= 0.5f);
        }
        l = warp_sum_d(l);
        agree = __all_sync(FULL_MASK, agree);
        if (lane == 0) {
            rl[i] = l / K;
            rc[i] = agree ? 1.0 : 0.0;
        }
    }
}

/* gs = 2 * grad_scale / K, from the host as the CPU computes it. */
static __global__ void mse_kernel(const float *__restrict__ pred, const float *__restrict__ targets,
                                  int B, int K, float gs, float *__restrict__ dpred,
                                  double *__restrict__ rl, double *__restrict__ rc) {
    const int lane = threadIdx.x & 31;
    for (size_t i = warp_first(); i < (size_t)B; i += warp_count()) {
        const float *p = pred + i * K, *t = targets + i * K;
        float *d = dpred + i * K;
        double l = 0.0;
        for (int k = lane; k < K; k += 32) {
            const float e = p[k] - t[k];
            l += (double)e * e;
            d[k] = e * gs;
        }
        l = warp_sum_d(l);
        int ok;
        if (K == 1)
            ok = fabsf(p[0] - t[0]) < 0.5f;
        else
            ok = warp_argmax(p, K) == warp_argmax(t, K);
        if (lane == 0) {
            rl[i] = l / K;
            rc[i] = ok;
        }
    }
}

/* K == 1: predicted class is score > 0, d = (pred - target) * grad_scale.
 * K > 1: on a mistake d[pred] = grad_scale and d[label] = -grad_scale (when
 * the label is a class). Every other entry is 0. rl holds mistakes. */
static __global__ void perceptron_kernel(const float *__restrict__ scores,
                                         const int32_t *__restrict__ labels, int B, int K,
                                         float grad_scale, float *__restrict__ dscores,
                                         double *__restrict__ rl, double *__restrict__ rc) {
    const int lane = threadIdx.x & 31;
    for (size_t i = warp_first(); i < (size_t)B; i += warp_count()) {
        const float *z = scores + i * K;
        float *d = dscores + i * K;
        const int y = labels[i];
        if (K == 1) {
            if (lane == 0) {
                const int pred = z[0] > 0.0f, target = y != 0;
                d[0] = (float)(pred - target) * grad_scale;
                rl[i] = pred != target;
                rc[i] = pred == target;
            }
            continue;
        }
        const int pred = warp_argmax(z, K);
        const int wrong = pred != y;
        for (int k = lane; k < K; k += 32) {
            float v = 0.0f;
            if (wrong && k == pred)
                v = grad_scale;
            else if (wrong && k == y)
                v = -grad_scale;
            d[k] = v;
        }
        if (lane == 0) {
            rl[i] = wrong;
            rc[i] = !wrong;
        }
    }
}

/* stats[0] += sum of rl, stats[1] += sum of rc; one block. */
static __global__ void loss_sum_kernel(const double *__restrict__ rl, const double *__restrict__ rc,
                                       int B, float *__restrict__ stats) {
    double l = 0.0, c = 0.0;
    for (int i = threadIdx.x; i < B; i += blockDim.x) {
        l += rl[i];
        c += rc[i];
    }
    l = block_sum_d(l);
    c = block_sum_d(c);
    if (threadIdx.x == 0) {
        stats[0] += (float)l;
        stats[1] += (float)c;
    }
}

/* Scratch for the per-row results: rl (B) then rc (B). */
static double *loss_rows(dv_cuda_ctx *cx, int B) {
    return (double *)dv_cuda_scratch(cx, 2 * (size_t)B * sizeof(double));
}

static void loss_finish(dv_cuda_ctx *cx, const char *kernel, const double *rows, int B,
                        float *stats) {
    if (DV_CUDA_LAUNCHED(cx, kernel) || !stats) return;
    loss_sum_kernel<<<1, DV_CUDA_THREADS, 0, cx->stream>>>(rows, rows + B, B, stats);
    DV_CUDA_LAUNCHED(cx, "loss_sum_kernel");
}

/* K <= 0 is skipped outright: there is no output to write, and the CPU's
 * answers there are artefacts of its loops (bce counts every row correct,
 * perceptron writes d[0] of an empty row). */
void dv_cuda_xent_loss(void *ctx, const float *logits, const int32_t *labels, int B, int K,
                       float grad_scale, float *dlogits, float *stats) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || K <= 0) return;
    double *rows = loss_rows(cx, B);
    if (!rows) return;
    xent_kernel<<<warp_grid(cx, (size_t)B), DV_CUDA_THREADS, 0, cx->stream>>>(
        logits, labels, B, K, grad_scale, dlogits, rows, rows + B);
    loss_finish(cx, "xent_kernel", rows, B, stats);
}

void dv_cuda_bce_loss(void *ctx, const float *logits, const float *targets, int B, int K,
                      float grad_scale, float *dlogits, float *stats) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || K <= 0) return;
    double *rows = loss_rows(cx, B);
    if (!rows) return;
    const float gs = grad_scale / (float)K;
    bce_kernel<<<warp_grid(cx, (size_t)B), DV_CUDA_THREADS, 0, cx->stream>>>(
        logits, targets, B, K, gs, dlogits, rows, rows + B);
    loss_finish(cx, "bce_kernel", rows, B, stats);
}

void dv_cuda_mse_loss(void *ctx, const float *pred, const float *targets, int B, int K,
                      float grad_scale, float *dpred, float *stats) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || K <= 0) return;
    double *rows = loss_rows(cx, B);
    if (!rows) return;
    const float gs = 2.0f * grad_scale / (float)K;
    mse_kernel<<<warp_grid(cx, (size_t)B), DV_CUDA_THREADS, 0, cx->stream>>>(
        pred, targets, B, K, gs, dpred, rows, rows + B);
    loss_finish(cx, "mse_kernel", rows, B, stats);
}

void dv_cuda_perceptron_loss(void *ctx, const float *scores, const int32_t *labels, int B, int K,
                             float grad_scale, float *dscores, float *stats) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (B <= 0 || K <= 0) return;
    double *rows = loss_rows(cx, B);
    if (!rows) return;
    perceptron_kernel<<<warp_grid(cx, (size_t)B), DV_CUDA_THREADS, 0, cx->stream>>>(
        scores, labels, B, K, grad_scale, dscores, rows, rows + B);
    loss_finish(cx, "perceptron_kernel", rows, B, stats);
}

/* ---- optimizer ---------------------------------------------------------- */

/* Everything the update needs, worked out once on the host as
 * dv_cpu_opt_step does (Adam's bias corrections included). */
typedef struct opt_k {
    int kind;
    float lr, mu;                                              /* sgd / momentum / nesterov */
    float wd;                                                  /* L2 folded into g (0 for adamw) */
    float step_size, inv_sqrt_bc2, b1, b2, c1, c2, eps, decay; /* adam / adamw */
} opt_k;

/* One element, in the CPU's operation order, never fused (see the top of
 * the file). p, m, v point at registers; m and v are unused by sgd, v by
 * momentum/nesterov. */
static __device__ __forceinline__ void opt_one(const opt_k k, float *p, float g, float *m,
                                               float *v) {
    switch (k.kind) {
    case DV_OPT_SGD: /* p -= lr * (g + wd * p) */
        *p = __fsub_rn(*p, __fmul_rn(k.lr, __fadd_rn(g, __fmul_rn(k.wd, *p))));
        break;
    case DV_OPT_MOMENTUM: { /* v = mu*v + g + wd*p; p -= lr * v */
        const float vi = __fadd_rn(__fadd_rn(__fmul_rn(k.mu, *m), g), __fmul_rn(k.wd, *p));
        *m = vi;
        *p = __fsub_rn(*p, __fmul_rn(k.lr, vi));
        break;
    }
    case DV_OPT_NESTEROV: { /* g' = g + wd*p; v = mu*v + g'; p -= lr * (g' + mu*v) */
        const float gi = __fadd_rn(g, __fmul_rn(k.wd, *p));
        const float vi = __fadd_rn(__fmul_rn(k.mu, *m), gi);
        *m = vi;
        *p = __fsub_rn(*p, __fmul_rn(k.lr, __fadd_rn(gi, __fmul_rn(k.mu, vi))));
        break;
    }
    case DV_OPT_ADAM:
    case DV_OPT_ADAMW: { /* adam_scalar of ops_cpu.c */
        const float pi = __fmul_rn(*p, k.decay);
        const float gi = __fadd_rn(g, __fmul_rn(k.wd, pi));
        const float mi = __fadd_rn(__fmul_rn(k.b1, *m), __fmul_rn(k.c1, gi));
        const float vi = __fadd_rn(__fmul_rn(k.b2, *v), __fmul_rn(__fmul_rn(k.c2, gi), gi));
        const float den = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), k.inv_sqrt_bc2), k.eps);
        *m = mi;
        *v = vi;
        *p = __fsub_rn(pi, __fmul_rn(k.step_size, __fdiv_rn(mi, den)));
        break;
    }
    }
}

/* One pass over the flat buffer: p, g, m, v read once, p, m, v written
 * once. With vec, the first 4*(n/4) elements go as float4 (every pointer
 * is 16-byte aligned), and the scalar loop does the rest (all of it
 * without vec). m and v are touched only by the kinds that have them. */
static __global__ void opt_step_kernel(opt_k k, float *__restrict__ p, const float *__restrict__ g,
                                       float *__restrict__ m, float *__restrict__ v, size_t n,
                                       int vec) {
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t step = (size_t)gridDim.x * blockDim.x;
    const int use_m = k.kind != DV_OPT_SGD;
    const int use_v = k.kind == DV_OPT_ADAM || k.kind == DV_OPT_ADAMW;
    size_t start = 0;
    if (vec) {
        const size_t nq = n / 4;
        float4 *p4 = (float4 *)p, *m4 = (float4 *)m, *v4 = (float4 *)v;
        const float4 *g4 = (const float4 *)g;
        for (size_t i = tid; i < nq; i += step) {
            float4 pq = p4[i];
            const float4 gq = g4[i];
            float4 mq = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vq = mq;
            if (use_m) mq = m4[i];
            if (use_v) vq = v4[i];
            opt_one(k, &pq.x, gq.x, &mq.x, &vq.x);
            opt_one(k, &pq.y, gq.y, &mq.y, &vq.y);
            opt_one(k, &pq.z, gq.z, &mq.z, &vq.z);
            opt_one(k, &pq.w, gq.w, &mq.w, &vq.w);
            p4[i] = pq;
            if (use_m) m4[i] = mq;
            if (use_v) v4[i] = vq;
        }
        start = nq * 4;
    }
    for (size_t i = start + tid; i < n; i += step) {
        float pi = p[i], mi = 0.0f, vi = 0.0f;
        if (use_m) mi = m[i];
        if (use_v) vi = v[i];
        opt_one(k, &pi, g[i], &mi, &vi);
        p[i] = pi;
        if (use_m) m[i] = mi;
        if (use_v) v[i] = vi;
    }
}

void dv_cuda_opt_step(void *ctx, const dv_opt_params *o, float *params, const float *grads,
                      float *state1, float *state2, size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (DV_BAD_ENUM(cx->err, dv_opt, o->kind, DV_OPT_COUNT)) return;
    if (n == 0) return;
    opt_k k;
    memset(&k, 0, sizeof k);
    k.kind = (int)o->kind;
    k.lr = o->lr;
    k.mu = o->momentum;
    k.wd = o->weight_decay;
    switch (o->kind) {
    case DV_OPT_SGD:
        state1 = state2 = NULL; /* not read: keeps the alignment test honest */
        break;
    case DV_OPT_MOMENTUM:
    case DV_OPT_NESTEROV:
        state2 = NULL;
        break;
    case DV_OPT_ADAM:
    case DV_OPT_ADAMW: {
        /* The same host arithmetic as dv_cpu_opt_step, so the constants
         * have the same bits. */
        const double t = o->step > 0 ? (double)o->step : 1.0;
        const double bc1 = 1.0 - pow(o->beta1, t), bc2 = 1.0 - pow(o->beta2, t);
        const int decoupled = o->kind == DV_OPT_ADAMW;
        k.step_size = (float)(o->lr / bc1);
        k.inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
        k.b1 = o->beta1;
        k.b2 = o->beta2;
        k.c1 = 1.0f - o->beta1;
        k.c2 = 1.0f - o->beta2;
        k.eps = o->eps;
        k.wd = decoupled ? 0.0f : o->weight_decay;
        k.decay = decoupled ? 1.0f - o->lr * o->weight_decay : 1.0f;
        break;
    }
    case DV_OPT_COUNT: /* refused above */
        return;
    }
    const uintptr_t bits =
        (uintptr_t)params | (uintptr_t)grads | (uintptr_t)state1 | (uintptr_t)state2;
    const int vec = (bits & 15) == 0;
    const size_t units = vec ? (n + 3) / 4 : n;
    opt_step_kernel<<<dv_cuda_blocks(cx, units), DV_CUDA_THREADS, 0, cx->stream>>>(
        k, params, grads, state1, state2, n, vec);
    DV_CUDA_LAUNCHED(cx, "opt_step_kernel");
}

/* ---- reductions and blas-1 ---------------------------------------------- */

/* sumsq's grid: at least ~4096 elements a block, at most 1024 blocks, from
 * n alone (see the top of the file). */
#define SUMSQ_ELEMS_PER_BLOCK 4096
#define SUMSQ_MAX_BLOCKS      1024

/* The grid of sumsq and fingerprint for n (> 0) elements. */
static int sumsq_blocks(size_t n) {
    size_t nb = (n + SUMSQ_ELEMS_PER_BLOCK - 1) / SUMSQ_ELEMS_PER_BLOCK;
    return nb > SUMSQ_MAX_BLOCKS ? SUMSQ_MAX_BLOCKS : (int)nb;
}

/* part[blockIdx.x] = this block's sum of x*x in double; float4 loads when
 * x is 16-byte aligned (vec), the tail (or everything) scalar. */
static __global__ void sumsq_kernel(const float *__restrict__ x, size_t n, int vec,
                                    double *__restrict__ part) {
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t step = (size_t)gridDim.x * blockDim.x;
    double acc = 0.0;
    size_t start = 0;
    if (vec) {
        const size_t nq = n / 4;
        const float4 *x4 = (const float4 *)x;
        for (size_t i = tid; i < nq; i += step) {
            const float4 q = x4[i];
            acc += (double)q.x * (double)q.x;
            acc += (double)q.y * (double)q.y;
            acc += (double)q.z * (double)q.z;
            acc += (double)q.w * (double)q.w;
        }
        start = nq * 4;
    }
    for (size_t i = start + tid; i < n; i += step)
        acc += (double)x[i] * (double)x[i];
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

/* *out = sum of part (n), one block. */
static __global__ void sum_d_kernel(const double *__restrict__ part, int n,
                                    double *__restrict__ out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        acc += part[i];
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) *out = acc;
}

/* NaN when the sum could not be had (the error is recorded): a clipping
 * caller then leaves the gradient alone instead of trusting a 0. */
double dv_cuda_sumsq(void *ctx, const float *x, size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (n == 0) return 0.0;
    const int blocks = sumsq_blocks(n);
    double *part = (double *)dv_cuda_scratch(cx, ((size_t)blocks + 1) * sizeof(double));
    if (!part) return NAN;
    const int vec = ((uintptr_t)x & 15) == 0;
    sumsq_kernel<<<(unsigned)blocks, DV_CUDA_THREADS, 0, cx->stream>>>(x, n, vec, part);
    if (DV_CUDA_LAUNCHED(cx, "sumsq_kernel")) return NAN;
    sum_d_kernel<<<1, DV_CUDA_THREADS, 0, cx->stream>>>(part, blocks, part + blocks);
    if (DV_CUDA_LAUNCHED(cx, "sum_d_kernel")) return NAN;
    if (DV_CUDA_CHECK(cx, cudaMemcpyAsync(cx->host_sum, part + blocks, sizeof(double),
                                          cudaMemcpyDeviceToHost, cx->stream)))
        return NAN;
    if (DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream))) return NAN;
    return *cx->host_sum;
}

/* The fingerprint's grid is sumsq's: at most 1024 blocks, each leaving
 * its partial sum (modulo 2^64, so any order gives the same bits). */
static __device__ unsigned long long block_sum_u64(unsigned long long v) {
    __shared__ unsigned long long sh[33];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(FULL_MASK, v, o);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0ull;
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_xor_sync(FULL_MASK, v, o);
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    v = sh[32];
    __syncthreads();
    return v;
}

/* part[blockIdx.x] = this block's sum of dv_fingerprint_term (kernels-impl.h). */
static __global__ void fingerprint_kernel(const float *__restrict__ x, size_t n,
                                          unsigned long long *__restrict__ part) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    unsigned long long acc = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const uint64_t bits = (uint64_t)__float_as_uint(x[i]);
        acc += dv_cuda_mix64(bits ^ dv_cuda_mix64((uint64_t)i + 0x9e3779b97f4a7c15ULL));
    }
    acc = block_sum_u64(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

/* *out = sum of part (n), one block. */
static __global__ void sum_u64_kernel(const unsigned long long *__restrict__ part, int n,
                                      unsigned long long *__restrict__ out) {
    unsigned long long acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        acc += part[i];
    acc = block_sum_u64(acc);
    if (threadIdx.x == 0) *out = acc;
}

/* 0 when it could not be had (the error is recorded for check). */
uint64_t dv_cuda_fingerprint(void *ctx, const float *x, size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (n == 0) return 0;
    const int blocks = sumsq_blocks(n);
    unsigned long long *part = (unsigned long long *)dv_cuda_scratch(
        cx, ((size_t)blocks + 1) * sizeof(unsigned long long));
    if (!part) return 0;
    fingerprint_kernel<<<(unsigned)blocks, DV_CUDA_THREADS, 0, cx->stream>>>(x, n, part);
    if (DV_CUDA_LAUNCHED(cx, "fingerprint_kernel")) return 0;
    sum_u64_kernel<<<1, DV_CUDA_THREADS, 0, cx->stream>>>(part, blocks, part + blocks);
    if (DV_CUDA_LAUNCHED(cx, "sum_u64_kernel")) return 0;
    /* host_sum is 8 pinned bytes: sumsq's double, here the 64-bit sum */
    if (DV_CUDA_CHECK(cx, cudaMemcpyAsync(cx->host_sum, part + blocks, sizeof(uint64_t),
                                          cudaMemcpyDeviceToHost, cx->stream)))
        return 0;
    if (DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream))) return 0;
    uint64_t h;
    memcpy(&h, cx->host_sum, sizeof h);
    return h;
}

/* y += a*x, unfused as the CPU. */
static __global__ void axpy_kernel(float a, const float *__restrict__ x, float *__restrict__ y,
                                   size_t n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        y[i] = __fadd_rn(y[i], __fmul_rn(a, x[i]));
}

void dv_cuda_axpy(void *ctx, float a, const float *x, float *y, size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (n == 0) return;
    axpy_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(a, x, y, n);
    DV_CUDA_LAUNCHED(cx, "axpy_kernel");
}
