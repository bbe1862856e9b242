/* comm_device_none.c — the device side of comm in a build without CUDA (its
 * dv_comm_device_ops table): there is nothing to set up, and a device
 * buffer (a stream given) is an error that says why. No device request can
 * exist here, so progress, flush and release have nothing to do.
 */
#include "comm-impl.h"

#define NO_CUDA                                                                                    \
    "Dive was built without CUDA (CMake found no CUDA Toolkit or NCCL, or DIVE_CUDA=OFF), so "     \
    "there are no device buffers to reduce"

static dv_status none_init(dv_comm *c, int device, int ndevices, dv_comm_device_mode mode,
                           size_t max_floats, char *err) {
    (void)c, (void)device, (void)ndevices, (void)mode, (void)max_floats;
    DV_FAIL(err, "dv_comm_device_init", "%s", NO_CUDA);
}

static const char *none_path(const dv_comm *c) {
    (void)c;
    return NULL;
}

static dv_status none_start(dv_comm *c, float *x, size_t n, void *stream, dv_comm_request **req,
                            char *err) {
    (void)c, (void)x, (void)n, (void)stream, (void)req;
    DV_FAIL(err, "dv_comm_allreduce_start", "a stream was given (x on a device), but %s", NO_CUDA);
}

static dv_status none_wait(dv_comm *c, dv_comm_request *req, char *err) {
    (void)c, (void)req;
    DV_FAIL(err, "dv_comm_wait", "a device request, but %s", NO_CUDA);
}

static void none_nothing(dv_comm *c) {
    (void)c;
}

static dv_status none_stream_wait(dv_comm *c, void *stream, int keep, char *err) {
    (void)c, (void)stream, (void)keep;
    DV_FAIL(err, "dv_comm_stream_wait", "a stream was given, but %s", NO_CUDA);
}

const dv_comm_device_ops dv_comm_device_table = {
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
