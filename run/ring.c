/* ring.c — a training loop's per-step metrics (run-impl.h, dv_ring): kept
 * on the device in a ring of DV_RING_STEPS steps on a GPU and read in one
 * go, so the host does not wait for the GPU every step; one step at a time
 * on the CPU. Sums are added in step order, so they are the same however
 * often they were read.
 */
#include <math.h>
#include <string.h>

#include "run-impl.h"

dv_status dv_ring_init(dv_ring *g, const dv_backend *be, const float *src, int width, char *err) {
    memset(g, 0, sizeof(*g));
    g->be = be;
    g->src = src;
    g->width = width;
    g->cap = be->stream ? DV_RING_STEPS : 1;
    if (g->cap > 1 && !(g->dev = be->alloc(be->ctx, (size_t)width * DV_RING_STEPS * sizeof(float))))
        return DV_ERROR(err, "out of device memory");
    return DV_OK;
}

void dv_ring_free(dv_ring *g) {
    if (g->be) g->be->free(g->be->ctx, g->dev);
    g->dev = NULL;
}

int dv_ring_push(dv_ring *g, int64_t step) {
    if (!g->used) g->step0 = step;
    if (g->cap > 1)
        g->be->copy(g->be->ctx, g->dev + (size_t)g->width * (size_t)g->used, g->src,
                    (size_t)g->width * sizeof(float));
    return ++g->used == g->cap;
}

void dv_ring_flush(dv_ring *g, dv_comm *c, int device_comm, double *sums, const char *what) {
    const int n = g->used, w = g->width;
    if (!n) return;
    float h[DV_RING_STEPS * 16];
    if (w > 16) dv_comm_abort(c, 1, "dv_ring_flush: more than 16 values a step");
    dv_device_sync(c, g->be, device_comm, 0);
    g->be->to_host(g->be->ctx, h, g->cap > 1 ? g->dev : g->src,
                   (size_t)w * (size_t)n * sizeof(float));
    for (int k = 0; k < n; k++)
        for (int i = 0; i < w; i++) {
            const float v = h[k * w + i];
            if (!isfinite(v)) {
                char msg[256];
                snprintf(msg, sizeof(msg), "%s became %f at step %lld; lower lr or set clip_norm",
                         what, v, (long long)(g->step0 + k + 1));
                dv_comm_abort(c, 1, msg);
            }
            sums[i] += v;
        }
    g->used = 0;
}
