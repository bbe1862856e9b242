/* memory_cuda.cu — the CUDA backend's memory ops: device and page-locked
 * host memory, copies, sync and batch uploads through a staging area on the
 * copy stream. Only the table calls these; they call core_cuda.cu to
 * record errors.
 *
 * Two streams: `stream` runs every op in order; `copy_stream` only moves
 * batches from the host, so the next batch crosses PCIe while the current
 * step computes. Both are non-blocking streams, so nothing here ever
 * synchronizes with CUDA's legacy default stream (NCCL and comm/ use their
 * own streams too).
 */
#include "cuda-impl.h"

#include <stdlib.h>
#include <string.h>

void *dv_cuda_alloc(void *ctx, size_t bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    void *p = NULL;
    /* cudaMalloc of 0 bytes gives NULL, which callers read as failure */
    if (cudaMalloc(&p, bytes ? bytes : 256) != cudaSuccess) {
        cudaGetLastError(); /* out of memory is not sticky: callers report it */
        return NULL;
    }
    /* zeroed on return for every stream, not only for work queued on ours
     * (allocations happen at set-up, so the wait costs nothing that matters) */
    if (DV_CUDA_CHECK(cx, cudaMemsetAsync(p, 0, bytes, cx->stream)) ||
        DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream))) {
        cudaFree(p);
        return NULL;
    }
    if (cx->nblocks == cx->cap_blocks) {
        size_t cap = cx->cap_blocks ? 2 * cx->cap_blocks : 64;
        void *b = realloc(cx->blocks, cap * sizeof *cx->blocks);
        if (!b) {
            cudaFree(p);
            return NULL;
        }
        cx->blocks = (dv_cuda_block *)b;
        cx->cap_blocks = cap;
    }
    cx->blocks[cx->nblocks].p = p;
    cx->blocks[cx->nblocks++].bytes = bytes;
    cx->cur_bytes += bytes;
    if (cx->cur_bytes > cx->peak_bytes) cx->peak_bytes = cx->cur_bytes;
    return p;
}

void dv_cuda_free(void *ctx, void *p) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!p) return;
    /* the newest blocks are the likeliest to go first */
    for (size_t i = cx->nblocks; i-- > 0;)
        if (cx->blocks[i].p == p) {
            cx->cur_bytes -= cx->blocks[i].bytes;
            cx->blocks[i] = cx->blocks[--cx->nblocks];
            break;
        }
    /* cudaFree waits for the device, so work still reading p finishes first */
    DV_CUDA_CHECK(cx, cudaFree(p));
}

size_t dv_cuda_peak_bytes(void *ctx) {
    return ((dv_cuda_ctx *)ctx)->peak_bytes;
}

void dv_cuda_to_device(void *ctx, void *dst, const void *src, size_t bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!bytes) return;
    /* synchronous: the caller may free or reuse src at once (batches go
     * through `upload`, which overlaps) */
    DV_CUDA_CHECK(cx, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cx->stream));
    DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream));
}

void dv_cuda_to_host(void *ctx, void *dst, const void *src, size_t bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!bytes) return;
    DV_CUDA_CHECK(cx, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cx->stream));
    DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream));
}

void dv_cuda_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (!bytes || dst == src) return;
    DV_CUDA_CHECK(cx, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cx->stream));
}

void dv_cuda_sync(void *ctx) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream));
}

void *dv_cuda_host_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 64, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

void dv_cuda_host_free(void *ctx, void *p) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    if (p) DV_CUDA_CHECK(cx, cudaFreeHost(p));
}

/* Batches: host -> staging on the copy stream (overlapping the compute
 * already queued), then staging -> dst on the compute stream. The staging
 * area is reused only after the compute stream has copied it out
 * (staging_free), and the host returns once the host->device copy is done,
 * so the caller may refill src at once. */
/* Each upload's piece of the staging area starts on a 256-byte boundary. */
static size_t staged_size(size_t bytes) {
    return (bytes + 255) / 256 * 256;
}

void dv_cuda_upload(void *ctx, int n, void *const *dst, const void *const *src,
                    const size_t *bytes) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)ctx;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += staged_size(bytes[i]);
    if (!total) return;
    if (total > cx->staging_bytes) {
        DV_CUDA_CHECK(cx, cudaStreamSynchronize(cx->stream));
        if (cx->staging) DV_CUDA_CHECK(cx, cudaFree(cx->staging));
        cx->staging = NULL;
        cx->staging_bytes = 0;
        if (DV_CUDA_CHECK(cx, cudaMalloc(&cx->staging, total))) return;
        cx->staging_bytes = total;
    }
    char *stage = (char *)cx->staging;
    DV_CUDA_CHECK(cx, cudaStreamWaitEvent(cx->copy_stream, cx->staging_free, 0));
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        if (bytes[i])
            DV_CUDA_CHECK(cx, cudaMemcpyAsync(stage + off, src[i], bytes[i], cudaMemcpyHostToDevice,
                                              cx->copy_stream));
        off += staged_size(bytes[i]);
    }
    DV_CUDA_CHECK(cx, cudaEventRecord(cx->staged, cx->copy_stream));
    DV_CUDA_CHECK(cx, cudaEventSynchronize(cx->staged));
    DV_CUDA_CHECK(cx, cudaStreamWaitEvent(cx->stream, cx->staged, 0));
    off = 0;
    for (int i = 0; i < n; i++) {
        if (bytes[i])
            DV_CUDA_CHECK(cx, cudaMemcpyAsync(dst[i], stage + off, bytes[i],
                                              cudaMemcpyDeviceToDevice, cx->stream));
        off += staged_size(bytes[i]);
    }
    DV_CUDA_CHECK(cx, cudaEventRecord(cx->staging_free, cx->stream));
}
