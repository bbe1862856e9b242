/* kernels-impl.h — private to kernels/: how a backend table is boxed so
 * dv_backend_free can release it without knowing the backend.
 *
 * Every backend allocates a dv_backend_box (the public table first, so a
 * dv_backend * and its box share one address) and sets `destroy`, which
 * releases the backend's ctx; dv_backend_free then frees the box.
 */
#ifndef DV_KERNELS_IMPL_H
#define DV_KERNELS_IMPL_H

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dv_backend_box {
    dv_backend be;                   /* must stay first */
    void (*destroy)(dv_backend *be); /* frees be->ctx; NULL: free(be->ctx) */
} dv_backend_box;

#ifdef __cplusplus
}
#endif
#endif
