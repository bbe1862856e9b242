/* core_cpu.c — the bottom of the CPU backend: host memory (and the count
 * of its bytes), copies, uploads, fill, scale, sync and check. Other CPU
 * files call these (GEMM's K = 0 case fills or scales C; its packing
 * buffers come from dv_cpu_alloc), and nothing here calls them back.
 *
 * Assumes: "device" memory is host memory, so every transfer is a memmove
 * and sync has nothing to wait for; ops report errors only through the
 * ctx's record (DV_BAD_ENUM), which check hands over.
 */
#include "cpu-impl.h"

#include <stdlib.h>
#include <string.h>

/* 64-byte alignment: a cache line, and a full AVX-512 vector. Every block
 * starts with one such line that holds its size, so free can account for
 * it (dv_cpu_ctx.cur_bytes, peak_bytes). */
#define DV_CPU_ALIGN 64

void *dv_cpu_alloc(void *ctx, size_t bytes) {
    dv_cpu_ctx *cx = ctx;
    /* aligned_alloc wants a multiple of the alignment, and 0 bytes would
     * return NULL (read as failure) on some libcs. */
    size_t sz = (bytes + DV_CPU_ALIGN - 1) / DV_CPU_ALIGN * DV_CPU_ALIGN;
    if (sz < bytes || sz + DV_CPU_ALIGN < sz) return NULL; /* overflow */
    sz += DV_CPU_ALIGN;
    char *p = aligned_alloc(DV_CPU_ALIGN, sz);
    if (!p) return NULL;
    memset(p, 0, sz);
    memcpy(p, &sz, sizeof sz);
    size_t cur = __atomic_add_fetch(&cx->cur_bytes, sz, __ATOMIC_RELAXED);
    size_t peak = __atomic_load_n(&cx->peak_bytes, __ATOMIC_RELAXED);
    while (cur > peak && !__atomic_compare_exchange_n(&cx->peak_bytes, &peak, cur, 1,
                                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return p + DV_CPU_ALIGN;
}

void dv_cpu_free(void *ctx, void *p) {
    dv_cpu_ctx *cx = ctx;
    if (!p) return;
    char *base = (char *)p - DV_CPU_ALIGN;
    size_t sz;
    memcpy(&sz, base, sizeof sz);
    __atomic_sub_fetch(&cx->cur_bytes, sz, __ATOMIC_RELAXED);
    free(base);
}

size_t dv_cpu_peak_bytes(void *ctx) {
    dv_cpu_ctx *cx = ctx;
    return __atomic_load_n(&cx->peak_bytes, __ATOMIC_RELAXED);
}

/* A CPU's peak depends on its vector units, cores and clocks, which Dive
 * does not probe: unknown ([train] peak_tflops sets it). */
double dv_cpu_peak_flops(void *ctx) {
    (void)ctx;
    return 0;
}

/* Host memory is the device's: the host_ entries are the plain ones. */
void *dv_cpu_host_alloc(void *ctx, size_t bytes) {
    return dv_cpu_alloc(ctx, bytes);
}

void dv_cpu_host_free(void *ctx, void *p) {
    dv_cpu_free(ctx, p);
}

/* Every transfer is one memmove: source and destination may overlap. */
void dv_cpu_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    if (bytes && dst != src) memmove(dst, src, bytes);
}

void dv_cpu_to_device(void *ctx, void *dst, const void *src, size_t bytes) {
    dv_cpu_copy(ctx, dst, src, bytes);
}

void dv_cpu_to_host(void *ctx, void *dst, const void *src, size_t bytes) {
    dv_cpu_copy(ctx, dst, src, bytes);
}

/* Batches are read where they lie: an upload is a plain copy. */
void dv_cpu_upload(void *ctx, int n, void *const *dst, const void *const *src,
                   const size_t *bytes) {
    for (int i = 0; i < n; i++)
        dv_cpu_copy(ctx, dst[i], src[i], bytes[i]);
}

DV_HOT void dv_cpu_fill(void *ctx, float *x, float value, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        x[i] = value;
}

DV_HOT void dv_cpu_scale(void *ctx, float *x, float s, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}

/* CPU ops finish before they return. */
void dv_cpu_sync(void *ctx) {
    (void)ctx;
}

dv_status dv_cpu_check(void *ctx, char *err) {
    const dv_cpu_ctx *cx = ctx;
    if (!cx->err[0]) return DV_OK;
    if (err) memcpy(err, cx->err, sizeof cx->err);
    return DV_ERR;
}
