/* backend_cuda_none.c — the CUDA entry points for builds without the CUDA
 * Toolkit: no devices, and a clear reason when one is asked for.
 */
#include "kernels.h"

#include <stdio.h>

dv_backend *dv_backend_cuda_create(int device, dv_precision precision, char *err) {
    (void)device;
    (void)precision;
    DV_ERROR(err, "Dive was built without CUDA");
    return NULL;
}

int dv_backend_cuda_device_count(void) {
    return 0;
}
