/* comm_device_none.c — the device side of comm until a GPU run sets it up
 * (its dv_comm_device_ops table): a device buffer (a stream given) is an
 * error that says why, and dv_comm_device_init loads the CUDA module
 * (libdive-cuda.so, where comm_device.c lives; DIVE_CUDA_MODULE names
 * another) and hands over to its table. No device request can exist here,
 * so progress, flush and release have nothing to do.
 *
 * The module is loaded only here, so a run that never asks for device
 * all-reduces never maps NCCL or the CUDA runtime.
 */
#include "comm-impl.h"

#include <stdlib.h>

#define MODULE_ENV "DIVE_CUDA_MODULE"

#define NO_CUDA                                                                                    \
    "Dive was built without CUDA (CMake found no CUDA Toolkit or NCCL, or DIVE_CUDA=OFF), so "     \
    "there are no device buffers to reduce"

/* Why a device buffer cannot be used before dv_comm_device_init. */
static const char *why_none(void) {
#ifdef DIVE_CUDA_MODULE_BUILT
    const int built = 1;
#else
    const int built = 0;
#endif
    const char *given = getenv(MODULE_ENV);
    return built || (given && *given) ? "dv_comm_device_init has not been called" : NO_CUDA;
}

/* The CUDA module's table, or NULL with err. */
static const dv_comm_device_ops *load(char *err) {
    void *h = dv_module_open("cuda", MODULE_ENV, err);
    if (!h) {
        const char *given = getenv(MODULE_ENV);
#ifndef DIVE_CUDA_MODULE_BUILT
        if (!given || !*given) DV_ERROR(err, "dv_comm_device_init: %s", NO_CUDA);
#endif
        (void)given;
        return NULL;
    }
    const dv_comm_cuda_api *(*entry)(void) = NULL;
    *(void **)&entry = dv_module_symbol(h, "dv_comm_cuda_module", err);
    if (!entry) return NULL;
    const dv_comm_cuda_api *api = entry();
    if (api->abi != DV_COMM_CUDA_ABI || api->comm_size != sizeof(struct dv_comm)) {
        DV_ERROR(err,
                 "the CUDA module belongs to another build of Dive (rebuild it with this one)");
        return NULL;
    }
    return api->ops;
}

static dv_status none_init(dv_comm *c, int device, int ndevices, dv_comm_device_mode mode,
                           size_t max_floats, char *err) {
    const dv_comm_device_ops *ops = load(err);
    /* every rank fails alike when any rank lacks the module */
    c->algo->drain(c);
    int first = dv_comm_agree(c, ops != NULL);
    if (first >= 0) {
        if (ops) DV_FAIL(err, "dv_comm_device_init", "rank %d cannot load the CUDA module", first);
        return DV_ERR;
    }
    c->devops = ops;
    return ops->init(c, device, ndevices, mode, max_floats, err);
}

static const char *none_path(const dv_comm *c) {
    (void)c;
    return NULL;
}

static dv_status none_start(dv_comm *c, float *x, size_t n, void *stream, dv_comm_request **req,
                            char *err) {
    (void)c, (void)x, (void)n, (void)stream, (void)req;
    DV_FAIL(err, "dv_comm_allreduce_start", "a stream was given (x on a device), but %s",
            why_none());
}

static dv_status none_wait(dv_comm *c, dv_comm_request *req, char *err) {
    (void)c, (void)req;
    DV_FAIL(err, "dv_comm_wait", "a device request, but %s", why_none());
}

static void none_nothing(dv_comm *c) {
    (void)c;
}

static dv_status none_stream_wait(dv_comm *c, void *stream, int keep, char *err) {
    (void)c, (void)stream, (void)keep;
    DV_FAIL(err, "dv_comm_stream_wait", "a stream was given, but %s", why_none());
}

const dv_comm_device_ops dv_comm_device_none = {
    .name = "none",
    .init = none_init,
    .path = none_path,
    .start = none_start,
    .wait = none_wait,
    .progress = none_nothing,
    .flush = none_nothing,
    .stream_wait = none_stream_wait,
    .release = none_nothing,
};
