/* backend_cuda.cu — the CUDA backend's entry points. For now it only counts
 * devices; its ops (cuBLAS GEMM and own kernels, same signatures as the CPU
 * ops in kernels/cpu/) come later, so creating it reports that plainly.
 */
#include "kernels.h"

#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int dv_backend_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error left by a missing driver */
        return 0;
    }
    return n;
}

extern "C" dv_backend *dv_backend_cuda_create(int device, char *err, size_t errlen) {
    (void)device;
    if (err && errlen > 0)
        snprintf(err, errlen, "the CUDA backend's ops are not implemented yet; use backend = cpu");
    return NULL;
}
