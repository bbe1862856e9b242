/* kernels.c — backend-independent parts of kernels/: tensor views, window
 * geometry, counter-based random numbers, freeing a backend and global-norm
 * gradient clipping (built on the backend's own sumsq and scale, so it runs
 * wherever the gradients live).
 */
#include "kernels-impl.h"

#include <math.h>
#include <stdlib.h>

size_t dv_tensor_numel(const dv_tensor *t) {
    if (!t || t->ndim < 1) return 0;
    size_t n = 1;
    for (int i = 0; i < t->ndim && i < DV_TENSOR_MAX_DIMS; i++)
        n *= (size_t)(t->shape[i] > 0 ? t->shape[i] : 0);
    return n;
}

dv_tensor dv_tensor_view(float *data, int ndim, const int *shape) {
    dv_tensor t = {0};
    t.data = data;
    if (ndim < 1 || ndim > DV_TENSOR_MAX_DIMS || !shape)
        return t; /* ndim 0: an empty view, numel 0 */
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    return t;
}

int dv_conv2d_geom_init(dv_conv2d_geom *g) {
    if (!g || g->stride < 1 || g->pad < 0 || g->KH < 1 || g->KW < 1) {
        if (g) g->OH = g->OW = 0;
        return -1;
    }
    int hh = g->H + 2 * g->pad - g->KH, ww = g->W + 2 * g->pad - g->KW;
    /* C division truncates toward zero, so test the sign first. */
    g->OH = hh < 0 ? 0 : hh / g->stride + 1;
    g->OW = ww < 0 ? 0 : ww / g->stride + 1;
    return (g->OH < 1 || g->OW < 1) ? -1 : 0;
}

/* The generator itself is inline in kernels-impl.h. */
uint64_t dv_rand_hash(uint64_t seed, uint64_t counter) {
    return dv_rand_hash_inl(seed, counter);
}

float dv_rand_uniform(uint64_t seed, uint64_t counter) {
    return dv_rand_uniform_inl(seed, counter);
}

void dv_backend_free(dv_backend *be) {
    if (!be) return;
    dv_backend_box *box = (dv_backend_box *)be;
    if (box->destroy)
        box->destroy(be);
    else
        free(be->ctx);
    free(box);
}

double dv_clip_grad_norm(const dv_backend *be, float *grads, size_t n, double max_norm) {
    if (!be || !grads || n == 0) return 0.0;
    double norm = sqrt(be->sumsq(be->ctx, grads, n));
    if (max_norm > 0.0 && norm > max_norm && isfinite(norm))
        be->scale(be->ctx, grads, (float)(max_norm / norm), n);
    return norm;
}
