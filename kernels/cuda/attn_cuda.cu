/* attn_cuda.cu — fused causal self-attention on CUDA, forward and backward
 * (contracts in ops.def; the CPU's is kernels/cpu/attn_cpu.c), in fp32, flash
 * style: tiles of queries, keys and values in shared memory, the softmax
 * online in registers, and no (T, T) matrix anywhere.
 *
 * Forward, one block of NW warps per (batch-head, tile of BQ queries): the
 * query tile stays in shared memory; for each tile of BK keys up to the
 * diagonal (the tiles above it are skipped), the keys come in (K tile),
 * each lane scores BK/32 keys against the warp's BQ/NW rows, the running
 * max and the rescale of the row's sums happen in registers (the max is a
 * butterfly over the warp), the probabilities go to a shared tile, the
 * values replace the keys in the same buffer, and each lane adds P V into
 * its Dh/32 output columns. At the end o = acc / sum and lse = max +
 * log(sum). exp2 throughout, on scores pre-scaled by scale * log2(e).
 *
 * Backward, three kernels and no atomics, so every result is the same from
 * run to run:
 *  - attn_d_kernel: D_i = do_i . o_i, one warp a row, into `work`;
 *  - attn_dkv_kernel: one block per (batch-head, tile of BKV keys), dK and
 *    dV of its keys in registers while it walks the query tiles from the
 *    diagonal down: S and dP (lanes over query rows), P = exp2(S - lse),
 *    dS = P (dP - D), then dV += P^T dO and dK += dS^T Q (lanes over
 *    columns, P and dS through a shared tile);
 *  - attn_dq_kernel: one block per (batch-head, tile of queries), dQ in
 *    registers while it walks the key tiles up to the diagonal, recomputing
 *    S, dP and dS, then dQ += dS K.
 * Every sum has a fixed order (no float atomics, no order that depends on
 * timing); the results match the CPU's within rounding (other sum orders,
 * exp2f against the CPU's exp).
 *
 * Shared memory: static arrays only (tests/cuda_emu has no dynamic shared
 * memory), so every kernel's tiles fit CUDA's 48 KB of static shared memory
 * per block; the tile sizes are template parameters, chosen per head-size
 * class (Dh <= 32, <= 64, <= 128: DH), columns past Dh and rows past T are
 * zeros. Tiles a warp reads across lanes along a row are stored skewed,
 * element (r, d) at column (d + r) mod DH, so the 32 lanes hit 32 banks.
 * Dh over 128 is refused (recorded for check), as the tiles would not fit.
 *
 * Assumes: device pointers; every launch on cx->stream, nothing
 * synchronizes.
 */
#include "cuda-impl.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>

#define ALL_LANES 0xffffffffu
#define ATT_LOG2E 1.4426950408889634f
#define ATT_LN2   0.6931471805599453f
#define ATT_MAXDH 128
#define ATT_SMEM  (48 * 1024) /* static shared memory of a block */

/* Loop unrolling for nvcc; the emulation's host compiler has no such pragma. */
#ifdef __CUDACC__
#define ATT_UNROLL   _Pragma("unroll")
#define ATT_UNROLL_4 _Pragma("unroll 4")
#else
#define ATT_UNROLL
#define ATT_UNROLL_4
#endif

static __device__ __forceinline__ float att_max(float v) {
    for (int o = 16; o; o /= 2)
        v = fmaxf(v, __shfl_xor_sync(ALL_LANES, v, o));
    return v;
}

static __device__ __forceinline__ float att_sum(float v) {
    for (int o = 16; o; o /= 2)
        v += __shfl_xor_sync(ALL_LANES, v, o);
    return v;
}

/* Rows [r0, r0 + R) of a (T, Dh) block x into the tile t (R, DH), zeros past
 * T and Dh; skew: element (r, d) at column (d + r) mod DH. Consecutive
 * threads read consecutive floats of a row (coalesced). */
template <int R, int DH, int NT>
static __device__ __forceinline__ void att_load(float (*t)[DH], const float *__restrict__ x, int r0,
                                                int T, int Dh, bool skew) {
    for (int e = threadIdx.x; e < R * DH; e += NT) {
        const int r = e / DH, d = e % DH;
        const float val = r0 + r < T && d < Dh ? x[(size_t)(r0 + r) * Dh + d] : 0.0f;
        t[r][skew ? (d + r) & (DH - 1) : d] = val;
    }
}

/* ---- forward ------------------------------------------------------------------- */

template <int DH, int BQ, int BK, int NW>
static __global__ void __launch_bounds__(NW * 32)
    attn_fwd_kernel(int T, int Dh, float scale2, const float *__restrict__ q,
                    const float *__restrict__ k, const float *__restrict__ v, float *__restrict__ o,
                    float *__restrict__ lse) {
    constexpr int NT = NW * 32, RW = BQ / NW, KPL = BK / 32, DPL = DH / 32;
    static_assert(BQ % NW == 0 && BK % 32 == 0 && DH % 32 == 0, "tile shapes");
    static_assert(sizeof(float) * (BQ * DH + BK * DH + BQ * BK) <= ATT_SMEM, "shared memory");
    __shared__ float Qs[BQ][DH];  /* plain: read as a warp broadcast */
    __shared__ float KVs[BK][DH]; /* K skewed (lanes over keys), then V plain */
    __shared__ float Ps[BQ][BK];
    const int nt = (T + BQ - 1) / BQ;
    const int bh = blockIdx.x / nt, q0 = (nt - 1 - (int)(blockIdx.x % nt)) * BQ; /* long first */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const size_t base = (size_t)bh * T * Dh;
    att_load<BQ, DH, NT>(Qs, q + base, q0, T, Dh, false);

    float m[RW], l[RW], acc[RW][DPL];
    ATT_UNROLL
    for (int r = 0; r < RW; r++) {
        m[r] = -INFINITY, l[r] = 0.0f;
        ATT_UNROLL
        for (int c = 0; c < DPL; c++)
            acc[r][c] = 0.0f;
    }
    const int kend = T < q0 + BQ ? T : q0 + BQ; /* keys past the tile's last row: skipped */
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads(); /* the last tile's V (and the first time, Qs) */
        att_load<BK, DH, NT>(KVs, k + base, k0, T, Dh, true);
        __syncthreads();
        float s[RW][KPL];
        ATT_UNROLL
        for (int r = 0; r < RW; r++)
            ATT_UNROLL
        for (int c = 0; c < KPL; c++)
            s[r][c] = 0.0f;
        ATT_UNROLL_4
        for (int d = 0; d < DH; d++) {
            float kd[KPL];
            ATT_UNROLL
            for (int c = 0; c < KPL; c++)
                kd[c] = KVs[lane + 32 * c][(d + lane + 32 * c) & (DH - 1)];
            ATT_UNROLL
            for (int r = 0; r < RW; r++) {
                const float qd = Qs[w * RW + r][d];
                ATT_UNROLL
                for (int c = 0; c < KPL; c++)
                    s[r][c] += qd * kd[c];
            }
        }
        /* online softmax: new max, rescale, probabilities into Ps */
        ATT_UNROLL
        for (int r = 0; r < RW; r++) {
            const int i = q0 + w * RW + r;
            float mt = -INFINITY;
            ATT_UNROLL
            for (int c = 0; c < KPL; c++) {
                const int j = k0 + lane + 32 * c;
                s[r][c] = j <= i && j < T ? s[r][c] * scale2 : -INFINITY;
                mt = fmaxf(mt, s[r][c]);
            }
            const float mn = fmaxf(m[r], att_max(mt));
            const float alpha = mn == -INFINITY ? 1.0f : exp2f(m[r] - mn);
            float ls = 0.0f;
            ATT_UNROLL
            for (int c = 0; c < KPL; c++) {
                const float p = s[r][c] == -INFINITY ? 0.0f : exp2f(s[r][c] - mn);
                Ps[w * RW + r][lane + 32 * c] = p;
                ls += p;
            }
            l[r] = l[r] * alpha + ls; /* this lane's part of the row sum */
            m[r] = mn;
            ATT_UNROLL
            for (int c = 0; c < DPL; c++)
                acc[r][c] *= alpha;
        }
        __syncthreads(); /* every warp is done with K */
        att_load<BK, DH, NT>(KVs, v + base, k0, T, Dh, false);
        __syncthreads();
        const int jn = kend - k0 < BK ? kend - k0 : BK;
        for (int j = 0; j < jn; j++) {
            float vd[DPL];
            ATT_UNROLL
            for (int c = 0; c < DPL; c++)
                vd[c] = KVs[j][lane + 32 * c];
            ATT_UNROLL
            for (int r = 0; r < RW; r++) {
                const float p = Ps[w * RW + r][j];
                ATT_UNROLL
                for (int c = 0; c < DPL; c++)
                    acc[r][c] += p * vd[c];
            }
        }
    }
    ATT_UNROLL
    for (int r = 0; r < RW; r++) {
        const float sum = att_sum(l[r]);
        const int i = q0 + w * RW + r;
        if (i >= T) continue;
        const float inv = 1.0f / sum;
        ATT_UNROLL
        for (int c = 0; c < DPL; c++) {
            const int d = lane + 32 * c;
            if (d < Dh) o[base + (size_t)i * Dh + d] = acc[r][c] * inv;
        }
        if (lane == 0) lse[(size_t)bh * T + i] = (m[r] + log2f(sum)) * ATT_LN2;
    }
}

/* ---- backward ------------------------------------------------------------------- */

/* D (rows) = row sums of do * o, one warp a row. */
static __global__ void attn_d_kernel(size_t rows, int Dh, const float *__restrict__ o,
                                     const float *__restrict__ g, float *__restrict__ D) {
    const int lane = threadIdx.x & 31;
    const size_t warps = (size_t)gridDim.x * blockDim.x / 32;
    for (size_t r = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < rows; r += warps) {
        float s = 0.0f;
        for (int d = lane; d < Dh; d += 32)
            s += o[r * Dh + d] * g[r * Dh + d];
        s = att_sum(s);
        if (lane == 0) D[r] = s;
    }
}

/* dK, dV of a tile of BKV keys; warp w owns keys w * KW .. + KW of it. */
template <int DH, int BKV, int BQ, int NW>
static __global__ void __launch_bounds__(NW * 32)
    attn_dkv_kernel(int T, int Dh, float scale, float scale2, const float *__restrict__ q,
                    const float *__restrict__ k, const float *__restrict__ v,
                    const float *__restrict__ lse, const float *__restrict__ D,
                    const float *__restrict__ g, float *__restrict__ dk, float *__restrict__ dv) {
    constexpr int NT = NW * 32, KW = BKV / NW, RPL = BQ / 32, DPL = DH / 32;
    static_assert(BKV % NW == 0 && BQ % 32 == 0 && DH % 32 == 0, "tile shapes");
    static_assert(sizeof(float) * (2 * BKV * DH + 2 * BQ * DH + BKV * BQ + 2 * BQ) <= ATT_SMEM,
                  "shared memory");
    __shared__ float Ks[BKV][DH], Vs[BKV][DH]; /* plain: broadcast reads */
    __shared__ float Qs[BQ][DH], Gs[BQ][DH];   /* skewed: lanes over rows, then over columns */
    __shared__ float Ls[BQ], Ds[BQ];
    __shared__ float PS[BKV][BQ]; /* P, then dS, of the warp's keys */
    const int nt = (T + BKV - 1) / BKV;
    const int bh = blockIdx.x / nt, k0 = (int)(blockIdx.x % nt) * BKV; /* long first */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const size_t base = (size_t)bh * T * Dh;
    att_load<BKV, DH, NT>(Ks, k + base, k0, T, Dh, false);
    att_load<BKV, DH, NT>(Vs, v + base, k0, T, Dh, false);

    float ak[KW][DPL], av[KW][DPL];
    ATT_UNROLL
    for (int jj = 0; jj < KW; jj++)
        ATT_UNROLL
    for (int c = 0; c < DPL; c++)
        ak[jj][c] = av[jj][c] = 0.0f;
    for (int i0 = k0 / BQ * BQ; i0 < T; i0 += BQ) {
        __syncthreads(); /* the last tile's Qs, Gs */
        att_load<BQ, DH, NT>(Qs, q + base, i0, T, Dh, true);
        att_load<BQ, DH, NT>(Gs, g + base, i0, T, Dh, true);
        for (int i = threadIdx.x; i < BQ; i += NT) {
            const int row = i0 + i;
            Ls[i] = row < T ? lse[(size_t)bh * T + row] * ATT_LOG2E : INFINITY;
            Ds[i] = row < T ? D[(size_t)bh * T + row] : 0.0f;
        }
        __syncthreads();
        float s[KW][RPL], dp[KW][RPL];
        ATT_UNROLL
        for (int jj = 0; jj < KW; jj++)
            ATT_UNROLL
        for (int c = 0; c < RPL; c++)
            s[jj][c] = dp[jj][c] = 0.0f;
        ATT_UNROLL_4
        for (int d = 0; d < DH; d++) {
            float qd[RPL], gd[RPL];
            ATT_UNROLL
            for (int c = 0; c < RPL; c++) {
                const int i = lane + 32 * c;
                qd[c] = Qs[i][(d + i) & (DH - 1)];
                gd[c] = Gs[i][(d + i) & (DH - 1)];
            }
            ATT_UNROLL
            for (int jj = 0; jj < KW; jj++) {
                const float kd = Ks[w * KW + jj][d], vd = Vs[w * KW + jj][d];
                ATT_UNROLL
                for (int c = 0; c < RPL; c++) {
                    s[jj][c] += qd[c] * kd;
                    dp[jj][c] += gd[c] * vd;
                }
            }
        }
        ATT_UNROLL
        for (int jj = 0; jj < KW; jj++) {
            const int j = k0 + w * KW + jj;
            ATT_UNROLL
            for (int c = 0; c < RPL; c++) {
                const int ii = lane + 32 * c, i = i0 + ii;
                const float p = i < T && j <= i ? exp2f(s[jj][c] * scale2 - Ls[ii]) : 0.0f;
                PS[w * KW + jj][ii] = p;
                dp[jj][c] = p * (dp[jj][c] - Ds[ii]);
            }
        }
        __syncwarp();
        for (int i = 0; i < BQ; i++) { /* dV += P^T dO */
            float gd[DPL];
            ATT_UNROLL
            for (int c = 0; c < DPL; c++)
                gd[c] = Gs[i][(lane + 32 * c + i) & (DH - 1)];
            ATT_UNROLL
            for (int jj = 0; jj < KW; jj++) {
                const float p = PS[w * KW + jj][i];
                ATT_UNROLL
                for (int c = 0; c < DPL; c++)
                    av[jj][c] += p * gd[c];
            }
        }
        __syncwarp();
        ATT_UNROLL
        for (int jj = 0; jj < KW; jj++)
            ATT_UNROLL
        for (int c = 0; c < RPL; c++)
            PS[w * KW + jj][lane + 32 * c] = dp[jj][c];
        __syncwarp();
        for (int i = 0; i < BQ; i++) { /* dK += dS^T Q (scaled at the end) */
            float qd[DPL];
            ATT_UNROLL
            for (int c = 0; c < DPL; c++)
                qd[c] = Qs[i][(lane + 32 * c + i) & (DH - 1)];
            ATT_UNROLL
            for (int jj = 0; jj < KW; jj++) {
                const float ds = PS[w * KW + jj][i];
                ATT_UNROLL
                for (int c = 0; c < DPL; c++)
                    ak[jj][c] += ds * qd[c];
            }
        }
    }
    ATT_UNROLL
    for (int jj = 0; jj < KW; jj++) {
        const int j = k0 + w * KW + jj;
        if (j >= T) continue;
        ATT_UNROLL
        for (int c = 0; c < DPL; c++) {
            const int d = lane + 32 * c;
            if (d >= Dh) continue;
            dk[base + (size_t)j * Dh + d] = ak[jj][c] * scale;
            dv[base + (size_t)j * Dh + d] = av[jj][c];
        }
    }
}

/* dQ of a tile of BQ queries; warp w owns rows w * RW .. + RW of it. */
template <int DH, int BQ, int BK, int NW>
static __global__ void __launch_bounds__(NW * 32)
    attn_dq_kernel(int T, int Dh, float scale, float scale2, const float *__restrict__ q,
                   const float *__restrict__ k, const float *__restrict__ v,
                   const float *__restrict__ lse, const float *__restrict__ D,
                   const float *__restrict__ g, float *__restrict__ dq) {
    constexpr int NT = NW * 32, RW = BQ / NW, KPL = BK / 32, DPL = DH / 32;
    static_assert(BQ % NW == 0 && BK % 32 == 0 && DH % 32 == 0, "tile shapes");
    static_assert(sizeof(float) * (2 * BQ * DH + 2 * BK * DH + BQ * BK) <= ATT_SMEM,
                  "shared memory");
    __shared__ float Qs[BQ][DH], Gs[BQ][DH]; /* plain: broadcast reads */
    __shared__ float Ks[BK][DH], Vs[BK][DH]; /* skewed: lanes over keys, then over columns */
    __shared__ float PS[BQ][BK];             /* dS of the warp's rows */
    const int nt = (T + BQ - 1) / BQ;
    const int bh = blockIdx.x / nt, q0 = (nt - 1 - (int)(blockIdx.x % nt)) * BQ; /* long first */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const size_t base = (size_t)bh * T * Dh;
    att_load<BQ, DH, NT>(Qs, q + base, q0, T, Dh, false);
    att_load<BQ, DH, NT>(Gs, g + base, q0, T, Dh, false);

    float L[RW], Dr[RW], acc[RW][DPL];
    ATT_UNROLL
    for (int r = 0; r < RW; r++) {
        const int i = q0 + w * RW + r;
        L[r] = i < T ? lse[(size_t)bh * T + i] * ATT_LOG2E : INFINITY;
        Dr[r] = i < T ? D[(size_t)bh * T + i] : 0.0f;
        ATT_UNROLL
        for (int c = 0; c < DPL; c++)
            acc[r][c] = 0.0f;
    }
    const int kend = T < q0 + BQ ? T : q0 + BQ;
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads(); /* the last tile's Ks (and the first time, Qs, Gs) */
        att_load<BK, DH, NT>(Ks, k + base, k0, T, Dh, true);
        att_load<BK, DH, NT>(Vs, v + base, k0, T, Dh, true);
        __syncthreads();
        float s[RW][KPL], dp[RW][KPL];
        ATT_UNROLL
        for (int r = 0; r < RW; r++)
            ATT_UNROLL
        for (int c = 0; c < KPL; c++)
            s[r][c] = dp[r][c] = 0.0f;
        ATT_UNROLL_4
        for (int d = 0; d < DH; d++) {
            float kd[KPL], vd[KPL];
            ATT_UNROLL
            for (int c = 0; c < KPL; c++) {
                const int j = lane + 32 * c;
                kd[c] = Ks[j][(d + j) & (DH - 1)];
                vd[c] = Vs[j][(d + j) & (DH - 1)];
            }
            ATT_UNROLL
            for (int r = 0; r < RW; r++) {
                const float qd = Qs[w * RW + r][d], gd = Gs[w * RW + r][d];
                ATT_UNROLL
                for (int c = 0; c < KPL; c++) {
                    s[r][c] += qd * kd[c];
                    dp[r][c] += gd * vd[c];
                }
            }
        }
        ATT_UNROLL
        for (int r = 0; r < RW; r++) {
            const int i = q0 + w * RW + r;
            ATT_UNROLL
            for (int c = 0; c < KPL; c++) {
                const int j = k0 + lane + 32 * c;
                const float p = i < T && j <= i ? exp2f(s[r][c] * scale2 - L[r]) : 0.0f;
                PS[w * RW + r][lane + 32 * c] = p * (dp[r][c] - Dr[r]);
            }
        }
        __syncwarp();
        const int jn = kend - k0 < BK ? kend - k0 : BK;
        for (int j = 0; j < jn; j++) { /* dQ += dS K (scaled at the end) */
            float kd[DPL];
            ATT_UNROLL
            for (int c = 0; c < DPL; c++)
                kd[c] = Ks[j][(lane + 32 * c + j) & (DH - 1)];
            ATT_UNROLL
            for (int r = 0; r < RW; r++) {
                const float ds = PS[w * RW + r][j];
                ATT_UNROLL
                for (int c = 0; c < DPL; c++)
                    acc[r][c] += ds * kd[c];
            }
        }
    }
    ATT_UNROLL
    for (int r = 0; r < RW; r++) {
        const int i = q0 + w * RW + r;
        if (i >= T) continue;
        ATT_UNROLL
        for (int c = 0; c < DPL; c++) {
            const int d = lane + 32 * c;
            if (d < Dh) dq[base + (size_t)i * Dh + d] = acc[r][c] * scale;
        }
    }
}

/* ---- launches ----------------------------------------------------------------------- */

/* The tiles per head-size class DH: (queries, keys, warps) of forward and
 * of dQ, (keys, queries, warps) of dK dV, each within ATT_SMEM. */
template <int DH> struct att_cfg;
template <> struct att_cfg<32> {
    enum { FQ = 64, FK = 64, FW = 8, KK = 64, KQ = 32, KW = 8, QQ = 64, QK = 64, QW = 8 };
};
template <> struct att_cfg<64> {
    enum { FQ = 64, FK = 64, FW = 8, KK = 32, KQ = 32, KW = 4, QQ = 32, QK = 32, QW = 4 };
};
template <> struct att_cfg<128> {
    enum { FQ = 32, FK = 32, FW = 4, KK = 8, KQ = 32, KW = 2, QQ = 8, QK = 32, QW = 1 };
};

static unsigned att_grid(int BH, int T, int tile) {
    return (unsigned)((size_t)BH * (size_t)((T + tile - 1) / tile));
}

template <int DH>
static void att_forward(dv_cuda_ctx *cx, int BH, int T, int Dh, float scale, const float *q,
                        const float *k, const float *v, float *o, float *lse) {
    typedef att_cfg<DH> C;
    void (*kern)(int, int, float, const float *, const float *, const float *, float *, float *) =
        attn_fwd_kernel<DH, C::FQ, C::FK, C::FW>;
    kern<<<att_grid(BH, T, C::FQ), C::FW * 32, 0, cx->stream>>>(T, Dh, scale * ATT_LOG2E, q, k, v,
                                                                o, lse);
    DV_CUDA_LAUNCHED(cx, "attn_fwd_kernel");
}

template <int DH>
static void att_backward(dv_cuda_ctx *cx, int BH, int T, int Dh, float scale, const float *q,
                         const float *k, const float *v, const float *lse, const float *D,
                         const float *g, float *dq, float *dk, float *dv) {
    typedef att_cfg<DH> C;
    void (*kv)(int, int, float, float, const float *, const float *, const float *, const float *,
               const float *, const float *, float *, float *) =
        attn_dkv_kernel<DH, C::KK, C::KQ, C::KW>;
    kv<<<att_grid(BH, T, C::KK), C::KW * 32, 0, cx->stream>>>(T, Dh, scale, scale * ATT_LOG2E, q, k,
                                                              v, lse, D, g, dk, dv);
    DV_CUDA_LAUNCHED(cx, "attn_dkv_kernel");
    void (*qk)(int, int, float, float, const float *, const float *, const float *, const float *,
               const float *, const float *, float *) = attn_dq_kernel<DH, C::QQ, C::QK, C::QW>;
    qk<<<att_grid(BH, T, C::QQ), C::QW * 32, 0, cx->stream>>>(T, Dh, scale, scale * ATT_LOG2E, q, k,
                                                              v, lse, D, g, dq);
    DV_CUDA_LAUNCHED(cx, "attn_dq_kernel");
}

/* Nonzero, with the error recorded, for a head size the kernels lack. */
static int att_bad_dh(dv_cuda_ctx *cx, int Dh, const char *op) {
    if (Dh <= ATT_MAXDH) return 0;
    char msg[128];
    snprintf(msg, sizeof msg, "head size %d: the CUDA attention takes at most %d", Dh, ATT_MAXDH);
    dv_cuda_record(cx, __FILE__, __LINE__, op, msg);
    return 1;
}

extern "C" size_t dv_cuda_attention_workspace(void *ctx, int BH, int T, int Dh) {
    (void)ctx;
    if (Dh > ATT_MAXDH) return SIZE_MAX; /* not taken: the layer refuses it at setup */
    return BH > 0 && T > 0 ? (size_t)BH * (size_t)T : 0; /* backward's D */
}

extern "C" void dv_cuda_attention_forward(void *ctx, int BH, int T, int Dh, float scale,
                                          const float *q, const float *k, const float *v, float *o,
                                          float *lse, float *work) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    (void)work;
    if (att_bad_dh(cx, Dh, "dv_cuda_attention_forward") || BH <= 0 || T <= 0 || Dh <= 0) return;
    if (Dh <= 32)
        att_forward<32>(cx, BH, T, Dh, scale, q, k, v, o, lse);
    else if (Dh <= 64)
        att_forward<64>(cx, BH, T, Dh, scale, q, k, v, o, lse);
    else
        att_forward<128>(cx, BH, T, Dh, scale, q, k, v, o, lse);
}

extern "C" void dv_cuda_attention_backward(void *ctx, int BH, int T, int Dh, float scale,
                                           const float *q, const float *k, const float *v,
                                           const float *o, const float *lse, const float *do_,
                                           float *dq, float *dk, float *dv, float *work) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (att_bad_dh(cx, Dh, "dv_cuda_attention_backward") || BH <= 0 || T <= 0 || Dh <= 0) return;
    const size_t rows = (size_t)BH * T;
    attn_d_kernel<<<dv_cuda_blocks(cx, rows * 32), DV_CUDA_THREADS, 0, cx->stream>>>(rows, Dh, o,
                                                                                     do_, work);
    DV_CUDA_LAUNCHED(cx, "attn_d_kernel");
    if (Dh <= 32)
        att_backward<32>(cx, BH, T, Dh, scale, q, k, v, lse, work, do_, dq, dk, dv);
    else if (Dh <= 64)
        att_backward<64>(cx, BH, T, Dh, scale, q, k, v, lse, work, do_, dq, dk, dv);
    else
        att_backward<128>(cx, BH, T, Dh, scale, q, k, v, lse, work, do_, dq, dk, dv);
}
