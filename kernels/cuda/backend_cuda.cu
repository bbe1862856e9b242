/* backend_cuda.cu — the CUDA backend's table: create (device, streams,
 * events, cuBLAS handle), destroy, the device count, and every op of ops.def
 * pointed at its dv_cuda_<op> (core_cuda.cu, memory_cuda.cu, ops_cuda.cu,
 * conv_cuda.cu, seq_cuda.cu, rnn_cuda.cu). This file only builds the table;
 * no other file calls into it but through the table. It is the entry of
 * the CUDA module (kernels-impl.h, dv_kernels_cuda_api): libdive.so finds
 * create and the device count through dv_kernels_cuda_module().
 *
 * Assumes: cudaSetDevice is the backend's first CUDA call, so everything
 * created here (and NCCL, later) belongs to that device.
 */
#include "cuda-impl.h"

#include <stdlib.h>
#include <string.h>

static void cuda_destroy(dv_backend *be) {
    dv_cuda_ctx *cx = (dv_cuda_ctx *)be->ctx;
    if (!cx) return;
    if (cx->stream) cudaStreamSynchronize(cx->stream);
    if (cx->copy_stream) cudaStreamSynchronize(cx->copy_stream);
    if (cx->blas) cublasDestroy(cx->blas);
    cudaFree(cx->staging);
    cudaFree(cx->scratch);
    if (cx->host_sum) cudaFreeHost(cx->host_sum);
    free(cx->blocks);
    if (cx->staged) cudaEventDestroy(cx->staged);
    if (cx->staging_free) cudaEventDestroy(cx->staging_free);
    if (cx->copy_stream) cudaStreamDestroy(cx->copy_stream);
    if (cx->stream) cudaStreamDestroy(cx->stream);
    free(cx);
}

static int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error left by a missing driver */
        return 0;
    }
    return n;
}

static dv_backend *cuda_create(int device, dv_precision precision, char *err) {
    if ((unsigned)precision >= DV_PRECISION_COUNT) {
        dv_error_at(err, __FILE__, __LINE__, __func__, "unknown dv_precision value %d",
                    (int)precision);
        return NULL;
    }
    int count = cuda_device_count();
    if (count < 1) {
        DV_ERROR(err, "no GPU is visible to CUDA (check the driver and CUDA_VISIBLE_DEVICES)");
        return NULL;
    }
    if (device < 0 || device >= count) {
        DV_ERROR(err, "CUDA device %d does not exist (%d visible)", device, count);
        return NULL;
    }
    dv_backend_box *box = (dv_backend_box *)calloc(1, sizeof(*box));
    dv_cuda_ctx *cx = (dv_cuda_ctx *)calloc(1, sizeof(*cx));
    if (!box || !cx) {
        free(box);
        free(cx);
        DV_ERROR(err, "out of memory");
        return NULL;
    }
    cx->device = device;
    cx->precision = precision;
    dv_backend *be = &box->be;
    be->ctx = cx;
    box->destroy = cuda_destroy;
    /* cudaSetDevice first: every later call (and NCCL) uses this device */
    int fail = DV_CUDA_CHECK(cx, cudaSetDevice(device));
    fail = fail || DV_CUDA_CHECK(cx, cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking));
    fail = fail ||
           DV_CUDA_CHECK(cx, cudaStreamCreateWithFlags(&cx->copy_stream, cudaStreamNonBlocking));
    fail = fail || DV_CUDA_CHECK(cx, cudaEventCreateWithFlags(&cx->staged, cudaEventDisableTiming));
    fail = fail ||
           DV_CUDA_CHECK(cx, cudaEventCreateWithFlags(&cx->staging_free, cudaEventDisableTiming));
    fail = fail || DV_CUDA_CHECK(cx, cudaHostAlloc((void **)&cx->host_sum, sizeof(double),
                                                   cudaHostAllocDefault));
    fail = fail || DV_CUDA_CHECK(cx, cudaDeviceGetAttribute(
                                         &cx->num_sms, cudaDevAttrMultiProcessorCount, device));
    fail = fail || DV_CUBLAS_CHECK(cx, cublasCreate(&cx->blas));
    fail = fail || DV_CUBLAS_CHECK(cx, cublasSetStream(cx->blas, cx->stream));
    /* fp32 means fp32: no silent TF32 in cublasSgemm */
    fail = fail || DV_CUBLAS_CHECK(cx, cublasSetMathMode(cx->blas, CUBLAS_DEFAULT_MATH));
    if (fail) {
        if (err) {
            memcpy(err, cx->err, sizeof(cx->err));
            dv_error_context(err, "CUDA device %d", device);
        }
        dv_backend_free(be);
        return NULL;
    }
    cx->peak_flops = dv_cuda_device_peak_flops(device, precision);
    be->name = "cuda";
    be->stream = cx->stream;
#define DV_OP(ret, name, params) be->name = dv_cuda_##name;
#include "ops.def"
    return be;
}

extern "C" const dv_kernels_cuda_api *dv_kernels_cuda_module(void) {
    static const dv_kernels_cuda_api api = {DV_KERNELS_CUDA_ABI, sizeof(dv_backend),
                                            cuda_device_count, cuda_create};
    return &api;
}
