/* seq_cuda.cu — the CUDA versions of the sequence-model ops of
 * kernels/cpu/seq_cpu.c: batched GEMM (cuBLAS), embedding, layer norm (alone
 * and fused with a residual add), transpose and GELU, with the same contracts (ops.def; the fused
 * attention is attn_cuda.cu).
 *
 * As in ops_cuda.cu, no float atomics, so every result is the same from
 * run to run:
 *  - embedding backward sorts the (id, i) pairs of the batch (a bitonic sort
 *    of unique 64-bit keys, so the order it produces is fixed), and then
 *    one thread per (id, column) adds that id's rows of dy into the table
 *    row in increasing i, in float, exactly as the CPU loop does: the two
 *    give the same bits. The sort costs O(N log^2 N) on keys only (N up to
 *    ~64k: about 40 short launches), independent of V and D; the adds read
 *    dy once. A very frequent id serializes its rows on one thread per
 *    column, which is the price of the fixed order the contract asks for;
 *  - layer norm's dgamma/dbeta split the rows into G chunks, G a function
 *    of N only; block (column tile, chunk) sums its chunk in a fixed order
 *    into scratch and a second kernel adds the G partials in order;
 *  - row statistics (layer norm) are butterfly warp sums, one warp a row,
 *    which give every lane the same bits.
 * Layer norm keeps its sums in double, as the CPU does.
 *
 * Assumes: device pointers; every launch on cx->stream, nothing
 * synchronizes; fixed-size __shared__ arrays only.
 */
#include "cuda-impl.h"

#include <math.h>

#define ALL_LANES 0xffffffffu

/* ---- warp helpers ---------------------------------------------------------- */

/* One warp a row, warps of the whole grid striding over the rows; the row is
 * the same for the 32 lanes, so the shuffles below see all of them. */
static __device__ __forceinline__ size_t row_warp0(void) {
    return ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
}

static __device__ __forceinline__ size_t row_warps(void) {
    return (size_t)gridDim.x * blockDim.x / 32;
}

/* Xor butterflies: each step adds the same two values on both lanes, so
 * all lanes end with identical bits. */
static __device__ __forceinline__ double lanes_sum_d(double v) {
    for (int o = 16; o; o /= 2)
        v += __shfl_xor_sync(ALL_LANES, v, o);
    return v;
}

/* ---- batched GEMM ------------------------------------------------------------- */

/* C[b] = beta * C[b] for K == 0 (cuBLAS would leave C alone); the padding
 * between the matrices is not touched. beta == 0 writes zeros, as GEMM
 * does, so NaN garbage in C does not survive. */
static __global__ void scale_batched_kernel(float *C, long long stride_c, size_t mn, int batch,
                                            float beta) {
    const size_t n = mn * (size_t)batch, step = (size_t)gridDim.x * blockDim.x;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += step) {
        const size_t b = k / mn;
        float *c = C + (ptrdiff_t)b * stride_c + (k - b * mn);
        *c = beta == 0.0f ? 0.0f : beta * *c;
    }
}

/* cuBLAS is column-major: as in dv_cuda_gemm, row-major C = op(A) op(B) is
 * column-major C^T = op(B)^T op(A)^T, so the operands (and M, N) swap and
 * the flags stay. */
extern "C" void dv_cuda_gemm_batched_ld(void *ctx, int trans_a, int trans_b, int M, int N, int K,
                                        float alpha, const float *A, int lda, long long stride_a,
                                        const float *B, int ldb, long long stride_b, float beta,
                                        float *C, int ldc, long long stride_c, int batch) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (M <= 0 || N <= 0 || batch <= 0) return;
    if (K <= 0) {
        if (ldc != N) { /* rows with gaps: scale each matrix row by row */
            for (int i = 0; i < M; i++)
                dv_cuda_gemm_batched_ld(ctx, 0, 0, 1, N, 0, alpha, A, lda, stride_a, B, ldb,
                                        stride_b, beta, C + (size_t)i * ldc, N, stride_c, batch);
            return;
        }
        const size_t mn = (size_t)M * N;
        scale_batched_kernel<<<dv_cuda_blocks(cx, mn * batch), DV_CUDA_THREADS, 0, cx->stream>>>(
            C, stride_c, mn, batch, beta);
        DV_CUDA_LAUNCHED(cx, "scale_batched_kernel");
        return;
    }
    const cublasOperation_t opa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (cx->precision == DV_PRECISION_FP32) {
        DV_CUBLAS_CHECK(cx, cublasSgemmStridedBatched(cx->blas, opb, opa, N, M, K, &alpha, B, ldb,
                                                      stride_b, A, lda, stride_a, &beta, C, ldc,
                                                      stride_c, batch));
        return;
    }
    cublasComputeType_t ct;
    if (dv_cuda_compute_type(cx, "dv_cuda_gemm_batched_ld", &ct)) return;
    DV_CUBLAS_CHECK(cx, cublasGemmStridedBatchedEx(cx->blas, opb, opa, N, M, K, &alpha, B,
                                                   CUDA_R_32F, ldb, stride_b, A, CUDA_R_32F, lda,
                                                   stride_a, &beta, C, CUDA_R_32F, ldc, stride_c,
                                                   batch, ct, CUBLAS_GEMM_DEFAULT));
}

extern "C" void dv_cuda_gemm_batched(void *ctx, int trans_a, int trans_b, int M, int N, int K,
                                     float alpha, const float *A, long long stride_a,
                                     const float *B, long long stride_b, float beta, float *C,
                                     long long stride_c, int batch) {
    dv_cuda_gemm_batched_ld(ctx, trans_a, trans_b, M, N, K, alpha, A, trans_a ? M : K, stride_a, B,
                            trans_b ? K : N, stride_b, beta, C, N, stride_c, batch);
}

/* ---- embedding ---------------------------------------------------------------- */

/* Block-row r of y gets table row ids[r]; blocks stride over the rows. */
static __global__ void emb_fwd_kernel(const int32_t *__restrict__ ids, int N, int D,
                                      const float *__restrict__ table, float *__restrict__ y) {
    for (size_t r = blockIdx.x; r < (size_t)N; r += gridDim.x) {
        const float *src = table + (size_t)ids[r] * D;
        float *dst = y + r * D;
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            dst[d] = src[d];
    }
}

extern "C" void dv_cuda_embedding_forward(void *ctx, const int32_t *ids, int N, int D,
                                          const float *table, float *y) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (N <= 0 || D <= 0) return;
    const unsigned blocks = dv_cuda_blocks(cx, (size_t)N * DV_CUDA_THREADS);
    emb_fwd_kernel<<<blocks, DV_CUDA_THREADS, 0, cx->stream>>>(ids, N, D, table, y);
    DV_CUDA_LAUNCHED(cx, "emb_fwd_kernel");
}

/* Keys are id << 32 | i: unique, so sorting them gives one order only,
 * whatever the sort's pairing, with the rows of an id in increasing i. The
 * sort runs on P keys, P a power of two >= N and >= SORT_TILE; the pad
 * keys are all ones and sort last. */
#define SORT_THREADS 256
#define SORT_TILE    (2 * SORT_THREADS) /* keys a block sorts in shared memory */
#define SORT_PAD     0xffffffffffffffffULL

static __global__ void emb_keys_kernel(const int32_t *__restrict__ ids, int N, size_t P,
                                       unsigned long long *__restrict__ keys) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < P; k += step)
        keys[k] = k < (size_t)N ? (unsigned long long)(uint32_t)ids[k] << 32 | k : SORT_PAD;
}

/* The compare-exchange of bitonic stage (k, j) for pair t: elements i and
 * i + j, i = t with a zero bit inserted at j; ascending where i & k == 0.
 * `base` is the global index of x[0], for the direction. */
static __device__ __forceinline__ void bitonic_cmp(unsigned long long *x, size_t base, size_t t,
                                                   size_t k, size_t j) {
    const size_t i = ((t & ~(j - 1)) << 1) | (t & (j - 1));
    const unsigned long long a = x[i], b = x[i + j];
    const int up = ((base + i) & k) == 0;
    if ((a > b) == up) {
        x[i] = b;
        x[i + j] = a;
    }
}

/* Stages k in [k_lo, k_hi] (powers of two), each for j from min(k, TILE)/2
 * down to 1, on one tile of SORT_TILE keys in shared memory: the first
 * call sorts every tile (k_lo = 2, k_hi = TILE); later ones finish stage k
 * once the global steps have brought j below the tile. */
static __global__ void bitonic_tile_kernel(unsigned long long *keys, size_t k_lo, size_t k_hi) {
    __shared__ unsigned long long sh[SORT_TILE];
    const size_t base = (size_t)blockIdx.x * SORT_TILE;
    const int t = threadIdx.x;
    sh[t] = keys[base + t];
    sh[t + SORT_THREADS] = keys[base + t + SORT_THREADS];
    __syncthreads();
    for (size_t k = k_lo; k <= k_hi; k <<= 1) {
        for (size_t j = (k < SORT_TILE ? k : SORT_TILE) / 2; j > 0; j >>= 1) {
            bitonic_cmp(sh, base, (size_t)t, k, j);
            __syncthreads();
        }
    }
    keys[base + t] = sh[t];
    keys[base + t + SORT_THREADS] = sh[t + SORT_THREADS];
}

/* One step (k, j) with j >= SORT_TILE, over all P / 2 pairs. */
static __global__ void bitonic_step_kernel(unsigned long long *keys, size_t P, size_t k, size_t j) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < P / 2; t += step)
        bitonic_cmp(keys, 0, t, k, j);
}

/* Block (p, column tile): when sorted position p starts an id's run, its
 * threads add the run's rows of dy into the table row, in increasing i. */
static __global__ void emb_bwd_kernel(const unsigned long long *__restrict__ keys, int N, int D,
                                      const float *__restrict__ dy, float *__restrict__ dtable) {
    const int d = blockIdx.y * blockDim.x + threadIdx.x;
    for (size_t p = blockIdx.x; p < (size_t)N; p += gridDim.x) {
        const unsigned long long v = keys[p] >> 32;
        if (d >= D || (p > 0 && (keys[p - 1] >> 32) == v)) continue;
        float *t = dtable + v * D + d;
        float acc = *t;
        for (size_t q = p; q < (size_t)N && (keys[q] >> 32) == v; q++)
            acc += dy[(size_t)(uint32_t)keys[q] * D + d];
        *t = acc;
    }
}

#define EMB_COLS 128 /* columns a block of emb_bwd_kernel covers */

extern "C" void dv_cuda_embedding_backward(void *ctx, const int32_t *ids, int N, int D, int V,
                                           const float *dy, float *dtable) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    (void)V;
    if (N <= 0 || D <= 0) return;
    size_t P = SORT_TILE;
    while (P < (size_t)N)
        P <<= 1;
    unsigned long long *keys =
        (unsigned long long *)dv_cuda_scratch(cx, P * sizeof(unsigned long long));
    if (!keys) return;
    emb_keys_kernel<<<dv_cuda_blocks(cx, P), DV_CUDA_THREADS, 0, cx->stream>>>(ids, N, P, keys);
    if (DV_CUDA_LAUNCHED(cx, "emb_keys_kernel")) return;
    const unsigned tiles = (unsigned)(P / SORT_TILE);
    bitonic_tile_kernel<<<tiles, SORT_THREADS, 0, cx->stream>>>(keys, 2, SORT_TILE);
    if (DV_CUDA_LAUNCHED(cx, "bitonic_tile_kernel")) return;
    for (size_t k = 2 * SORT_TILE; k <= P; k <<= 1) {
        for (size_t j = k / 2; j >= SORT_TILE; j >>= 1) {
            bitonic_step_kernel<<<dv_cuda_blocks(cx, P / 2), DV_CUDA_THREADS, 0, cx->stream>>>(
                keys, P, k, j);
            if (DV_CUDA_LAUNCHED(cx, "bitonic_step_kernel")) return;
        }
        bitonic_tile_kernel<<<tiles, SORT_THREADS, 0, cx->stream>>>(keys, k, k);
        if (DV_CUDA_LAUNCHED(cx, "bitonic_tile_kernel")) return;
    }
    const dim3 grid(dv_cuda_blocks(cx, (size_t)N * DV_CUDA_THREADS),
                    (unsigned)((D + EMB_COLS - 1) / EMB_COLS));
    emb_bwd_kernel<<<grid, EMB_COLS, 0, cx->stream>>>(keys, N, D, dy, dtable);
    DV_CUDA_LAUNCHED(cx, "emb_bwd_kernel");
}

/* ---- layer norm ------------------------------------------------------------------ */

/* One warp a row: mean, then the centred sum of squares, in double. */
static __global__ void ln_fwd_kernel(int N, int C, float eps, const float *__restrict__ x,
                                     const float *__restrict__ gamma,
                                     const float *__restrict__ beta, float *__restrict__ y,
                                     float *__restrict__ save_mean, float *__restrict__ save_rstd) {
    const int lane = threadIdx.x & 31;
    for (size_t r = row_warp0(); r < (size_t)N; r += row_warps()) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        double sum = 0.0;
        for (int j = lane; j < C; j += 32)
            sum += xr[j];
        const double m = lanes_sum_d(sum) / C;
        double ss = 0.0;
        for (int j = lane; j < C; j += 32) {
            const double d = xr[j] - m;
            ss += d * d;
        }
        ss = lanes_sum_d(ss);
        const float mean = (float)m;
        const float rstd = (float)(1.0 / sqrt(ss / C + eps));
        if (lane == 0 && save_mean) save_mean[r] = mean;
        if (lane == 0 && save_rstd) save_rstd[r] = rstd;
        for (int j = lane; j < C; j += 32) {
            const float g = gamma ? gamma[j] : 1.0f, b = beta ? beta[j] : 0.0f;
            yr[j] = (xr[j] - mean) * rstd * g + b;
        }
    }
}

extern "C" void dv_cuda_layernorm_forward(void *ctx, int N, int C, float eps, const float *x,
                                          const float *gamma, const float *beta, float *y,
                                          float *save_mean, float *save_rstd) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (N <= 0 || C <= 0) return;
    ln_fwd_kernel<<<dv_cuda_blocks(cx, (size_t)N * 32), DV_CUDA_THREADS, 0, cx->stream>>>(
        N, C, eps, x, gamma, beta, y, save_mean, save_rstd);
    DV_CUDA_LAUNCHED(cx, "ln_fwd_kernel");
}

/* residual_layernorm_forward without the layer norm (y NULL): one thread an
 * element. sum may be x or d: each element is read before it is written,
 * by the same thread. */
static __global__ void res_add_kernel(size_t n, int C, const float *x, const float *d,
                                      const float *__restrict__ bias, float *sum) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const float v = x[i] + d[i];
        sum[i] = bias ? v + bias[i % C] : v;
    }
}

/* One warp a row, as ln_fwd_kernel: the lane's elements of x + d + bias
 * written to sum and summed, then the centred squares read back from sum
 * (the lane's own writes), then y. sum may be x or d (no __restrict__ on
 * them): every element is read, then written, by one lane. */
static __global__ void res_ln_fwd_kernel(int N, int C, float eps, const float *x, const float *d,
                                         const float *__restrict__ bias,
                                         const float *__restrict__ gamma,
                                         const float *__restrict__ beta, float *sum,
                                         float *__restrict__ y, float *__restrict__ save_mean,
                                         float *__restrict__ save_rstd) {
    const int lane = threadIdx.x & 31;
    for (size_t r = row_warp0(); r < (size_t)N; r += row_warps()) {
        const float *xr = x + r * C, *dr = d + r * C;
        float *sr = sum + r * C, *yr = y + r * C;
        double s = 0.0;
        for (int j = lane; j < C; j += 32) {
            float v = xr[j] + dr[j];
            if (bias) v += bias[j];
            sr[j] = v;
            s += v;
        }
        const double m = lanes_sum_d(s) / C;
        double ss = 0.0;
        for (int j = lane; j < C; j += 32) {
            const double dv = sr[j] - m;
            ss += dv * dv;
        }
        ss = lanes_sum_d(ss);
        const float mean = (float)m;
        const float rstd = (float)(1.0 / sqrt(ss / C + eps));
        if (lane == 0 && save_mean) save_mean[r] = mean;
        if (lane == 0 && save_rstd) save_rstd[r] = rstd;
        for (int j = lane; j < C; j += 32) {
            const float g = gamma ? gamma[j] : 1.0f, b = beta ? beta[j] : 0.0f;
            yr[j] = (sr[j] - mean) * rstd * g + b;
        }
    }
}

extern "C" void dv_cuda_residual_layernorm_forward(void *ctx, int N, int C, float eps,
                                                   const float *x, const float *d,
                                                   const float *bias, const float *gamma,
                                                   const float *beta, float *sum, float *y,
                                                   float *save_mean, float *save_rstd) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (N <= 0 || C <= 0) return;
    if (!y) {
        const size_t n = (size_t)N * C;
        res_add_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(n, C, x, d, bias,
                                                                                  sum);
        DV_CUDA_LAUNCHED(cx, "res_add_kernel");
        return;
    }
    res_ln_fwd_kernel<<<dv_cuda_blocks(cx, (size_t)N * 32), DV_CUDA_THREADS, 0, cx->stream>>>(
        N, C, eps, x, d, bias, gamma, beta, sum, y, save_mean, save_rstd);
    DV_CUDA_LAUNCHED(cx, "res_ln_fwd_kernel");
}

/* dx, one warp a row: the row's two sums in double, then the same float
 * expression as the CPU, added to dres unless NULL. dres may be dx (no
 * __restrict__ on them): each element is read, then written, by one lane. */
static __global__ void
ln_bwd_dx_kernel(int N, int C, const float *__restrict__ x, const float *__restrict__ gamma,
                 const float *__restrict__ save_mean, const float *__restrict__ save_rstd,
                 const float *__restrict__ dy, const float *dres, float *dx) {
    const int lane = threadIdx.x & 31;
    for (size_t r = row_warp0(); r < (size_t)N; r += row_warps()) {
        const float *xr = x + r * C, *dr = dy + r * C;
        float *out = dx + r * C;
        const float *res = dres ? dres + r * C : NULL;
        const float mean = save_mean[r], rstd = save_rstd[r];
        double a = 0.0, b = 0.0;
        for (int j = lane; j < C; j += 32) {
            const float gd = (gamma ? gamma[j] : 1.0f) * dr[j];
            a += gd;
            b += (double)gd * ((xr[j] - mean) * rstd);
        }
        const float ma = (float)(lanes_sum_d(a) / C), mb = (float)(lanes_sum_d(b) / C);
        for (int j = lane; j < C; j += 32) {
            const float gd = (gamma ? gamma[j] : 1.0f) * dr[j];
            const float xh = (xr[j] - mean) * rstd;
            const float v = rstd * (gd - ma - xh * mb);
            out[j] = res ? res[j] + v : v;
        }
    }
}

/* dgamma/dbeta: row chunks of about LN_CHUNK_ROWS, at most LN_MAX_SPLIT
 * partials a column; the count depends on N only. */
#define LN_ROWS       8 /* block (32, LN_ROWS): 32 columns, LN_ROWS row strides */
#define LN_CHUNK_ROWS 256
#define LN_MAX_SPLIT  64

static int ln_split(int N) {
    int g = (N + LN_CHUNK_ROWS - 1) / LN_CHUNK_ROWS;
    if (g > LN_MAX_SPLIT) g = LN_MAX_SPLIT;
    return g < 1 ? 1 : g;
}

/* Block (column tile, chunk g): thread (c, y) sums the chunk's rows y,
 * y + LN_ROWS, ... of column c, and row 0 adds the LN_ROWS partials in
 * order into part_g / part_b [g * C + c]. */
static __global__ void
ln_bwd_param_kernel(int N, int C, const float *__restrict__ x, const float *__restrict__ save_mean,
                    const float *__restrict__ save_rstd, const float *__restrict__ dy,
                    double *__restrict__ part_g, double *__restrict__ part_b) {
    __shared__ double shg[LN_ROWS][32], shb[LN_ROWS][32];
    const int c = blockIdx.x * 32 + threadIdx.x, g = blockIdx.y;
    const int chunk = (N + gridDim.y - 1) / gridDim.y;
    const int r0 = g * chunk, r1 = r0 + chunk < N ? r0 + chunk : N;
    double sg = 0.0, sb = 0.0;
    if (c < C)
        for (int r = r0 + threadIdx.y; r < r1; r += LN_ROWS) {
            const size_t o = (size_t)r * C + c;
            const float xh = (x[o] - save_mean[r]) * save_rstd[r];
            sg += (double)dy[o] * xh;
            sb += dy[o];
        }
    shg[threadIdx.y][threadIdx.x] = sg;
    shb[threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y != 0 || c >= C) return;
    double tg = 0.0, tb = 0.0;
    for (int k = 0; k < LN_ROWS; k++) {
        tg += shg[k][threadIdx.x];
        tb += shb[k][threadIdx.x];
    }
    part_g[(size_t)g * C + c] = tg;
    part_b[(size_t)g * C + c] = tb;
}

/* One thread a column: the G partials in order, added into dgamma/dbeta. */
static __global__ void ln_param_add_kernel(int C, int G, const double *__restrict__ part_g,
                                           const double *__restrict__ part_b,
                                           float *__restrict__ dgamma, float *__restrict__ dbeta) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double tg = 0.0, tb = 0.0;
    for (int g = 0; g < G; g++) {
        tg += part_g[(size_t)g * C + c];
        tb += part_b[(size_t)g * C + c];
    }
    if (dgamma) dgamma[c] += (float)tg;
    if (dbeta) dbeta[c] += (float)tb;
}

extern "C" void dv_cuda_residual_layernorm_backward(void *ctx, int N, int C, const float *x,
                                                    const float *gamma, const float *save_mean,
                                                    const float *save_rstd, const float *dy,
                                                    const float *dres, float *dx, float *dgamma,
                                                    float *dbeta) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (N <= 0 || C <= 0) return;
    if (dx) {
        ln_bwd_dx_kernel<<<dv_cuda_blocks(cx, (size_t)N * 32), DV_CUDA_THREADS, 0, cx->stream>>>(
            N, C, x, gamma, save_mean, save_rstd, dy, dres, dx);
        if (DV_CUDA_LAUNCHED(cx, "ln_bwd_dx_kernel")) return;
    }
    if (!dgamma && !dbeta) return;
    const int G = ln_split(N);
    double *part_g = (double *)dv_cuda_scratch(cx, 2 * (size_t)C * G * sizeof(double));
    if (!part_g) return;
    double *part_b = part_g + (size_t)C * G;
    const dim3 grid((unsigned)((C + 31) / 32), (unsigned)G), block(32, LN_ROWS);
    ln_bwd_param_kernel<<<grid, block, 0, cx->stream>>>(N, C, x, save_mean, save_rstd, dy, part_g,
                                                        part_b);
    if (DV_CUDA_LAUNCHED(cx, "ln_bwd_param_kernel")) return;
    ln_param_add_kernel<<<(unsigned)((C + DV_CUDA_THREADS - 1) / DV_CUDA_THREADS), DV_CUDA_THREADS,
                          0, cx->stream>>>(C, G, part_g, part_b, dgamma, dbeta);
    DV_CUDA_LAUNCHED(cx, "ln_param_add_kernel");
}

extern "C" void dv_cuda_layernorm_backward(void *ctx, int N, int C, const float *x,
                                           const float *gamma, const float *save_mean,
                                           const float *save_rstd, const float *dy, float *dx,
                                           float *dgamma, float *dbeta) {
    dv_cuda_residual_layernorm_backward(ctx, N, C, x, gamma, save_mean, save_rstd, dy, NULL, dx,
                                        dgamma, dbeta);
}

/* ---- GELU ---------------------------------------------------------------------------- */

#define GELU_K0 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_K1 0.044715f

/* One thread per element of y (A, C, B, D), reading x (A, B, C, D). */
static __global__ void transpose_kernel(int A, int B, int C, int D, const float *__restrict__ x,
                                        float *__restrict__ y) {
    const size_t n = (size_t)A * B * C * D, step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const size_t d = i % D, r = i / D, b = r % B, r2 = r / B, c = r2 % C, a = r2 / C;
        y[i] = x[((a * B + b) * C + c) * D + d];
    }
}

extern "C" void dv_cuda_transpose(void *ctx, int A, int B, int C, int D, const float *x, float *y) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    const size_t n = (size_t)A * B * C * D;
    if (!n) return;
    transpose_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(A, B, C, D, x, y);
    DV_CUDA_LAUNCHED(cx, "transpose_kernel");
}

/* The GPU gains nothing from packing: the packed form is op(B) itself,
 * row-major (K, N), and the product one cuBLAS GEMM. */
extern "C" size_t dv_cuda_gemm_pack_size(void *ctx, int K, int N) {
    (void)ctx;
    return K > 0 && N > 0 ? (size_t)K * N : 0;
}

extern "C" void dv_cuda_gemm_pack(void *ctx, int trans_b, int K, int N, const float *B,
                                  float *packed) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (K <= 0 || N <= 0) return;
    if (trans_b) /* B (N, K) -> (K, N) */
        dv_cuda_transpose(ctx, 1, N, K, 1, B, packed);
    else
        DV_CUDA_CHECK(cx, cudaMemcpyAsync(packed, B, (size_t)K * N * sizeof(float),
                                          cudaMemcpyDeviceToDevice, cx->stream));
}

extern "C" void dv_cuda_gemm_packed(void *ctx, int M, int N, int K, float alpha, const float *A,
                                    const float *packed, float beta, float *C) {
    dv_cuda_gemm(ctx, 0, 0, M, N, K, alpha, A, packed, beta, C);
}

static __global__ void gelu_fwd_kernel(const float *__restrict__ x, float *__restrict__ y,
                                       size_t n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(GELU_K0 * (v + GELU_K1 * v * v * v)));
    }
}

/* dx may be dy: each element is read before the same thread writes it. */
static __global__ void gelu_bwd_kernel(const float *__restrict__ x, const float *dy, float *dx,
                                       size_t n) {
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const float v = x[i];
        const float t = tanhf(GELU_K0 * (v + GELU_K1 * v * v * v));
        const float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * v * v);
        dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
}

extern "C" void dv_cuda_gelu_forward(void *ctx, const float *x, float *y, size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!n) return;
    gelu_fwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(x, y, n);
    DV_CUDA_LAUNCHED(cx, "gelu_fwd_kernel");
}

extern "C" void dv_cuda_gelu_backward(void *ctx, const float *x, const float *dy, float *dx,
                                      size_t n) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!n) return;
    gelu_bwd_kernel<<<dv_cuda_blocks(cx, n), DV_CUDA_THREADS, 0, cx->stream>>>(x, dy, dx, n);
    DV_CUDA_LAUNCHED(cx, "gelu_bwd_kernel");
}
