/* cuda_load.c — the CUDA backend's entry points in libdive.so: they load
 * the CUDA module (libdive-cuda.so: the backend, cuBLAS, the CUDA runtime)
 * the first time a run asks for a GPU, and never before, so a CPU run maps
 * none of the CUDA libraries and runs where they are not installed.
 *
 * Counting GPUs for `backend = auto` asks the driver (libcuda.so.1, cuInit
 * and cuDeviceGetCount) before it loads the module: where there is no
 * driver, or it sees no GPU, the count is 0 and nothing else is loaded.
 * DIVE_CUDA_MODULE names a module to load instead (the tests' emulated
 * one, or a build elsewhere); then its own count is asked.
 *
 * The loaded table is the one piece of process-wide state of kernels/: a
 * module, once open, stays open.
 */
#include "kernels-impl.h"

#include <dlfcn.h>
#include <stdlib.h>

#define MODULE_ENV "DIVE_CUDA_MODULE"

static const dv_kernels_cuda_api *g_api;

static const dv_kernels_cuda_api *load(char *err) {
    if (g_api) return g_api;
    void *h = dv_module_open("cuda", MODULE_ENV, err);
    if (!h) return NULL;
    const dv_kernels_cuda_api *(*entry)(void) = NULL;
    *(void **)&entry = dv_module_symbol(h, "dv_kernels_cuda_module", err);
    if (!entry) return NULL;
    const dv_kernels_cuda_api *api = entry();
    if (api->abi != DV_KERNELS_CUDA_ABI || api->table_size != sizeof(dv_backend)) {
        DV_ERROR(err,
                 "the CUDA module belongs to another build of Dive (rebuild it with this one)");
        return NULL;
    }
    return g_api = api;
}

/* GPUs the driver sees, or -1 when there is no driver to ask. */
static int driver_devices(void) {
    void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!h) return -1;
    int (*init)(unsigned) = NULL;
    int (*count)(int *) = NULL;
    *(void **)&init = dlsym(h, "cuInit");
    *(void **)&count = dlsym(h, "cuDeviceGetCount");
    int n = 0;
    /* CUresult 0 is CUDA_SUCCESS; no GPU makes cuInit fail */
    if (!init || !count || init(0) != 0 || count(&n) != 0) n = 0;
    return n;
}

int dv_backend_cuda_device_count(void) {
    if (!g_api) {
        const char *given = getenv(MODULE_ENV);
        if ((!given || !*given) && driver_devices() <= 0) return 0;
    }
    char err[DV_ERR_LEN];
    const dv_kernels_cuda_api *api = load(err);
    return api ? api->device_count() : 0;
}

dv_backend *dv_backend_cuda_create(int device, dv_precision precision, char *err) {
    char why[DV_ERR_LEN];
    const dv_kernels_cuda_api *api = load(err ? err : why);
    return api ? api->create(device, precision, err) : NULL;
}
