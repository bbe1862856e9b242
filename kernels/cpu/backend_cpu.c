/* backend_cpu.c — the CPU backend: host memory, OpenBLAS for GEMM, plain C
 * loops (ops_cpu.c) for the rest. This file only builds the table.
 */
#include "cpu-impl.h"
#include "kernels-impl.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* 64-byte alignment: a cache line, and a full AVX-512 vector. */
#define DV_CPU_ALIGN 64

void *dv_cpu_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    /* aligned_alloc wants a multiple of the alignment, and 0 bytes would
     * return NULL (read as failure) on some libcs. */
    size_t sz = (bytes + DV_CPU_ALIGN - 1) / DV_CPU_ALIGN * DV_CPU_ALIGN;
    if (sz < bytes) return NULL; /* overflow */
    if (sz == 0) sz = DV_CPU_ALIGN;
    void *p = aligned_alloc(DV_CPU_ALIGN, sz);
    if (p) memset(p, 0, sz);
    return p;
}

void dv_cpu_free(void *ctx, void *p) {
    (void)ctx;
    free(p);
}

void dv_cpu_memcpy(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    if (bytes && dst != src) memmove(dst, src, bytes);
}

void dv_cpu_sync(void *ctx) {
    (void)ctx;
}

void dv_cpu_gemm(void *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, const float *B, float beta, float *C) {
    (void)ctx;
    if (M <= 0 || N <= 0) return;
    if (K > 0 && dv_cpu_gemm_own(ctx, trans_a, trans_b, M, N, K, alpha, A, B, beta, C)) return;
    if (K <= 0) { /* BLAS returns early here; the contract says C = beta*C */
        if (beta == 0.0f)
            dv_cpu_fill(ctx, C, 0.0f, (size_t)M * N);
        else
            dv_cpu_scale(ctx, C, beta, (size_t)M * N);
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, trans_a ? M : K, B,
                trans_b ? K : N, beta, C, N);
}

/* Batches are read where they lie: an upload is a plain copy. */
static void cpu_upload(void *ctx, int n, void *const *dst, const void *const *src,
                       const size_t *bytes) {
    for (int i = 0; i < n; i++)
        dv_cpu_memcpy(ctx, dst[i], src[i], bytes[i]);
}

static void cpu_destroy(dv_backend *be) {
    dv_cpu_ctx *cx = be->ctx;
    if (cx) {
        free(cx->pack_buf);
        free(cx->pack_a);
    }
    free(cx);
}

/* CPU ops cannot fail once their buffers exist. */
static dv_status cpu_check(void *ctx, char *err) {
    (void)ctx;
    (void)err;
    return DV_OK;
}

dv_backend *dv_backend_cpu_create(int threads) {
    dv_backend_box *box = calloc(1, sizeof *box);
    dv_cpu_ctx *cx = calloc(1, sizeof *cx);
    if (!box || !cx) {
        free(box);
        free(cx);
        return NULL;
    }
    cx->threads = threads;
    cx->pack_own = dv_cpu_pack_own(threads);
    if (threads > 0) openblas_set_num_threads(threads);

    dv_backend *be = &box->be;
    box->destroy = cpu_destroy;
    be->name = "cpu";
    be->ctx = cx;
    be->alloc = dv_cpu_alloc;
    be->free = dv_cpu_free;
    be->to_device = dv_cpu_memcpy;
    be->to_host = dv_cpu_memcpy;
    be->copy = dv_cpu_memcpy;
    be->fill = dv_cpu_fill;
    be->sync = dv_cpu_sync;
    be->host_alloc = dv_cpu_alloc;
    be->host_free = dv_cpu_free;
    be->upload = cpu_upload;
    be->check = cpu_check;
    be->gemm = dv_cpu_gemm;
    be->bias_forward = dv_cpu_bias_forward;
    be->bias_backward = dv_cpu_bias_backward;
    be->act_forward = dv_cpu_act_forward;
    be->act_backward = dv_cpu_act_backward;
    be->conv2d_workspace = dv_cpu_conv2d_workspace;
    be->conv2d_forward = dv_cpu_conv2d_forward;
    be->conv2d_backward = dv_cpu_conv2d_backward;
    be->pool2d_forward = dv_cpu_pool2d_forward;
    be->pool2d_backward = dv_cpu_pool2d_backward;
    be->upsample_forward = dv_cpu_upsample_forward;
    be->upsample_backward = dv_cpu_upsample_backward;
    be->dropout_forward = dv_cpu_dropout_forward;
    be->dropout_backward = dv_cpu_dropout_backward;
    be->batchnorm_forward = dv_cpu_batchnorm_forward;
    be->batchnorm_backward = dv_cpu_batchnorm_backward;
    be->xent_loss = dv_cpu_xent_loss;
    be->bce_loss = dv_cpu_bce_loss;
    be->mse_loss = dv_cpu_mse_loss;
    be->perceptron_loss = dv_cpu_perceptron_loss;
    be->opt_step = dv_cpu_opt_step;
    be->gemm_batched = dv_cpu_gemm_batched;
    be->gemm_batched_ld = dv_cpu_gemm_batched_ld;
    be->gemm_pack_size = dv_cpu_gemm_pack_size;
    be->gemm_pack = dv_cpu_gemm_pack;
    be->gemm_packed = dv_cpu_gemm_packed;
    be->embedding_forward = dv_cpu_embedding_forward;
    be->embedding_backward = dv_cpu_embedding_backward;
    be->layernorm_forward = dv_cpu_layernorm_forward;
    be->layernorm_backward = dv_cpu_layernorm_backward;
    be->transpose = dv_cpu_transpose;
    be->gelu_forward = dv_cpu_gelu_forward;
    be->gelu_backward = dv_cpu_gelu_backward;
    be->causal_softmax_forward = dv_cpu_causal_softmax_forward;
    be->causal_softmax_backward = dv_cpu_causal_softmax_backward;
    be->lstm_cell_forward = dv_cpu_lstm_cell_forward;
    be->lstm_cell_backward = dv_cpu_lstm_cell_backward;
    be->gru_cell_forward = dv_cpu_gru_cell_forward;
    be->gru_cell_backward = dv_cpu_gru_cell_backward;
    be->sumsq = dv_cpu_sumsq;
    be->scale = dv_cpu_scale;
    be->axpy = dv_cpu_axpy;
    return be;
}
