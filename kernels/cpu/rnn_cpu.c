/* rnn_cpu.c — the recurrent cells of the CPU backend: one time step of an
 * LSTM and of a GRU, forward and backward, elementwise over (B, H) units.
 * The GEMMs around a cell (x W_ih^T, h W_hh^T and their gradients) are the
 * caller's; a cell sees only the gate pre-activations. These loops are the
 * reference that kernels/cuda/rnn_cuda.cu restates, expression for
 * expression, so the two agree within the rounding of expf/tanhf (here
 * the vectorizable dv_fast_* of cpu-impl.h, within 3 ulp of libm's).
 *
 * Assumes: host memory, contracts of ops.def; every unit (b, j) is read
 * before it is written, so in place use that maps a unit onto itself (for
 * instance dc_prev == dc, dgates == gates) is harmless. Each loop over j
 * carries `DV_IVDEP`: no unit depends on another, which GCC cannot
 * prove for these possibly aliased pointers, and without it the loops stay
 * scalar (an unvectorized LSTM cell was 20% of a fortunes_lstm step).
 */
#include "cpu-impl.h"

#include <math.h>

/* ---- LSTM ---------------------------------------------------------------
 * Row b of gates holds [i | f | g | o], H each (PyTorch's order). */

DV_HOT void dv_cpu_lstm_cell_forward(void *ctx, int B, int H, float *gates, const float *c_prev,
                                     float *c, float *h) {
    (void)ctx;
    for (int b = 0; b < B; b++) {
        float *gr = gates + (size_t)b * 4 * H;
        const size_t row = (size_t)b * H;
        DV_IVDEP
        for (int j = 0; j < H; j++) {
            const float ig = dv_fast_sigmoidf(gr[j]);
            const float fg = dv_fast_sigmoidf(gr[H + j]);
            const float gg = dv_fast_tanhf(gr[2 * H + j]);
            const float og = dv_fast_sigmoidf(gr[3 * H + j]);
            const float cp = c_prev ? c_prev[row + j] : 0.0f;
            const float cn = fg * cp + ig * gg;
            gr[j] = ig;
            gr[H + j] = fg;
            gr[2 * H + j] = gg;
            gr[3 * H + j] = og;
            c[row + j] = cn;
            h[row + j] = og * dv_fast_tanhf(cn);
        }
    }
}

/* With t = tanh(c) and the incoming dh, dc:
 *   dc_tot  = dc + dh * o * (1 - t^2)    (c reaches the loss directly and
 *                                          through h = o * t)
 *   d_o     = dh * t
 *   d_i     = dc_tot * g,   d_f = dc_tot * c_prev,   d_g = dc_tot * i
 *   dc_prev = dc_tot * f
 * and through the activations (sigmoid' = s (1 - s), tanh' = 1 - g^2):
 *   dgates = [d_i i (1-i) | d_f f (1-f) | d_g (1 - g^2) | d_o o (1-o)].
 * t is recomputed from c: the same dv_fast_tanhf of the same float as the
 * forward's, so the same bits. */
DV_HOT void dv_cpu_lstm_cell_backward(void *ctx, int B, int H, const float *gates,
                                      const float *c_prev, const float *c, const float *dh,
                                      const float *dc, float *dgates, float *dc_prev) {
    (void)ctx;
    for (int b = 0; b < B; b++) {
        const float *gr = gates + (size_t)b * 4 * H;
        float *dr = dgates + (size_t)b * 4 * H;
        const size_t row = (size_t)b * H;
        DV_IVDEP
        for (int j = 0; j < H; j++) {
            const float ig = gr[j], fg = gr[H + j], gg = gr[2 * H + j], og = gr[3 * H + j];
            const float cp = c_prev ? c_prev[row + j] : 0.0f;
            const float t = dv_fast_tanhf(c[row + j]);
            const float dhv = dh[row + j];
            const float dct = (dc ? dc[row + j] : 0.0f) + dhv * og * (1.0f - t * t);
            const float d_o = dhv * t;
            const float d_i = dct * gg;
            const float d_f = dct * cp;
            const float d_g = dct * ig;
            if (dc_prev) dc_prev[row + j] = dct * fg;
            dr[j] = d_i * ig * (1.0f - ig);
            dr[H + j] = d_f * fg * (1.0f - fg);
            dr[2 * H + j] = d_g * (1.0f - gg * gg);
            dr[3 * H + j] = d_o * og * (1.0f - og);
        }
    }
}

/* ---- GRU ----------------------------------------------------------------
 * Rows of gi, gh hold [r | z | n], H each; a row of save holds
 * [r | z | n | gh_n]. */

DV_HOT void dv_cpu_gru_cell_forward(void *ctx, int B, int H, const float *gi, const float *gh,
                                    const float *h_prev, float *h, float *save) {
    (void)ctx;
    for (int b = 0; b < B; b++) {
        const float *xi = gi + (size_t)b * 3 * H, *xh = gh + (size_t)b * 3 * H;
        float *sr = save + (size_t)b * 4 * H;
        const size_t row = (size_t)b * H;
        DV_IVDEP
        for (int j = 0; j < H; j++) {
            const float r = dv_fast_sigmoidf(xi[j] + xh[j]);
            const float z = dv_fast_sigmoidf(xi[H + j] + xh[H + j]);
            const float ghn = xh[2 * H + j];
            const float n = dv_fast_tanhf(xi[2 * H + j] + r * ghn);
            const float hp = h_prev ? h_prev[row + j] : 0.0f;
            sr[j] = r;
            sr[H + j] = z;
            sr[2 * H + j] = n;
            sr[3 * H + j] = ghn;
            h[row + j] = (1.0f - z) * n + z * hp;
        }
    }
}

/* With a_r = gi_r + gh_r, a_z = gi_z + gh_z, a_n = gi_n + r gh_n and
 * h = (1 - z) n + z h_prev:
 *   dn   = dh (1 - z),           dz = dh (h_prev - n)
 *   da_n = dn (1 - n^2)          -> dgi_n = da_n,  dgh_n = da_n r
 *   dr   = da_n gh_n
 *   da_z = dz z (1 - z)          -> dgi_z = dgh_z = da_z
 *   da_r = dr r (1 - r)          -> dgi_r = dgh_r = da_r
 *   dh_prev = dh z               (direct path only: the path through
 *                                 gh = h_prev W_hh^T + b_hh is dgh W_hh,
 *                                 the caller's GEMM) */
DV_HOT void dv_cpu_gru_cell_backward(void *ctx, int B, int H, const float *save,
                                     const float *h_prev, const float *dh, float *dgi, float *dgh,
                                     float *dh_prev) {
    (void)ctx;
    for (int b = 0; b < B; b++) {
        const float *sr = save + (size_t)b * 4 * H;
        float *di = dgi + (size_t)b * 3 * H, *dg = dgh + (size_t)b * 3 * H;
        const size_t row = (size_t)b * H;
        DV_IVDEP
        for (int j = 0; j < H; j++) {
            const float r = sr[j], z = sr[H + j], n = sr[2 * H + j], ghn = sr[3 * H + j];
            const float hp = h_prev ? h_prev[row + j] : 0.0f;
            const float dhv = dh[row + j];
            const float dn = dhv * (1.0f - z);
            const float dz = dhv * (hp - n);
            const float dan = dn * (1.0f - n * n);
            const float dr = dan * ghn;
            const float daz = dz * z * (1.0f - z);
            const float dar = dr * r * (1.0f - r);
            if (dh_prev) dh_prev[row + j] = dhv * z;
            di[j] = dar;
            di[H + j] = daz;
            di[2 * H + j] = dan;
            dg[j] = dar;
            dg[H + j] = daz;
            dg[2 * H + j] = dan * r;
        }
    }
}
